"""Health signals of adversarial imitation: does the learned reward reward the task?

Every adversarial agent (VMIL, the PatchAIL family) exposes ``health(episodes, expert, batch) ->
dict[str, float]``; the runner calls it at each evaluation with the evaluation's own episodes (the
deterministic policy's real transitions, with their true reward) and fresh expert and agent-replay
batches, logs the values as ``health/<name>`` and writes them to ``summary.json``. The names:

* ``reward_true_corr``: Pearson correlation of the learned reward with the true reward over the
  evaluation transitions. Near 0 or negative: the discriminator does not reward the task.
* ``disc_expert_acc``: share of expert transitions D calls expert; ``disc_replay_acc``: share of the
  agent's replayed transitions D calls agent; ``disc_imagined_acc`` (VMIL): the same for imagined
  ones. Imagined near 1 with replay near 0.5 means D wins on prior-vs-posterior, not on behaviour.
* ``reward_real_mean`` / ``reward_imagined_mean`` (VMIL): D's reward along the evaluation episodes'
  real transitions and along the actor's imagined rollouts from the same states. Imagined far above
  real means the actor exploits the model.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vmil.base import SequenceBatch


def pearson(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Pearson correlation of two equally long 1-d sequences; NaN when either is constant (the
    correlation is undefined) or shorter than 2."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"pearson: sequences of different lengths {a.shape[0]} and {b.shape[0]}")
    if a.size < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if denom == 0.0:
        return math.nan
    return float((a * b).sum() / denom)


def episode_sequence(ep, device: torch.device) -> SequenceBatch:
    """One :class:`vmil.data.episode.Episode` as a one-sequence :class:`SequenceBatch` on ``device``,
    with actions aligned as world models expect (``action[:, t]`` led to ``obs[:, t]``)."""
    T = ep.obs.shape[0]
    action = None
    if ep.action is not None:
        action = torch.zeros(1, T, ep.action.shape[-1])
        action[0, 1:] = torch.as_tensor(ep.action, dtype=torch.float32)
    reward = torch.zeros(1, T)
    reward[0, 1:] = torch.as_tensor(ep.reward)
    terminal = torch.zeros(1, T, dtype=torch.bool)
    terminal[0, 1:] = torch.as_tensor(ep.terminal)
    is_first = torch.zeros(1, T, dtype=torch.bool)
    is_first[0, 0] = True
    state = None if ep.state is None else torch.as_tensor(ep.state, dtype=torch.float32)[None]
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return SequenceBatch(to(torch.as_tensor(ep.obs)[None]), to(action), to(reward), to(is_first), to(terminal),
                         to(state))


def stacked_pairs(obs: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame stacks (s_t, s_t+1) of every transition of an episode's frames ``obs`` [T+1, C, H, W]:
    two uint8 tensors [T, k*C, H, W]; the stack before the first frame repeats it (the replay's and
    the evaluation's convention)."""
    if k < 1:
        raise ValueError(f"frame stack must be >= 1, got {k}")
    frames = torch.as_tensor(obs)
    n = frames.shape[0]
    index = (torch.arange(n)[:, None] + torch.arange(-k + 1, 1)[None]).clamp(min=0)  # [T+1, k]
    stacks = frames[index].reshape(n, -1, *frames.shape[2:])
    return stacks[:-1], stacks[1:]
