"""DeepMind Control Suite tasks from pixels: ``dmc:<domain>_<task>`` for every task in ``suite.ALL_TASKS``.

Frames are rendered with MuJoCo at ``image_size`` (EGL, headless). By default rendering is made
cheap before the first frame: no shadow map and no multisampling (``fast_render``), which takes an
84x84 cheetah frame from ~24 ms to ~6.5 ms on a CPU (DESIGN.md); ``fast_render=False`` keeps
MuJoCo's defaults. Cameras follow the papers: camera 0, except quadruped (camera 2).

An episode lasts the suite's time limit (1000 control steps for most tasks) divided by the action
repeat; the last agent step repeats only the control steps that are left, so returns stay
comparable with the published ones. ``expert_observation()`` is the flattened dm_control
observation (the full low-dimensional state that state-based experts such as SAC use);
``proprio=True`` also puts it in ``TimeStep.state``.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
from typing import Any

import numpy as np

from vmil.base import EnvSpec, TimeStep
from vmil.envs import EnvError, EpisodeGuard, check_continuous_action, empty_obs, timestep, to_chw

os.environ.setdefault("MUJOCO_GL", "egl")
from dm_control import suite  # noqa: E402  (MUJOCO_GL must be set first)

DEFAULT_CAMERAS: dict[str, int] = {"quadruped": 2}
DEFAULT_CONTROL_STEPS = 1000  # for tasks without a time limit (lqr)


def _fix_quadruped_for_numpy_2_4() -> None:
    """dm_control 1.0.28's quadruped calls ``np.in1d``, which numpy 2.4 removed; use ``np.isin``."""
    from dm_control.suite import quadruped

    if hasattr(np, "in1d") or getattr(quadruped.Physics, "_vmil_isin", False):
        return

    def _get_sensor_names(self, *sensor_types):
        try:
            return self._sensor_types_to_names[sensor_types]
        except KeyError:
            [sensor_ids] = np.where(np.isin(self.model.sensor_type, sensor_types))
            names = [self.model.id2name(s_id, "sensor") for s_id in sensor_ids]
            self._sensor_types_to_names[sensor_types] = names
            return names

    quadruped.Physics._get_sensor_names = _get_sensor_names
    quadruped.Physics._vmil_isin = True


_fix_quadruped_for_numpy_2_4()
_DOMAINS = sorted({d for d, _ in suite.ALL_TASKS}, key=len, reverse=True)  # longest first: point_mass


def tasks() -> list[str]:
    return [f"{d}_{t}" for d, t in suite.ALL_TASKS]


def split_task(task: str) -> tuple[str, str]:
    """``ball_in_cup_catch`` -> (ball_in_cup, catch); domain names may contain underscores."""
    for domain in _DOMAINS:
        if task.startswith(domain + "_") and (domain, task[len(domain) + 1:]) in suite.ALL_TASKS:
            return domain, task[len(domain) + 1:]
    near = difflib.get_close_matches(task, tasks(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join('dmc:' + n for n in near)}?" if near else ""
    raise ValueError(f"unknown dmc task '{task}'{hint} (valid: {', '.join('dmc:' + t for t in tasks())})")


def _time_limit(domain: str, task: str) -> float:
    factory = getattr(suite, domain).SUITE[task]
    return float(inspect.signature(factory).parameters["time_limit"].default)


def camera_names(physics) -> list[str]:
    return [physics.model.id2name(i, "camera") or str(i) for i in range(physics.model.ncam)]


def resolve_camera(physics, domain: str, camera: str | int | None) -> int:
    """Camera id from a name, an index (int or digit string), or None for the domain's default."""
    names = camera_names(physics)
    if camera is None or camera == "":
        index = DEFAULT_CAMERAS.get(domain, 0)
    elif isinstance(camera, int) or (isinstance(camera, str) and camera.lstrip("-").isdigit()):
        index = int(camera)
        if index == -1:
            return -1  # MuJoCo's free camera
    elif camera in names:
        index = names.index(camera)
    else:
        near = difflib.get_close_matches(str(camera), names, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"dmc {domain} has no camera {camera!r}{hint} (valid: "
                         f"{', '.join(f'{i} ({n})' for i, n in enumerate(names))})")
    if not 0 <= index < len(names):
        raise ValueError(f"dmc {domain} camera index {index} is out of range; valid: "
                         f"{', '.join(f'{i} ({n})' for i, n in enumerate(names))}")
    return index


def apply_fast_render(physics) -> None:
    """No shadow map, no multisampling; must run before the first render creates the GL context."""
    physics.model.vis.quality.shadowsize = 0
    physics.model.vis.quality.offsamples = 0


def flatten_observation(observation: dict[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1) for v in observation.values()])


class DMCEnv:
    """One dm_control task with pixel observations, action repeat and [-1, 1] actions."""

    def __init__(self, task: str, *, image_size: int, action_repeat: int, seed: int,
                 camera: str | int | None, fast_render: bool, grayscale: bool, max_episode_steps: int,
                 render: bool, proprio: bool):
        self.domain, self.task = split_task(task)
        self.task_id = task
        self._env = suite.load(self.domain, self.task,
                               task_kwargs={"random": seed, "time_limit": float("inf")})
        self.physics = self._env.physics
        self.fast_render = fast_render
        if fast_render:
            apply_fast_render(self.physics)
        self.camera_id = resolve_camera(self.physics, self.domain, camera)
        self.image_size = image_size
        self.grayscale = grayscale
        self.render_enabled = render
        self.proprio = proprio
        self.action_repeat = action_repeat
        self.control_substeps = max(1, round(self._env.control_timestep() / self.physics.timestep()))

        limit = _time_limit(self.domain, self.task)
        control_steps = (round(limit / self._env.control_timestep()) if math.isfinite(limit)
                         else DEFAULT_CONTROL_STEPS)
        # Episode length counted in control steps so that the last agent step can be cut short.
        self.control_limit = max_episode_steps * action_repeat if max_episode_steps else control_steps
        agent_steps = math.ceil(self.control_limit / action_repeat)

        action_spec = self._env.action_spec()
        self._low = np.asarray(action_spec.minimum, dtype=np.float64)
        self._high = np.asarray(action_spec.maximum, dtype=np.float64)
        if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
            raise ValueError(f"dmc:{task} has unbounded actions; [-1, 1] actions cannot be mapped to them")
        obs_dim = int(sum(np.prod(s.shape, dtype=int) for s in self._env.observation_spec().values()))
        self.spec = EnvSpec(
            env_id=f"dmc:{task}", obs_shape=(1 if grayscale else 3, image_size, image_size),
            action_dim=int(action_spec.shape[0]), state_dim=obs_dim if proprio else 0,
            action_repeat=action_repeat, max_episode_steps=agent_steps,
            camera=camera_names(self.physics)[self.camera_id] if self.camera_id >= 0 else -1,
            extra={"family": "dmc", "task": task, "render": render, "expert_obs_dim": obs_dim,
                   "fast_render": fast_render, "grayscale": grayscale, "camera_id": self.camera_id,
                   "control_steps": self.control_limit})
        self.guard = EpisodeGuard(self.spec.env_id, agent_steps)
        self._control_count = 0
        self._observation: dict[str, Any] | None = None

    def render_frame(self) -> np.ndarray:
        """The current image as CHW uint8 (also usable when the env runs with ``render=False``)."""
        frame = self.physics.render(height=self.image_size, width=self.image_size, camera_id=self.camera_id)
        return to_chw(frame, self.grayscale)

    def _observe(self, reward: float, first: bool, terminal: bool, last: bool, info: dict) -> TimeStep:
        obs = self.render_frame() if self.render_enabled else empty_obs()
        state = self.expert_observation() if self.proprio else None
        return timestep(obs, state, reward, first, terminal, last, info)

    def reset(self) -> TimeStep:
        ts = self._env.reset()
        self._observation = ts.observation
        self._control_count = 0
        self.guard.reset()
        return self._observe(0.0, True, False, False, {"discount": 1.0})

    def step(self, action: np.ndarray) -> TimeStep:
        self.guard.before_step()
        a = check_continuous_action(action, self.spec)
        scaled = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        reward, discount, ended = 0.0, 1.0, False
        for _ in range(min(self.action_repeat, self.control_limit - self._control_count)):
            ts = self._env.step(scaled)
            self._control_count += 1
            reward += ts.reward or 0.0
            self._observation = ts.observation
            if ts.last():  # the time limit is ours, so only a task termination gets here
                ended, discount = True, float(ts.discount)
                break
        terminal = ended and discount == 0.0
        last = self.guard.after_step(terminal=ended)  # the agent-step limit covers control_limit exactly
        return self._observe(reward, False, terminal, last, {"discount": discount})

    def expert_observation(self) -> np.ndarray:
        """The flattened dm_control observation of the current state, float32."""
        if self._observation is None:
            raise EnvError(f"{self.spec.env_id}: call reset() before expert_observation()")
        return flatten_observation(self._observation)

    def observation_dict(self) -> dict[str, np.ndarray]:
        """The dm_control observation dict of the current state (for scripted experts)."""
        if self._observation is None:
            raise EnvError(f"{self.spec.env_id}: call reset() before observation_dict()")
        return dict(self._observation)

    def close(self) -> None:
        self.physics.free()


def make(task: str, *, image_size: int = 64, action_repeat: int = 2, seed: int = 0,
         camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
         max_episode_steps: int = 0, render: bool = True, proprio: bool = False) -> DMCEnv:
    """``proprio=True`` adds the flattened dm_control observation as ``TimeStep.state``."""
    return DMCEnv(task, image_size=image_size, action_repeat=action_repeat, seed=seed, camera=camera,
                  fast_render=fast_render, grayscale=grayscale, max_episode_steps=max_episode_steps,
                  render=render, proprio=proprio)

