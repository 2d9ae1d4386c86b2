"""Experts that produce demonstrations: scripted controllers, MPC planners and SAC checkpoints.

Every expert follows one protocol, ``reset()`` at the start of an episode and
``act(timestep) -> action``; experts read the simulator state (``env.expert_observation()`` or the
env's internals), never the pixels, so they also run with ``render=False``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vmil.base import TimeStep

KINDS = ("scripted", "mpc")


@runtime_checkable
class Expert(Protocol):
    def reset(self) -> None: ...

    def act(self, timestep: TimeStep) -> np.ndarray | int: ...


def _family(env: Any) -> str:
    return env.spec.env_id.split(":", 1)[0]


def make_expert(kind: str, env: Any) -> Expert:
    """``"scripted"``: the family's hand-written controller; ``"mpc"``: the family's planner;
    anything else: the path of a SAC expert checkpoint (``vmil expert train``)."""
    from vmil.envs import family_module

    if kind in KINDS:
        family = _family(env)
        factory = getattr(family_module(family), f"{kind}_expert", None)
        if factory is None:
            raise ValueError(f"env family '{family}' has no {kind} expert; use a SAC checkpoint path instead "
                             f"(train one with `vmil expert train --env {env.spec.env_id}`)")
        return factory(env)
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
