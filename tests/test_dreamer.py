"""Dreamer, the model-based RL control: runs without demos, learns its reward head, discounts with
its continuation head, round-trips its state, and refuses what it cannot use in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vmil.base import EnvSpec, SequenceBatch
from vmil.config import resolve
from vmil.rl import dreamer
from world_model.behavior import ActorCritic, BehaviorConfig
from world_model.returns import lambda_return


def _agent(**overrides) -> dreamer.DreamerAgent:
    cfg = resolve("dreamer", dreamer.Config, "toy:reach", "smoke",
                  [f"agent.{k}={v}" for k, v in overrides.items()]).agent
    return dreamer.build(cfg, EnvSpec("test", (3, 32, 32), 2), torch.device("cpu"))


def _batch(B: int = 4, T: int = 6, terminal_at: int | None = None) -> SequenceBatch:
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (B, T, 3, 32, 32), dtype=torch.uint8, generator=g)
    # The reward is a function of the frame the agent arrives at: its mean brightness.
    reward = obs.float().mean((2, 3, 4)) / 255.0
    terminal = torch.zeros(B, T, dtype=torch.bool)
    if terminal_at is not None:
        terminal[:, terminal_at] = True
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    return SequenceBatch(obs, torch.rand(B, T, 2, generator=g) * 2 - 1, reward, is_first, terminal)


def test_the_reward_head_learns_the_true_reward():
    torch.manual_seed(0)
    agent = _agent(model_warmup=1000)  # world model and heads only
    batch = _batch()
    first = agent.update(batch, None, 0)["model/reward"]
    for _ in range(150):
        last = agent.update(batch, None, 0)["model/reward"]
    assert last < 0.1 * first, (first, last)


def test_imagined_returns_are_discounted_by_the_continuation_head():
    torch.manual_seed(0)
    cfg = BehaviorConfig(horizon=3, units=8, actor_layers=1, critic_layers=1, gamma=0.9, lam=0.5)
    ac = ActorCritic(5, 1, cfg)
    feats, reward = torch.randn(4, 2, 5), torch.rand(3, 2)
    cont = torch.tensor([[1.0, 0.5], [0.0, 1.0], [1.0, 1.0]])
    _, returns, weights, _ = ac.actor_loss(feats, reward, cont=cont)
    v = ac.critic(feats[1:]).detach()
    # By hand: G_t = r_t + g c_t ((1 - lam) V_t+1 + lam G_t+1), G_H = V(s_H); weights = prod_{k<t} g c_k.
    expect = torch.zeros(3, 2)
    nxt = v[-1]
    for t in reversed(range(3)):
        nxt = reward[t] + 0.9 * cont[t] * ((1 - 0.5) * v[t] + 0.5 * nxt)
        expect[t] = nxt
    assert torch.allclose(returns.detach(), expect, atol=1e-6)
    assert torch.allclose(weights, torch.tensor([[1.0, 1.0], [0.9, 0.45], [0.0, 0.405]]), atol=1e-6)
    assert torch.allclose(returns.detach(), lambda_return(reward, v, 0.9 * cont, 0.5), atol=1e-6)


def test_continuation_turns_on_at_the_first_terminal_and_survives_a_round_trip():
    torch.manual_seed(0)
    agent = _agent()
    assert "model/continuation" not in agent.update(_batch(), None, 0)
    m = agent.update(_batch(terminal_at=3), None, 0)
    assert "model/continuation" in m and agent.seen_terminal
    fresh = _agent()
    fresh.load_state_dict(agent.state_dict())
    assert fresh.seen_terminal and fresh.updates == agent.updates
    for a, b in zip(agent.wm.parameters(), fresh.wm.parameters()):
        assert torch.equal(a, b)
    off = _agent(continuation="never")
    assert "model/continuation" not in off.update(_batch(terminal_at=3), None, 0)


def test_dreamer_trains_without_demos_and_names_demos_without_reward(tmp_path, toy_demos_obs):
    from vmil.data.episode import DemoInfo
    from vmil.runner import build_run

    cfg = resolve("dreamer", dreamer.Config, "toy:reach", "smoke", ["train.video=false"])
    runner = build_run(cfg, None, tmp_path / "run", tracking_uri=None, quiet=True)
    try:
        summary = runner.run()
    finally:
        runner.close()
    assert summary["updates"] > 0 and summary["normalized_score"] is None
    # Model health at every evaluation: imagined against real H-step returns of the eval policy.
    for key in ("reward_head_corr", "imagined_return_mean", "real_return_mean", "imagined_return_corr"):
        assert key in summary, key
    assert summary["real_return_mean"] >= 0.0  # toy:reach rewards are non-negative
    assert json.loads((tmp_path / "run" / "run.json").read_text())["demos"] is None
    spec = EnvSpec("toy:reach", (3, 32, 32), 2)
    info = DemoInfo(directory="d", num_episodes=1, lengths=(3,), returns=(0.0,), return_mean=0.0, return_std=0.0,
                    has_actions=False, obs_shape=(3, 32, 32), action_dim=0, discrete=False, state_dim=0,
                    success_rate=None, meta={})
    with pytest.raises(ValueError, match="carry no reward"):
        dreamer.build(cfg.agent, spec, torch.device("cpu"), info)
    with pytest.raises(ValueError, match="gives no reward"):
        dreamer.build(cfg.agent, EnvSpec("x", (3, 32, 32), 2, extra={"has_reward": False}), torch.device("cpu"))


def test_cli_train_takes_dreamer_without_demos_but_not_vmil(tmp_path, capsys):
    from vmil.cli import main

    assert main(["train", "--algo", "vmil", "--env", "toy:reach", "--preset", "smoke"]) != 0
    assert "--demos" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--algo", "dreamer", "--env", "toy:reach", "--preset", "smoke", "--run-dir", str(run),
                 "--tracking-uri", "none", "train.video=false"]) == 0
    assert json.loads((run / "summary.json").read_text())["algo"] == "dreamer"


def test_dreamer_batches_must_carry_rewards_and_actions():
    agent = _agent()
    b = _batch()
    with pytest.raises(ValueError, match="needs actions"):
        agent.update(b._replace(action=None), None, 0)
    with pytest.raises(ValueError, match="uint8 obs"):
        agent.update(b._replace(obs=b.obs.float()), None, 0)
    assert np.isfinite(agent.update(b, None, 0)["model/reward"])


def test_open_loop_strips_show_truth_prediction_and_error_rows():
    agent = _agent()
    b = _batch(B=3, T=6)
    strips = agent.visualize(None, b, sequences=2)
    assert set(strips) == {"openloop_agent"}
    strip = strips["openloop_agent"]
    # Two sequences x (truth, prediction, error) rows of 32-pixel frames, HWC uint8.
    assert strip.dtype == np.uint8 and strip.ndim == 3 and strip.shape[2] == 3
    assert strip.shape[0] >= 2 * 3 * 32
    assert agent.visualize(None, b._replace(action=None)) == {}


def test_imagined_vs_real_sums_the_prior_rollout_and_the_real_rewards_that_follow():
    from world_model.analysis import imagined_vs_real
    from world_model.rssm import RSSM

    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=8, stoch=4, deter=6, hidden=8)
    T, H = 7, 3
    embed, action = torch.randn(1, T, 8), torch.rand(1, T, 2) * 2 - 1
    is_first = torch.zeros(1, T, dtype=torch.bool)
    is_first[0, 0] = True
    post, _ = rssm.observe(embed, action, is_first, sample=False)
    post = post.map(lambda x: x[0])
    w_pol, w_rew = torch.randn(10, 2), torch.randn(10)
    policy = lambda f: torch.tanh(f @ w_pol)  # noqa: E731
    reward_fn = lambda f: f @ w_rew  # noqa: E731
    reward = torch.arange(T, dtype=torch.float32)
    imagined, real = imagined_vs_real(rssm, policy, reward_fn, post, reward, H)
    assert imagined.shape == real.shape == (T - H,)
    for t in range(T - H):
        state, total = post.map(lambda x: x[t:t + 1].detach()), 0.0
        with torch.no_grad():
            for _ in range(H):
                state = rssm.img_step(state, policy(rssm.feat(state)), sample=False)
                total += float(reward_fn(rssm.feat(state)))
        assert imagined[t].item() == pytest.approx(total, rel=1e-5, abs=1e-5)
        assert real[t].item() == sum(range(t + 1, t + H + 1))  # rewards t+1 .. t+H
    with pytest.raises(ValueError, match="horizon"):
        imagined_vs_real(rssm, policy, reward_fn, post, reward, T)


def test_dreamer_plans_its_deterministic_actions_with_the_reward_head_and_critic():
    """behavior.plan_candidates: evaluation actions are plan_action's over the fixed candidate set,
    scored by the reward head and the critic; exploration stays the actor's."""
    from vmil.base import Obs
    from world_model.behavior import plan_action

    torch.manual_seed(0)
    agent = _agent(**{"behavior.plan_candidates": 8, "behavior.plan_steps": 2})
    assert agent._plan_set.shape == (8, 2) and agent._plan_set.abs().max() <= 1
    frame = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    rng = torch.get_rng_state()
    action, (post, _) = agent.act(Obs(frame, None, True), None, explore=False)
    assert torch.equal(torch.get_rng_state(), rng)  # evaluations leave the training's draws alone
    b = agent.cfg.behavior
    reward = lambda s, a, nxt: agent.reward(agent.wm.rssm.feat(nxt))  # noqa: E731
    plan = plan_action(agent.wm.rssm, agent.ac.eval_actor(), agent.ac.bootstrap_critic(), reward, post,
                       agent._plan_set, b.gamma, b.plan_steps)
    assert np.allclose(action, plan.action[0].numpy())
    assert agent.plan_counts == {"steps": 1, "replaced": int(plan.replaced[0])}
    agent.act(Obs(frame, None, True), None, explore=True)
    assert agent.plan_counts["steps"] == 1


def test_disagreement_ensemble_agrees_on_its_data_and_not_off_it():
    from world_model.ensemble import DisagreementEnsemble

    torch.manual_seed(0)
    ens = DisagreementEnsemble(feat_dim=3, action_dim=1, target_dim=2, heads=5, units=32, layers=2)
    opt = torch.optim.Adam(ens.parameters(), 3e-3)
    w = torch.randn(4, 2)
    for _ in range(400):
        feat, action = torch.rand(64, 3) * 0.5, torch.rand(64, 1) * 0.5  # the data: a small corner
        loss = ens.loss(feat, action, torch.cat([feat, action], -1) @ w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    on = ens.disagreement(torch.rand(256, 3) * 0.5, torch.rand(256, 1) * 0.5).mean()
    off = ens.disagreement(3 + torch.rand(256, 3), 3 + torch.rand(256, 1)).mean()
    assert off > 20 * on, (float(on), float(off))
    # The mask drops transitions that cross an episode start: the loss is that of the kept ones.
    feat, action, target = torch.randn(2, 4, 3), torch.randn(2, 4, 1), torch.randn(2, 4, 2)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    assert torch.allclose(ens.loss(feat, action, target, mask), ens.loss(feat[mask], action[mask], target[mask]))
    assert ens(feat, action).shape == (5, 2, 4, 2)
    # Heads that agree exactly have no disagreement, however large their predictions.
    for head in ens.heads[1:]:
        head.load_state_dict(ens.heads[0].state_dict())
    assert ens(feat, action).abs().max() > 0.1
    assert torch.equal(ens.disagreement(feat, action), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least 2 heads"):
        DisagreementEnsemble(3, 1, 2, heads=1, units=8, layers=1)


def test_dreamer_subtracts_the_ensembles_disagreement_from_imagined_rewards():
    agent = _agent(disagreement_heads=3, disagreement_penalty=2.5)
    torch.manual_seed(0)
    H, N = 4, 6
    feats, actions = torch.randn(H + 1, N, agent.wm.feat_dim), torch.rand(H, N, 2) * 2 - 1
    metrics: dict = {}
    got = agent.imagined_reward(feats, actions, metrics)
    want = agent.reward(feats[1:]) - 2.5 * agent.ensemble(feats[:-1], actions).var(0, unbiased=False).mean(-1)
    assert got.shape == (H, N) and torch.allclose(got, want, atol=1e-6)
    assert float(metrics["reward/disagreement"]) > 0
    before = [p.detach().clone() for p in agent.ensemble.parameters()]
    m = agent.update(_batch(), None, step=0)
    assert "model/ensemble" in m and "reward/disagreement" in m
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.ensemble.parameters()))
    state = agent.state_dict()
    assert "ensemble" in state and "opt_ensemble" in state
    other = _agent(disagreement_heads=3, disagreement_penalty=2.5)
    other.load_state_dict(state)
    assert torch.allclose(other.imagined_reward(feats, actions, {}), agent.imagined_reward(feats, actions, {}))
    with pytest.raises(Exception, match="needs an ensemble"):
        _agent(disagreement_penalty=1.0)
    with pytest.raises(Exception, match="disagreement_heads must be 0"):
        _agent(disagreement_heads=1)


def test_a_state_only_world_model_reads_no_pixels_and_learns_the_reward_from_the_state():
    from vmil.config import ConfigError

    with pytest.raises(ConfigError, match="image=false leaves the model nothing to read"):
        resolve("dreamer", dreamer.Config, "toy:reach", "smoke", ["agent.model.image=false"])
    cfg = resolve("dreamer", dreamer.Config, "toy:reach", "smoke",
                  ["agent.model.image=false", "agent.model.proprio=true", "agent.model_warmup=1000"]).agent
    agent = dreamer.build(cfg, EnvSpec("test", (3, 32, 32), 2, state_dim=3), torch.device("cpu"))
    assert agent.wm.encoder is None and agent.wm.decoder is None and not agent.wm.reads_images
    torch.manual_seed(0)
    b = _batch()
    g = torch.Generator().manual_seed(1)
    state = torch.randn(*b.obs.shape[:2], 3, generator=g)
    # The reward is a function of the state alone; the frames are noise the model must not need.
    batch = b._replace(reward=state[..., 0].tanh(), state=state)
    first = agent.update(batch, None, 0)
    assert "model/image" not in first and "model/proprio" in first
    for _ in range(150):
        last = agent.update(batch, None, 0)
    # Control: the same model on states that do not carry the reward cannot fit it.
    control = dreamer.build(cfg, EnvSpec("test", (3, 32, 32), 2, state_dim=3), torch.device("cpu"))
    unrelated = batch._replace(state=torch.randn(state.shape, generator=g))
    for _ in range(151):
        control_last = control.update(unrelated, None, 0)
    assert last["model/reward"] < 0.35 * first["model/reward"], (first["model/reward"], last["model/reward"])
    assert last["model/reward"] < 0.5 * control_last["model/reward"], (last, control_last)
    with torch.no_grad():  # the frames do not matter: a batch of other frames gives the same embedding
        other = torch.zeros_like(batch.obs)
        from world_model.networks import preprocess_image
        assert torch.equal(agent.wm.encode(preprocess_image(batch.obs), state),
                           agent.wm.encode(preprocess_image(other), state))
    # No frame is converted on its hot paths (update, acting): a state-only model never reads them.
    assert agent.wm.images(batch.obs) is None
    assert agent.visualize(None, batch) == {}
    with pytest.raises(ValueError, match="no frames to decode"):
        agent.wm.decode_states(agent.wm.rssm.initial(1, torch.device("cpu")))


def test_behavior_every_trains_the_actor_on_every_kth_update_and_the_model_on_all():
    agent = _agent(behavior_every=3)
    batch = _batch()
    actor_before = [p.detach().clone() for p in agent.ac.actor.parameters()]
    trained = []
    for _ in range(6):
        before = [p.detach().clone() for p in agent.ac.actor.parameters()]
        wm_before = next(agent.wm.parameters()).detach().clone()
        metrics = agent.update(batch, None, 0)
        moved = any(not torch.equal(a, p) for a, p in zip(before, agent.ac.actor.parameters()))
        trained.append(moved)
        assert ("actor/loss" in metrics) == moved
        assert not torch.equal(wm_before, next(agent.wm.parameters()))  # the model trains every time
    assert trained == [True, False, False, True, False, False]
    assert any(not torch.equal(a, p) for a, p in zip(actor_before, agent.ac.actor.parameters()))
