"""The interfaces every part of vmil speaks: environment steps, specs, batches, agents.

Conventions (one for agent data and demos):
- Observations are uint8 images, channels first ``[C, H, W]``.
- In an episode, ``action[t]`` is taken at ``obs[t]`` and leads to ``obs[t + 1]``;
  ``reward[t]`` and ``terminal[t]`` belong to that transition.
- In a :class:`SequenceBatch` (world models) the action is aligned with the observation it
  *led to*: ``action[:, t]`` produced ``obs[:, t]`` (zeros where ``is_first``), as in Dreamer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only: env worker processes should not pay for importing torch
    import torch


class TimeStep(NamedTuple):
    obs: np.ndarray  # uint8 [C, H, W]
    state: np.ndarray | None  # float32 [S] proprioception, None when the env has none
    reward: float  # true env reward of the last transition (0 on reset); evaluation only
    first: bool  # returned by reset()
    terminal: bool  # the MDP ended (no bootstrapping from here)
    last: bool  # the episode ended (terminal or time limit)
    info: dict[str, Any]  # e.g. {"success": bool}


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_shape: tuple[int, int, int]  # (C, H, W)
    action_dim: int  # continuous: vector size; discrete: number of actions
    discrete: bool = False
    action_low: float = -1.0
    action_high: float = 1.0
    state_dim: int = 0  # 0 when there is no proprioception
    action_repeat: int = 1
    max_episode_steps: int = 1000  # agent steps (after action repeat)
    camera: str | int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What an episode file records about the env that produced it."""
        return {
            "env_id": self.env_id,
            "obs_shape": list(self.obs_shape),
            "action_dim": self.action_dim,
            "discrete": self.discrete,
            "state_dim": self.state_dim,
            "action_repeat": self.action_repeat,
            "camera": self.camera,
        }


@runtime_checkable
class Env(Protocol):
    spec: EnvSpec

    def reset(self) -> TimeStep: ...

    def step(self, action: np.ndarray | int) -> TimeStep: ...

    def close(self) -> None: ...


class SequenceBatch(NamedTuple):
    """Slices of length T that never cross an episode boundary (world models, VMIL)."""

    obs: torch.Tensor  # uint8 [B, T, C, H, W]
    action: torch.Tensor | None  # float32 [B, T, A]: action that led to obs[:, t]; None for obs-only demos
    reward: torch.Tensor  # float32 [B, T]: true reward on arriving at obs[:, t] (evaluation only)
    is_first: torch.Tensor  # bool [B, T]
    terminal: torch.Tensor  # bool [B, T]: obs[:, t] is a terminal state
    state: torch.Tensor | None = None  # float32 [B, T, S]


class TransitionBatch(NamedTuple):
    """n-step transitions with frame stacks of k (DrQ-v2, PatchAIL, AIL, SQIL, BC)."""

    obs: torch.Tensor  # uint8 [B, k*C, H, W] stack ending at time t
    action: torch.Tensor | None  # float32 [B, A] taken at t; None for obs-only demos
    reward: torch.Tensor  # float32 [B]: discounted true n-step reward (evaluation / drqv2 only)
    discount: torch.Tensor  # float32 [B]: gamma**n, 0 when the episode terminated within n steps
    next_obs: torch.Tensor  # uint8 [B, k*C, H, W] stack ending at t + n
    step_obs: torch.Tensor  # uint8 [B, k*C, H, W] stack ending at t + 1 (for D(s, s'))
    state: torch.Tensor | None = None  # float32 [B, S] at t
    next_state: torch.Tensor | None = None  # float32 [B, S] at t + n


@dataclass(frozen=True)
class BatchRequest:
    """What an algorithm asks the runner to sample for each update."""

    kind: str  # "sequence" | "transition" | "none"
    batch_size: int
    seq_len: int = 1  # sequence samplers
    frame_stack: int = 1  # transition samplers
    nstep: int = 1
    discount: float = 0.99
    expert_batch_size: int = 0  # 0: no expert batch; > 0: also sample the expert replay


class Obs(NamedTuple):
    """What an agent sees when it acts; the runner builds frame stacks of ``request.frame_stack``."""

    image: np.ndarray  # uint8 [k*C, H, W]
    proprio: np.ndarray | None  # float32 [S]
    first: bool  # start of an episode: recurrent agents reset their state


@runtime_checkable
class Agent(Protocol):
    request: BatchRequest

    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        """Returns the action (float32 [A], or an int for discrete envs) and the next agent state
        (recurrent state, or None)."""

    def update(self, batch: Any, expert: Any, step: int) -> dict[str, float]:
        """One update from a batch of agent data and one of expert data (either may be None, per
        ``request``); ``step`` is the env step count (for schedules). Returns float metrics."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
