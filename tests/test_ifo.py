"""Imitation from observation (bco, ilpo, imrl, pmi): the pure functions against hand-written
references, BCO's labels on a deterministic toy transition, errors, smoke runs, learning checks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from imitation import ifo
from vmil.base import EnvSpec, Obs, TransitionBatch

STATE_SPEC = EnvSpec(env_id="gym:Toy-v0", obs_shape=(3, 8, 8), action_dim=3, discrete=True, state_dim=2,
                     action_repeat=1)


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_info_nce_matches_a_hand_written_softmax():
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 0.0]])
    positive = torch.tensor([0, 2, 1])
    expected = 0.0
    for i, p in enumerate(positive.tolist()):
        row = scores[i].tolist()
        expected -= math.log(math.exp(row[p]) / sum(math.exp(v) for v in row))
    expected /= 3
    assert ifo.info_nce_loss(scores, positive).item() == pytest.approx(expected, rel=1e-6)
    # The default positive is the diagonal (in-batch negatives).
    diag = -sum(math.log(math.exp(scores[i, i].item()) / sum(math.exp(v) for v in scores[i].tolist()))
                for i in range(3)) / 3
    assert ifo.info_nce_loss(scores).item() == pytest.approx(diag, rel=1e-6)


def test_softmax_reward_is_the_log_probability_plus_log_m():
    scores = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    row = scores[0].tolist()
    logp = math.log(math.exp(row[1]) / sum(math.exp(v) for v in row))
    positive = torch.tensor([1])
    assert ifo.softmax_reward(scores, positive, baseline=False).item() == pytest.approx(logp, rel=1e-6)
    assert ifo.softmax_reward(scores, positive).item() == pytest.approx(logp + math.log(4), rel=1e-6)
    # Equal scores: the true next state is as likely as any expert next state -> PMI 0.
    assert ifo.softmax_reward(torch.zeros(1, 5), torch.tensor([3])).item() == pytest.approx(0.0, abs=1e-6)


def test_eq20_metric_on_a_toy_set():
    """Trajectory A (3 steps): hits at t=0, 2; trajectory B (1 step): a hit. Per-trajectory
    averages 2/3 and 1 -> 5/6 (a pooled mean over steps would give 3/4)."""
    scores = torch.tensor([[5.0, 1.0, 0.0],   # A, true 0: hit
                           [3.0, 1.0, 0.0],   # A, true 1: miss
                           [0.0, 0.0, 9.0],   # A, true 2: hit
                           [0.0, 4.0, 1.0]])  # B, true 1: hit
    positive = torch.tensor([0, 1, 2, 1])
    episode = torch.tensor([7, 7, 7, 3])
    assert ifo.transition_accuracy(scores, positive, episode).item() == pytest.approx(5 / 6)


def test_ilpo_min_over_z_and_expectation_losses():
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]]], requires_grad=True)  # B=1, Z=3, D=2
    target = torch.tensor([[1.0, 2.0]])
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]], requires_grad=True)  # pi = (0.2, 0.6, 0.2)
    losses = ifo.ilpo_losses(pred, target, logits)
    # errors per z: 1+4=5, 0+1=1, 4+4=8 -> min 1
    assert losses["min_z"].item() == pytest.approx(1.0)
    mix = [0.2 * 0 + 0.6 * 1 + 0.2 * 3, 0.2 * 0 + 0.6 * 1 + 0.2 * 0]  # (1.2, 0.6)
    assert losses["expected"].item() == pytest.approx((mix[0] - 1) ** 2 + (mix[1] - 2) ** 2, rel=1e-6)
    # Only the best latent action's prediction gets the min-over-z gradient; the expectation loss
    # trains the policy, never G.
    losses["min_z"].backward(retain_graph=True)
    assert pred.grad[0, 0].abs().sum() == 0 and pred.grad[0, 2].abs().sum() == 0 and pred.grad[0, 1].abs().sum() > 0
    pred.grad = None
    losses["expected"].backward()
    assert pred.grad is None and logits.grad.abs().sum() > 0
    assert ifo.closest_latent(pred.detach(), target).tolist() == [1]


def test_imrl_reward_psi():
    err = torch.tensor([0.0, 0.5, 2.0])
    np.testing.assert_allclose(ifo.imrl_reward(err, "identity", 2.0).numpy(), [0.0, -1.0, -4.0])
    np.testing.assert_allclose(ifo.imrl_reward(err, "tanh", 10.0, 1.0).numpy(),
                               [1.0, 1 - 10 * math.tanh(0.5), 1 - 10 * math.tanh(2.0)], rtol=1e-6)
    with pytest.raises(ValueError, match="psi must be identity or tanh"):
        ifo.imrl_reward(err, "exp", 1.0)


# ---------------------------------------------------------------------------------------------
# BCO on a deterministic toy transition


def _toy_transitions(n: int, seed: int, spec: EnvSpec = STATE_SPEC) -> TransitionBatch:
    """s' = s + (a - 1) * (0.5, -0.25): each of the three actions moves the state its own way."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g)
    a = torch.randint(0, 3, (n,), generator=g)
    s_next = s + (a[:, None] - 1).float() * torch.tensor([0.5, -0.25])
    obs = torch.zeros(n, *spec.obs_shape, dtype=torch.uint8)
    return TransitionBatch(obs=obs, action=torch.nn.functional.one_hot(a, 3).float(), reward=torch.zeros(n),
                           discount=torch.ones(n), next_obs=obs, step_obs=obs, state=s, next_state=s_next)


def test_bco_labels_equal_the_true_actions_on_a_deterministic_toy_transition():
    from imitation.bco import BCO, Config

    torch.manual_seed(0)
    cfg = Config(use_pixels=False, use_proprio=True, hidden_dim=32, lr=1e-2, idm_updates=10**6)
    agent = BCO(cfg, STATE_SPEC, torch.device("cpu"))
    expert = _toy_transitions(64, seed=1)
    for step in range(100):
        metrics = agent.update(_toy_transitions(64, seed=100 + step), expert, step)
    assert metrics["idm_accuracy"] == 1.0 and metrics["skipped"] == 0.0
    # The demos' actions are never trained on; the labels recover them exactly.
    assert metrics["label_accuracy"] == 1.0, metrics


def test_bco_continuous_labels_regress_the_action():
    from imitation.bco import BCO, Config, label_actions

    spec = EnvSpec(env_id="gym:Toy-v0", obs_shape=(3, 8, 8), action_dim=1, state_dim=2, action_repeat=1)
    torch.manual_seed(0)
    agent = BCO(Config(use_pixels=False, use_proprio=True, hidden_dim=32, lr=3e-3), spec, torch.device("cpu"))

    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        s = torch.randn(128, 2, generator=g)
        a = torch.rand(128, 1, generator=g) * 2 - 1
        obs = torch.zeros(128, 3, 8, 8, dtype=torch.uint8)
        return TransitionBatch(obs=obs, action=a, reward=torch.zeros(128), discount=torch.ones(128), next_obs=obs,
                               step_obs=obs, state=s, next_state=s + a * torch.tensor([0.3, 0.1]))

    for step in range(400):
        agent.update(batch(step), batch(10**5), step)
    test = batch(7)
    labels = label_actions(agent.idm, (None, test.state), (None, test.next_state), discrete=False)
    assert (labels - test.action).abs().mean() < 0.05
    action, _ = agent.act(Obs(np.zeros((9, 8, 8), np.uint8), np.zeros(2, np.float32), False), None, False)
    assert action.dtype == np.float32 and action.shape == (1,)


# ---------------------------------------------------------------------------------------------
# PMI / IMRL pieces


def test_pmi_reward_training_raises_the_eq20_accuracy_and_rewards_expert_transitions():
    from imitation.pmi import PMI, Config

    torch.manual_seed(0)
    cfg = Config(use_pixels=False, use_proprio=True, reward_updates=200, reward_hidden=32, embed_dim=16)
    agent = PMI(cfg, STATE_SPEC, torch.device("cpu"))
    first = agent.update(None, _toy_transitions(64, 0), 0)
    for step in range(1, 200):
        last = agent.update(None, _toy_transitions(64, step), step)
    assert set(first) >= {"infonce_loss", "val_accuracy"}
    assert first["val_accuracy"] < 0.1 and last["val_accuracy"] > 0.3, (first, last)  # chance: 1/64
    assert last["infonce_loss"] < first["infonce_loss"]
    # Frozen reward: expert-like transitions earn more than ones that moved the wrong way.
    expert = _toy_transitions(64, 999)
    now, nxt = agent.inputs.now(expert), agent.inputs.next(expert)
    wrong = (None, expert.state - (expert.next_state - expert.state) + torch.tensor([1.0, 0.0]))
    with torch.no_grad():
        good, _ = agent.reward(now, nxt, expert)
        bad, _ = agent.reward(now, wrong, expert)
    assert good.mean() > bad.mean() + 1.0 and good.mean() > 0


def test_imrl_error_is_small_on_expert_transitions():
    from imitation.imrl import IMRL, Config

    torch.manual_seed(0)
    agent = IMRL(Config(use_pixels=False, use_proprio=True, reward_updates=300, reward_hidden=32), STATE_SPEC,
                 torch.device("cpu"))
    # The expert always takes action 2; the agent's transitions come from every action.
    def expert_batch(seed):
        b = _toy_transitions(64, seed)
        return b._replace(next_state=b.state + torch.tensor([0.5, -0.25]))
    for step in range(300):
        agent.update(None, expert_batch(step), step)
    e = expert_batch(777)
    other = _toy_transitions(64, 778)
    with torch.no_grad():
        r_e, _ = agent.reward(agent.inputs.now(e), agent.inputs.next(e), e)
        r_o, _ = agent.reward(agent.inputs.now(other), agent.inputs.next(other), e)
    assert r_e.mean() > r_o.mean() + 1.0


# ---------------------------------------------------------------------------------------------
# Bad input


class _Demos:
    def __init__(self, lengths, state_dim=2, obs_shape=(3, 8, 8), has_actions=False):
        self.directory, self.lengths, self.state_dim, self.obs_shape = "demos/x", lengths, state_dim, obs_shape
        self.has_actions, self.action_dim = has_actions, 0


@pytest.mark.parametrize("algo", ["pmi", "imrl"])
def test_reward_methods_refuse_a_single_transition(algo):
    from vmil.registry import algo_module

    module = algo_module(algo)
    cfg = module.Config(use_pixels=False, use_proprio=True)
    with pytest.raises(ValueError, match=r"at least 2 expert transitions.* hold 1; record more episodes"):
        module.build(cfg, STATE_SPEC, torch.device("cpu"), _Demos((1,)))


def test_ilpo_refuses_a_continuous_env_and_state_without_proprio():
    from imitation.ilpo import Config, build

    continuous = EnvSpec(env_id="gym:Pendulum-v1", obs_shape=(3, 8, 8), action_dim=1, state_dim=3)
    with pytest.raises(ValueError, match="ilpo needs a discrete action space.*gym:Pendulum-v1 is continuous"):
        build(Config(use_pixels=False, use_proprio=True), continuous, torch.device("cpu"), None)
    no_state = EnvSpec(env_id="gym:CartPole-v1", obs_shape=(3, 8, 8), action_dim=2, discrete=True)
    with pytest.raises(ValueError, match="set env.proprio=true"):
        build(Config(use_pixels=False, use_proprio=True), no_state, torch.device("cpu"), None)
    with pytest.raises(ValueError, match="both false"):
        build(Config(use_pixels=False, use_proprio=False), no_state, torch.device("cpu"), None)


def test_state_methods_refuse_demos_without_state():
    from imitation.bco import Config, build

    with pytest.raises(ValueError, match="record them with `vmil demos record ... --proprio`"):
        build(Config(use_pixels=False, use_proprio=True), STATE_SPEC, torch.device("cpu"), _Demos((5,), state_dim=0))


# ---------------------------------------------------------------------------------------------
# Smoke runs through the runner (state and pixels)


@pytest.fixture(scope="module")
def cartpole_demos(tmp_path_factory):
    from vmil.demos import record

    out = tmp_path_factory.mktemp("ifo") / "cartpole"
    record("gym:CartPole-v1", "scripted", 2, out, keep_actions=True, image_size=32, action_repeat=1,
           max_episode_steps=20, proprio=True, quiet=True)
    return out


def _smoke(algo, demos, tmp_path, extra=()):
    from vmil.config import resolve
    from vmil.registry import algo_module
    from vmil.runner import build_run

    cfg = resolve(algo, algo_module(algo).Config, "gym:CartPole-v1", "smoke",
                  ["device=cpu", "train.env_steps=60", "train.eval_every=60", *extra])
    runner = build_run(cfg, demos, tmp_path / "run", tracking_uri="none", quiet=True)
    try:
        summary = runner.run()
    finally:
        runner.close()
    assert summary["env_steps"] == 60 and summary["updates"] > 0 and summary["eval_return_mean"] is not None
    return runner


@pytest.mark.parametrize("algo", ["bco", "pmi", "imrl", "ilpo"])
@pytest.mark.parametrize("pixels", [False, True])
def test_smoke_runs(algo, pixels, cartpole_demos, tmp_path):
    extra = ["agent.use_pixels=true", "agent.use_proprio=false"] if pixels else []
    runner = _smoke(algo, cartpole_demos, tmp_path, extra)
    # The checkpoint restores into a fresh agent.
    from vmil.checkpoint import load_checkpoint
    from vmil.registry import algo_module

    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", algo=algo)
    module = algo_module(algo)
    agent = module.build(runner.cfg.agent, runner.spec, torch.device("cpu"), None)
    agent.load_state_dict(payload["agent"])


# ---------------------------------------------------------------------------------------------
# Learning checks


def _learn(algo, env_id, tmp_path, overrides=()):
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    module = algo_module(algo)
    cfg = resolve(algo, module.Config, env_id, "cpu", ["device=cpu", "threads=1", "train.video=false", *overrides])
    demos = tmp_path / "demos"
    record(env_id, "scripted", 10, demos, keep_actions=False, image_size=cfg.env.image_size,
           action_repeat=cfg.env.action_repeat, proprio=cfg.env.proprio, quiet=True)
    runner = build_run(cfg, demos, tmp_path / "run", tracking_uri="none", quiet=True)
    try:
        summary = runner.run()
    finally:
        runner.close()
    print(algo, env_id, json.dumps(summary))
    return summary


@pytest.mark.slow
def test_bco_learns_cartpole_from_state(tmp_path):
    """The issue's target (>= 450) with the cpu preset (BCO(0)); docs/results.md: 500 on seed 0."""
    assert _learn("bco", "gym:CartPole-v1", tmp_path)["eval_return_mean"] >= 450


@pytest.mark.slow
def test_pmi_learns_cartpole_from_state(tmp_path):
    """The issue's target (>= 450) with the cpu preset; docs/results.md: 224.7 on seed 0 (12k steps of
    discrete SAC, still rising), so this check does not pass yet."""
    assert _learn("pmi", "gym:CartPole-v1", tmp_path)["eval_return_mean"] >= 450


def test_pmi_on_the_ppo_learner_from_pixels(cartpole_demos, tmp_path):
    """agent.rl.learner=ppo: the on-policy runner, the rollout relabelled with PMI's reward; its
    checkpoint restores; state observations are refused (rollouts carry no state)."""
    from vmil.checkpoint import load_checkpoint
    from vmil.config import resolve
    from vmil.registry import algo_module
    from vmil.rl.onpolicy import OnPolicyRunner

    pixels = ["agent.use_pixels=true", "agent.use_proprio=false", "agent.rl.learner=ppo", "env.image_size=32",
              "agent.frame_stack=3"]
    cfg = resolve("pmi", algo_module("pmi").Config, "gym:CartPole-v1", "smoke",
                  ["device=cpu", "train.env_steps=64", "train.eval_every=64", *pixels])
    from vmil.runner import build_run

    runner = build_run(cfg, cartpole_demos, tmp_path / "run", tracking_uri="none", quiet=True)
    try:
        assert isinstance(runner, OnPolicyRunner)
        summary = runner.run()
    finally:
        runner.close()
    assert summary["updates"] >= 2 and runner.agent.reward_agent.reward_steps == 5  # 3 per rollout, 5 in all
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", algo="pmi")
    agent = algo_module("pmi").build(cfg.agent, runner.spec, torch.device("cpu"), None)
    agent.load_state_dict(payload["agent"])
    assert agent.reward_agent.reward_steps == 5
    with pytest.raises(ValueError, match="reads pixels only"):
        algo_module("pmi").build(cfg.agent.__class__(**{**cfg.agent.__dict__, "use_proprio": True}), runner.spec,
                                 torch.device("cpu"), None)
