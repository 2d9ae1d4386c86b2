"""PPO: GAE and the clipped losses against hand-computed values, observation standardisation, the
update on a fixed rollout, checkpoints, the on-policy runner end to end (smoke), bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmil.base import EnvSpec, Obs
from vmil.rl.ppo import Config, ObsNorm, Rollout, build, gae, ppo_losses

SPEC = EnvSpec("toy:reach", (1, 16, 16), 2)
TINY = Config(num_envs=2, rollout_steps=6, frame_stack=2, epochs=2, minibatches=2, policy_net="small",
              value_net="small", net_width=4, hidden_dim=8)


def make_rollout(t: int = 6, n: int = 2, spec: EnvSpec = SPEC, k: int = 2, seed: int = 0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    c, h, w = spec.obs_shape
    last = torch.zeros(t, n, dtype=torch.bool)
    last[2, 0] = True  # env 0's episode ends at step 2 ...
    valid = torch.ones(t, n, dtype=torch.bool)
    valid[3, 0] = False  # ... so its step 3 is the reset
    action = (torch.randint(spec.action_dim, (t, n), generator=g) if spec.discrete
              else torch.randn(t, n, spec.action_dim, generator=g))
    return Rollout(obs=torch.randint(0, 256, (t + 1, n, k * c, h, w), dtype=torch.uint8, generator=g),
                   action=action, reward=torch.rand(t, n, generator=g), terminal=last.clone(), last=last, valid=valid)


def test_gae_matches_a_hand_computed_example():
    # Three envs over T=3 with gamma 0.9, lambda 0.5 and the same rewards and values:
    # env 0 terminates after step 1 (step 2 is its reset), env 1 is cut by the time limit after
    # step 1 (bootstrap from V(obs[2])), env 2 runs on (bootstrap from V(obs[3])).
    reward = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    value = torch.tensor([0.5, 1.0, 1.5, 2.0])[:, None].repeat(1, 3)
    terminal = torch.tensor([[False] * 3, [True, False, False], [False] * 3])
    last = torch.tensor([[False] * 3, [True, True, False], [False] * 3])
    valid = torch.tensor([[True] * 3, [True] * 3, [False, False, True]])
    adv, ret = gae(reward, value, terminal, last, valid, discount=0.9, lam=0.5)
    # env 0: d1 = 2 - 1 = 1; A1 = 1; d0 = 1 + .9 - .5 = 1.4; A0 = 1.4 + .45 * 1 = 1.85
    # env 1: d1 = 2 + .9 * 1.5 - 1 = 2.35; A0 = 1.4 + .45 * 2.35 = 2.4575
    # env 2: d2 = 3 + .9 * 2 - 1.5 = 3.3; A1 = 2.35 + .45 * 3.3 = 3.835; A0 = 1.4 + .45 * 3.835 = 3.12575
    expected = torch.tensor([[1.85, 2.4575, 3.12575], [1.0, 2.35, 3.835], [0.0, 0.0, 3.3]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + value[:-1])


def test_gae_with_lambda_one_and_no_ends_is_the_discounted_return_minus_the_value():
    reward = torch.rand(5, 1)
    value = torch.rand(6, 1)
    none = torch.zeros(5, 1, dtype=torch.bool)
    adv, ret = gae(reward, value, none, none, ~none, discount=0.8, lam=1.0)
    g = value[5, 0]
    for t in reversed(range(5)):
        g = reward[t, 0] + 0.8 * g
        assert ret[t, 0] == pytest.approx(float(g), rel=1e-5)


def test_gae_refuses_values_of_the_wrong_length():
    none = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(AssertionError, match="one more step than reward"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), none, none, ~none, 0.9, 0.9)


def test_clipped_losses_match_hand_values_and_stop_gradients_where_clipped():
    old = torch.zeros(4)
    log_prob = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # min(r A, clip(r) A): 1.2, -1.5, 0.5, -0.8 -> mean -0.15 -> loss 0.15
    losses, info = ppo_losses(log_prob, old, adv, torch.ones(4), torch.zeros(4), torch.full((4,), 2.0),
                              torch.full((4,), 0.3), clip=0.2, value_clip=0.5)
    assert float(losses["policy"].detach()) == pytest.approx(0.15)
    # value 1 vs target 2: (1 - 2)^2 = 1; clipped to 0 + 0.5: (0.5 - 2)^2 = 2.25 -> max -> 0.5 * 2.25
    assert float(losses["value"]) == pytest.approx(1.125)
    assert float(losses["entropy"]) == pytest.approx(-0.3)
    assert float(info["clip_fraction"]) == 1.0
    losses["policy"].backward()
    # Clipped terms (ratio 1.5 with A > 0, ratio 0.5 with A < 0) give no gradient; the others -r A / 4.
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, 1.5 / 4, -0.5 / 4, 0.0]))
    unclipped, _ = ppo_losses(log_prob.detach(), old, adv, torch.ones(4), torch.zeros(4), torch.full((4,), 2.0),
                              torch.zeros(4), clip=0.2, value_clip=0.0)
    assert float(unclipped["value"]) == pytest.approx(0.5)


def test_obs_norm_merges_batches_like_one_big_batch():
    torch.manual_seed(0)
    norm = ObsNorm((1, 4, 4))
    frames = torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(norm(frames[:2]), frames[:2].float() / 255 - 0.5)  # no statistics yet
    norm.update(frames[:10])
    norm.update(frames[10:])
    x = frames.double()
    torch.testing.assert_close(norm.mean.double(), x.mean(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(norm.var.double(), x.var(0, unbiased=False), rtol=1e-4, atol=1e-3)
    out = norm(torch.cat([frames[:3], frames[3:6]], 1))  # a stack of two frames: each standardised alike
    torch.testing.assert_close(out[:, :1], out[:, :1].clone())
    assert out.abs().max() <= 5.0
    again = ObsNorm((1, 4, 4))
    again.load_state_dict(norm.state_dict())
    assert torch.equal(again(frames[:2]), norm(frames[:2]))  # loaded statistics are used at once


@pytest.mark.parametrize("discrete", [False, True])
def test_update_returns_finite_metrics_and_changes_both_networks(discrete):
    torch.manual_seed(0)
    spec = EnvSpec("toy:reach", (1, 16, 16), 5 if discrete else 2, discrete=discrete)
    agent = build(TINY, spec, torch.device("cpu"))
    assert agent.request.kind == "rollout" and agent.request.frame_stack == 2
    before = [p.clone() for p in list(agent.policy.parameters()) + list(agent.value.parameters())]
    metrics = agent.update(make_rollout(spec=spec), None, step=12)
    for key in ("policy_loss", "value_loss", "entropy_loss", "clip_fraction", "approx_kl", "grad_norm", "skipped"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["valid_fraction"] == pytest.approx(11 / 12)
    after = list(agent.policy.parameters()) + list(agent.value.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before[:len(list(agent.policy.parameters()))], after))
    assert not torch.equal(before[-1], after[-1])
    action, _ = agent.act(Obs(np.zeros((2, 16, 16), np.uint8), None, True), None, explore=False)
    assert (isinstance(action, int) and 0 <= action < 5) if discrete else action.shape == (2,)


def test_the_value_network_fits_the_returns_of_a_fixed_rollout():
    # discount 0: the targets are the rewards themselves, fixed; 11 distinct stacks to memorise.
    torch.manual_seed(0)
    agent = build(Config(num_envs=2, rollout_steps=6, frame_stack=2, epochs=1, minibatches=1, policy_net="small",
                         value_net="small", net_width=4, hidden_dim=8, lr=3e-3, discount=0.0, obs_norm=False),
                  SPEC, torch.device("cpu"))
    rollout = make_rollout()
    first = agent.update(rollout, None, 0)["value_loss"]
    for _ in range(60):
        last = agent.update(rollout, None, 0)["value_loss"]
    assert last < 0.2 * first


def test_state_dict_round_trip_restores_acting_exactly():
    torch.manual_seed(0)
    agent = build(TINY, SPEC, torch.device("cpu"))
    agent.update(make_rollout(), None, 0)
    state = agent.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = build(TINY, SPEC, torch.device("cpu"))
    other.load_state_dict(torch.load(buffer, weights_only=True))
    obs = Obs(np.random.default_rng(0).integers(0, 256, (2, 16, 16), dtype=np.uint8), None, False)
    assert np.array_equal(agent.act(obs)[0], other.act(obs)[0])
    assert other.updates == 1


def test_bad_input_is_refused_with_a_message():
    agent = build(TINY, SPEC, torch.device("cpu"))
    r = make_rollout(k=3)
    with pytest.raises(ValueError, match="frame_stack=2"):
        agent.update(r, None, 0)
    with pytest.raises(ValueError, match="must stack 2 frames"):
        agent.act(Obs(np.zeros((1, 16, 16), np.uint8), None, True))
    from vmil.config import ConfigError
    with pytest.raises(ConfigError, match="num_workers"):
        Config(num_envs=2, num_workers=3)


def test_smoke_run_through_the_on_policy_runner(tmp_path):
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.rl.onpolicy import OnPolicyRunner
    from vmil.runner import build_run, resume_run

    cfg = resolve("ppo", algo_module("ppo").Config, "toy:reach", "smoke", ["train.video=false"])
    demos = record("toy:reach", "scripted", 2, tmp_path / "demos", image_size=cfg.env.image_size,
                   action_repeat=cfg.env.action_repeat, grayscale=cfg.env.grayscale, quiet=True).directory
    runner = build_run(cfg, demos, tmp_path / "run", "none", quiet=True)
    assert isinstance(runner, OnPolicyRunner)
    try:
        summary = runner.run()
    finally:
        runner.close()
    # Smoke: 2 envs x 16 steps per rollout; the steps where an env resets are not env steps.
    assert summary["env_steps"] >= cfg.train.env_steps and summary["updates"] == 4
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    resumed = resume_run(tmp_path / "run", ["train.env_steps=200"], quiet=True)
    try:
        assert resumed.updates == 4
        more = resumed.run()
    finally:
        resumed.close()
    assert more["updates"] > 4 and more["env_steps"] >= 200
