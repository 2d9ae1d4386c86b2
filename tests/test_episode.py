"""Episode format: builder, save/load round trips, and every way a file can be wrong."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vmil.base import EnvSpec, TimeStep
from vmil.data.episode import (DemoInfo, Episode, EpisodeBuilder, EpisodeError, demo_info, episode_filename,
                               format_demo_info, load_episode, load_episodes, next_episode_index, save_episode)

SPEC = EnvSpec(env_id="toy:reach", obs_shape=(3, 8, 8), action_dim=2, state_dim=3, action_repeat=2)
DSPEC = EnvSpec(env_id="gym:CartPole-v1", obs_shape=(1, 8, 8), action_dim=4, discrete=True)


def make_episode(steps: int = 5, spec: EnvSpec = SPEC, actions: bool = True, state: bool = True,
                 terminal: bool = False, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    if not actions:
        action = None
    elif spec.discrete:
        action = rng.integers(0, spec.action_dim, size=steps).astype(np.int64)
    else:
        action = rng.uniform(-1, 1, size=(steps, spec.action_dim)).astype(np.float32)
    term = np.zeros(steps, dtype=np.bool_)
    term[-1] = terminal
    return Episode(
        obs=rng.integers(0, 256, size=(steps + 1, *spec.obs_shape), dtype=np.uint8),
        action=action,
        reward=rng.standard_normal(steps).astype(np.float32),
        terminal=term,
        state=rng.standard_normal((steps + 1, spec.state_dim)).astype(np.float32) if state else None,
        meta={**spec.metadata(), "source": {"expert": "scripted", "seed": seed}},
    )


def assert_same(a: Episode, b: Episode) -> None:
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.reward, b.reward)
    np.testing.assert_array_equal(a.terminal, b.terminal)
    for x, y in ((a.action, b.action), (a.state, b.state)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    assert a.meta == b.meta


@pytest.mark.parametrize("kind", ["continuous", "no_actions", "discrete", "no_state"])
def test_round_trip(tmp_path, kind):
    if kind == "discrete":
        ep, spec = make_episode(6, DSPEC, state=False, terminal=True), DSPEC
    else:
        ep = make_episode(6, actions=kind != "no_actions", state=kind != "no_state")
        spec = SPEC if kind != "no_state" else None
    path = save_episode(ep, tmp_path / episode_filename(3, ep.length))
    assert path.name == "ep_000003_T6.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["ep_000003_T6.npz"]  # no temp file left behind
    back = load_episode(path, spec)
    assert_same(ep, back)
    assert back.length == 6 and back.has_actions == (kind != "no_actions")
    assert back.ret == pytest.approx(float(ep.reward.astype(np.float64).sum()))
    # Everything, metadata included, reads without pickle.
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(str(data["meta_json"][()])) == ep.meta


def test_without_actions():
    ep = make_episode(4)
    bare = ep.without_actions()
    assert bare.action is None and not bare.has_actions and ep.has_actions
    assert bare.meta["actions_removed"] is True
    np.testing.assert_array_equal(bare.obs, ep.obs)


def _ts(obs, reward=0.0, first=False, terminal=False, last=False, state=None, success=None):
    info = {} if success is None else {"success": success}
    return TimeStep(obs=obs, state=state, reward=reward, first=first, terminal=terminal, last=last, info=info)


def test_builder_matches_steps():
    ref = make_episode(4, terminal=True)
    b = EpisodeBuilder(SPEC, meta={"source": {"expert": "mpc", "seed": 7}})
    b.start(_ts(ref.obs[0], first=True, state=ref.state[0]))
    for t in range(4):
        b.add(ref.action[t], _ts(ref.obs[t + 1], reward=float(ref.reward[t]), terminal=bool(ref.terminal[t]),
                                 last=t == 3, state=ref.state[t + 1], success=t == 2))
    assert b.done
    with pytest.raises(EpisodeError, match="already ended"):
        b.add(ref.action[0], _ts(ref.obs[0]))
    ep = b.finish()
    for name in ("obs", "action", "reward", "terminal", "state"):
        np.testing.assert_array_equal(getattr(ep, name), getattr(ref, name))
    assert ep.meta["env_id"] == "toy:reach" and ep.meta["action_repeat"] == 2
    assert ep.meta["source"] == {"expert": "mpc", "seed": 7} and ep.meta["success"] is True


def test_builder_discrete_and_errors():
    b = EpisodeBuilder(DSPEC)
    frame = np.zeros(DSPEC.obs_shape, np.uint8)
    with pytest.raises(EpisodeError, match="start"):
        b.add(1, _ts(frame))
    with pytest.raises(EpisodeError, match="first=True"):
        b.start(_ts(frame))
    b.start(_ts(frame, first=True))
    b.add(np.int64(3), _ts(frame + 1, reward=1.0))
    b.add(0, _ts(frame + 2, reward=2.0, last=True))
    ep = b.finish()
    assert ep.action.dtype == np.int64 and ep.action.tolist() == [3, 0] and ep.discrete
    assert ep.reward.tolist() == [1.0, 2.0] and ep.state is None
    b.start(_ts(frame, first=True))
    with pytest.raises(EpisodeError, match=r"outside \[0, 4\)"):
        b.add(4, _ts(frame))
    with pytest.raises(EpisodeError, match="expected uint8"):
        b.add(1, _ts(np.zeros((3, 8, 8), np.uint8)))


# ---------------------------------------------------------------------------------------------
# Bad files: each rejected with the file name in the message.


def _raw(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _arrays(ep: Episode) -> dict:
    out = {"obs": ep.obs, "action": ep.action, "reward": ep.reward, "terminal": ep.terminal,
           "state": ep.state, "meta_json": np.array(json.dumps(ep.meta))}
    return {k: v for k, v in out.items() if v is not None}


def _expect_error(path, match, spec=None, **kw):
    with pytest.raises(EpisodeError, match=match) as info:
        load_episode(path, spec, **kw)
    assert str(path) in str(info.value), f"message does not name the file: {info.value}"
    return str(info.value)


def test_truncated_file(tmp_path):
    path = save_episode(make_episode(20), tmp_path / "ep_000000_T20.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated or corrupt")


def test_corrupted_bytes(tmp_path):
    path = save_episode(make_episode(20), tmp_path / "ep_000000_T20.npz")
    data = bytearray(path.read_bytes())
    mid = len(data) // 3  # inside the obs member, the first and largest array
    data[mid:mid + 16] = bytes(255 - x for x in data[mid:mid + 16])
    path.write_bytes(bytes(data))
    _expect_error(path, "CRC|corrupt")


def test_not_a_zip(tmp_path):
    path = tmp_path / "ep.npz"
    path.write_bytes(b"this is not an episode at all" * 10)
    _expect_error(path, "truncated or corrupt")
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    _expect_error(tmp_path / "single.npz", "single array")
    _expect_error(tmp_path / "absent.npz", "no such episode file")


def test_missing_and_unknown_keys(tmp_path):
    arrays = _arrays(make_episode(5))
    del arrays["reward"]
    _expect_error(_raw(tmp_path / "a.npz", **arrays), r"missing key\(s\) \['reward'\]")
    arrays = _arrays(make_episode(5))
    arrays["rewards"] = arrays["reward"]
    _expect_error(_raw(tmp_path / "b.npz", **arrays), "unknown key")


@pytest.mark.parametrize("key,value,match", [
    ("reward", lambda ep: ep.reward.astype(np.float64), "'reward' has dtype float64, expected float32"),
    ("obs", lambda ep: ep.obs.astype(np.float32), "'obs' has dtype float32, expected uint8"),
    ("terminal", lambda ep: ep.terminal.astype(np.uint8), "'terminal' has dtype uint8"),
    ("action", lambda ep: ep.action.astype(np.float64), "'action' has dtype float64"),
    ("action", lambda ep: ep.action[:-1], "'action' has 4 steps but 'obs' has 6 frames"),
    ("reward", lambda ep: ep.reward[:-1], "'reward' has 4 steps but 'obs' has 6 frames"),
    ("state", lambda ep: ep.state[:-1], "'state' has 5 rows"),
    ("obs", lambda ep: ep.obs[0], "'obs' has shape"),
    ("reward", lambda ep: np.where(np.arange(5) == 2, np.nan, ep.reward).astype(np.float32), "NaN/inf at steps \\[2\\]"),
    ("action", lambda ep: np.where(np.arange(5)[:, None] == 1, np.inf, ep.action).astype(np.float32), "'action' contains NaN"),
    ("state", lambda ep: np.full_like(ep.state, np.nan), "'state' contains NaN"),
    ("terminal", lambda ep: np.arange(5) == 1, "terminal' is set before the last step \\(at t=1\\)"),
    ("meta_json", lambda ep: np.array("{not json"), "not valid JSON"),
    ("meta_json", lambda ep: np.array([1, 2]), "0-d unicode"),
    ("meta_json", lambda ep: np.array(json.dumps({**ep.meta, "obs_shape": [3, 9, 9]})), "obs_shape"),
    ("meta_json", lambda ep: np.array(json.dumps({**ep.meta, "action_dim": 5})), "action_dim 5"),
    ("action", lambda ep: np.array([None] * 5, dtype=object), "pickled"),
])
def test_bad_contents(tmp_path, key, value, match):
    ep = make_episode(5)
    arrays = _arrays(ep)
    arrays[key] = value(ep)
    _expect_error(_raw(tmp_path / "ep_000001_T5.npz", **arrays), match)


@pytest.mark.parametrize("spec,match", [
    (EnvSpec("toy:reach", (3, 16, 16), 2, state_dim=3, action_repeat=2), r"C,H,W=\(3, 8, 8\).*\(3, 16, 16\)"),
    (EnvSpec("toy:reach", (1, 16, 16), 2, state_dim=3, action_repeat=2), r"\(1, 16, 16\); record the demos at 16x16 or larger"),
    (EnvSpec("toy:reach", (3, 8, 8), 6, state_dim=3, action_repeat=2), "dimension 2 but env toy:reach has action_dim 6"),
    (EnvSpec("toy:reach", (3, 8, 8), 2, discrete=True, state_dim=3, action_repeat=2), "continuous actions"),
    (EnvSpec("toy:reach", (3, 8, 8), 2, state_dim=4, action_repeat=2), "state_dim 4"),
    (EnvSpec("dmc:cheetah_run", (3, 8, 8), 2, state_dim=3, action_repeat=2), "recorded on env 'toy:reach'"),
    (EnvSpec("toy:reach", (3, 8, 8), 2, state_dim=3, action_repeat=4), "action_repeat 2"),
])
def test_spec_mismatch(tmp_path, spec, match):
    path = save_episode(make_episode(5), tmp_path / "ep_000000_T5.npz")
    _expect_error(path, match, spec)


def test_frame_stacked_demos_get_a_stacking_hint(tmp_path):
    stacked = EnvSpec("toy:reach", (9, 8, 8), 2, state_dim=3, action_repeat=2)
    path = save_episode(make_episode(5, stacked), tmp_path / "ep_000000_T5.npz")
    _expect_error(path, r"C,H,W=\(9, 8, 8\).*look like stacks of 3 frames: store single frames", SPEC)


def test_env_mismatch_can_be_allowed(tmp_path):
    path = save_episode(make_episode(5), tmp_path / "ep_000000_T5.npz")
    other = EnvSpec("dmc:reacher_easy", (3, 8, 8), 2, state_dim=3, action_repeat=2)
    assert load_episode(path, other, allow_env_mismatch=True).length == 5


def test_discrete_out_of_range(tmp_path):
    ep = make_episode(5, DSPEC, state=False)
    small = EnvSpec("gym:CartPole-v1", (1, 8, 8), 2, discrete=True)
    ep.action[2] = 3
    path = save_episode(Episode(ep.obs, ep.action, ep.reward, ep.terminal, None, {"env_id": "gym:CartPole-v1"}),
                        tmp_path / "ep_000000_T5.npz")
    _expect_error(path, "out of range", small)


def test_load_episodes_directory(tmp_path):
    with pytest.raises(EpisodeError, match="no such episode directory"):
        load_episodes(tmp_path / "nothing")
    with pytest.raises(EpisodeError, match="no episode .npz files"):
        load_episodes(tmp_path)
    eps = [make_episode(3 + i, seed=i) for i in range(3)]
    for i in (2, 0, 1):  # write out of order: loading sorts by name
        save_episode(eps[i], tmp_path / episode_filename(i, eps[i].length))
    (tmp_path / "notes.txt").write_text("ignored: not an episode")
    loaded = load_episodes(tmp_path, SPEC)
    assert [ep.length for ep in loaded] == [3, 4, 5]
    for a, b in zip(eps, loaded):
        assert_same(a, b)
    assert next_episode_index(tmp_path) == 3
    save_episode(make_episode(3, actions=False, seed=9), tmp_path / episode_filename(3, 3))
    with pytest.raises(EpisodeError, match="ep_000003_T3.npz: has actions False differs"):
        load_episodes(tmp_path)


def test_demo_info(tmp_path):
    eps = [make_episode(4 + i, seed=i) for i in range(3)]
    eps[0].meta["success"] = True
    eps[1].meta["success"] = False
    eps[2].meta["success"] = True
    info = demo_info(eps, tmp_path)
    assert isinstance(info, DemoInfo)
    returns = [float(ep.reward.astype(np.float64).sum()) for ep in eps]
    assert info.num_episodes == 3 and info.lengths == (4, 5, 6) and info.num_frames == 18
    assert info.return_mean == pytest.approx(np.mean(returns)) and info.return_std == pytest.approx(np.std(returns))
    assert info.has_actions and info.obs_shape == (3, 8, 8) and info.action_dim == 2 and info.state_dim == 3
    assert info.success_rate == pytest.approx(2 / 3)
    assert info.meta["env_id"] == "toy:reach" and "source" not in info.meta  # source differs per episode
    text = format_demo_info(info)
    assert "toy:reach" in text and "episodes      3" in text and "success       67%" in text
    bare = demo_info([ep.without_actions() for ep in eps])
    assert not bare.has_actions and bare.action_dim == 0
    assert "observation-only" in format_demo_info(bare)


def test_save_rejects_bad_names_and_meta(tmp_path):
    ep = make_episode(3)
    with pytest.raises(EpisodeError, match="must end in .npz"):
        save_episode(ep, tmp_path / "ep.bin")
    ep.meta["bad"] = object()
    with pytest.raises(EpisodeError, match="not JSON-serialisable"):
        save_episode(ep, tmp_path / "ep.npz")
    assert list(tmp_path.iterdir()) == []


def test_in_memory_validation():
    ep = make_episode(3)
    with pytest.raises(EpisodeError, match="'reward' has 2 steps"):
        Episode(ep.obs, ep.action, ep.reward[:2], ep.terminal, ep.state, ep.meta)
    with pytest.raises(EpisodeError, match="at least 2"):
        Episode(ep.obs[:1], None, ep.reward[:0], ep.terminal[:0], None, {})
