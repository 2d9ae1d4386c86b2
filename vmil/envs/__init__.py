"""Environments: one id format (``family:task``), one step type (:class:`vmil.base.TimeStep`).

Family modules are imported only when used, so a missing optional dependency (MuJoCo, Meta-World,
gymnasium-robotics) only matters for the family that needs it. Each family module exposes
``make(task, *, image_size, action_repeat, seed, camera, fast_render, grayscale, max_episode_steps,
render, **options) -> Env`` and ``tasks() -> list[str]``, and optionally ``scripted_expert(env)`` and
``mpc_expert(env)`` (the toy and dmc scripted experts live in :mod:`vmil.experts.scripted` instead;
env modules never import :mod:`vmil.experts`' scripted controllers).

Helpers shared by the family modules (action checks, grayscale, the episode guard) live here too.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

import numpy as np

from vmil.base import EnvSpec, TimeStep

# family -> (module, pip extra that installs its optional dependencies, or None when always present)
FAMILIES: dict[str, tuple[str, str | None]] = {
    "toy": ("vmil.envs.toy", None),
    "dmc": ("vmil.envs.dmc", None),  # dm_control and gymnasium are core dependencies (setup.py)
    "gym": ("vmil.envs.gym", None),
    "sawyer": ("vmil.envs.sawyer", "robotics"),
    "baoding": ("vmil.envs.baoding", "robotics"),
}


class EnvError(RuntimeError):
    """An env was used wrongly at run time (stepping after the episode ended, a bad action)."""


class FamilyUnavailable(ImportError):
    """A family's module or its optional dependencies are not installed."""


def _hint(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else ""


def family_module(family: str) -> ModuleType:
    """The module of an env family; ValueError for unknown names, FamilyUnavailable for missing deps."""
    if family not in FAMILIES:
        raise ValueError(f"unknown env family '{family}'{_hint(family, list(FAMILIES))} "
                         f"(valid: {', '.join(FAMILIES)}; ids look like dmc:cheetah_run)")
    module_name, extra = FAMILIES[family]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise FamilyUnavailable(f"env family '{family}' is not part of this vmil install "
                                    f"(module {module_name} is missing)") from err
        install = f"pip install -e .[{extra}]" if extra else "pip install -e ."
        raise FamilyUnavailable(f"env family '{family}' needs the package '{err.name}', which is not "
                                f"installed; install it with `{install}`") from err


def split_id(env_id: str) -> tuple[str, str]:
    if not isinstance(env_id, str) or ":" not in env_id:
        raise ValueError(f"env id {env_id!r} must look like family:task, e.g. dmc:cheetah_run or toy:reach"
                         f"{_hint(str(env_id), _available_ids())}")
    family, task = env_id.split(":", 1)
    return family, task


def _available_ids() -> list[str]:
    ids = []
    for family in FAMILIES:
        try:
            ids.extend(f"{family}:{t}" for t in family_module(family).tasks())
        except ImportError:  # FamilyUnavailable, or a family whose tasks() needs a missing package
            continue
    return ids


def make(env_id: str, *, image_size: int = 64, action_repeat: int = 2, seed: int = 0,
         camera: str | int | None = None, fast_render: bool = True, grayscale: bool = False,
         max_episode_steps: int = 0, render: bool = True, **options: Any):
    """Build an env from its id. ``options`` go to the family (e.g. ``proprio=True`` for toy/dmc)."""
    family, task = split_id(env_id)
    module = family_module(family)
    valid = list(module.tasks())
    if task not in valid:
        near = difflib.get_close_matches(task, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(family + ':' + n for n in near)}?" if near else ""
        raise ValueError(f"unknown {family} task '{task}'{hint} "
                         f"(valid: {', '.join(family + ':' + t for t in valid)})")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if not isinstance(action_repeat, int) or action_repeat < 1:
        raise ValueError(f"action_repeat must be an integer >= 1, got {action_repeat!r}")
    if not isinstance(max_episode_steps, int) or max_episode_steps < 0:
        raise ValueError(f"max_episode_steps must be >= 0 (0: the env's default), got {max_episode_steps!r}")
    if camera == "":
        camera = None
    return module.make(task, image_size=image_size, action_repeat=action_repeat, seed=seed,
                       camera=camera, fast_render=fast_render, grayscale=grayscale,
                       max_episode_steps=max_episode_steps, render=render, **options)


def from_config(cfg: Any, seed: int, **overrides: Any):
    """Build the env an :class:`vmil.config.EnvConfig` describes. Training, evaluation and demo
    recording all build their envs here, so every setting (image size, repeat, camera, grayscale,
    proprioception, ...) means the same thing in each and demos match the runs that use them."""
    kwargs: dict[str, Any] = {"image_size": cfg.image_size, "action_repeat": cfg.action_repeat,
                              "camera": cfg.camera or None, "fast_render": cfg.fast_render,
                              "grayscale": cfg.grayscale, "max_episode_steps": cfg.max_episode_steps,
                              "proprio": cfg.proprio}
    return make(cfg.id, seed=seed, **{**kwargs, **overrides})


def list_families() -> dict[str, dict[str, Any]]:
    """family -> {"available", "reason" (why not), "install" (the pip command), "num_tasks"}.

    Iterating the result gives the family names."""
    out = {}
    for family, (_, extra) in FAMILIES.items():
        info: dict[str, Any] = {"available": True, "reason": None,
                                "install": f"pip install -e .[{extra}]" if extra else None, "num_tasks": 0}
        try:
            info["num_tasks"] = len(family_module(family).tasks())
        except ImportError as err:
            info.update(available=False, reason=str(err))
        out[family] = info
    return out


def list_ids(family: str | None = None) -> list[str]:
    """Every env id of every importable family (or of one family, which must be available)."""
    if family is None:
        return _available_ids()
    return [f"{family}:{t}" for t in family_module(family).tasks()]


def spec_dict(spec: EnvSpec) -> dict[str, Any]:
    return {
        "env_id": spec.env_id, "obs_shape": list(spec.obs_shape), "action_dim": spec.action_dim,
        "discrete": spec.discrete, "action_low": spec.action_low, "action_high": spec.action_high,
        "state_dim": spec.state_dim, "action_repeat": spec.action_repeat,
        "max_episode_steps": spec.max_episode_steps, "camera": spec.camera,
        **{k: v for k, v in spec.extra.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
    }


def describe(env_id: str, **kwargs: Any) -> dict[str, Any]:
    """Observation and action specs of an env (builds it once, renders nothing)."""
    env = make(env_id, **{"render": False, **kwargs})
    try:
        out = spec_dict(env.spec)
        expert_obs = getattr(env, "expert_observation", None)
        if expert_obs is not None:
            env.reset()
            out["expert_obs_dim"] = int(np.asarray(expert_obs()).shape[0])
        return out
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------
# Helpers for family modules.


def to_chw(frame: np.ndarray, grayscale: bool) -> np.ndarray:
    """HWC uint8 RGB -> CHW uint8 (one luminance channel when ``grayscale``)."""
    if grayscale:
        # ITU-R 601 luma, the weights PIL and OpenCV use
        gray = frame[..., 0] * 0.299 + frame[..., 1] * 0.587 + frame[..., 2] * 0.114
        return np.round(gray).astype(np.uint8)[None]
    return np.ascontiguousarray(frame.transpose(2, 0, 1))


def check_continuous_action(action: Any, spec: EnvSpec) -> np.ndarray:
    """float64 action of shape [A], clipped to [-1, 1]; EnvError for a wrong shape or non-finite values."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (spec.action_dim,):
        a = a.reshape(-1) if a.size == spec.action_dim else a
        if a.shape != (spec.action_dim,):
            raise EnvError(f"{spec.env_id}: action must have shape ({spec.action_dim},), got {np.shape(action)}")
    if not np.all(np.isfinite(a)):
        raise EnvError(f"{spec.env_id}: action has non-finite values {a}")
    return np.clip(a, spec.action_low, spec.action_high)


def check_discrete_action(action: Any, spec: EnvSpec) -> int:
    a = np.asarray(action)
    if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
        raise EnvError(f"{spec.env_id}: discrete action must be one integer in [0, {spec.action_dim}), "
                       f"got {action!r}")
    value = int(a.reshape(()))
    if not 0 <= value < spec.action_dim:
        raise EnvError(f"{spec.env_id}: action {value} is out of range [0, {spec.action_dim})")
    return value


class EpisodeGuard:
    """Counts agent steps and refuses to step before reset() or after the episode's last step."""

    def __init__(self, env_id: str, max_steps: int):
        self.env_id = env_id
        self.max_steps = max_steps
        self.steps = 0
        self.done = True  # reset() must come first

    def reset(self) -> None:
        self.steps = 0
        self.done = False

    def before_step(self) -> None:
        if self.done:
            raise EnvError(f"{self.env_id}: step() called after the episode ended (or before the first "
                           f"reset()); call reset() to start a new episode")

    def after_step(self, terminal: bool) -> bool:
        """Records one step; returns whether the episode is over."""
        self.steps += 1
        self.done = terminal or self.steps >= self.max_steps
        return self.done


def empty_obs() -> np.ndarray:
    """What TimeStep.obs holds when an env runs with ``render=False``."""
    return np.zeros((0,), dtype=np.uint8)


def timestep(obs: np.ndarray, state: np.ndarray | None, reward: float, first: bool, terminal: bool,
             last: bool, info: dict[str, Any] | None = None) -> TimeStep:
    return TimeStep(obs=obs, state=state, reward=float(reward), first=first, terminal=terminal,
                    last=last, info=info if info is not None else {})
