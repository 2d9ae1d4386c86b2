"""What the latent-rollout notebook draws: episodes as sequence batches, the discriminator's reward
along a trajectory, the actor's imagined rollouts decoded to frames, open-loop prediction strips
(what VMIL's ``visualize`` logs at each evaluation), and a reward plot.

The functions take a trained agent (duck-typed: its world model ``wm``, actor, discriminator and
batch helpers) and import no imitation method, so imitation methods may import this module.
:func:`vmil.analysis.load_run` loads a run's agent."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmil.base import EnvSpec, SequenceBatch
from world_model.behavior import imagine
from world_model.rssm import RSSM, State
from world_model.viz import frame_grid, openloop_strip


def episode_batch(directory: str | Path, spec: EnvSpec, index: int = 0, length: int = 0) -> SequenceBatch:
    """Episode ``index`` (in file order; negative counts from the newest) of a directory as a
    one-sequence :class:`SequenceBatch` (first ``length`` frames; 0: all), with actions aligned as
    world models expect."""
    from vmil.data.episode import episode_paths, load_episode

    paths = episode_paths(directory)
    if not paths:
        raise FileNotFoundError(f"{directory}: no episodes (.npz) in this directory")
    if not -len(paths) <= index < len(paths):
        raise IndexError(f"{directory} holds {len(paths)} episodes; index {index} is out of range")
    ep = load_episode(paths[index], spec, allow_env_mismatch=True)
    T = ep.obs.shape[0] if length <= 0 else min(length, ep.obs.shape[0])
    return SequenceBatch(*(None if x is None else x[:, :T] for x in episode_sequence(ep, torch.device("cpu"))))


def episode_sequence(ep: Any, device: torch.device) -> SequenceBatch:
    """One :class:`vmil.data.episode.Episode` as a one-sequence :class:`SequenceBatch` on ``device``,
    with actions aligned as world models expect (``action[:, t]`` led to ``obs[:, t]``; none led to
    the first frame, whose reward is 0)."""
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


def episodes_batch(directory: str | Path, spec: EnvSpec, indices: list[int], length: int) -> SequenceBatch:
    """Several episodes' first ``length`` frames as one batch (see :func:`episode_batch`)."""
    batches = [episode_batch(directory, spec, i, length) for i in indices]
    if len({b.obs.shape[1] for b in batches}) != 1:
        raise ValueError(f"{directory}: episodes shorter than {length} frames; pass a smaller length")
    cat = lambda xs: None if any(x is None for x in xs) else torch.cat(xs)  # noqa: E731
    return SequenceBatch(*(cat(list(parts)) for parts in zip(*batches)))


@torch.no_grad()
def imagined_vs_real(rssm: RSSM, policy: Any, reward_fn: Any, post: State, reward: torch.Tensor,
                     horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the model's imagination of a policy is from what that policy met in the real env.

    ``post`` [T, ...] are the posteriors along one real episode of ``policy`` (feat -> action) and
    ``reward`` [T] its rewards (``reward[t]`` arrived with obs t). From every start t < T - horizon,
    the prior is rolled ``horizon`` deterministic steps under ``policy``; returns (imagined, real) [T -
    horizon]: the imagined sum of ``reward_fn`` (feat -> reward) and the real sum reward[t+1 .. t+H].
    Imagined far above real means the actor exploits the model's errors."""
    T = post.deter.shape[0]
    if reward.shape != (T,):
        raise ValueError(f"imagined_vs_real: reward must be [T={T}], got {tuple(reward.shape)}")
    if not 1 <= horizon < T:
        raise ValueError(f"imagined_vs_real: horizon must be in [1, T={T}), got {horizon}")
    n = T - horizon
    state = post.map(lambda x: x[:n])
    imagined = torch.zeros(n, device=reward.device)
    for _ in range(horizon):
        state = rssm.img_step(state, policy(rssm.feat(state)), sample=False)
        imagined = imagined + reward_fn(rssm.feat(state)).reshape(n).float()
    real = reward[1:].float().unfold(0, horizon, 1).sum(-1)
    return imagined, real


def reward_figure(rewards: dict[str, np.ndarray], title: str = "discriminator reward along trajectories"):
    """A matplotlib figure with one line per named reward sequence ([T] or [1, T])."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    for name, r in rewards.items():
        ax.plot(np.asarray(r).reshape(-1), label=name)
    ax.set_xlabel("transition t -> t+1")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


@torch.no_grad()
def openloop_strips(agent: Any, batches: dict[str, SequenceBatch | None], sequences: int = 4) -> dict[str, np.ndarray]:
    """Open-loop prediction strips (truth / prediction / error rows), HWC uint8, one per named batch
    (None: skipped) of a VMIL agent: its world model sees ``openloop_context`` frames of the first
    ``sequences`` sequences, then only their actions (recorded, or inferred as in training)."""
    out = {}
    for name, batch in batches.items():
        if batch is None or not agent.wm.reads_images:
            continue
        agent.check_batch(batch, name)
        out[name] = batch_openloop_strip(agent.wm, batch, agent.sequence_actions, agent.proprio,
                                         agent.cfg.openloop_steps, agent.cfg.openloop_context, sequences)
    return out


@torch.no_grad()
def batch_openloop_strip(wm: Any, batch: SequenceBatch, actions: Any, proprio: Any, steps: int, context: int,
                         sequences: int = 4) -> np.ndarray:
    """One open-loop prediction strip (HWC uint8) of the first ``sequences`` sequences' first ``steps``
    frames: ``wm`` sees ``context`` of them, then only the actions ``actions(batch)`` gives (in
    [-1, 1]); ``proprio(batch)`` gives the states the model reads, or None."""
    T = min(steps, batch.obs.shape[1])
    device = next(wm.parameters()).device
    b = SequenceBatch(*(None if x is None else x[:sequences, :T].to(device) for x in batch))
    truth, pred = wm.open_loop(b.obs, actions(b), b.is_first, min(context, T - 1), proprio(b))
    return openloop_strip(truth, pred)


@torch.no_grad()
def reward_along(agent: Any, batch: SequenceBatch) -> np.ndarray:
    """A VMIL agent's discriminator reward [B, T-1] for each posterior transition of a batch of
    sequences (expert actions inferred as in training when the batch has none)."""
    b = agent.slice_batch(batch, batch.obs.shape[0], batch.obs.shape[1])
    wm = agent.wm
    embed = wm.encode(wm.images(b.obs), agent.proprio(b))
    action = agent.sequence_actions(b, embed)
    post, _ = wm.rssm.observe(embed, action, b.is_first, sample=False)
    z = agent.disc_features(post)
    return agent._reward(z[:, :-1], action[:, 1:], z[:, 1:]).cpu().numpy()  # the reward the actor maximises


@torch.no_grad()
def imagine_frames(agent: Any, batch: SequenceBatch, start: int = 0, horizon: int | None = None,
                   sequences: int = 4) -> np.ndarray:
    """Decoded frames uint8 [N, H+1, C, H, W] of a VMIL agent's imagined rollouts (its actor in its
    world model) from the posterior at time ``start`` of the first ``sequences`` sequences; frame 0
    is the posterior itself."""
    horizon = horizon or agent.cfg.behavior.horizon
    if not 0 <= start < batch.obs.shape[1]:
        raise ValueError(f"start must be in [0, {batch.obs.shape[1] - 1}], got {start}")
    b = agent.slice_batch(batch, sequences, start + 1)
    wm = agent.wm
    embed = wm.encode(wm.images(b.obs), agent.proprio(b))
    post, _ = wm.rssm.observe(embed, agent.sequence_actions(b, embed), b.is_first, sample=False)
    rollout = imagine(wm.rssm, agent.ac.actor, post.map(lambda x: x[:, -1]), horizon)
    return wm.decode_states(rollout.states).transpose(0, 1).cpu().numpy()


def imagine_strip(agent: Any, batch: SequenceBatch, start: int = 0, horizon: int | None = None,
                  sequences: int = 4) -> np.ndarray:
    """:func:`imagine_frames` as one HWC uint8 image, a row per sequence."""
    return frame_grid(imagine_frames(agent, batch, start, horizon, sequences))
