"""Replay storage and samplers against hand-built per-sample references; random shift."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vmil.base import BatchRequest, EnvSpec, SequenceBatch, TransitionBatch
from vmil.data.augment import random_shift
from vmil.data.episode import Episode, EpisodeError, load_episodes, save_episode
from vmil.data.replay import Replay

SPEC = EnvSpec(env_id="toy:reach", obs_shape=(2, 6, 6), action_dim=3, state_dim=2, action_repeat=2)
DSPEC = EnvSpec(env_id="gym:CartPole-v1", obs_shape=(1, 6, 6), action_dim=4, discrete=True)


def tagged_episode(ep_id: int, steps: int, spec: EnvSpec = SPEC, terminal: bool = False, actions: bool = True,
                   state: bool = True, seed: int | None = None) -> Episode:
    """Random frames whose pixel (0, 0, 0) holds the episode id and (0, 0, 1) the time step, so a
    sampled frame says where it came from."""
    rng = np.random.default_rng(ep_id if seed is None else seed)
    obs = rng.integers(0, 256, size=(steps + 1, *spec.obs_shape), dtype=np.uint8)
    obs[:, 0, 0, 0] = ep_id
    obs[:, 0, 0, 1] = np.arange(steps + 1)
    if not actions:
        action = None
    elif spec.discrete:
        action = rng.integers(0, spec.action_dim, size=steps).astype(np.int64)
    else:
        action = rng.uniform(-1, 1, (steps, spec.action_dim)).astype(np.float32)
    term = np.zeros(steps, dtype=np.bool_)
    term[-1] = terminal
    return Episode(obs=obs, action=action, reward=rng.standard_normal(steps).astype(np.float32), terminal=term,
                   state=rng.standard_normal((steps + 1, spec.state_dim)).astype(np.float32) if state else None,
                   meta=spec.metadata())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def where_from(frame: torch.Tensor) -> tuple[int, int]:
    return int(frame[0, 0, 0]), int(frame[0, 0, 1])


def test_sequences_match_episodes():
    # Lengths 3 (too short for L=5: never sampled), 5 (exactly one window), 12, 20 (terminal).
    eps = {1: tagged_episode(1, 2), 2: tagged_episode(2, 4), 3: tagged_episode(3, 11),
           4: tagged_episode(4, 19, terminal=True)}
    replay = Replay(SPEC, 1000, "cpu")
    for ep in eps.values():
        replay.add_episode(ep)
    assert replay.num_episodes == 4 and replay.num_frames == 3 + 5 + 12 + 20 and len(replay) == 36
    L = 5
    batch = replay.sample_sequences(400, L, gen())
    assert isinstance(batch, SequenceBatch)
    assert batch.obs.shape == (400, L, 2, 6, 6) and batch.obs.dtype == torch.uint8
    assert batch.action.shape == (400, L, 3) and batch.action.dtype == torch.float32
    assert batch.state.shape == (400, L, 2)
    seen = set()
    for b in range(400):
        ep_id, t0 = where_from(batch.obs[b, 0])
        ep = eps[ep_id]
        assert ep_id != 1
        ts = np.arange(t0, t0 + L)
        assert ts[-1] <= ep.length  # never crosses the episode end
        np.testing.assert_array_equal(batch.obs[b].numpy(), ep.obs[ts])
        ref_action = np.stack([np.zeros(3, np.float32) if t == 0 else ep.action[t - 1] for t in ts])
        np.testing.assert_array_equal(batch.action[b].numpy(), ref_action)
        np.testing.assert_array_equal(batch.reward[b].numpy(), [0.0 if t == 0 else ep.reward[t - 1] for t in ts])
        np.testing.assert_array_equal(batch.is_first[b].numpy(), ts == 0)
        np.testing.assert_array_equal(batch.terminal[b].numpy(), [t > 0 and ep.terminal[t - 1] for t in ts])
        np.testing.assert_array_equal(batch.state[b].numpy(), ep.state[ts])
        seen.add((ep_id, t0))
    # Uniform over the 1 + 8 + 16 valid windows: every one shows up in 400 draws.
    assert seen == {(2, 0)} | {(3, t) for t in range(8)} | {(4, t) for t in range(16)}
    with pytest.raises(RuntimeError, match="no stored episode has 21 frames.*longest has 20"):
        replay.sample_sequences(4, 21, gen())


def reference_transition(ep: Episode, t: int, k: int, n: int, gamma: float) -> dict:
    steps = ep.length
    stack = lambda at: np.concatenate([ep.obs[max(0, at - k + 1 + j)] for j in range(k)], axis=0)
    n_eff = min(n, steps - t)
    reward = sum(gamma ** i * float(ep.reward[t + i]) for i in range(n_eff))
    ended = ep.terminal[steps - 1] and t + n_eff == steps
    return {"obs": stack(t), "next_obs": stack(t + n_eff), "step_obs": stack(t + 1), "reward": reward,
            "discount": 0.0 if ended else gamma ** n_eff, "action": ep.action[t], "state": ep.state[t],
            "next_state": ep.state[t + n_eff]}


@pytest.mark.parametrize("k,n", [(3, 3), (1, 1), (4, 5)])
def test_transitions_match_reference(k, n):
    gamma = 0.9
    # Short episodes (T=1, 2 < n), a terminal one and a time-limit one.
    eps = {1: tagged_episode(1, 1, terminal=True), 2: tagged_episode(2, 2), 3: tagged_episode(3, 9, terminal=True),
           4: tagged_episode(4, 12)}
    replay = Replay(SPEC, 100, "cpu")
    for ep in eps.values():
        replay.add_episode(ep)
    B = 600
    batch = replay.sample_transitions(B, k, n, gamma, gen(1))
    assert isinstance(batch, TransitionBatch)
    assert batch.obs.shape == batch.next_obs.shape == batch.step_obs.shape == (B, k * 2, 6, 6)
    assert batch.obs.dtype == torch.uint8 and batch.reward.shape == batch.discount.shape == (B,)
    seen = set()
    for b in range(B):
        ep_id, t = where_from(batch.obs[b, (k - 1) * 2:])  # the newest frame of the stack is frame t
        ref = reference_transition(eps[ep_id], t, k, n, gamma)
        for name in ("obs", "next_obs", "step_obs", "action", "state", "next_state"):
            np.testing.assert_array_equal(getattr(batch, name)[b].numpy(), ref[name], err_msg=f"{name} {ep_id} {t}")
        assert float(batch.reward[b]) == pytest.approx(ref["reward"], rel=1e-5, abs=1e-6)
        assert float(batch.discount[b]) == pytest.approx(ref["discount"], rel=1e-6)
        seen.add((ep_id, t))
    # Uniform over all 1 + 2 + 9 + 12 transitions, near starts and ends included.
    assert seen == {(e, t) for e, ep in eps.items() for t in range(ep.length)}


def test_discrete_actions_become_one_hot():
    ep = tagged_episode(1, 7, spec=DSPEC, state=False)
    replay = Replay(DSPEC, 50, "cpu")
    replay.add_episode(ep)
    batch = replay.sample_transitions(64, 2, 1, 0.99, gen())
    for b in range(64):
        _, t = where_from(batch.obs[b, 1:])
        np.testing.assert_array_equal(batch.action[b].numpy(), np.eye(4, dtype=np.float32)[ep.action[t]])
    seq = replay.sample_sequences(8, 8, gen())
    np.testing.assert_array_equal(seq.action[0, 1:].numpy(), np.eye(4, dtype=np.float32)[ep.action])
    assert batch.state is None and seq.state is None


def test_observation_only_and_mixing():
    replay = Replay(SPEC, 100, "cpu")
    replay.add_episode(tagged_episode(1, 6, actions=False))
    assert replay.sample_sequences(4, 3, gen()).action is None
    assert replay.sample_transitions(4, 2, 2, 0.99, gen()).action is None
    with pytest.raises(EpisodeError, match="without actions; this episode has actions.*without_actions"):
        replay.add_episode(tagged_episode(2, 6))
    with_actions = Replay(SPEC, 100, "cpu")
    with_actions.add_episode(tagged_episode(1, 6))
    with pytest.raises(EpisodeError, match="with actions; this episode has none"):
        with_actions.add_episode(tagged_episode(2, 6, actions=False))
    with pytest.raises(EpisodeError, match="frames are C,H,W"):
        with_actions.add_episode(tagged_episode(3, 6, spec=DSPEC, state=False))


def stored_ids(replay: Replay) -> list[int]:
    return [int(replay.storage.frames[s, 0, 0, 0]) for s, _ in replay.storage.episodes]


def test_capacity_evicts_oldest():
    replay = Replay(SPEC, 100, "cpu")
    for i in range(3):
        replay.add_episode(tagged_episode(i, 29))  # 30 frames each
    assert stored_ids(replay) == [0, 1, 2] and replay.num_frames == 90
    replay.add_episode(tagged_episode(3, 29))  # does not fit after slot 90: wraps, evicting episode 0
    assert stored_ids(replay) == [1, 2, 3] and replay.num_frames == 90
    replay.add_episode(tagged_episode(4, 49))  # 50 frames at slot 30: evicts 1 and 2
    assert stored_ids(replay) == [3, 4]
    # 60 frames do not fit after slot 80: the tail is the oldest data, so episode 3 at slot 0 is evicted
    # only because the new episode needs slots 0..59, and episode 4 (slots 30..79) too.
    replay.add_episode(tagged_episode(5, 59))
    assert stored_ids(replay) == [5] and replay.num_frames == 60
    frames = replay.sample_sequences(200, 2, gen()).obs
    assert {int(f) for f in frames[:, 0, 0, 0, 0]} == {5}
    with pytest.raises(EpisodeError, match="does not fit a replay of 100 frames"):
        replay.add_episode(tagged_episode(6, 100))


def test_wrap_evicts_tail_before_newer_episodes():
    replay = Replay(SPEC, 100, "cpu")
    for i in range(3):
        replay.add_episode(tagged_episode(i, 29))  # slots 0, 30, 60
    replay.add_episode(tagged_episode(3, 49))  # wraps to 0, evicting 0 and 1 -> [2 @60, 3 @0], cursor 50
    assert stored_ids(replay) == [2, 3]
    replay.add_episode(tagged_episode(4, 29))  # fits at 50..79, overlapping episode 2 @60
    assert stored_ids(replay) == [3, 4]
    replay.add_episode(tagged_episode(5, 9))  # 80..89
    replay.add_episode(tagged_episode(6, 19))  # wraps: evicts 3 (@0) only, keeping 4 @50 and 5 @80
    assert stored_ids(replay) == [4, 5, 6]


def test_bytes_per_frame():
    replay = Replay(SPEC, 64, "cpu")
    replay.add_episode(tagged_episode(0, 5))
    frame = 2 * 6 * 6
    assert replay.frame_bytes == frame
    # Frames once, plus action (3 floats), state (2 floats), reward float, terminal and is_first bytes.
    assert replay.bytes_per_frame == frame + 4 * 3 + 4 * 2 + 4 + 1 + 1
    big = Replay(EnvSpec("dmc:cheetah_run", (9, 84, 84), 6), 16, "cpu")
    big.add_episode(Episode(np.zeros((3, 9, 84, 84), np.uint8), np.zeros((2, 6), np.float32),
                            np.zeros(2, np.float32), np.zeros(2, bool)))
    assert big.bytes_per_frame < 1.001 * 9 * 84 * 84


def test_persist_and_resume(tmp_path):
    run = tmp_path / "episodes"
    replay = Replay(SPEC, 100, "cpu", directory=run)
    eps = [tagged_episode(i, 9 + i) for i in range(3)]
    for ep in eps:
        replay.add_episode(ep)
    assert sorted(p.name for p in run.iterdir()) == ["ep_000000_T9.npz", "ep_000001_T10.npz", "ep_000002_T11.npz"]
    resumed = Replay(SPEC, 100, "cpu", directory=run)
    assert resumed.load_directory() == 3 and resumed.num_frames == replay.num_frames
    assert stored_ids(resumed) == [0, 1, 2]
    a, b = replay.sample_sequences(8, 4, gen(5)), resumed.sample_sequences(8, 4, gen(5))
    for x, y in zip(a, b):
        assert (x is None and y is None) or torch.equal(x, y)
    resumed.add_episode(tagged_episode(3, 4))  # continues numbering, never overwrites
    assert len(list(run.iterdir())) == 4 and (run / "ep_000003_T4.npz").exists()
    assert len(load_episodes(run, SPEC)) == 4


def test_from_directory_for_demos(tmp_path):
    for i in range(3):
        save_episode(tagged_episode(i, 5 + i, actions=False), tmp_path / f"ep_{i:06d}_T{5 + i}.npz")
    demos = Replay.from_directory(SPEC, tmp_path, "cpu")
    assert demos.num_episodes == 3 and demos.capacity_frames == 6 + 7 + 8 and demos.has_actions is False
    assert demos.directory is None  # demos are never written back
    other = EnvSpec("dmc:reacher_easy", SPEC.obs_shape, SPEC.action_dim, state_dim=2, action_repeat=2)
    with pytest.raises(EpisodeError, match="ep_000000_T5.npz: recorded on env 'toy:reach'"):
        Replay.from_directory(other, tmp_path, "cpu")
    assert Replay.from_directory(other, tmp_path, "cpu", capacity_frames=10, allow_env_mismatch=True).num_episodes == 1


def test_sample_dispatch_and_reproducibility():
    replay = Replay(SPEC, 100, "cpu")
    with pytest.raises(RuntimeError, match="replay is empty"):
        replay.sample_transitions(2, 1, 1, 0.99, gen())
    for i in range(3):
        replay.add_episode(tagged_episode(i, 12))
    seq = replay.sample(BatchRequest("sequence", 5, seq_len=7), gen(3))
    assert isinstance(seq, SequenceBatch) and seq.obs.shape[:2] == (5, 7)
    tr = replay.sample(BatchRequest("transition", 6, frame_stack=3, nstep=2), gen(3), batch_size=9)
    assert isinstance(tr, TransitionBatch) and tr.obs.shape == (9, 6, 6, 6)
    again = replay.sample(BatchRequest("transition", 6, frame_stack=3, nstep=2), gen(3), batch_size=9)
    for x, y in zip(tr, again):
        assert (x is None and y is None) or torch.equal(x, y)
    with pytest.raises(ValueError, match="kind='none'"):
        replay.sample(BatchRequest("none", 1), gen())


# ---------------------------------------------------------------------------------------------
# random_shift


def test_random_shift_shape_dtype_identity():
    x = torch.randint(0, 256, (5, 9, 12, 10), dtype=torch.uint8)
    out = random_shift(x, pad=4, generator=gen())
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(random_shift(x, pad=0), x.float())
    assert torch.equal(random_shift(x.float(), 3, gen(7)), random_shift(x, 3, gen(7)))
    assert not torch.equal(out, x.float())


def test_random_shift_matches_pad_and_crop_per_sample():
    pad = 3
    x = torch.randint(0, 256, (32, 6, 11, 11), dtype=torch.uint8)
    out = random_shift(x, pad, gen(2))
    padded = F.pad(x.float(), (pad,) * 4, mode="replicate")
    shifts = []
    for b in range(32):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(out[b], padded[b, :, dy:dy + 11, dx:dx + 11])]
        # Exactly one crop of the padded image, the same for every channel of the stack.
        assert len(matches) == 1, matches
        shifts.append(matches[0])
    assert len(set(shifts)) > 10  # each sample draws its own shift
