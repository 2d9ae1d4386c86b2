"""State-based SAC expert: update math, checkpoints, resume, load_expert checks; a slow learning check."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vmil import envs
from vmil.checkpoint import CheckpointError
from vmil.experts import make_expert
from vmil.experts import sac

CPU = torch.device("cpu")
TINY = sac.SACConfig(hidden=16, layers=2, batch_size=16, random_steps=30, eval_episodes=1)


def _batch(obs_dim, action_dim, discrete, B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(B, obs_dim, generator=g), "next_obs": torch.randn(B, obs_dim, generator=g),
            "action": (torch.randint(0, action_dim, (B,), generator=g) if discrete
                       else torch.rand(B, action_dim, generator=g) * 2 - 1),
            "reward": torch.randn(B, generator=g), "terminal": torch.tensor([True, False] * (B // 2))}


@pytest.mark.parametrize("discrete", [False, True])
def test_update_shapes_and_changes(discrete):
    torch.manual_seed(0)
    agent = sac.SAC(5, 3, discrete, TINY, CPU)
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    metrics = agent.update(_batch(5, 3, discrete))
    assert set(metrics) >= {"critic_loss", "actor_loss", "alpha", "entropy", "q", "skipped"}
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["skipped"] == 0
    assert any(not torch.equal(before[k], v) for k, v in agent.actor.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(target_before, agent.critic_target.parameters()))
    a = agent.act(np.zeros(5, np.float32), deterministic=False)
    if discrete:
        assert isinstance(a, int) and 0 <= a < 3
    else:
        assert a.dtype == np.float32 and a.shape == (3,) and np.all(np.abs(a) < 1)
    with pytest.raises(AssertionError, match="action"):
        bad = _batch(5, 3, discrete)
        bad["action"] = bad["action"][:, None] if discrete else bad["action"][:, :2]
        agent.update(bad)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(1)
    actor = sac.Actor(4, 2, False, TINY)
    obs = torch.randn(64, 4)
    torch.manual_seed(2)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor(obs)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1),
        [torch.distributions.TanhTransform(cache_size=1)])
    torch.manual_seed(2)
    ref_action = dist.rsample()
    torch.testing.assert_close(action, ref_action)
    torch.testing.assert_close(log_prob, dist.log_prob(ref_action), atol=1e-3, rtol=1e-4)
    assert torch.all(log_std >= TINY.log_std_min) and torch.all(log_std <= TINY.log_std_max)


def test_soft_update_is_the_polyak_formula():
    torch.manual_seed(0)
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.995 * t.detach().clone() + 0.005 * s.detach() for t, s in zip(target.parameters(), source.parameters())]
    sac.soft_update(target, source, 0.005)
    for p, e in zip(target.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
    sac.soft_update(target, source, 1.0)
    for p, s in zip(target.parameters(), source.parameters()):
        torch.testing.assert_close(p, s)


def test_discrete_critic_loss_matches_hand_computation():
    torch.manual_seed(0)
    cfg = sac.SACConfig(hidden=8, batch_size=8, discount=0.9, init_temperature=0.5)
    agent = sac.SAC(3, 4, True, cfg, CPU)
    batch = _batch(3, 4, True)
    with torch.no_grad():
        logits = agent.actor.net(batch["next_obs"])
        p = torch.softmax(logits, -1)
        tq = torch.min(agent.critic_target.q1(batch["next_obs"]), agent.critic_target.q2(batch["next_obs"]))
        v = (p * (tq - 0.5 * torch.log(p))).sum(-1)
        y = batch["reward"] + 0.9 * (~batch["terminal"]).float() * v
        idx = batch["action"][:, None]
        q1 = agent.critic.q1(batch["obs"]).gather(1, idx).squeeze(1)
        q2 = agent.critic.q2(batch["obs"]).gather(1, idx).squeeze(1)
        expected = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    metrics = agent.update(batch)
    assert metrics["critic_loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("ratio, grows", [(1.0, True), (0.0, False)])
def test_temperature_moves_towards_the_target_entropy(ratio, grows):
    # A policy's entropy is below log(n) (ratio 1) and above 0 (ratio 0).
    agent = sac.SAC(3, 4, True, sac.SACConfig(hidden=8, discrete_entropy_ratio=ratio), CPU)
    before = agent.log_alpha.item()
    agent.update(_batch(3, 4, True))
    assert (agent.log_alpha.item() > before) == grows


def test_state_dict_round_trip_with_weights_only(tmp_path):
    from vmil.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    a = sac.SAC(5, 2, False, TINY, CPU)
    a.update(_batch(5, 2, False))
    save_checkpoint(tmp_path / "x.pt", algo=sac.ALGO, agent_state=a.state_dict(), counters={"step": 1},
                    config={}, meta={"note": "test"})
    payload = torch.load(tmp_path / "x.pt", weights_only=True)  # loads without any unsafe unpickling
    b = sac.SAC(5, 2, False, TINY, CPU)
    b.load_state_dict(load_checkpoint(tmp_path / "x.pt", algo=sac.ALGO)["agent"])
    assert payload["counters"]["step"] == 1
    batch = _batch(5, 2, False, seed=3)
    torch.manual_seed(9)
    ma = a.update(batch)
    torch.manual_seed(9)
    mb = b.update(batch)  # same optimiser moments and temperature: the same next step
    assert ma == mb
    for (k, x), y in zip(a.actor.state_dict().items(), b.actor.state_dict().values()):
        torch.testing.assert_close(x, y, msg=k)


def _plain(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


@pytest.fixture(scope="module")
def pendulum_expert(tmp_path_factory):
    out = tmp_path_factory.mktemp("sac") / "pendulum"
    path = sac.train("gym:Pendulum-v1", 60, out, seed=0, eval_every=40, device="cpu", progress=False, cfg=TINY)
    return out, path


def test_train_writes_a_loadable_checkpoint(pendulum_expert):
    out, path = pendulum_expert
    assert path == out / "expert.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["algo"] == sac.ALGO and payload["counters"]["step"] == 60
    assert payload["counters"]["updates"] == 60 - TINY.random_steps
    meta = payload["meta"]
    assert _plain(meta) and meta["env_id"] == "gym:Pendulum-v1" and meta["obs_dim"] == 3 and meta["action_repeat"] == 1
    assert [e[0] for e in meta["evals"]] == [40, 60]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [40, 60] and all(math.isfinite(r["eval_return_mean"]) for r in log)
    assert sorted(p.name for p in out.glob("replay-*.npz")) == ["replay-60.npz"]

    env = envs.make("gym:Pendulum-v1", action_repeat=1, render=False)
    expert = make_expert(str(path), env)
    ts = env.reset()
    a1, a2 = expert.act(ts), expert.act(ts)
    assert a1.dtype == np.float32 and a1.shape == (1,) and np.array_equal(a1, a2)  # deterministic mean
    actor = sac.Actor(3, 1, False, TINY)
    actor.load_state_dict(payload["agent"]["actor"])
    with torch.no_grad():
        mean = torch.tanh(actor(torch.from_numpy(env.expert_observation())[None])[0])[0].numpy()
    np.testing.assert_allclose(a1, mean, rtol=1e-6)


def test_load_expert_rejects_mismatches(pendulum_expert, tmp_path):
    out, path = pendulum_expert
    with pytest.raises(CheckpointError, match="trained on gym:Pendulum-v1, cannot drive gym:CartPole-v1"):
        sac.load_expert(path, envs.make("gym:CartPole-v1", action_repeat=1, render=False))
    with pytest.raises(CheckpointError, match="action_repeat=1"):
        sac.load_expert(out, envs.make("gym:Pendulum-v1", action_repeat=2, render=False))
    with pytest.raises(FileNotFoundError, match="vmil expert train"):
        sac.load_expert(tmp_path / "nothing.pt", envs.make("gym:Pendulum-v1", action_repeat=1, render=False))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        sac.load_expert(tmp_path / "bad.pt", envs.make("gym:Pendulum-v1", action_repeat=1, render=False))


def test_resume_continues_the_step_counter(pendulum_expert, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pendulum_expert[0], out)
    with pytest.raises(ValueError, match="seed"):
        sac.train("gym:Pendulum-v1", 100, out, seed=1, eval_every=40, device="cpu", progress=False, cfg=TINY)
    with pytest.raises(ValueError, match="different SAC config"):
        sac.train("gym:Pendulum-v1", 100, out, seed=0, eval_every=40, device="cpu", progress=False,
                  cfg=sac.SACConfig(hidden=32, batch_size=16, random_steps=30, eval_episodes=1))
    sac.train("gym:Pendulum-v1", 100, out, seed=0, eval_every=40, device="cpu", progress=False, cfg=TINY)
    payload = torch.load(out / "expert.pt", weights_only=True)
    assert payload["counters"]["step"] == 100 and payload["counters"]["updates"] == 100 - TINY.random_steps
    assert [e[0] for e in payload["meta"]["evals"]] == [40, 60, 80, 100]
    with np.load(out / payload["meta"]["replay_file"], allow_pickle=False) as replay:
        assert int(replay["size"]) == 100 and replay["obs"].shape == (100, 3)


def test_discrete_expert_drives_cartpole(tmp_path):
    path = sac.train("gym:CartPole-v1", 40, tmp_path, eval_every=40, device="cpu", progress=False, cfg=TINY)
    env = envs.make("gym:CartPole-v1", action_repeat=1, render=False)
    expert = make_expert(str(path), env)
    ts = env.reset()
    a = expert.act(ts)
    assert isinstance(a, int) and a in (0, 1)
    env.step(a)


@pytest.mark.slow
def test_sac_learns_pendulum(tmp_path):
    """Random actions score about -1200 on Pendulum-v1; SAC should swing up within a few thousand steps."""
    cfg = sac.SACConfig(hidden=128, batch_size=128, random_steps=1000, eval_episodes=5)
    path = sac.train("gym:Pendulum-v1", 6000, tmp_path, seed=0, eval_every=2000, device="cpu", progress=False, cfg=cfg)
    evals = torch.load(path, weights_only=True)["meta"]["evals"]
    assert evals[-1][1] > -400, evals


def test_state_replay_ring_and_save_load(tmp_path):
    r = sac.StateReplay(4, 2, 1, False)
    for i in range(6):
        r.add(np.full(2, i), np.full(1, i / 10), float(i), np.full(2, i + 1), i == 5)
    assert (r.size, r.pos) == (4, 2)
    np.testing.assert_array_equal(r.reward, [4, 5, 2, 3])  # the two oldest were overwritten
    r.save(tmp_path / "r.npz")
    same = sac.StateReplay(4, 2, 1, False)
    same.load(tmp_path / "r.npz")
    assert (same.size, same.pos) == (4, 2)
    for k in ("obs", "action", "reward", "next_obs", "terminal"):
        np.testing.assert_array_equal(getattr(same, k), getattr(r, k))
    bigger = sac.StateReplay(8, 2, 1, False)
    bigger.load(tmp_path / "r.npz")
    bigger.add(np.zeros(2), np.zeros(1), 9.0, np.zeros(2), False)
    assert (bigger.size, bigger.pos) == (5, 5) and bigger.reward[4] == 9.0
    batch = bigger.sample(64, np.random.default_rng(0), CPU)
    assert batch["obs"].shape == (64, 2) and batch["action"].shape == (64, 1) and batch["terminal"].dtype == torch.bool
    assert set(batch["reward"].tolist()) <= {2.0, 3.0, 4.0, 5.0, 9.0}
    with pytest.raises(ValueError, match="r.npz"):
        sac.StateReplay(2, 2, 1, False).load(tmp_path / "r.npz")
