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

import numpy as np
import torch

from vmil.stats import pearson
from world_model.analysis import episode_sequence

__all__ = ["episode_sequence", "pearson", "stacked_pairs"]


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
