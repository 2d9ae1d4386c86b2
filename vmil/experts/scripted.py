"""Hand-written controllers that read the simulator state: demos without training an expert.

Each expert follows the protocol ``reset()``, ``act(timestep) -> action`` and ignores the pixels in
the timestep, so it also works with ``render=False``. Actions are in the env's [-1, 1] units
(dm_control's cartpole, reacher and point_mass already use [-1, 1]).

- toy:reach / toy:reach_discrete: head straight for the goal.
- dmc:cartpole_swingup / cartpole_balance (and their sparse variants): energy-shaping swing-up
  (Astrom & Furuta 2000) with a cart-centring term, then an LQR designed on a linearisation of the
  upright equilibrium taken by finite differences through MuJoCo's own integrator over one agent step
  (so the gain fits the action repeat).
- dmc:reacher_easy / reacher_hard: analytic two-link inverse kinematics for the target, then a
  joint-space PD scaled by the mass matrix.
- dmc:point_mass_easy: PD towards the target, saturating far away and fading out inside it (the
  reward charges for control).

Measured (10 episodes, action repeat 2, seeds 0-9): cartpole_swingup ~860, cartpole_balance ~1000,
reacher_easy ~984, point_mass_easy ~889.
"""
from __future__ import annotations

import numpy as np

from vmil.base import TimeStep
from vmil.envs import toy as toy_env

GRAVITY = 9.81


class ToyReachExpert:
    """Moves the point in a straight line to the goal, arriving without overshoot."""

    def __init__(self, env: toy_env.ToyReach):
        self.env = env
        self.reach = toy_env.SPEED * env.action_repeat  # distance one full action covers per agent step

    def reset(self) -> None:
        pass

    def act(self, timestep: TimeStep) -> np.ndarray | int:
        state = self.env.expert_observation()
        delta = (state[2:] - state[:2]) / self.reach
        if self.env.discrete:
            axis = int(np.argmax(np.abs(delta)))
            if abs(delta[axis]) < 0.5:
                return 0
            # DISCRETE_MOVES: 1 up (-y), 2 down (+y), 3 left (-x), 4 right (+x)
            return (3 if delta[0] < 0 else 4) if axis == 0 else (1 if delta[1] < 0 else 2)
        return (delta / max(1.0, float(np.max(np.abs(delta))))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# dm_control


def _linearise(physics, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray, steps: int,
               eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Discrete-time (A, B) of ``steps`` physics steps under a held control, by central differences
    of MuJoCo's own integrator (mjd_transitionFD does not support RK4), on a scratch MjData."""
    import mujoco

    model = physics.model.ptr
    data = mujoco.MjData(model)
    nq, nv = model.nq, model.nv

    def rollout(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(model, data)
        data.qpos[:], data.qvel[:], data.ctrl[:] = x[:nq], x[nq:], u
        for _ in range(steps):
            mujoco.mj_step(model, data)
        return np.concatenate([data.qpos, data.qvel])

    x0 = np.concatenate([qpos, qvel])
    a = np.zeros((nq + nv, nq + nv))
    b = np.zeros((nq + nv, model.nu))
    for i in range(nq + nv):
        dx = np.zeros_like(x0)
        dx[i] = eps
        a[:, i] = (rollout(x0 + dx, ctrl) - rollout(x0 - dx, ctrl)) / (2 * eps)
    for i in range(model.nu):
        du = np.zeros_like(ctrl)
        du[i] = eps
        b[:, i] = (rollout(x0, ctrl + du) - rollout(x0, ctrl - du)) / (2 * eps)
    return a, b


def _lqr_gain(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_discrete_are

    p = solve_discrete_are(a, b, q, r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


class CartpoleExpert:
    """Swing-up by energy shaping, then LQR around the upright pole."""

    def __init__(self, env, *, energy_gain: float = 1.5, centre_gain: float = 0.3, switch_cos: float = 0.7,
                 q_x: float = 5.0):
        self.env = env
        physics = env.physics
        self.physics = physics
        mass = float(physics.named.model.body_mass["pole_1"])
        com = float(physics.named.model.body_ipos["pole_1", "z"])
        self.inertia = float(physics.named.model.body_inertia["pole_1", "y"]) + mass * com ** 2
        self.mgl = mass * GRAVITY * com
        self.energy_gain, self.centre_gain, self.switch_cos = energy_gain, centre_gain, switch_cos
        self.q_x = q_x  # LQR weight on the cart position: re-centre the cart soon after the swing-up
        self.gain = self._design_lqr(env.action_repeat * env.control_substeps)

    def _design_lqr(self, steps: int) -> np.ndarray:
        a, b = _linearise(self.physics, np.zeros(2), np.zeros(2), np.zeros(1), steps)
        # state: slider, hinge, slider velocity, hinge velocity
        q = np.diag([self.q_x, 10.0, 0.1, 0.5])
        r = np.array([[1.0]])
        return _lqr_gain(a, b, q, r)

    def reset(self) -> None:
        pass

    def act(self, timestep: TimeStep) -> np.ndarray:
        qpos, qvel = self.physics.data.qpos, self.physics.data.qvel
        x, theta, dx, dtheta = float(qpos[0]), float(qpos[1]), float(qvel[0]), float(qvel[1])
        theta = (theta + np.pi) % (2 * np.pi) - np.pi  # 0 upright
        if np.cos(theta) > self.switch_cos:
            u = -float((self.gain @ np.array([x, theta, dx, dtheta]))[0])
        else:
            energy = 0.5 * self.inertia * dtheta ** 2 + self.mgl * (np.cos(theta) - 1.0)
            pump = self.energy_gain * energy * np.sign(dtheta * np.cos(theta) + 1e-9)
            # saturate the pump before adding the centring term, so the cart is pulled back even
            # while the pump asks for full force
            u = float(np.clip(pump, -1.0, 1.0)) - self.centre_gain * (x + 0.3 * dx)
        return np.clip(np.array([u], dtype=np.float32), -1.0, 1.0)


class ReacherExpert:
    """Analytic inverse kinematics for the fingertip, then joint-space PD scaled by the mass matrix
    (the arm is so light that unscaled gains chatter at the agent's control rate)."""

    def __init__(self, env, *, omega: float = 12.0, zeta: float = 1.0):
        self.physics = env.physics
        model = self.physics.named.model
        self.l1 = float(np.linalg.norm(model.body_pos["hand", :2]))
        self.l2 = float(np.linalg.norm(model.body_pos["finger", :2]))
        self.wrist_limit = float(model.jnt_range["wrist", 1])
        self.omega, self.zeta = omega, zeta

    def reset(self) -> None:
        pass

    def _joint_target(self, target: np.ndarray, q: np.ndarray) -> np.ndarray:
        distance = float(np.linalg.norm(target))
        reach = np.clip(distance, abs(self.l1 - self.l2) + 1e-6, self.l1 + self.l2 - 1e-6)
        cos_q2 = (reach ** 2 - self.l1 ** 2 - self.l2 ** 2) / (2 * self.l1 * self.l2)
        best, best_cost = q, np.inf
        for q2 in (np.arccos(np.clip(cos_q2, -1, 1)), -np.arccos(np.clip(cos_q2, -1, 1))):
            if abs(q2) > self.wrist_limit:
                continue
            q1 = np.arctan2(target[1], target[0]) - np.arctan2(self.l2 * np.sin(q2), self.l1 + self.l2 * np.cos(q2))
            d1 = (q1 - q[0] + np.pi) % (2 * np.pi) - np.pi  # the shoulder turns freely
            candidate = np.array([q[0] + d1, q2])
            cost = abs(d1) + abs(q2 - q[1])
            if cost < best_cost:
                best, best_cost = candidate, cost
        return best

    def act(self, timestep: TimeStep) -> np.ndarray:
        import mujoco

        physics = self.physics
        target = physics.named.data.geom_xpos["target", :2] - physics.named.data.xpos["arm", :2]
        q, qd = physics.data.qpos[:2].copy(), physics.data.qvel[:2].copy()
        goal = self._joint_target(target, q)
        qdd = self.omega ** 2 * (goal - q) - 2 * self.zeta * self.omega * qd
        mass = np.zeros((physics.model.nv, physics.model.nv))
        mujoco.mj_fullM(physics.model.ptr, mass, physics.data.qM)
        torque = mass @ qdd + physics.data.qfrc_bias[:2] - physics.data.qfrc_passive[:2]
        gear = physics.model.actuator_gear[:, 0]
        return np.clip(torque / gear, -1.0, 1.0).astype(np.float32)


class PointMassExpert:
    """Drive to the target at full force, brake near it, and let go inside it."""

    def __init__(self, env, *, kp: float = 60.0, kd: float = 8.0):
        self.physics = env.physics
        self.kp, self.kd = kp, kd

    def reset(self) -> None:
        pass

    def act(self, timestep: TimeStep) -> np.ndarray:
        physics = self.physics
        mass = physics.named.data.geom_xpos["pointmass", :2]
        target = physics.named.data.geom_xpos["target", :2]
        u = self.kp * (target - mass) - self.kd * physics.data.qvel[:2]
        # tendons t1 / t2 actuate x / y in the easy task (wrap_prm holds the coefficients)
        coef = physics.model.wrap_prm[:4].reshape(2, 2)
        u = np.linalg.solve(coef.T, u)  # joint force = coef.T @ tendon force
        return np.clip(u, -1.0, 1.0).astype(np.float32)


DMC_EXPERTS = {
    "cartpole_swingup": CartpoleExpert,
    "cartpole_balance": CartpoleExpert,
    "cartpole_swingup_sparse": CartpoleExpert,
    "cartpole_balance_sparse": CartpoleExpert,
    "reacher_easy": ReacherExpert,
    "reacher_hard": ReacherExpert,
    "point_mass_easy": PointMassExpert,
}


def dmc_expert(env):
    if env.task_id not in DMC_EXPERTS:
        raise ValueError(f"no scripted expert for dmc:{env.task_id}; scripted experts exist for "
                         f"{', '.join('dmc:' + t for t in DMC_EXPERTS)}; for other tasks train a SAC "
                         f"expert (vmil expert train) and pass its checkpoint path")
    return DMC_EXPERTS[env.task_id](env)
