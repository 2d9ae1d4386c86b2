"""``sawyer:peg_insert``: a Sawyer arm picks up a peg and inserts it sideways into a hole.

Built on Meta-World's ``peg-insert-side-v3`` (MIT; ``pip install -e .[robotics]``), with what the
VMIL paper's Sawyer task needs and Meta-World does not give:

- **Randomised arm start.** Meta-World always starts the hand at (0, 0.6, 0.2). Before every reset
  the hand target is drawn uniformly from :data:`HAND_START_LOW`..:data:`HAND_START_HIGH` (a box
  above the table, clear of the hole's block and of the peg), and Meta-World's mocap reset drives
  the hand there; if it has not arrived within 1 cm we keep holding the mocap there a little longer.
  Peg and hole positions are randomised by Meta-World itself (peg x in [0, 0.2], y in [0.5, 0.7];
  hole block x in [-0.35, -0.25], y in [0.4, 0.7]).
- **Pixels** from a fixed camera through ``mujoco.Renderer`` (fast settings by default). The default
  ``corner`` camera sees arm, peg and hole; Meta-World's ``corner*`` cameras have their up axis
  pointing down, so their frames are rotated by 180 degrees to be upright.
- **Actions**: 4-d in [-1, 1] (hand xyz displacement, gripper effort), as Meta-World.
- **Episodes**: Meta-World's 500 env steps, i.e. ``500 / action_repeat`` agent steps by default;
  no termination (``terminal`` is always False), ``last`` at the time limit.
- ``TimeStep.state`` (proprioception, with ``proprio=True``): hand position (3) and gripper
  opening (1), float32; off by default, as the VMIL paper's Sawyer agent sees pixels only.
- ``info["success"]``: Meta-World's success test at this step (peg head within 7 cm of the hole
  target, scaled); the episode counts as a success if any step succeeds (Meta-World's evaluation
  convention, and how :class:`vmil.data.episode.EpisodeBuilder` fills ``meta["success"]``).
  ``info["episode_success"]`` is that running verdict.
- ``expert_observation()``: Meta-World's full 39-d observation (hand, gripper, peg pose, previous
  frame, hole target) as float32, the input of the scripted expert.
- ``reward``: Meta-World's dense v2 reward summed over the repeated steps (evaluation only).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vmil.base import EnvSpec, TimeStep
from vmil.envs import EpisodeGuard, FamilyUnavailable, check_continuous_action, empty_obs, to_chw
from vmil.envs.mjrender import FrameRenderer, camera_id, camera_name, check_image_size, import_mujoco

TASKS = ("peg_insert",)
METAWORLD_ENV = "peg-insert-side-v3"
METAWORLD_STEPS = 500  # Meta-World's max_path_length, in env steps
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
DEFAULT_CAMERA = "corner"
_UPSIDE_DOWN = ("corner", "corner2", "corner3", "corner4")
# Hand start box (world frame, metres): above the peg (z >= 0.15 clears it, it lies at z ~0.02),
# right of the hole block (x >= -0.15; the block spans x <= -0.2), inside Meta-World's mocap box.
HAND_START_LOW = np.array([-0.15, 0.45, 0.15])
HAND_START_HIGH = np.array([0.20, 0.75, 0.30])
_SETTLE_STEPS = 50  # extra mocap steps when the reset did not reach the start (rarely needed)
_INSTALL = "pip install -e .[robotics]"


def tasks() -> list[str]:
    return list(TASKS)


def _metaworld_env_class() -> Any:
    import_mujoco()
    try:
        from metaworld.envs.sawyer_peg_insertion_side_v3 import SawyerPegInsertionSideEnvV3
        from metaworld.policies.sawyer_peg_insertion_side_v3_policy import SawyerPegInsertionSideV3Policy  # noqa: F401
    except ImportError as err:
        raise FamilyUnavailable(f"sawyer:peg_insert needs Meta-World 3.1.1 (missing: {err.name}); "
                                f"install the robotics extra with `{_INSTALL}`") from err
    return SawyerPegInsertionSideEnvV3


class SawyerPegInsert:
    """Meta-World peg-insert-side with randomised arm start, behind vmil's Env API."""

    def __init__(self, *, image_size: int = 64, action_repeat: int = 2, seed: int = 0,
                 camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
                 max_episode_steps: int = 0, render: bool = True, proprio: bool = False):
        env_id = "sawyer:peg_insert"
        image_size = check_image_size(env_id, image_size)
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"{env_id}: action_repeat must be an integer >= 1, got {action_repeat!r}")
        if not isinstance(max_episode_steps, int) or max_episode_steps < 0:
            raise ValueError(f"{env_id}: max_episode_steps must be >= 0 (0: Meta-World's 500 env steps), "
                             f"got {max_episode_steps!r}")
        cam_name = camera_name(env_id, camera, DEFAULT_CAMERA, CAMERAS)
        mujoco = import_mujoco()
        env_cls = _metaworld_env_class()
        try:
            mw = env_cls(render_mode=None)
        except ValueError as err:
            # Meta-World 3.1.1 writes 11-wide mocap weld rows; newer MuJoCo has 12 (DESIGN.md).
            raise FamilyUnavailable(f"{env_id}: Meta-World failed to build its model with mujoco "
                                    f"{mujoco.__version__} ({err}); Meta-World 3.1.1 needs mujoco==3.3.0: "
                                    f"`{_INSTALL}`") from err
        # What Meta-World's MT1 benchmark sets through set_task(), without its pickled task objects:
        # fresh peg/hole positions on every reset from the env's seeded RNG, hole visible in the obs.
        mw._set_task_called = True
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        if mw._partially_observable:
            mw._partially_observable = False
            mw.__dict__.pop("sawyer_observation_space", None)  # cached_property, recomputed on use
        self._rng = np.random.default_rng(seed)
        mw.seed(int(self._rng.integers(2**31 - 1)))
        self._max_steps = max_episode_steps or max(1, METAWORLD_STEPS // action_repeat)
        mw.max_path_length = max(METAWORLD_STEPS, self._max_steps * action_repeat)
        self._mw = mw
        self._mujoco = mujoco
        self._repeat = action_repeat
        self._grayscale = bool(grayscale)
        self._render = bool(render)
        self.proprio = bool(proprio)
        self._renderer = (FrameRenderer(mw.model, image_size, camera_id(mw.model, cam_name), fast=fast_render,
                                        rotate180=cam_name in _UPSIDE_DOWN) if render else None)
        self._guard = EpisodeGuard(env_id, self._max_steps)
        self._obs: np.ndarray | None = None
        self._ever_success = False
        self.hand_start: np.ndarray | None = None  # the sampled start of the current episode
        self.spec = EnvSpec(
            env_id=env_id, obs_shape=(1 if grayscale else 3, image_size, image_size), action_dim=4,
            state_dim=4 if proprio else 0, action_repeat=action_repeat, max_episode_steps=self._max_steps, camera=cam_name,
            extra={"family": "sawyer", "expert_obs_dim": 39, "fast_render": bool(fast_render),
                   "metaworld_env": METAWORLD_ENV})

    # -- Env API -------------------------------------------------------------------------------

    def reset(self) -> TimeStep:
        mw = self._mw
        self.hand_start = self._rng.uniform(HAND_START_LOW, HAND_START_HIGH)
        mw.hand_init_pos = self.hand_start.copy()
        obs, _ = mw.reset()
        if np.linalg.norm(obs[:3] - self.hand_start) > 0.01:
            self._settle_hand()
            obs = mw._get_obs()
            obs[18:36] = obs[:18]  # Meta-World's "previous frame" part equals the current one at reset
            mw._prev_obs = obs[:18].copy()
        self._obs = np.asarray(obs, dtype=np.float64)
        self._guard.reset()
        self._ever_success = False
        info = {"success": False, "episode_success": False, "hand_start": self.hand_start.tolist()}
        return TimeStep(self._frame(), self._state(), 0.0, True, False, False, info)

    def step(self, action: np.ndarray) -> TimeStep:
        self._guard.before_step()
        a = check_continuous_action(action, self.spec).astype(np.float32)
        reward, success = 0.0, False
        for _ in range(self._repeat):
            obs, r, _, _, info = self._mw.step(a)
            reward += float(r)
            success = bool(info["success"])
        self._obs = np.asarray(obs, dtype=np.float64)
        self._ever_success = self._ever_success or success
        last = self._guard.after_step(False)
        info = {"success": success, "episode_success": self._ever_success, "time_limit": last}
        return TimeStep(self._frame(), self._state(), reward, False, False, last, info)

    def expert_observation(self) -> np.ndarray:
        """Meta-World's 39-d observation (float32), for the scripted expert and state-based experts."""
        if self._obs is None:
            raise RuntimeError(f"{self.spec.env_id}: expert_observation() before reset(); call reset() first")
        return self._obs.astype(np.float32)

    def render_frame(self) -> np.ndarray:
        if not self._render:
            raise RuntimeError(f"{self.spec.env_id} was made with render=False; make it with render=True to draw frames")
        return self._frame()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._mw.close()

    # -- helpers -------------------------------------------------------------------------------

    def _settle_hand(self) -> None:
        mw = self._mw
        mocap_id = mw.model.body_mocapid[mw.data.body("mocap").id]
        for _ in range(_SETTLE_STEPS):
            mw.data.mocap_pos[mocap_id][:] = self.hand_start
            mw.data.mocap_quat[mocap_id][:] = np.array([1.0, 0.0, 1.0, 0.0])
            mw.do_simulation([-1.0, 1.0], mw.frame_skip)
        self._mujoco.mj_forward(mw.model, mw.data)
        mw.init_tcp = mw.tcp_center

    def _state(self) -> np.ndarray | None:
        return self._obs[:4].astype(np.float32) if self.proprio else None

    def _frame(self) -> np.ndarray:
        if self._renderer is None:
            return empty_obs()
        return to_chw(self._renderer.render(self._mw.data), self._grayscale)


def make(task: str, *, image_size: int = 64, action_repeat: int = 2, seed: int = 0,
         camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
         max_episode_steps: int = 0, render: bool = True, proprio: bool = False) -> SawyerPegInsert:
    """``proprio=True`` adds hand position and gripper opening as ``TimeStep.state`` (the VMIL
    paper's Sawyer agent sees pixels only, hence off by default)."""
    if task not in TASKS:
        raise ValueError(f"unknown sawyer task {task!r}; valid: {', '.join('sawyer:' + t for t in TASKS)}")
    return SawyerPegInsert(image_size=image_size, action_repeat=action_repeat, seed=seed, camera=camera,
                           fast_render=fast_render, grayscale=grayscale,
                           max_episode_steps=max_episode_steps, render=render, proprio=proprio)


PEG_LIFTED_Z = 0.05  # the peg's grasp site rests at z ~0.02-0.025 on the table


def _expert_policy_class() -> Any:
    from metaworld.policies.sawyer_peg_insertion_side_v3_policy import SawyerPegInsertionSideV3Policy

    class LiftAwarePegPolicy(SawyerPegInsertionSideV3Policy):
        """Meta-World's waypoints, but a lifted peg counts as grasped.

        The original goes back to "descend onto the peg" whenever hand and peg differ in height by
        more than 2.5 cm, which also fires while the peg hangs a little low in the gripper: it then
        chases the held peg down to the table and pushes it around there until the episode ends
        (10% of randomised episodes). A peg above :data:`PEG_LIFTED_Z` is in the hand, so we go on
        towards the hole instead."""

        @staticmethod
        def _desired_pos(o_d: dict[str, np.ndarray]) -> np.ndarray:
            hand, peg = o_d["hand_pos"], o_d["peg_pos"]
            hole = np.array([-0.35, o_d["goal_pos"][1], 0.16])
            if np.linalg.norm(hand[:2] - peg[:2]) > 0.04:
                return peg + np.array([0.0, 0.0, 0.3])
            if abs(hand[2] - peg[2]) > 0.025 and peg[2] < PEG_LIFTED_Z:
                return peg
            if np.linalg.norm(peg[1:] - hole[1:]) > 0.03:
                return hole + np.array([0.4, 0.0, 0.0])
            return hole

    return LiftAwarePegPolicy


class PegInsertExpert:
    """Meta-World's scripted peg-insert-side policy (reads the full state, not pixels), with one fix.

    The policy is a waypoint controller (above the peg, down, grasp, line up with the hole, push in)
    computed from the current hand, peg and hole positions only, so it starts from any arm pose; see
    ``LiftAwarePegPolicy`` for the change.
    """

    def __init__(self, env: SawyerPegInsert):
        if not isinstance(env, SawyerPegInsert):
            raise TypeError(f"the sawyer scripted expert drives sawyer:peg_insert, got {type(env).__name__}")
        self.env = env
        self._policy = _expert_policy_class()()

    def reset(self) -> None:
        pass

    def act(self, timestep: TimeStep) -> np.ndarray:
        obs = self.env.expert_observation().astype(np.float64)
        return np.clip(self._policy.get_action(obs), -1.0, 1.0).astype(np.float32)


def scripted_expert(env: SawyerPegInsert) -> PegInsertExpert:
    return PegInsertExpert(env)
