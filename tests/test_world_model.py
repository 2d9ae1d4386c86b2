"""World model: returns, KL, free nats, RSSM shapes and resets, open loop, model losses, and the
world model learning toy:reach frames (the actor and critic: tests/test_behavior.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmil.config import ConfigError
from world_model.behavior import Actor, BehaviorConfig, imagine
from world_model.model import ModelConfig, WorldModel
from world_model.networks import ConvDecoder, ConvEncoder, postprocess_image, preprocess_image
from world_model.returns import discount_weights, lambda_return
from world_model.rssm import RSSM, State, free_nats_clamp, kl_loss, kl_normal
from world_model.viz import frame_grid, openloop_strip


# ------------------------------------------------------------------------------ returns

def test_lambda_return_matches_hand_computation():
    reward = torch.tensor([1.0, 2.0, 3.0])
    next_value = torch.tensor([10.0, 20.0, 30.0])
    # G2 = 3 + .9*30 = 30; G1 = 2 + .9*(.5*20 + .5*30) = 24.5; G0 = 1 + .9*(.5*10 + .5*24.5) = 16.525
    got = lambda_return(reward, next_value, 0.9, 0.5)
    assert torch.allclose(got, torch.tensor([16.525, 24.5, 30.0]))
    # lam = 1: discounted Monte-Carlo return bootstrapped with V(s_H).
    mc = lambda_return(reward, next_value, 0.9, 1.0)
    assert torch.allclose(mc[0], torch.tensor(1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 30))
    # lam = 0: one-step TD targets.
    assert torch.allclose(lambda_return(reward, next_value, 0.9, 0.0), reward + 0.9 * next_value)


def test_lambda_return_per_step_discount_and_batch():
    reward = torch.tensor([[1.0, 0.0], [1.0, 2.0]])  # [H=2, N=2]
    next_value = torch.tensor([[5.0, 1.0], [4.0, 3.0]])
    discount = torch.tensor([[0.5, 1.0], [0.0, 1.0]])  # column 0 terminates after step 1
    got = lambda_return(reward, next_value, discount, 0.5)
    # col 0: G1 = 1 + 0*4 = 1; G0 = 1 + .5*(.5*5 + .5*1) = 2.5
    # col 1: G1 = 2 + 3 = 5;   G0 = 0 + 1*(.5*1 + .5*5) = 3
    assert torch.allclose(got, torch.tensor([[2.5, 3.0], [1.0, 5.0]]))


def test_discount_weights():
    w = discount_weights(0.5, 4, torch.zeros(4, 2))
    assert torch.allclose(w[:, 0], torch.tensor([1.0, 0.5, 0.25, 0.125])) and w.shape == (4, 2)


def test_lambda_return_rejects_bad_input():
    with pytest.raises(ValueError, match="must match"):
        lambda_return(torch.zeros(3), torch.zeros(4), 0.9, 0.5)
    with pytest.raises(ValueError, match="lambda"):
        lambda_return(torch.zeros(3), torch.zeros(3), 0.9, 1.5)


# ------------------------------------------------------------------------------ KL and free nats

def test_kl_of_diagonal_gaussians_matches_closed_form():
    m1, s1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])
    m2, s2 = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 1.0])
    # Per dim: log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2
    d0 = math.log(2.0) + (1 + 1) / 8 - 0.5
    d1 = math.log(2.0) + (0.25 + 4) / 2 - 0.5
    assert torch.allclose(kl_normal(m1, s1, m2, s2), torch.tensor(d0 + d1))
    assert torch.allclose(kl_normal(m1, s1, m1, s1), torch.tensor(0.0))


def test_free_nats_clamp_value_and_gradient():
    low = torch.tensor(1.0, requires_grad=True)
    out = free_nats_clamp(low, 3.0)
    out.backward()
    assert out.item() == 3.0 and low.grad.item() == 0.0  # no gradient below the threshold
    high = torch.tensor(5.0, requires_grad=True)
    out = free_nats_clamp(high, 3.0)
    out.backward()
    assert out.item() == 5.0 and high.grad.item() == 1.0


def _states(requires_grad=True):
    g = torch.Generator().manual_seed(0)
    mk = lambda: torch.randn(4, 3, generator=g).requires_grad_(requires_grad)  # noqa: E731
    post = State(mk(), torch.rand(4, 3, generator=g) + 0.5, torch.zeros(4, 3), torch.zeros(4, 2))
    prior = State(mk(), torch.rand(4, 3, generator=g) + 0.5, torch.zeros(4, 3), torch.zeros(4, 2))
    return post, prior


def test_kl_loss_free_nats_and_balancing():
    post, prior = _states()
    loss, value = kl_loss(post, prior, free_nats=0.0)
    assert torch.allclose(value, kl_normal(post.mean, post.std, prior.mean, prior.std).mean())
    assert torch.allclose(loss, value)
    loss, _ = kl_loss(post, prior, free_nats=1e6)
    assert loss.item() == 1e6
    # Balancing keeps the value but splits the gradient: the prior gets `balance` of it.
    plain, _ = kl_loss(post, prior, free_nats=0.0)
    g_prior, g_post = torch.autograd.grad(plain, [prior.mean, post.mean])
    bal, value_b = kl_loss(post, prior, free_nats=0.0, balance=0.8)
    b_prior, b_post = torch.autograd.grad(bal, [prior.mean, post.mean])
    assert torch.allclose(bal, value_b, atol=1e-6)
    assert torch.allclose(b_prior, 0.8 * g_prior, atol=1e-6) and torch.allclose(b_post, 0.2 * g_post, atol=1e-6)
    with pytest.raises(ValueError, match="balance"):
        kl_loss(post, prior, 0.0, balance=1.0)


def test_kl_loss_mask_leaves_rows_out():
    post, prior = _states(requires_grad=False)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    _, value = kl_loss(post, prior, 0.0, mask=mask)
    assert torch.allclose(value, kl_normal(post.mean, post.std, prior.mean, prior.std)[:2].mean())


# ------------------------------------------------------------------------------ RSSM and networks

def test_encoder_decoder_shapes():
    enc = ConvEncoder(3, 64, depth=32)
    assert enc.out_dim == 1024
    x = torch.zeros(2, 5, 3, 64, 64)
    assert enc(x).shape == (2, 5, 1024)
    dec = ConvDecoder(230, 3, 64, depth=8)
    assert dec(torch.zeros(2, 5, 230)).shape == (2, 5, 3, 64, 64)
    with pytest.raises(ValueError, match=r"image sizes \(32, 64\), got 84"):
        ConvEncoder(3, 84)
    with pytest.raises(ValueError, match=r"image sizes \(32, 64\), got 48"):
        ConvDecoder(230, 3, 48)
    with pytest.raises(ValueError, match="expects images"):
        enc(torch.zeros(2, 3, 32, 32))
    # 32x32: one stride-2 layer fewer each way, still 2x2 at the bottom and the input size out.
    small = ConvEncoder(3, 32, depth=32)
    assert small.out_dim == 512 and len([m for m in small.net if isinstance(m, torch.nn.Conv2d)]) == 3
    assert small(torch.zeros(2, 5, 3, 32, 32)).shape == (2, 5, 512)
    assert ConvDecoder(230, 1, 32, depth=8)(torch.zeros(2, 5, 230)).shape == (2, 5, 1, 32, 32)


def test_cnn_act_picks_the_conv_activation():
    from torch import nn

    def acts(module):
        return {type(m) for m in module.modules() if isinstance(m, (nn.ReLU, nn.ELU))}

    relu = WorldModel((3, 64, 64), 2, deter=8, stoch=4, hidden=8, depth=4)
    elu = WorldModel((3, 64, 64), 2, deter=8, stoch=4, hidden=8, depth=4, cnn_act="elu")
    assert acts(relu.encoder) == acts(relu.decoder) == {nn.ReLU}
    assert acts(elu.encoder) == acts(elu.decoder) == {nn.ELU}
    assert WorldModel.from_config(ModelConfig(depth=4, cnn_act="elu"), (3, 64, 64), 2).encoder.net[1].__class__ is nn.ELU
    with pytest.raises(ValueError, match="cnn_act"):
        WorldModel((3, 64, 64), 2, cnn_act="tanh")


def test_preprocess_roundtrip():
    obs = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(postprocess_image(preprocess_image(obs)), obs)
    with pytest.raises(TypeError, match="uint8"):
        preprocess_image(obs.float())


def test_observe_and_imagine_shapes():
    B, T, H, A, E = 3, 6, 4, 2, 10
    rssm = RSSM(A, E, stoch=5, deter=7, hidden=8)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    post, prior = rssm.observe(torch.randn(B, T, E), torch.randn(B, T, A), is_first)
    for s in (post, prior):
        assert s.mean.shape == s.std.shape == s.stoch.shape == (B, T, 5) and s.deter.shape == (B, T, 7)
        assert (s.std >= 0.1).all()
    assert rssm.feat(post).shape == (B, T, 12)
    actor = Actor(12, A, units=8, layers=2)
    states, feats, actions, logp, raw = imagine(rssm, actor, post.flatten(), H, with_log_prob=True)
    assert feats.shape == (H + 1, B * T, 12) and actions.shape == (H, B * T, A) and logp.shape == (H, B * T)
    assert states.deter.shape == (H + 1, B * T, 7)
    assert torch.allclose(torch.tanh(raw), actions)
    assert torch.equal(states.stoch[0], post.flatten().stoch)
    assert actions.abs().max() <= 1
    with pytest.raises(ValueError, match="observe expects"):
        rssm.observe(torch.randn(B, T, E), torch.randn(B, T + 1, A), is_first)


def test_observe_resets_state_at_episode_start():
    torch.manual_seed(0)
    B, T, A, E = 2, 7, 2, 6
    rssm = RSSM(A, E, stoch=4, deter=5, hidden=6)
    embed, action = torch.randn(B, T, E), torch.randn(B, T, A)
    action[:, 3] = 0  # the convention: no action led to an episode's first frame
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 3] = True
    post, _ = rssm.observe(embed, action, is_first, sample=False)
    tail, _ = rssm.observe(embed[:, 3:], action[:, 3:], is_first[:, 3:], sample=False)
    assert torch.allclose(post.deter[:, 3:], tail.deter, atol=1e-6)
    assert torch.allclose(post.mean[:, 3:], tail.mean, atol=1e-6)


@pytest.mark.parametrize("residual", [False, True])
def test_observe_matches_obs_step_loop(residual):
    torch.manual_seed(1)
    rssm = RSSM(2, 6, stoch=4, deter=5, hidden=6, residual_prior=residual)
    embed, action = torch.randn(1, 4, 6), torch.randn(1, 4, 2)
    post, prior = rssm.observe(embed, action, torch.zeros(1, 4, dtype=torch.bool), sample=False)
    state = rssm.initial(1)
    for t in range(4):
        state, p = rssm.obs_step(state, action[:, t], embed[:, t], sample=False)
        assert torch.allclose(state.mean, post.mean[:, t], atol=1e-6)
        assert torch.allclose(p.mean, prior.mean[:, t], atol=1e-6)


def test_residual_prior_adds_the_change_to_the_last_stochastic_state():
    torch.manual_seed(2)
    B, T, A, E = 2, 6, 2, 6
    plain = RSSM(A, E, stoch=4, deter=5, hidden=6)
    residual = RSSM(A, E, stoch=4, deter=5, hidden=6, residual_prior=True)
    residual.load_state_dict(plain.state_dict())
    embed, action = torch.randn(B, T, E), torch.randn(B, T, A)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = is_first[1, 3] = True
    post_p, prior_p = plain.observe(embed, action, is_first, sample=False)
    post_r, prior_r = residual.observe(embed, action, is_first, sample=False)
    # The posterior does not depend on the prior's parameterisation; the prior's mean gains the last
    # stochastic state, which is zero at an episode's start.
    assert torch.allclose(post_p.mean, post_r.mean, atol=1e-6)
    last = torch.cat([torch.zeros(B, 1, 4), post_p.stoch[:, :-1]], 1) * (~is_first).float().unsqueeze(-1)
    assert torch.allclose(prior_r.mean, prior_p.mean + last, atol=1e-6)
    assert torch.allclose(prior_r.std, prior_p.std)
    step = residual.img_step(post_r.map(lambda x: x[:, 2]), action[:, 3], sample=False)
    ref = plain.img_step(post_p.map(lambda x: x[:, 2]), action[:, 3], sample=False)
    assert torch.allclose(step.mean, ref.mean + post_p.stoch[:, 2], atol=1e-6)


def test_open_loop_and_strip():
    wm = WorldModel((3, 64, 64), 2, deter=8, stoch=4, hidden=8, depth=4)
    obs = torch.randint(0, 256, (2, 6, 3, 64, 64), dtype=torch.uint8)
    truth, pred = wm.open_loop(obs, torch.zeros(2, 6, 2), torch.zeros(2, 6, dtype=torch.bool), context=2)
    assert truth.shape == pred.shape == (2, 6, 3, 64, 64) and pred.dtype == torch.uint8
    strip = openloop_strip(truth, pred)
    assert strip.shape == (2 * 3 * 65 - 1, 6 * 65 - 1, 3) and strip.dtype == np.uint8
    # The error row is mid-grey where truth and prediction agree.
    same = openloop_strip(truth, truth)
    assert (same[2 * 65:3 * 65 - 1, :64] == 128).all()
    with pytest.raises(ValueError, match="context"):
        wm.open_loop(obs, torch.zeros(2, 6, 2), torch.zeros(2, 6, dtype=torch.bool), context=6)
    assert frame_grid(np.zeros((1, 2, 1, 4, 4), np.uint8)).shape == (4, 9, 3)


def test_world_model_proprio_needs_state():
    with pytest.raises(ValueError, match="proprio"):
        WorldModel((3, 64, 64), 2, 0, proprio=True)
    wm = WorldModel((3, 64, 64), 2, 5, deter=8, stoch=4, hidden=8, depth=4, proprio=True, proprio_units=8)
    image = preprocess_image(torch.zeros(2, 3, 3, 64, 64, dtype=torch.uint8))
    state = torch.randn(2, 3, 5)
    embed = wm.encode(image, state)
    assert embed.shape == (2, 3, wm.embed_dim) and wm.embed_dim == 4 * 8 * 4 + 64
    losses, _, _, _ = wm.losses(image, embed, torch.zeros(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool), state,
                                free_nats=3.0)
    assert set(losses) == {"image", "kl", "proprio"}
    with pytest.raises(ValueError, match="no state"):
        wm.encode(image, None)


def test_image_loss_is_half_the_squared_error_per_frame():
    """losses['image'] = 0.5 * sum over a frame of (decoded - image)^2, averaged over B*T frames;
    image_mse = mean over every pixel, and the gradient is the one of that formula."""
    torch.manual_seed(0)
    wm = WorldModel((3, 32, 32), 2, deter=8, stoch=4, hidden=8, depth=4)
    obs = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    image = preprocess_image(obs)
    losses, post, _, metrics = wm.losses(image, wm.encode(image), torch.zeros(2, 3, 2),
                                         torch.zeros(2, 3, dtype=torch.bool), free_nats=3.0)
    recon = wm.decoder(wm.rssm.feat(post))
    squared = (recon - image) ** 2
    reference = 0.5 * squared.sum((-3, -2, -1)).mean()
    assert torch.isclose(losses["image"], reference, rtol=1e-5)
    assert torch.isclose(metrics["image_mse"], squared.mean(), rtol=1e-5)
    bias = wm.decoder.net[-1].bias
    (grad,) = torch.autograd.grad(losses["image"], bias, retain_graph=True)
    (grad_ref,) = torch.autograd.grad(reference, bias)
    assert torch.allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        wm.losses(image[..., :8, :8], wm.encode(image), torch.zeros(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool),
                  free_nats=3.0)


def test_latent_action_loss_matches_hand_computation():
    """action_head(z_t+1 - z_t) against a_t+1, only inside episodes and only for marked sequences."""
    wm = WorldModel((3, 64, 64), 2, deter=8, stoch=3, hidden=8, depth=4, latent_action=True)
    with torch.no_grad():
        wm.action_head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
        wm.action_head.bias.zero_()
    mean = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 5.0], [1.0, 2.0, 5.0]],
                         [[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    post = State(mean, torch.ones_like(mean), mean, torch.zeros(2, 3, 8))
    action = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]],
                           [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    is_first = torch.tensor([[True, False, False], [True, False, False]])
    # Sequence 0: predictions (1, 2) vs (1, 1) -> 0.5; (0, 2) vs (0, 0) -> 2. Sequence 1: (3, 0) -> 4.5; 0.
    assert torch.isclose(wm.latent_action_loss(post, action, is_first), torch.tensor(7.0 / 4))
    assert torch.isclose(wm.latent_action_loss(post, action, is_first, torch.tensor([1.0, 0.0])),
                         torch.tensor(2.5 / 2))
    is_first[0, 2] = True  # a reset inside the sequence: that step is no transition
    assert torch.isclose(wm.latent_action_loss(post, action, is_first, torch.tensor([1.0, 0.0])),
                         torch.tensor(0.5))
    image = preprocess_image(torch.zeros(2, 3, 3, 64, 64, dtype=torch.uint8))
    losses, _, _, _ = wm.losses(image, wm.encode(image), action, is_first, free_nats=3.0)
    assert set(losses) == {"image", "kl", "latent_action"}
    with pytest.raises(ValueError, match="latent-action"):
        WorldModel((3, 64, 64), 2, deter=8, stoch=3, hidden=8, depth=4).latent_action_loss(post, action, is_first)


def test_action_sensitivity_matches_a_loop_over_img_step():
    torch.manual_seed(0)
    wm = WorldModel((3, 64, 64), 2, deter=8, stoch=4, hidden=8, depth=4)
    B, T = 2, 4
    post = State(torch.randn(B, T, 4), torch.ones(B, T, 4), torch.randn(B, T, 4), torch.randn(B, T, 8))
    action = torch.randn(B, T, 2)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[1, 2] = True
    out = wm.action_sensitivity(post, action, is_first)
    errs, errs0, steps = [], [], []
    with torch.no_grad():
        for b in range(B):
            for t in range(1, T):
                if is_first[b, t]:
                    continue
                prev = post.map(lambda x: x[b:b + 1, t - 1])
                errs.append((wm.rssm.img_step(prev, action[b:b + 1, t], sample=False).mean - post.mean[b, t]).norm())
                errs0.append((wm.rssm.img_step(prev, torch.zeros(1, 2), sample=False).mean - post.mean[b, t]).norm())
                steps.append((post.mean[b, t] - post.mean[b, t - 1]).norm())
    assert torch.isclose(out["prior_err"], torch.stack(errs).mean(), atol=1e-5)
    assert torch.isclose(out["prior_err_zero_action"], torch.stack(errs0).mean(), atol=1e-5)
    assert torch.isclose(out["latent_step"], torch.stack(steps).mean(), atol=1e-5)


def test_prior_fit_loss_matches_a_loop_and_trains_only_the_dynamics():
    torch.manual_seed(0)
    wm = WorldModel((3, 64, 64), 2, deter=8, stoch=4, hidden=8, depth=4)
    B, T = 2, 4
    post = State(torch.randn(B, T, 4), torch.rand(B, T, 4) + 0.1, torch.randn(B, T, 4), torch.randn(B, T, 8))
    action = torch.randn(B, T, 2)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 2] = True
    kls = []
    with torch.no_grad():
        for b in range(B):
            for t in range(1, T):
                if is_first[b, t]:
                    continue
                prior = wm.rssm.img_step(post.map(lambda x: x[b:b + 1, t - 1]), action[b:b + 1, t], sample=False)
                kls.append(kl_normal(post.mean[b, t], post.std[b, t], prior.mean[0], prior.std[0]))
    loss = wm.prior_fit_loss(post.map(lambda x: x.requires_grad_()), action, is_first)
    assert len(kls) == 5 and torch.isclose(loss, torch.stack(kls).mean(), atol=1e-5)
    loss.backward()
    dynamics = {id(p) for p in wm.dynamics_parameters()}
    assert dynamics and all(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.dynamics_parameters())
    assert all(p.grad is None for p in wm.parameters() if id(p) not in dynamics)  # posterior, convs untouched
    assert post.mean.grad is None  # the targets are detached


# ------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("make, match", [
    (lambda: BehaviorConfig(horizon=0), "horizon"),
    (lambda: BehaviorConfig(horizon=-3), "horizon"),
    (lambda: BehaviorConfig(gamma=1.5), "gamma"),
    (lambda: ModelConfig(deter=0), "deter"),
    (lambda: ModelConfig(kl_balance=1.0), "kl_balance"),
    (lambda: ModelConfig(free_nats=-1.0), "free_nats"),
    (lambda: ModelConfig(latent_action_scale=-1.0), "latent_action_scale"),
    (lambda: ModelConfig(prior_steps=-1), "prior_steps"),
])
def test_bad_config_values_fail_clearly(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# ------------------------------------------------------------------------------ learning

@pytest.mark.parametrize("size", [64, 32])
def test_world_model_learns_toy_reach_frames(size, toy_demos, tmp_path):
    """A small world model on scripted toy:reach demos: the image loss drops well below its start."""
    from conftest import record_toy_demos
    from vmil import envs
    from vmil.data.replay import Replay

    torch.manual_seed(0)
    demos = toy_demos if size == 64 else record_toy_demos(tmp_path / "demos32", 5, True, image_size=size)
    spec = envs.make("toy:reach", image_size=size, action_repeat=2).spec
    replay = Replay.from_directory(spec, demos, "cpu")
    gen = torch.Generator().manual_seed(0)
    wm = WorldModel(spec.obs_shape, spec.action_dim, deter=32, stoch=8, hidden=32, depth=8)
    opt = torch.optim.Adam(wm.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        batch = replay.sample_sequences(8, 8, gen)
        image = preprocess_image(batch.obs)
        losses, _, _, _ = wm.losses(image, wm.encode(image), batch.action, batch.is_first, free_nats=3.0)
        loss = losses["image"] + losses["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(losses["image"].item())
    start, end = np.mean(history[:3]), np.mean(history[-5:])
    assert end < 0.25 * start, f"image loss {start:.1f} -> {end:.1f}"


def test_focus_loss_reads_only_each_frames_worst_pixels():
    from world_model.model import focus_loss

    image = torch.zeros(2, 3, 3, 4, 4)
    recon = torch.zeros_like(image)
    recon[0, 0, :, 1, 2] = 1.0  # squared error 3 at one pixel of frame 0
    recon[1, 2, 0, 3, 3] = 2.0  # 4 at one pixel of frame 5
    recon[1, 2, 1, 0, 0] = 0.5  # 0.25 at another pixel of frame 5
    # Top 2 of 16 pixels per frame (fraction 0.125), summed, halved, averaged over the 6 frames.
    assert focus_loss(recon, image, 0.125).item() == pytest.approx(0.5 * (3.0 + 4.25) / 6)
    assert focus_loss(recon, image, 1 / 16).item() == pytest.approx(0.5 * (3.0 + 4.0) / 6)
    full = 0.5 * (recon - image).pow(2).sum() / 6
    assert focus_loss(recon, image, 1.0).item() == pytest.approx(full.item())


def test_multi_step_prior_fit_matches_an_open_loop_reference():
    from world_model.model import WorldModel
    from world_model.rssm import State, kl_normal

    torch.manual_seed(0)
    wm = WorldModel((3, 32, 32), 2, deter=8, stoch=4, hidden=8, depth=2)
    B, T, S = 2, 5, 4
    mean, std = torch.randn(B, T, S), torch.rand(B, T, S) + 0.1
    post = State(mean, std, mean + std * torch.randn(B, T, S), torch.randn(B, T, 8))
    action = torch.rand(B, T, 2) * 2 - 1
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 3] = True  # an episode starts inside the second sequence
    h = 3
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            state = post.map(lambda x: x[b:b + 1, t])
            for j in range(1, h + 1):
                if t + j > T - 1 or bool(is_first[b, t + 1:t + j + 1].any()):
                    break
                state = wm.rssm.img_step(state, action[b:b + 1, t + j], sample=False)
                total += kl_normal(mean[b, t + j], std[b, t + j], state.mean[0], state.std[0]).item()
                count += 1
    assert wm.prior_fit_loss(post, action, is_first, h).item() == pytest.approx(total / count, rel=1e-5)
    one = wm.prior_fit_loss(post, action, is_first, 1).item()
    assert one != pytest.approx(total / count)
    with pytest.raises(ValueError, match="horizon"):
        wm.prior_fit_loss(post, action, is_first, 0)
