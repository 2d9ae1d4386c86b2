"""``gym:<EnvId>``: Gymnasium MuJoCo (Hopper-v5, Walker2d-v5, ...) and classic control from pixels.

- MuJoCo ids render offscreen (EGL) straight at ``image_size``; with ``fast_render`` the shadow map
  and multisampling are switched off before the renderer (created lazily by gymnasium's
  ``MujocoRenderer`` on the first ``render()``) exists, which is where the frame cost goes.
- Classic control ids (CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1, ...) draw with pygame
  on an off-screen surface at their native size (600x400 or 500x500) and are area-resized (PIL
  ``BOX``) to a square ``image_size`` frame; non-square screens are stretched rather than padded so
  that every pixel carries information.
- Continuous actions are exchanged in [-1, 1] and mapped linearly to the env's bounds (Pendulum's
  torque is [-2, 2]); discrete actions are ints in ``range(spec.action_dim)``.
- ``action_repeat`` repeats the action inside one agent step; rewards are summed, and the repeat stops
  early when the MDP terminates. The time limit is ours (the env's default length in env steps, or
  ``max_episode_steps`` agent steps), gymnasium's
  ``TimeLimit`` wrapper is bypassed, so ``TimeStep.terminal`` is only set by a real termination
  (Hopper falling, MountainCar reaching the flag) and ``last`` also by the time limit.
- ``expert_observation()`` is gymnasium's own state observation (float32), the input of state-based
  experts (SAC); with ``render=False`` nothing is drawn and ``TimeStep.obs`` is ``uint8[0]``.
  ``proprio=True`` also puts it in ``TimeStep.state``.
"""
from __future__ import annotations

import abc
import atexit
import difflib
import math
import os
import weakref
from typing import Any

import numpy as np

from vmil.base import EnvSpec, TimeStep
from vmil.envs import (EnvError, EpisodeGuard, check_continuous_action, check_discrete_action, empty_obs,
                       timestep, to_chw)

_MUJOCO_PREFIX = "gymnasium.envs.mujoco."
_CLASSIC_PREFIX = "gymnasium.envs.classic_control."

# MuJoCo's EGL module terminates the display in an atexit hook; a gymnasium viewer garbage-collected
# after that raises EGLError noise at interpreter exit. Closing our live envs in a hook registered
# after the first frame (atexit runs last-in first-out) frees them while the display still exists.
_LIVE: "weakref.WeakSet[GymEnv]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_live_envs() -> None:
    for env in list(_LIVE):
        env.close()


def _gymnasium():
    # Set before gymnasium's MuJoCo envs import mujoco (which reads MUJOCO_GL once), and keep SDL
    # from probing for a display/audio server when classic control calls pygame.display.init().
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    try:
        import gymnasium
    except ImportError as err:
        raise ImportError("the gym env family needs gymnasium: pip install 'gymnasium[mujoco,classic-control]==1.4.0'") from err
    return gymnasium


def _kind(entry_point: Any) -> str | None:
    if not isinstance(entry_point, str):
        return None  # e.g. the *-v2/-v3 ids, which raise a mujoco-py error
    if entry_point.startswith(_MUJOCO_PREFIX) and "mujoco_py" not in entry_point:
        return "mujoco"
    if entry_point.startswith(_CLASSIC_PREFIX):
        return "classic"
    return None


def tasks() -> list[str]:
    """Every registered Gymnasium MuJoCo (v4/v5) and classic-control id."""
    gym = _gymnasium()
    return sorted(k for k, s in gym.registry.items() if _kind(s.entry_point) is not None)


def _check_task(task: str) -> tuple[str, Any]:
    gym = _gymnasium()
    spec = gym.registry.get(task)
    if spec is None or _kind(spec.entry_point) is None:
        valid = tasks()
        near = difflib.get_close_matches(task, valid, n=3, cutoff=0.5)
        why = "is not a registered Gymnasium id" if spec is None else "is not a MuJoCo (v4/v5) or classic-control env"
        hint = f"; did you mean {', '.join('gym:' + n for n in near)}?" if near else ""
        raise ValueError(f"gym:{task} {why}{hint} (valid: {', '.join('gym:' + v for v in valid)})")
    return _kind(spec.entry_point), spec


class GymEnv:
    """One Gymnasium env behind vmil's :class:`~vmil.base.Env` API."""

    def __init__(self, task: str, *, image_size: int = 64, action_repeat: int = 1, seed: int = 0,
                 camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
                 max_episode_steps: int = 0, render: bool = True, proprio: bool = False):
        kind, gspec = _check_task(task)
        if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
            raise ValueError(f"gym:{task}: image_size must be an integer in [8, 1024], got {image_size!r}")
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"gym:{task}: action_repeat must be an integer >= 1, got {action_repeat!r}")
        if not isinstance(max_episode_steps, int) or max_episode_steps < 0:
            raise ValueError(f"gym:{task}: max_episode_steps must be >= 0 (0: the env's default), got {max_episode_steps!r}")
        gym = _gymnasium()
        self.kind = kind
        self._render = bool(render)
        self._proprio = bool(proprio)
        self._grayscale = bool(grayscale)
        self._size = image_size
        self._repeat = action_repeat
        self._seed = int(seed)
        self._seeded = False
        camera = None if camera in (None, "") else camera
        # rgb_array even with render=False: both renderers are created on the first render() only,
        # so this costs nothing and keeps render_frame() usable for inspection.
        kwargs: dict[str, Any] = {"render_mode": "rgb_array"}
        if kind == "mujoco":
            kwargs.update(width=image_size, height=image_size)
        elif camera is not None:
            raise ValueError(f"gym:{task} is a classic-control env with a single fixed view; use camera='' (default), got {camera!r}")
        self._wrapped = gym.make(task, disable_env_checker=True, **kwargs)
        # Step the bare env: our own time limit replaces TimeLimit, and the order/checker wrappers
        # only add per-step overhead.
        self._env = self._wrapped.unwrapped
        self._closed = False
        _LIVE.add(self)
        if kind == "mujoco":
            if camera is not None:
                camera = self._set_camera(camera)
            if fast_render:
                self._env.model.vis.quality.shadowsize = 0
                self._env.model.vis.quality.offsamples = 0

        space = self._env.action_space
        self._discrete = hasattr(space, "n")
        if self._discrete:
            action_dim = int(space.n)
        else:
            low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise ValueError(f"gym:{task}: unbounded continuous actions are not supported")
            self._low, self._scale = low, (high - low) / 2.0
            action_dim = int(np.prod(space.shape))
        # Counted in env steps (gymnasium's unit) so that the last agent step can be cut short and
        # the default episode has the env's own length whatever the action repeat.
        self._step_limit = max_episode_steps * action_repeat if max_episode_steps else (gspec.max_episode_steps or 1000)
        agent_steps = math.ceil(self._step_limit / action_repeat)
        obs_dim = int(np.prod(self._env.observation_space.shape))
        self.spec = EnvSpec(
            env_id=f"gym:{task}", obs_shape=(1 if grayscale else 3, image_size, image_size),
            action_dim=action_dim, discrete=self._discrete, state_dim=obs_dim if proprio else 0,
            action_repeat=action_repeat, max_episode_steps=agent_steps, camera=camera,
            extra={"family": "gym", "task": task, "kind": kind, "render": bool(render), "expert_obs_dim": obs_dim,
                   "fast_render": bool(fast_render), "grayscale": bool(grayscale), "env_steps": self._step_limit})
        self.guard = EpisodeGuard(self.spec.env_id, agent_steps)
        self._state: np.ndarray | None = None
        self._env_steps = 0

    def _set_camera(self, camera: str | int) -> str | int:
        """Points the (not yet created) renderer at a model camera; -1 is gymnasium's tracking view.
        Checked here because gymnasium silently falls back to its free camera for unknown names."""
        import mujoco

        model = self._env.model
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        valid = "-1 (default tracking view), " + (", ".join(f"{i} or '{n}'" for i, n in enumerate(names)) or "no model cameras")
        if isinstance(camera, str) and camera.lstrip("-").isdigit():
            camera = int(camera)
        if isinstance(camera, bool) or not isinstance(camera, (int, str)):
            raise ValueError(f"gym:{self._wrapped.spec.id}: camera must be a name or an index; valid: {valid}")
        if isinstance(camera, int):
            if not -1 <= camera < model.ncam:
                raise ValueError(f"gym:{self._wrapped.spec.id}: camera index {camera} is out of range; valid: {valid}")
            cam_id = camera
        elif camera in names:
            cam_id = names.index(camera)
        else:
            near = difflib.get_close_matches(camera, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"gym:{self._wrapped.spec.id}: unknown camera '{camera}'{hint}; valid: {valid}")
        self._env.mujoco_renderer.camera_id = cam_id
        return camera

    # -- Env API -------------------------------------------------------------------------------

    def reset(self) -> TimeStep:
        # Seed once: later resets continue the env's RNG, so a fixed seed fixes the whole sequence.
        state, _ = self._env.reset(seed=None if self._seeded else self._seed)
        self._seeded = True
        self._state = np.asarray(state, dtype=np.float32).reshape(-1)
        self._env_steps = 0
        self.guard.reset()
        return self._observe(0.0, True, False, False, {})

    def step(self, action: np.ndarray | int) -> TimeStep:
        self.guard.before_step()
        if self._discrete:
            act: Any = check_discrete_action(action, self.spec)
        else:
            a = check_continuous_action(action, self.spec)
            act = (self._low + (a + 1.0) * self._scale).astype(np.float32).reshape(self._env.action_space.shape)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(min(self._repeat, self._step_limit - self._env_steps)):
            state, r, terminated, truncated, _ = self._env.step(act)
            self._env_steps += 1
            reward += float(r)
            if terminated or truncated:
                break
        self._state = np.asarray(state, dtype=np.float32).reshape(-1)
        last = self.guard.after_step(terminal=bool(terminated or truncated))
        return self._observe(reward, False, bool(terminated), last, {"time_limit": last and not terminated})

    def expert_observation(self) -> np.ndarray:
        """Gymnasium's low-dimensional state observation (float32 copy) for state-based experts."""
        if self._state is None:
            raise EnvError(f"{self.spec.env_id}: call reset() before expert_observation()")
        return self._state.copy()

    def render_frame(self) -> np.ndarray:
        """The current frame, uint8 [C, H, W] (also usable when the env runs with ``render=False``)."""
        global _exit_hook_registered
        if self._closed:
            raise EnvError(f"{self.spec.env_id}: the env is closed; make a new one")
        frame = self._env.render()
        if not _exit_hook_registered and self.kind == "mujoco":
            atexit.register(_close_live_envs)
            _exit_hook_registered = True
        if frame.shape[:2] != (self._size, self._size):
            frame = _resize(frame, self._size)
        return to_chw(frame, self._grayscale)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wrapped.close()

    def _observe(self, reward: float, first: bool, terminal: bool, last: bool, info: dict) -> TimeStep:
        obs = self.render_frame() if self._render else empty_obs()
        state = self._state.copy() if self._proprio else None
        return timestep(obs, state, reward, first, terminal, last, info)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Area (box-filter) resize of an HxWx3 uint8 frame to size x size."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


def make(task: str, *, image_size: int = 64, action_repeat: int = 1, seed: int = 0,
         camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
         max_episode_steps: int = 0, render: bool = True, proprio: bool = False) -> GymEnv:
    """``proprio=True`` also puts gymnasium's state observation in ``TimeStep.state`` (off by default:
    for MuJoCo ids it is the full state, which would make imitation from pixels moot)."""
    return GymEnv(task, image_size=image_size, action_repeat=action_repeat, seed=seed, camera=camera,
                  fast_render=fast_render, grayscale=grayscale, max_episode_steps=max_episode_steps,
                  render=render, proprio=proprio)


# ---------------------------------------------------------------------------------------------
# Scripted experts for classic control. Each reads ``env.expert_observation()`` (gymnasium's state)
# and returns an action in vmil's convention (an int, or float32 in [-1, 1]).


class _ScriptedExpert(abc.ABC):
    def __init__(self, env: GymEnv):
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, timestep: TimeStep) -> np.ndarray | int:
        return self.policy(self.env.expert_observation())

    @abc.abstractmethod
    def policy(self, s: np.ndarray) -> np.ndarray | int:
        """The action for gymnasium's state observation ``s``."""


class CartPoleExpert(_ScriptedExpert):
    """Push towards the side the pole falls to, with a PD term on the pole and a weak one that
    brings the cart back to the centre (signs from the linearised dynamics)."""

    def policy(self, s: np.ndarray) -> int:
        x, x_dot, theta, theta_dot = (float(v) for v in s)
        u = 10.0 * theta + 2.0 * theta_dot + 0.1 * x + 0.5 * x_dot
        return int(u > 0)


class MountainCarExpert(_ScriptedExpert):
    """Energy pumping: accelerate in the direction of motion. From rest (the first step) push right
    when starting left of -0.45 and left otherwise, which measured best over 100 starts
    (mean -110, worst -125; pushing left always: worst -183)."""

    def policy(self, s: np.ndarray) -> int:
        position, velocity = float(s[0]), float(s[1])
        return 2 if velocity > 0 or (velocity == 0 and position < -0.45) else 0


class AcrobotExpert(_ScriptedExpert):
    """Energy pumping through the actuated elbow: its reaction torque on the first link is opposite
    to the elbow torque, so torque *against* the first link's angular velocity pushes that link
    along its swing and adds energy every half period until the tip clears the bar."""

    def policy(self, s: np.ndarray) -> int:
        dtheta1 = float(s[4])
        return 0 if dtheta1 > 0 else 2


class PendulumExpert(_ScriptedExpert):
    """Energy-shaping swing-up, then a PD controller once the pendulum is near upright."""

    def policy(self, s: np.ndarray) -> np.ndarray:
        cos_t, sin_t, theta_dot = (float(v) for v in s)
        theta = math.atan2(sin_t, cos_t)  # 0 is upright
        # Pendulum-v1: g=10, m=l=1: theta_ddot = 3g/2l sin(theta) + 3/(m l^2) u.
        energy = 0.5 * theta_dot ** 2 / 3.0 + 5.0 * (cos_t - 1.0)  # 0 at rest upright
        if cos_t > 0.85:
            u = -10.0 * theta - 2.0 * theta_dot
        else:
            u = -2.0 * energy * theta_dot  # pump when below the upright energy, brake above it
        return np.array([np.clip(u / 2.0, -1.0, 1.0)], dtype=np.float32)


_EXPERTS = {"CartPole-v1": CartPoleExpert, "CartPole-v0": CartPoleExpert, "MountainCar-v0": MountainCarExpert,
            "Acrobot-v1": AcrobotExpert, "Pendulum-v1": PendulumExpert}


def scripted_expert(env: GymEnv) -> _ScriptedExpert:
    name = env.spec.env_id.split(":", 1)[1]
    if name not in _EXPERTS:
        raise ValueError(f"{env.spec.env_id} has no scripted expert (scripted: "
                         f"{', '.join('gym:' + k for k in _EXPERTS)}); train one with "
                         f"`vmil expert train --env {env.spec.env_id} --steps 300000 --out runs/experts/...` "
                         "and pass its expert.pt as --expert")
    return _EXPERTS[name](env)
