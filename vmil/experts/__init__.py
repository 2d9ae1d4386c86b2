"""Experts that produce demonstrations: scripted controllers, MPC planners and SAC checkpoints.

Every expert follows one protocol, ``reset()`` at the start of an episode and
``act(timestep) -> action``; experts read the simulator state (``env.expert_observation()`` or the
env's internals), never the pixels, so they also run with ``render=False``.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vmil.base import TimeStep

KINDS = ("scripted", "mpc")
# Families whose scripted expert lives in vmil.experts.scripted (module, factory); the others define
# ``scripted_expert(env)`` in their own env module (so no env module imports these experts).
SCRIPTED: dict[str, tuple[str, str]] = {
    "toy": ("vmil.experts.scripted", "ToyReachExpert"),
    "dmc": ("vmil.experts.scripted", "dmc_expert"),
}


@runtime_checkable
class Expert(Protocol):
    def reset(self) -> None: ...

    def act(self, timestep: TimeStep) -> np.ndarray | int: ...


def _family(env: Any) -> str:
    return env.spec.env_id.split(":", 1)[0]


def expert_option_defaults(kind: str) -> dict[str, Any]:
    """The options an expert kind accepts, with their defaults (empty: it takes none)."""
    if kind != "mpc":
        return {}
    from vmil.experts.mpc import MPPIExpert

    params = inspect.signature(MPPIExpert.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_expert_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """ValueError naming the valid keys for an unknown option or a value of the wrong type; ints
    given for float options become floats."""
    valid = expert_option_defaults(kind)
    name = kind if kind in KINDS else "a SAC checkpoint"
    out = {}
    for key, value in options.items():
        if key not in valid:
            if not valid:
                raise ValueError(f"expert {name} takes no options (got {key}={value!r}); options "
                                 f"apply to --expert mpc")
            near = difflib.get_close_matches(key, list(valid), n=1)
            raise ValueError(f"unknown {kind} expert option '{key}'" + (f"; did you mean {near[0]}?" if near else "")
                             + f" (valid: {', '.join(f'{k}={v}' for k, v in valid.items())})")
        default = valid[key]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, float) or default is None:  # None: the timestep option ("the env's own")
            if not (numeric or value is None):
                raise ValueError(f"{kind} expert option {key} must be a number, got {value!r}")
            value = None if value is None else float(value)
        elif isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"{kind} expert option {key} must be an integer, got {value!r}")
        out[key] = value
    return out


def make_expert(kind: str, env: Any, **options: Any) -> Expert:
    """``"scripted"``: the family's hand-written controller; ``"mpc"``: the family's planner, with
    ``options`` (see :func:`expert_option_defaults`); anything else: the path of a SAC expert
    checkpoint (``vmil expert train``)."""
    from vmil.envs import family_module

    options = check_expert_options(kind, options)
    if kind in KINDS:
        family = _family(env)
        if kind == "scripted" and family in SCRIPTED:
            module, name = SCRIPTED[family]
            factory = getattr(importlib.import_module(module), name)
        else:
            factory = getattr(family_module(family), f"{kind}_expert", None)
        if factory is None:
            raise ValueError(f"env family '{family}' has no {kind} expert; use a SAC checkpoint path instead "
                             f"(train one with `vmil expert train --env {env.spec.env_id}`)")
        return factory(env, **options)
    path = Path(kind)
    if not path.exists():
        raise FileNotFoundError(f"expert '{kind}' is neither {' nor '.join(repr(k) for k in KINDS)} nor an "
                                f"existing SAC checkpoint file ({path.resolve()} not found)")
    return importlib.import_module("vmil.experts.sac").load_expert(path, env)


def rollout_returns(env: Any, expert: Expert, episodes: int) -> list[float]:
    """True returns of ``episodes`` full episodes of an expert (for reports and checks)."""
    returns = []
    for _ in range(episodes):
        ts = env.reset()
        expert.reset()
        total = 0.0
        while not ts.last:
            ts = env.step(expert.act(ts))
            total += ts.reward
        returns.append(total)
    return returns
