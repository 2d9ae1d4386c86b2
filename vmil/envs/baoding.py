"""``baoding:ccw`` / ``baoding:cw``: a Shadow Hand rotates two balls in its palm (Nagabandi et al. 2019, PDDM).

The scene is composed at run time from the Shadow Hand shipped with ``gymnasium-robotics`` (MIT;
``pip install -e .[robotics]``; nothing is copied into vmil): its ``robot.xml``/``shared.xml`` are
included by absolute path, the hand mount is moved to PDDM's pose (palm up, palm origin at
z = 0.19 m above the floor at z = 0), and two balls (free joints, radius 2.8 cm, 43 g, as PDDM) plus
target markers and a palm reference site are added with ``mujoco.MjSpec``.

Task (PDDM's, on this hand):

- **Control**: one control step is 0.1 s (40 physics steps of 2.5 ms). The 20 position actuators
  (the hand's distal finger joints are tendon-coupled, so 20 rather than PDDM's 24) are driven
  around a rest pose: ``a`` in [-1, 1] maps to ``rest + a * 0.9 * (high - rest)`` for ``a > 0`` and
  ``rest + a * 0.9 * (rest - low)`` otherwise. ``action_repeat`` repeats a control step.
- **Targets** move on a circle of radius 2.8 cm in the palm plane, centred between the balls' rest
  positions, one revolution per 60 control steps (counter-clockwise seen from above for ``ccw``);
  the balls' targets are diametrically opposite (ball 1 starts at angle pi, ball 2 at 0).
- **Reward** per control step t (targets at step t, balls after the step):
  ``-5 * (|b1_xy - g1_xy| + |b2_xy - g2_xy|) - 500 * dropped - 10 * (wrist > 0.15)``, see
  :func:`baoding_reward`. A ball has **dropped** when its centre is below z = 0.06 m in the world
  frame (floor at 0, balls resting on the palm at z ~ 0.18, i.e. it left the hand: PDDM's number in
  PDDM's frame); a drop ends the episode (``terminal``). The wrist term penalises the palm-tilt joint
  WRJ0 lifting the fingers past 0.15 rad (PDDM's threshold; its rest value is about -0.4).
- **Episodes**: 100 control steps (``ceil(100 / action_repeat)`` agent steps) unless
  ``max_episode_steps`` says otherwise.
- **Success** (:func:`episode_success`): no ball dropped, and over the last 25% of the control
  steps the mean xy distance of *each* ball to its target is at most 2 cm (a ball that stays put
  averages ~3.6 cm from a target circling at 2.8 cm). It is decided at the end of the episode:
  ``info["success"]`` is False on every other step and the verdict on the last one, so that
  ``EpisodeBuilder``'s "any step succeeded" equals it.
- **Observations**: an image from a fixed camera (``top`` by default: looking down on the palm,
  image up = world +y = towards the fingers) and ``TimeStep.state`` = the hand's 24 joint positions
  and 24 joint velocities (float32). ``expert_observation()`` adds the balls and targets (66 floats).
- **Start**: the hand's rest pose with balls settled on the palm (computed once per env), then
  uniform noise of +-0.02 rad on every hand joint and +-3 mm on each ball's x and y.

Planning interface for :mod:`vmil.experts.mpc`: :meth:`BaodingEnv.evaluate_sequences` rolls action
sequences out from a copy of the current simulator state (``mujoco.rollout`` on
``mj_getState`` snapshots; the env's own ``MjData`` is never touched) and returns their returns.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
from typing import Any

import numpy as np

from vmil.base import EnvSpec, TimeStep
from vmil.envs import EpisodeGuard, FamilyUnavailable, check_continuous_action, empty_obs, to_chw
from vmil.envs.mjrender import FrameRenderer, camera_id, camera_name, check_image_size, import_mujoco

TASKS = ("ccw", "cw")
CONTROL_DT = 0.1
PHYSICS_DT = 0.0025
EPISODE_CONTROL_STEPS = 100
PERIOD = 60  # control steps per target revolution
RADIUS = 0.028  # target circle radius (m) = ball radius: touching balls can orbit it
BALL_RADIUS = 0.028
BALL_MASS = 0.043
DROP_Z = 0.06
WRIST_LIMIT = 0.15
DIST_WEIGHT = 5.0
DROP_PENALTY = 500.0
WRIST_PENALTY = 10.0
SUCCESS_DIST = 0.02
SUCCESS_FRACTION = 0.25
START_ANGLES = (math.pi, 0.0)  # ball 1, ball 2
JOINT_NOISE = 0.02
BALL_NOISE = 0.003
CAMERAS = ("top", "front", "side")
DEFAULT_CAMERA = "top"
# Circle centre in the palm frame: midway between the two balls' settled rest positions.
CENTRE_LOCAL = (0.007, -0.038, 0.09)
MOUNT_POS = (0.0, -0.4, 0.2)  # PDDM's hand mount: palm up, palm origin at (0, -0.11, 0.19)
MOUNT_EULER = (-1.5708, 0.0, 0.0)
# PDDM's rest pose (its keyframe), in the joint order of gymnasium-robotics' hand (the same order);
# clipped to this hand's joint ranges at build time.
REST_QPOS = (0.0126, -0.398, 0.379, 0.0564, 1.167, 0.0407, 0.265, -0.136, 1.144, 0.045, 0.074, 0.139,
             1.112, 0.234, -0.022, -0.368, -0.000, 1.25, 0.152, -0.021, 0.374, 0.0939, -0.126, -0.536)
N_HAND = 24
WRIST_JOINT = "robot0:WRJ0"
_INSTALL = "pip install -e .[robotics]"


def tasks() -> list[str]:
    return list(TASKS)


# ---------------------------------------------------------------------------------------------
# Pure task functions (unit-tested against hand computations).


def target_angles(t: np.ndarray | int, direction: int) -> np.ndarray:
    """Angles (rad) of the two targets at control step ``t``: ``[..., 2]``."""
    phase = direction * 2.0 * np.pi * np.asarray(t, dtype=np.float64) / PERIOD
    return np.stack([phase + START_ANGLES[0], phase + START_ANGLES[1]], axis=-1)


def target_positions(centre: np.ndarray, xaxis: np.ndarray, zaxis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """World positions ``[..., 2, 3]`` of the targets on the palm circle (centre and palm x/z axes ``[..., 3]``)."""
    c, s = np.cos(angles)[..., None], np.sin(angles)[..., None]
    return centre[..., None, :] + RADIUS * (c * xaxis[..., None, :] + s * zaxis[..., None, :])


def baoding_reward(balls: np.ndarray, targets_xy: np.ndarray, wrist: np.ndarray | float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PDDM's reward. ``balls`` ``[..., 2, 3]`` world positions, ``targets_xy`` ``[..., 2, 2]``,
    ``wrist`` the WRJ0 angle ``[...]``. Returns (reward, dropped, per-ball xy distance ``[..., 2]``)."""
    dist = np.linalg.norm(balls[..., :2] - targets_xy, axis=-1)
    dropped = np.any(balls[..., 2] < DROP_Z, axis=-1)
    wrist_high = np.asarray(wrist) > WRIST_LIMIT
    reward = -DIST_WEIGHT * dist.sum(-1) - DROP_PENALTY * dropped - WRIST_PENALTY * wrist_high
    return reward, dropped, dist


def episode_success(distances: np.ndarray, dropped: bool) -> bool:
    """``distances`` ``[T, 2]``: per control step and ball; see the module docstring."""
    distances = np.asarray(distances, dtype=np.float64).reshape(-1, 2)
    if dropped or distances.shape[0] == 0:
        return False
    tail = distances[-max(1, math.ceil(SUCCESS_FRACTION * distances.shape[0])):]
    return bool(np.all(tail.mean(axis=0) <= SUCCESS_DIST))


# ---------------------------------------------------------------------------------------------
# Model construction.


def _assets_dir() -> str:
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise FamilyUnavailable(f"baoding needs the Shadow Hand model from gymnasium-robotics, which is not "
                                f"installed; install the robotics extra with `{_INSTALL}`")
    path = os.path.join(spec.submodule_search_locations[0], "envs", "assets")
    if not os.path.isfile(os.path.join(path, "hand", "robot.xml")):
        raise FamilyUnavailable(f"baoding: {path}/hand/robot.xml is missing from gymnasium-robotics; "
                                f"reinstall the robotics extra with `{_INSTALL}`")
    return path


def _scene_xml(assets: str) -> str:
    hand = os.path.join(assets, "hand")
    return f"""<mujoco model="baoding">
  <compiler angle="radian" coordinate="local" meshdir="{assets}/stls/hand" texturedir="{assets}/textures"/>
  <!-- dense Jacobians: ~20% faster steps for this 36-dof model; MPC rollouts are the cost -->
  <option timestep="{PHYSICS_DT}" iterations="20" jacobian="dense"><flag warmstart="enable"/></option>
  <include file="{hand}/shared.xml"/>
  <asset>
    <include file="{hand}/shared_asset.xml"/>
    <texture name="floor" type="2d" builtin="checker" rgb1=".2 .3 .4" rgb2=".1 .15 .2" width="512" height="512"/>
    <material name="floor" texture="floor" texrepeat="8 8" reflectance=".1"/>
  </asset>
  <worldbody>
    <light directional="true" ambient="0.2 0.2 0.2" diffuse="0.8 0.8 0.8" specular="0.3 0.3 0.3"
           castshadow="false" pos="0 0 4" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="1 1 0.1" material="floor"/>
    <include file="{hand}/robot.xml"/>
    <body name="ball1" pos="-0.03 -0.01 0.25"><freejoint name="ball1"/>
      <geom name="ball1" type="sphere" size="{BALL_RADIUS}" mass="{BALL_MASS}" condim="4" rgba="1 .8 .31 1"/></body>
    <body name="ball2" pos="0.03 -0.01 0.25"><freejoint name="ball2"/>
      <geom name="ball2" type="sphere" size="{BALL_RADIUS}" mass="{BALL_MASS}" condim="4" rgba=".84 .59 .53 1"/></body>
    <camera name="top" pos="0.005 -0.02 0.55" xyaxes="1 0 0 0 1 0" fovy="30"/>
    <camera name="front" pos="0 0.33 0.45" xyaxes="-1 0 0 0 -0.6 0.8" fovy="38"/>
    <camera name="side" pos="0.35 -0.25 0.45" xyaxes="0.6 0.8 0 -0.5 0.4 0.75" fovy="38"/>
  </worldbody>
</mujoco>"""


def build_model() -> Any:
    """The compiled baoding MjModel (hand + balls + target markers + palm reference sensors)."""
    mujoco = import_mujoco()
    spec = mujoco.MjSpec.from_string(_scene_xml(_assets_dir()))
    mount = spec.body("robot0:hand mount")
    mount.pos = list(MOUNT_POS)
    mount.alt.euler = list(MOUNT_EULER)
    palm = spec.body("robot0:palm")
    palm.add_site(name="baoding:centre", pos=list(CENTRE_LOCAL), size=[0.002, 0, 0], rgba=[0, 0, 0, 0], group=5)
    for i, rgba in enumerate(([0.9, 0.6, 0.0, 1], [0.8, 0.2, 0.1, 1])):
        palm.add_site(name=f"baoding:target{i + 1}", pos=list(CENTRE_LOCAL), size=[0.006, 0, 0], rgba=rgba,
                      type=mujoco.mjtGeom.mjGEOM_SPHERE, group=0)
    for kind in ("FRAMEPOS", "FRAMEXAXIS", "FRAMEZAXIS"):
        spec.add_sensor(name=f"centre_{kind.lower()}", type=getattr(mujoco.mjtSensor, f"mjSENS_{kind}"),
                        objtype=mujoco.mjtObj.mjOBJ_SITE, objname="baoding:centre")
    return spec.compile()


class BaodingEnv:
    """Baoding balls on the Shadow Hand behind vmil's Env API (see the module docstring)."""

    def __init__(self, task: str, *, image_size: int = 64, action_repeat: int = 1, seed: int = 0,
                 camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
                 max_episode_steps: int = 0, render: bool = True, proprio: bool = True):
        env_id = f"baoding:{task}"
        if task not in TASKS:
            raise ValueError(f"unknown baoding task {task!r}; valid: {', '.join('baoding:' + t for t in TASKS)}")
        image_size = check_image_size(env_id, image_size)
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"{env_id}: action_repeat must be an integer >= 1, got {action_repeat!r}")
        if not isinstance(max_episode_steps, int) or max_episode_steps < 0:
            raise ValueError(f"{env_id}: max_episode_steps must be >= 0 (0: {EPISODE_CONTROL_STEPS} control "
                             f"steps), got {max_episode_steps!r}")
        cam_name = camera_name(env_id, camera, DEFAULT_CAMERA, CAMERAS)
        mujoco = import_mujoco()
        self._mujoco = mujoco
        self.direction = 1 if task == "ccw" else -1
        self.model = build_model()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.substeps = int(round(CONTROL_DT / m.opt.timestep))
        # The hand's 24 hinge joints come first (one qpos/qvel each), then the balls' free joints.
        self._ball_qpos = np.array([m.jnt_qposadr[m.joint(f"ball{i}").id] for i in (1, 2)])
        self._ball_dof = np.array([m.jnt_dofadr[m.joint(f"ball{i}").id] for i in (1, 2)])
        self._wrist_qpos = int(m.jnt_qposadr[m.joint(WRIST_JOINT).id])
        self._target_sites = [m.site(f"baoding:target{i}").id for i in (1, 2)]
        self._sensor_adr = int(m.sensor("centre_framepos").adr[0])  # 9 values: pos, x axis, z axis
        self._state_spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._rest_ctrl, self._ctrl_hi, self._ctrl_lo = self._control_ranges()
        self._rest_state = self._settled_rest_state()

        self._rng = np.random.default_rng(seed)
        self._repeat = action_repeat
        self._control_steps = max_episode_steps * action_repeat if max_episode_steps else EPISODE_CONTROL_STEPS
        self._max_steps = max_episode_steps or math.ceil(EPISODE_CONTROL_STEPS / action_repeat)
        self._guard = EpisodeGuard(env_id, self._max_steps)
        self._grayscale = bool(grayscale)
        self._renderer = FrameRenderer(m, image_size, camera_id(m, cam_name), fast=fast_render) if render else None
        self._render = bool(render)
        self.proprio = bool(proprio)
        self.t = 0  # control steps since reset: the targets' clock
        self._distances: list[np.ndarray] = []
        self._dropped = False
        self.spec = EnvSpec(
            env_id=env_id, obs_shape=(1 if grayscale else 3, image_size, image_size), action_dim=m.nu,
            state_dim=2 * N_HAND if proprio else 0, action_repeat=action_repeat, max_episode_steps=self._max_steps,
            camera=cam_name, extra={"family": "baoding", "expert_obs_dim": 66, "fast_render": bool(fast_render),
                                    "control_dt": CONTROL_DT, "control_steps": self._control_steps})

    # -- construction helpers --------------------------------------------------------------------

    def _control_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.model
        rest_q = np.clip(REST_QPOS, m.jnt_range[:N_HAND, 0], m.jnt_range[:N_HAND, 1])
        joints = m.actuator_trnid[:, 0]
        lo, hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
        rest = np.clip(rest_q[m.jnt_qposadr[joints]], lo, hi)
        self._rest_qpos = rest_q
        return rest, 0.9 * (hi - rest), 0.9 * (rest - lo)

    def _settled_rest_state(self) -> np.ndarray:
        """Hand at rest, balls dropped onto their start targets and left to settle for 1 s."""
        mujoco, m, d = self._mujoco, self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:N_HAND] = self._rest_qpos
        mujoco.mj_forward(m, d)
        targets = target_positions(*self._palm_frame(d), target_angles(0, self.direction))
        for i in range(2):
            adr = self._ball_qpos[i]
            d.qpos[adr:adr + 3] = targets[i] + np.array([0.0, 0.0, 0.01])
            d.qpos[adr + 3:adr + 7] = (1.0, 0.0, 0.0, 0.0)
        d.ctrl[:] = self._rest_ctrl
        mujoco.mj_step(m, d, nstep=int(round(1.0 / m.opt.timestep)))
        d.qvel[:] = 0.0
        d.time = 0.0
        state = np.empty(mujoco.mj_stateSize(m, self._state_spec))
        mujoco.mj_getState(m, d, state, self._state_spec)
        return state

    # -- Env API -------------------------------------------------------------------------------

    def reset(self) -> TimeStep:
        mujoco, m, d = self._mujoco, self.model, self.data
        mujoco.mj_resetData(m, d)
        mujoco.mj_setState(m, d, self._rest_state, self._state_spec)
        lo, hi = m.jnt_range[:N_HAND, 0], m.jnt_range[:N_HAND, 1]
        d.qpos[:N_HAND] = np.clip(d.qpos[:N_HAND] + self._rng.uniform(-JOINT_NOISE, JOINT_NOISE, N_HAND), lo, hi)
        for adr in self._ball_qpos:
            d.qpos[adr:adr + 2] += self._rng.uniform(-BALL_NOISE, BALL_NOISE, 2)
        d.ctrl[:] = self._rest_ctrl
        mujoco.mj_forward(m, d)
        self.t = 0
        self._distances = []
        self._dropped = False
        self._guard.reset()
        return TimeStep(self._frame(), self._proprio(), 0.0, True, False, False, {"success": False})

    def step(self, action: np.ndarray) -> TimeStep:
        self._guard.before_step()
        a = check_continuous_action(action, self.spec)
        self.data.ctrl[:] = self.action_to_ctrl(a)
        total, dropped, wrist_high = 0.0, False, False
        for _ in range(self._repeat):
            self._mujoco.mj_step(self.model, self.data, nstep=self.substeps)
            # The palm frame after the step (as the planner's rollouts see it), the clock before it.
            targets_xy = self.targets(self.t)[:, :2]
            reward, dropped, dist = baoding_reward(self.balls(), targets_xy, self.data.qpos[self._wrist_qpos])
            wrist_high = wrist_high or bool(self.data.qpos[self._wrist_qpos] > WRIST_LIMIT)
            total += float(reward)
            self._distances.append(dist)
            self.t += 1
            if dropped or self.t >= self._control_steps:
                break
        self._dropped = bool(dropped)
        last = self._guard.after_step(self._dropped) or self.t >= self._control_steps
        self._guard.done = last
        info: dict[str, Any] = {"success": episode_success(np.array(self._distances), self._dropped) if last else False,
                                "dropped": self._dropped, "wrist_over_limit": wrist_high,
                                "ball_distance": float(np.mean(self._distances[-1])), "time_limit": last and not dropped}
        return TimeStep(self._frame(), self._proprio(), total, False, self._dropped, last, info)

    def expert_observation(self) -> np.ndarray:
        """Hand qpos/qvel (48), ball positions and linear velocities (12), target xy (4), phase sin/cos (2)."""
        d = self.data
        vel = np.concatenate([d.qvel[a:a + 3] for a in self._ball_dof])
        phase = 2.0 * np.pi * self.t / PERIOD
        return np.concatenate([self._state(), self.balls().reshape(-1), vel, self.targets()[:, :2].reshape(-1),
                               [np.sin(phase), np.cos(phase)]]).astype(np.float32)

    def render_frame(self) -> np.ndarray:
        if not self._render:
            raise RuntimeError(f"{self.spec.env_id} was made with render=False; make it with render=True to draw frames")
        return self._frame()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- task quantities -------------------------------------------------------------------------

    def action_to_ctrl(self, action: np.ndarray) -> np.ndarray:
        """``[..., A]`` actions in [-1, 1] -> actuator targets around the rest pose."""
        a = np.clip(action, -1.0, 1.0)
        return self._rest_ctrl + np.where(a > 0, a * self._ctrl_hi, a * self._ctrl_lo)

    def balls(self, qpos: np.ndarray | None = None) -> np.ndarray:
        """Ball centres ``[..., 2, 3]`` from a (batch of) qpos (default: the current one)."""
        q = self.data.qpos if qpos is None else qpos
        return np.stack([q[..., a:a + 3] for a in self._ball_qpos], axis=-2)

    def targets(self, t: int | None = None) -> np.ndarray:
        """World positions ``[2, 3]`` of the targets at control step ``t`` (default: now)."""
        return target_positions(*self._palm_frame(self.data), target_angles(self.t if t is None else t, self.direction))

    def set_ball_positions(self, ball1: np.ndarray, ball2: np.ndarray) -> None:
        """Place the balls (world centres, at rest) and recompute derived quantities; for tests/tools."""
        for adr, dof, pos in zip(self._ball_qpos, self._ball_dof, (ball1, ball2)):
            self.data.qpos[adr:adr + 3] = pos
            self.data.qvel[dof:dof + 6] = 0.0
        self._mujoco.mj_forward(self.model, self.data)

    def _palm_frame(self, d: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = d.sensordata[self._sensor_adr:self._sensor_adr + 9]
        return s[0:3].copy(), s[3:6].copy(), s[6:9].copy()

    def _proprio(self) -> np.ndarray | None:
        return self._state() if self.proprio else None

    def _state(self) -> np.ndarray:
        d = self.data
        return np.concatenate([d.qpos[:N_HAND], d.qvel[:N_HAND]]).astype(np.float32)

    def _frame(self) -> np.ndarray:
        if self._renderer is None:
            return empty_obs()
        # Markers show the targets of the next control step (the ones the next reward measures),
        # lifted along the palm normal (palm -y) to just above a ball there, so they stay visible.
        angles = target_angles(self.t, self.direction)
        centre = np.asarray(CENTRE_LOCAL) + np.array([0.0, -(BALL_RADIUS + 0.004), 0.0])
        for site, angle in zip(self._target_sites, angles):
            self.model.site_pos[site] = centre + RADIUS * np.array([np.cos(angle), 0.0, np.sin(angle)])
        self._mujoco.mj_kinematics(self.model, self.data)  # site_xpos for the moved markers
        return to_chw(self._renderer.render(self.data), self._grayscale)

    # -- planning (MPC) ----------------------------------------------------------------------------

    def snapshot(self) -> np.ndarray:
        """The full physics state (``mj_getState``), a copy: plans start from it."""
        state = np.empty(self._mujoco.mj_stateSize(self.model, self._state_spec))
        self._mujoco.mj_getState(self.model, self.data, state, self._state_spec)
        return state

    def evaluate_sequences(self, actions: np.ndarray, *, threads: int = 1, timestep: float | None = None
                           ) -> np.ndarray:
        """Returns ``[N]`` of ``N`` action sequences ``[N, H, A]`` (one action per control step),
        each rolled out from the current state on its own copy; a drop ends a sequence's sum.

        ``timestep`` plans with a coarser physics step than the env's 2.5 ms (a cheaper, slightly
        different model; e.g. 0.005 halves the cost)."""
        from mujoco import rollout

        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3 or actions.shape[2] != self.model.nu:
            raise ValueError(f"{self.spec.env_id}: action sequences must be [N, H, {self.model.nu}], got {actions.shape}")
        n, horizon, _ = actions.shape
        model = self._planning_model(timestep)
        sub = int(round(CONTROL_DT / model.opt.timestep))
        ctrl = np.repeat(self.action_to_ctrl(actions), sub, axis=1)  # [N, H*sub, nu]
        datas = self._planning_data(threads)
        state, sensors = rollout.rollout(model, datas, self.snapshot()[None], ctrl,
                                         control_spec=self._mujoco.mjtState.mjSTATE_CTRL)
        ends = np.arange(1, horizon + 1) * sub - 1
        state, sensors = state[:, ends], sensors[:, ends]  # [N, H, nstate], [N, H, nsensor]
        qpos = state[..., 1:1 + self.model.nq]  # FULLPHYSICS starts with time
        a = self._sensor_adr
        targets = target_positions(sensors[..., a:a + 3], sensors[..., a + 3:a + 6], sensors[..., a + 6:a + 9],
                                   target_angles(self.t + np.arange(horizon), self.direction))
        reward, dropped, _ = baoding_reward(self.balls(qpos), targets[..., :2], qpos[..., self._wrist_qpos])
        alive = np.cumprod(np.concatenate([np.ones((n, 1), bool), ~dropped[:, :-1]], axis=1), axis=1)
        return (reward * alive).sum(axis=1)

    def _planning_model(self, timestep: float | None) -> Any:
        if timestep is None or timestep == self.model.opt.timestep:
            return self.model
        sub = CONTROL_DT / timestep
        if timestep <= 0 or abs(sub - round(sub)) > 1e-6:
            raise ValueError(f"{self.spec.env_id}: planning timestep must divide the {CONTROL_DT} s control step, got {timestep}")
        cache = getattr(self, "_plan_models", {})
        if timestep not in cache:
            model = copy.copy(self.model)
            model.opt.timestep = timestep
            cache[timestep] = model
        self._plan_models = cache
        return cache[timestep]

    def _planning_data(self, threads: int) -> list[Any]:
        datas = getattr(self, "_plan_datas", [])
        while len(datas) < threads:
            datas.append(self._mujoco.MjData(self.model))
        self._plan_datas = datas
        return datas[:threads]


def make(task: str, *, image_size: int = 64, action_repeat: int = 1, seed: int = 0,
         camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
         max_episode_steps: int = 0, render: bool = True, proprio: bool = True) -> BaodingEnv:
    """``proprio`` (on by default: the task is image + proprioception) puts the hand's joint
    positions and velocities in ``TimeStep.state``."""
    return BaodingEnv(task, image_size=image_size, action_repeat=action_repeat, seed=seed, camera=camera,
                      fast_render=fast_render, grayscale=grayscale, max_episode_steps=max_episode_steps,
                      render=render, proprio=proprio)


def mpc_expert(env: BaodingEnv, **options: Any) -> Any:
    from vmil.experts.mpc import MPPIExpert

    return MPPIExpert(env, **options)
