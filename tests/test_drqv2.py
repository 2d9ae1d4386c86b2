"""DrQ-v2 learner: shapes, schedules, a critic that fits a fixed batch, checkpoints, bad input."""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from vmil.base import EnvSpec, Obs, TransitionBatch
from vmil.rl import drqv2
from vmil.nn import linear_schedule
from vmil.rl.drqv2 import Config, Encoder, build, sample_action

SPEC = EnvSpec("toy:reach", (3, 16, 16), 2)
TINY = Config(batch_size=4, feature_dim=8, hidden_dim=32, encoder_channels=8, augment_pad=2)


def make_batch(b: int, spec: EnvSpec = SPEC, k: int = 3, seed: int = 0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    c, h, w = spec.obs_shape
    frames = lambda: torch.randint(0, 256, (b, k * c, h, w), dtype=torch.uint8, generator=g)  # noqa: E731
    return TransitionBatch(obs=frames(), action=torch.rand(b, spec.action_dim, generator=g) * 2 - 1,
                           reward=torch.rand(b, generator=g), discount=torch.full((b,), 0.99 ** 3),
                           next_obs=frames(), step_obs=frames())


def test_encoder_size_for_84_pixels():
    assert Encoder((9, 84, 84), 32).repr_dim == 32 * 35 * 35


def test_linear_schedule_matches_hand_values():
    assert linear_schedule(0, 1.0, 0.1, 500_000) == 1.0
    assert math.isclose(linear_schedule(250_000, 1.0, 0.1, 500_000), 0.55)
    assert math.isclose(linear_schedule(10 ** 7, 1.0, 0.1, 500_000), 0.1)


def test_sample_action_clips_noise_and_passes_gradients():
    torch.manual_seed(0)
    mean = torch.zeros(1000, 2, requires_grad=True)
    a = sample_action(mean, std=5.0, clip=0.3)
    assert a.abs().max() <= 0.3 + 1e-6
    big = sample_action(torch.full((100, 2), 0.95, requires_grad=True), std=1.0, clip=None)
    assert big.max() < 1.0  # clamped into (-1, 1)
    a.sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean))  # straight-through


def test_update_returns_finite_named_metrics_and_moves_the_target():
    torch.manual_seed(0)
    agent = build(TINY, SPEC, torch.device("cpu"))
    assert agent.request.kind == "transition" and agent.request.frame_stack == 3 and agent.request.nstep == 3
    before = [p.clone() for p in agent.critic_target.parameters()]
    metrics = agent.update(make_batch(4), None, step=100)
    for key in ("critic_loss", "actor_loss", "critic_q1", "critic_target_q", "actor_std", "skipped", "reward_mean"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["skipped"] == 0.0
    assert metrics["actor_std"] == pytest.approx(linear_schedule(100, *TINY.std_schedule))
    after = list(agent.critic_target.parameters())
    # Soft update: target <- target + tau * (critic - target).
    for b, a, c in zip(before, after, agent.critic.parameters()):
        torch.testing.assert_close(a, b + TINY.critic_tau * (c.detach() - b), rtol=1e-5, atol=1e-6)


def test_critic_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, augment_pad=0, lr=1e-3, batch_size=16)
    agent = build(cfg, SPEC, torch.device("cpu"))
    batch = make_batch(16, seed=1)
    losses = [agent.update(batch, None, step=0)["critic_loss"] for _ in range(60)]
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3]), losses


def test_pre_tanh_regulariser_pulls_a_saturated_actor_back():
    torch.manual_seed(0)
    agent = build(dataclasses.replace(TINY, pre_tanh_reg=1.0, lr=1e-2), SPEC, torch.device("cpu"))
    with torch.no_grad():
        agent.actor.policy[-1].bias.fill_(8.0)  # saturated: tanh'(8) ~ 5e-7
        for q in (agent.critic.q1, agent.critic.q2):
            q[-1].weight.zero_()  # a flat critic: only the regulariser moves the actor
    h = agent.encode(agent.to_float(make_batch(4).obs)).detach()
    before = float(agent.actor.pre_tanh(h).detach().abs().mean())
    for step in range(20):
        metrics = agent.actor_step(h, step)
    assert metrics["pre_tanh_loss"] > 0 and float(agent.actor.pre_tanh(h).detach().abs().mean()) < before - 0.1
    plain = build(TINY, SPEC, torch.device("cpu"))
    assert "pre_tanh_loss" not in plain.actor_step(h, 0)


def test_act_shapes_ranges_and_state_dict_round_trip():
    torch.manual_seed(0)
    spec = dataclasses.replace(SPEC, action_low=0.0, action_high=2.0)
    agent = build(TINY, spec, torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 256, (9, 16, 16), dtype=np.uint8)
    obs = Obs(image, None, True)
    a, state = agent.act(obs, None, explore=False)
    assert a.shape == (2,) and a.dtype == np.float32 and state is None
    assert (a >= 0).all() and (a <= 2).all()
    explored = np.stack([agent.act(obs, None, explore=True)[0] for _ in range(20)])
    assert (explored >= 0).all() and (explored <= 2).all() and explored.std(0).min() > 0
    agent.update(make_batch(4), None, step=10)

    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    other = build(TINY, spec, torch.device("cpu"))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.step == 10
    np.testing.assert_allclose(other.act(obs, None, False)[0], agent.act(obs, None, False)[0])
    assert other.critic_opt.state_dict()["state"].keys() == agent.critic_opt.state_dict()["state"].keys()


def test_bad_input_is_named():
    agent = build(TINY, SPEC, torch.device("cpu"))
    with pytest.raises(ValueError, match="frame_stack=3"):
        agent.update(make_batch(4, k=2), None, step=0)
    with pytest.raises(ValueError, match="the runner must stack 3 frames"):
        agent.act(Obs(np.zeros((3, 16, 16), np.uint8), None, True), None, False)
    with pytest.raises(ValueError, match="continuous action space"):
        build(TINY, dataclasses.replace(SPEC, discrete=True, action_dim=5), torch.device("cpu"))
    with pytest.raises(KeyError, match="lacks"):
        agent.load_state_dict({"encoder": {}})


def test_registry_and_preset_resolve():
    from vmil.config import resolve
    from vmil.registry import algo_module

    assert algo_module("drqv2") is drqv2
    paper = resolve("drqv2", Config, "toy:reach", "paper")
    assert paper.env.image_size == 84 and paper.agent.batch_size == 256 and paper.agent.hidden_dim == 1024
    assert paper.train.prefill_steps == 2000 and paper.train.update_every == 2
    smoke = resolve("drqv2", Config, "toy:reach", "smoke")
    assert smoke.agent.batch_size == 8 and smoke.train.prefill_steps < smoke.train.env_steps
