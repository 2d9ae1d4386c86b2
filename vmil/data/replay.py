"""Device-resident replay: frames stored once as uint8, samplers separate from storage.

Storage (:class:`FrameStorage`) is one preallocated ring of frames ``[N, C, H, W]`` plus per-frame
side arrays, every episode a contiguous run of ``T+1`` slots. One flat buffer (rather than a deque
of per-episode tensors) lets a sampler gather a whole batch with one indexing op on the device and
no Python loop over samples; keeping episodes contiguous (an episode that does not fit before the
end of the ring starts again at slot 0) keeps the index arithmetic free of modulo wrap-around.
``torch.empty`` on the CPU commits pages only when they are first written, so a large capacity costs
memory only as it fills; on a GPU the allocation fails up front if it cannot fit.

Per-frame side data uses the Dreamer alignment of :class:`~vmil.base.SequenceBatch`: slot ``i`` holds
the action that *led to* frame ``i`` (zeros at ``is_first``), the reward received on arriving there,
and whether frame ``i`` is terminal. Transition samplers read ``action[t] = slot(t+1).action``.
Discrete actions are stored one-hot (float32 ``[A]``), so every batch has float actions.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np
import torch

from vmil.base import BatchRequest, EnvSpec, SequenceBatch, TransitionBatch
from vmil.data.episode import (Episode, EpisodeError, check_compatible, episode_filename, episode_paths,
                               load_episode, next_episode_index, save_episode)
from vmil.nn import resolve_device


class FrameStorage:
    """A ring of ``capacity`` frames holding whole episodes; adding evicts the oldest episodes first."""

    def __init__(self, spec: EnvSpec, capacity: int, device: torch.device) -> None:
        if capacity < 2:
            raise ValueError(f"replay capacity must be at least 2 frames, got {capacity}")
        self.spec = spec
        self.capacity = int(capacity)
        self.device = device
        c, h, w = spec.obs_shape
        self.frames = torch.empty((self.capacity, c, h, w), dtype=torch.uint8, device=device)
        self.reward = torch.zeros(self.capacity, dtype=torch.float32, device=device)
        self.terminal = torch.zeros(self.capacity, dtype=torch.bool, device=device)
        self.is_first = torch.zeros(self.capacity, dtype=torch.bool, device=device)
        self.action: torch.Tensor | None = None  # allocated by the first episode that has actions
        self.state: torch.Tensor | None = None
        self.has_actions: bool | None = None  # fixed by the first episode added
        self.has_state: bool | None = None
        self._episodes: deque[tuple[int, int]] = deque()  # (start slot, frames), oldest first
        self._cursor = 0
        self.version = 0  # bumped on every change; samplers key their caches on it
        self._index_cache: dict[tuple[int, str, int], tuple] = {}
        self.episodes_added = 0

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return sum(n for _, n in self._episodes)

    @property
    def num_transitions(self) -> int:
        return sum(n - 1 for _, n in self._episodes)

    @property
    def episodes(self) -> list[tuple[int, int]]:
        """(start slot, number of frames) of every stored episode, oldest first."""
        return list(self._episodes)

    @property
    def bytes_per_frame(self) -> float:
        buffers = [self.frames, self.reward, self.terminal, self.is_first, self.action, self.state]
        total = sum(b.numel() * b.element_size() for b in buffers if b is not None)
        return total / self.capacity

    # -- writing ----------------------------------------------------------------------------------
    def _check_kind(self, ep: Episode) -> None:
        if self.has_actions is not None and ep.has_actions != self.has_actions:
            have = "with" if self.has_actions else "without"
            raise EpisodeError(f"replay holds episodes {have} actions; this episode has "
                               f"{'actions' if ep.has_actions else 'none'}. Keep observation-only demos in "
                               "their own Replay, or drop the actions with ep.without_actions()")
        if self.has_state is not None and (ep.state is not None) != self.has_state:
            raise EpisodeError(f"replay holds episodes {'with' if self.has_state else 'without'} state; this "
                               f"episode has {'state' if ep.state is not None else 'none'}; record all episodes "
                               "from the same env settings")

    def add(self, ep: Episode) -> None:
        n = ep.obs.shape[0]
        if n > self.capacity:
            raise EpisodeError(f"episode of {n} frames does not fit a replay of {self.capacity} frames; raise "
                               "replay.capacity")
        self._check_kind(ep)
        if self.has_actions is None:
            self.has_actions = ep.has_actions
            self.has_state = ep.state is not None
            if self.has_actions:
                dim = self.spec.action_dim
                self.action = torch.zeros((self.capacity, dim), dtype=torch.float32, device=self.device)
            if self.has_state:
                self.state = torch.zeros((self.capacity, ep.state.shape[1]), dtype=torch.float32,
                                         device=self.device)
        c = self._cursor
        if c + n > self.capacity:
            # Wrap to slot 0; whatever lies between the cursor and the end is the oldest data.
            while self._episodes and self._episodes[0][0] >= c:
                self._episodes.popleft()
            c = 0
        while self._episodes and c <= self._episodes[0][0] < c + n:
            self._episodes.popleft()
        end = c + n
        dev = self.device
        self.frames[c:end].copy_(torch.from_numpy(ep.obs))
        self.reward[c] = 0.0
        self.reward[c + 1:end].copy_(torch.from_numpy(ep.reward))
        self.terminal[c] = False
        self.terminal[c + 1:end].copy_(torch.from_numpy(ep.terminal))
        self.is_first[c:end] = False
        self.is_first[c] = True
        if self.action is not None:
            self.action[c] = 0.0
            if ep.discrete:
                onehot = torch.nn.functional.one_hot(torch.from_numpy(ep.action), self.spec.action_dim)
                self.action[c + 1:end].copy_(onehot.to(device=dev, dtype=torch.float32))
            else:
                self.action[c + 1:end].copy_(torch.from_numpy(ep.action))
        if self.state is not None:
            self.state[c:end].copy_(torch.from_numpy(ep.state))
        self._episodes.append((c, n))
        self._cursor = end
        self.version += 1
        self._index_cache.clear()
        self.episodes_added += 1

    # -- index helpers for samplers -------------------------------------------------------------
    def valid_starts(self, kind: str, length: int
                     ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each episode, how many sample positions it offers: ``kind='sequence'``: windows of
        ``length`` frames; ``kind='transition'``: its T steps. Returns (total, counts, cumsum,
        start slots, frames per episode) as device tensors, cached until the storage changes."""
        key = (self.version, kind, length)
        cached = self._index_cache.get(key)
        if cached is None:
            frames = [n for _, n in self._episodes]
            if kind == "sequence":
                counts = [max(0, n - length + 1) for n in frames]
            else:
                counts = [n - 1 for n in frames]
            total = sum(counts)
            tensors = torch.tensor([counts, [s for s, _ in self._episodes], frames], dtype=torch.int64)
            tensors = tensors.to(self.device)
            cached = (total, tensors[0].cumsum(0), tensors[0], tensors[1], tensors[2])
            self._index_cache = {key: cached}
        return cached


def _draw(storage: FrameStorage, kind: str, length: int, batch: int,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform over all valid positions: (episode start slot, offset in episode, frames in episode)."""
    total, cum, counts, starts, frames = storage.valid_starts(kind, length)
    if total == 0:
        if storage.num_episodes == 0:
            raise RuntimeError("replay is empty; add episodes before sampling")
        longest = max(n for _, n in storage.episodes)
        raise RuntimeError(f"no stored episode has {length} frames to sample a sequence from (longest has "
                           f"{longest}); use a shorter seq_len or longer episodes")
    r = torch.randint(total, (batch,), generator=generator, device=storage.device)
    ep = torch.searchsorted(cum, r, right=True)
    offset = r - (cum[ep] - counts[ep])
    return starts[ep], offset, frames[ep]


def sample_sequences(storage: FrameStorage, batch: int, length: int,
                     generator: torch.Generator | None = None) -> SequenceBatch:
    """``batch`` windows of ``length`` consecutive frames inside one episode each."""
    if batch < 1 or length < 1:
        raise ValueError(f"batch ({batch}) and length ({length}) must be >= 1")
    start, offset, _ = _draw(storage, "sequence", length, batch, generator)
    idx = (start + offset)[:, None] + torch.arange(length, device=storage.device)
    return SequenceBatch(
        obs=storage.frames[idx],
        action=None if storage.action is None else storage.action[idx],
        reward=storage.reward[idx],
        is_first=storage.is_first[idx],
        terminal=storage.terminal[idx],
        state=None if storage.state is None else storage.state[idx],
    )


def sample_transitions(storage: FrameStorage, batch: int, frame_stack: int = 1, nstep: int = 1,
                       discount: float = 0.99, generator: torch.Generator | None = None) -> TransitionBatch:
    """n-step transitions with frame stacks of ``frame_stack`` built by indexing the single frame store.

    Before the episode start the first frame is repeated (as DrQ-v2 does). The n-step horizon is
    cut at the episode end: a terminal end gives discount 0, a time-limit end gamma**(steps left)."""
    if batch < 1 or frame_stack < 1 or nstep < 1:
        raise ValueError(f"batch ({batch}), frame_stack ({frame_stack}) and nstep ({nstep}) must be >= 1")
    dev = storage.device
    start, t, frames = _draw(storage, "transition", 1, batch, generator)
    steps = frames - 1
    n_eff = torch.clamp(steps - t, max=nstep)  # >= 1 since t < steps
    back = torch.arange(frame_stack, device=dev) - (frame_stack - 1)
    c, h, w = storage.spec.obs_shape

    def stack(at: torch.Tensor) -> torch.Tensor:
        idx = start[:, None] + torch.clamp(at[:, None] + back, min=0)
        return storage.frames[idx].reshape(batch, frame_stack * c, h, w)

    ahead = torch.arange(nstep, device=dev)
    arrive = start[:, None] + torch.minimum(t[:, None] + 1 + ahead, steps[:, None])
    powers = torch.pow(float(discount), ahead.to(torch.float32))
    rewards = torch.where(ahead < n_eff[:, None], storage.reward[arrive], 0.0)
    reward = (rewards * powers).sum(1)
    end = start + t + n_eff
    disc = torch.pow(float(discount), n_eff.to(torch.float32))
    disc = torch.where(storage.terminal[end], 0.0, disc)
    now = start + t
    return TransitionBatch(
        obs=stack(t),
        action=None if storage.action is None else storage.action[now + 1],
        reward=reward,
        discount=disc,
        next_obs=stack(t + n_eff),
        step_obs=stack(t + 1),
        state=None if storage.state is None else storage.state[now],
        next_state=None if storage.state is None else storage.state[end],
    )


class Replay:
    """Episodes on the training device, optionally mirrored to ``directory`` (one .npz each) for resume."""

    def __init__(self, spec: EnvSpec, capacity_frames: int, device: torch.device | str,
                 directory: str | os.PathLike | None = None) -> None:
        self.spec = spec
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.storage = FrameStorage(spec, capacity_frames, self.device)
        self.directory = Path(directory) if directory is not None else None
        self._next_index = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Never overwrite episodes of an earlier (resumed) run.
            self._next_index = next_episode_index(self.directory)

    @classmethod
    def from_directory(cls, spec: EnvSpec, directory: str | os.PathLike, device: torch.device | str,
                       capacity_frames: int | None = None, *, allow_env_mismatch: bool = False) -> "Replay":
        """A replay holding the episodes of ``directory`` (e.g. expert demos), not writing back to it;
        capacity defaults to exactly their frames."""
        paths = episode_paths(directory)
        if capacity_frames is None:
            episodes = [load_episode(p, spec, allow_env_mismatch=allow_env_mismatch) for p in paths]
            replay = cls(spec, sum(ep.obs.shape[0] for ep in episodes), device)
            for ep in episodes:
                replay.add_episode(ep, save=False)
            return replay
        replay = cls(spec, capacity_frames, device)
        replay.load_directory(directory, allow_env_mismatch=allow_env_mismatch)
        return replay

    def load_directory(self, directory: str | os.PathLike | None = None, *,
                       allow_env_mismatch: bool = False) -> int:
        """Re-add the episodes saved in ``directory`` (default: this replay's own, for resume) without
        writing them again; returns how many were read (older ones may be evicted by capacity)."""
        directory = Path(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("load_directory() needs a directory: this replay was made without one")
        count = 0
        for path in episode_paths(directory):
            self.add_episode(load_episode(path, self.spec, allow_env_mismatch=allow_env_mismatch), save=False,
                             where=str(path))
            count += 1
        return count

    def add_episode(self, ep: Episode, *, save: bool = True, where: str = "episode added to the replay") -> None:
        # The env id may differ (expert demos of an equivalent env); shapes may not.
        check_compatible(ep, self.spec, where=where, allow_env_mismatch=True)
        try:
            self.storage._check_kind(ep)
        except EpisodeError as err:
            raise EpisodeError(f"{where}: {err}") from None
        if save and self.directory is not None:
            save_episode(ep, self.directory / episode_filename(self._next_index, ep.length))
            self._next_index += 1
        self.storage.add(ep)

    # -- sampling -----------------------------------------------------------------------------
    def generator(self, seed: int) -> torch.Generator:
        """A generator on this replay's device, as the samplers need."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample_sequences(self, batch: int, length: int,
                         generator: torch.Generator | None = None) -> SequenceBatch:
        return sample_sequences(self.storage, batch, length, generator)

    def sample_transitions(self, batch: int, frame_stack: int = 1, nstep: int = 1, discount: float = 0.99,
                           generator: torch.Generator | None = None) -> TransitionBatch:
        return sample_transitions(self.storage, batch, frame_stack, nstep, discount, generator)

    def sample(self, request: BatchRequest, generator: torch.Generator | None = None,
               batch_size: int | None = None) -> SequenceBatch | TransitionBatch:
        """The batch ``request`` asks for; ``batch_size`` overrides it (expert batches)."""
        size = request.batch_size if batch_size is None else batch_size
        if request.kind == "sequence":
            return self.sample_sequences(size, request.seq_len, generator)
        if request.kind == "transition":
            return self.sample_transitions(size, request.frame_stack, request.nstep, request.discount, generator)
        raise ValueError(f"BatchRequest.kind={request.kind!r} asks for no replay batch; the replay samples "
                         "'sequence' or 'transition'")

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of transitions (what DrQ-v2-style code calls the replay size)."""
        return self.storage.num_transitions

    @property
    def num_frames(self) -> int:
        return self.storage.num_frames

    @property
    def num_episodes(self) -> int:
        return self.storage.num_episodes

    @property
    def num_transitions(self) -> int:
        return self.storage.num_transitions

    @property
    def capacity_frames(self) -> int:
        return self.storage.capacity

    @property
    def has_actions(self) -> bool | None:
        return self.storage.has_actions

    @property
    def bytes_per_frame(self) -> float:
        return self.storage.bytes_per_frame

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.spec.obs_shape))
