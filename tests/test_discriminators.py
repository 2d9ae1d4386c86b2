"""Patch / feature / encoder discriminators, the per-sample gradient penalty and the BCE loss."""
from __future__ import annotations

import math

import pytest
import torch

from imitation.discriminators import (EncoderDiscriminator, FeatureDiscriminator, PatchDiscriminator,
                                      discriminator_loss, gradient_penalty, normalize_image)
from imitation.viz import receptive_field


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """torch.allclose with dtype-aware tolerances (torch.testing imports torch.distributed: seconds)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{actual.shape} {actual.dtype} vs {expected.shape} {expected.dtype}"
    tol = 1e-10 if actual.dtype == torch.float64 else 1e-5
    diff = float((actual - expected).detach().abs().max()) if actual.numel() else 0.0
    assert torch.allclose(actual, expected, rtol=tol, atol=tol), f"max abs difference {diff}"


def test_default_patch_discriminator_shape_and_receptive_field():
    disc = PatchDiscriminator(18)
    out = disc(torch.rand(2, 18, 84, 84))
    assert out.shape == (2, 1, 39, 39)
    assert receptive_field(disc, (18, 84, 84)) == (22, 22)
    geo = disc.geometry()
    assert (geo.receptive_field, geo.stride, geo.offset) == (22, 2, 7)
    assert [c.kernel_size for c in disc.convs] == [(4, 4)] * 4
    assert [c.stride for c in disc.convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert [c.out_channels for c in disc.convs] == [32, 64, 128, 1]


# The paper's ablation (Sec. 5): kernel sizes [2, 3, 5, 8] give [46, 42, 35, 25] patches with
# receptive fields [8, 15, 29, 50]; the all-1x1 net gives 84x84 patches of one pixel.
@pytest.mark.parametrize("kernel,one_by_one,patches,rf", [(2, False, 46, 8), (3, False, 42, 15), (5, False, 35, 29),
                                                           (8, False, 25, 50), (4, True, 84, 1)])
def test_ablation_kernel_sizes(kernel, one_by_one, patches, rf):
    disc = PatchDiscriminator(6, kernel, channels=(4, 4, 4), one_by_one=one_by_one)
    assert disc(torch.rand(1, 6, 84, 84)).shape == (1, 1, patches, patches)
    assert disc.output_shape(84, 84) == (patches, patches)
    assert receptive_field(disc, (6, 84, 84)) == (rf, rf)
    assert disc.geometry().receptive_field == rf


def test_patch_discriminator_rejects_wrong_inputs():
    disc = PatchDiscriminator(6, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="normalize_image"):
        disc(torch.randint(0, 255, (1, 6, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        disc(torch.rand(1, 6, 32, 32) * 255)
    with pytest.raises(ValueError, match=r"\[B, 6, H, W\]"):
        disc(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        PatchDiscriminator(6, kernel_size=8, channels=(4, 4, 4))(torch.rand(1, 6, 21, 21))
    with pytest.raises(ValueError, match="one_by_one"):
        PatchDiscriminator(6, kernel_size=1)
    assert normalize_image(torch.full((1, 6, 2, 2), 255, dtype=torch.uint8)).max() == 1.0


def test_layout_does_not_change_outputs():
    torch.manual_seed(0)
    a = PatchDiscriminator(6, channels=(4, 8, 8))
    b = PatchDiscriminator(6, channels=(4, 8, 8)).to(memory_format=torch.contiguous_format)
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 6, 32, 32)
    assert a.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert_close(a(x), b(x))
    assert_close(a.input_gradient(x), b.input_gradient(x))


def _per_sample_reference(disc, expert, agent, seed, reduce="mean"):
    """Hand-written loop: same alphas (same generator draw), one sample at a time, autograd."""
    alpha = torch.rand(expert.shape[0], generator=torch.Generator().manual_seed(seed)).to(expert.dtype)
    out = []
    for i in range(expert.shape[0]):
        x = (alpha[i] * expert[i] + (1 - alpha[i]) * agent[i]).unsqueeze(0).requires_grad_(True)
        d = disc(x)
        total = d.sum() if reduce == "sum" else d.mean()
        g, = torch.autograd.grad(total, x, create_graph=True)
        out.append((g.reshape(-1).norm() - 1) ** 2)
    return torch.stack(out)


def _param_grads(disc, value):
    disc.zero_grad(set_to_none=True)
    value.backward()
    # Biases only move the LeakyReLU gates, which have zero derivative: None and zeros both mean 0.
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in disc.parameters()]


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_patch_gradient_penalty_equals_per_sample_loop(reduce):
    torch.manual_seed(0)
    disc = PatchDiscriminator(6, channels=(4, 8, 8)).double()
    expert, agent = torch.rand(2, 5, 6, 24, 24, dtype=torch.float64)
    gp = gradient_penalty(disc, expert, agent, torch.Generator().manual_seed(3), patch_reduce=reduce)
    ref = _per_sample_reference(disc, expert, agent, 3, reduce)
    assert gp.shape == (5,)
    assert_close(gp, ref)
    # Parameter gradients of the penalty: the transposed-conv path equals autograd's double backward.
    grads = _param_grads(disc, gp.mean())
    ref_grads = _param_grads(disc, ref.mean())
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kernel,one_by_one", [(3, False), (8, False), (4, True)])
def test_patch_gradient_penalty_other_geometries(kernel, one_by_one):
    torch.manual_seed(1)
    disc = PatchDiscriminator(3, kernel, channels=(4, 4, 4), one_by_one=one_by_one).double()
    expert, agent = torch.rand(2, 3, 3, 37, 37, dtype=torch.float64)  # odd size: stride 2 skips a pixel
    gp = gradient_penalty(disc, expert, agent, torch.Generator().manual_seed(0))
    assert_close(gp, _per_sample_reference(disc, expert, agent, 0))


def test_generic_gradient_penalty_equals_per_sample_loop():
    torch.manual_seed(0)
    feat = FeatureDiscriminator(7, 16).double()
    e, a = torch.randn(2, 4, 7, dtype=torch.float64)
    assert_close(gradient_penalty(feat, e, a, torch.Generator().manual_seed(5)),
                               _per_sample_reference(feat, e, a, 5))
    enc = EncoderDiscriminator(3, feature_dim=8, hidden_dim=16, image_size=20).double()
    e, a = torch.rand(2, 3, 3, 20, 20, dtype=torch.float64)
    assert_close(gradient_penalty(enc, e, a, torch.Generator().manual_seed(5)),
                               _per_sample_reference(enc, e, a, 5))


def test_gradient_penalty_needs_paired_batches():
    disc = FeatureDiscriminator(4, 8)
    with pytest.raises(ValueError, match="equal batch sizes"):
        gradient_penalty(disc, torch.zeros(3, 4), torch.zeros(2, 4))


def test_discriminator_loss_equals_hand_formula():
    torch.manual_seed(0)
    disc = PatchDiscriminator(6, channels=(4, 8, 8)).double()
    expert, agent = torch.rand(2, 4, 6, 20, 20, dtype=torch.float64)
    loss, m = discriminator_loss(disc, expert, agent, gp_weight=0.0)
    with torch.no_grad():
        de, da = torch.sigmoid(disc(expert)), torch.sigmoid(disc(agent))
    # Eq. (4) per patch: -E[log D(expert)] - E[log(1 - D(agent))], averaged over samples and patches.
    hand = -(torch.log(de)).mean() - torch.log(1 - da).mean()
    assert_close(loss, hand)
    assert m["gp"] == 0.0 and math.isclose(m["loss"], float(hand.detach()), rel_tol=1e-9)
    assert math.isclose(m["expert_acc"], float((de > 0.5).double().mean()), rel_tol=1e-9)
    assert math.isclose(m["agent_acc"], float((da < 0.5).double().mean()), rel_tol=1e-9)
    assert math.isclose(m["expert_d"], float(de.mean()), rel_tol=1e-9)
    assert math.isclose(m["agent_d"], float(da.mean()), rel_tol=1e-9)
    assert math.isclose(m["bce"], m["bce_expert"] + m["bce_agent"], rel_tol=1e-12)

    loss10, m10 = discriminator_loss(disc, expert, agent, gp_weight=10.0, generator=torch.Generator().manual_seed(7))
    gp = _per_sample_reference(disc, expert, agent, 7).mean()
    assert_close(loss10, hand + 10.0 * gp)
    assert math.isclose(m10["gp"], float(gp.detach()), rel_tol=1e-9)


def _descend(disc: torch.nn.Module, loss: torch.Tensor, lr: float) -> None:
    """Clipped gradient descent (torch.optim imports torch._dynamo: seconds per test session)."""
    disc.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
    with torch.no_grad():
        for p in disc.parameters():
            if p.grad is not None:
                p -= lr * p.grad


def _bright_and_dark():
    torch.manual_seed(0)
    return torch.rand(4, 3, 12, 12) * 0.3 + 0.7, torch.rand(4, 3, 12, 12) * 0.3


def test_discriminator_loss_trains_towards_labels():
    expert, agent = _bright_and_dark()
    disc = PatchDiscriminator(3, channels=(4, 4, 4))
    first = None
    for _ in range(25):
        loss, m = discriminator_loss(disc, expert, agent, gp_weight=0.0)
        first = first if first is not None else m["bce"]
        _descend(disc, loss, 0.5)
    assert m["bce"] < 0.5 * first
    assert m["expert_acc"] == 1.0 and m["agent_acc"] == 1.0


@pytest.mark.parametrize("reduce,lr,ratio", [("mean", 0.1, 0.25), ("sum", 0.03, 0.05)])
def test_penalty_pulls_gradient_norms_to_one(reduce, lr, ratio):
    expert, agent = _bright_and_dark()
    disc = PatchDiscriminator(3, channels=(4, 4, 4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = float(gradient_penalty(disc, expert, agent, gen, patch_reduce=reduce).mean())
    for _ in range(40):
        _descend(disc, gradient_penalty(disc, expert, agent, gen, patch_reduce=reduce).mean(), lr)
    end = float(gradient_penalty(disc, expert, agent, gen, patch_reduce=reduce).mean().detach())
    assert end < ratio * start, (start, end)


def test_scalar_discriminators_shapes_and_checks():
    feat = FeatureDiscriminator(10, 32)
    assert feat(torch.randn(5, 10)).shape == (5, 1)
    with pytest.raises(ValueError, match=r"\[B, 10\]"):
        feat(torch.randn(5, 11))
    enc = EncoderDiscriminator(9, feature_dim=8, hidden_dim=16, image_size=32)
    assert enc(torch.rand(2, 9, 32, 32)).shape == (2, 1)
    with pytest.raises(ValueError, match="image_size=40"):
        enc(torch.rand(2, 9, 40, 40))
    loss, m = discriminator_loss(enc, torch.rand(2, 9, 32, 32), torch.rand(2, 9, 32, 32))
    loss.backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert set(m) >= {"loss", "bce_expert", "bce_agent", "gp", "expert_acc", "agent_acc"}


@pytest.mark.slow
def test_default_loss_separates_expert_from_random_policy_pairs(tmp_path):
    """The default loss (BCE + mean-reduced per-sample penalty, weight 10) learns a reward that
    ranks held-out expert (s, s') pairs of toy:reach above random-policy ones."""
    import numpy as np

    from imitation.rewards import aggregate
    from imitation.viz import transition_inputs
    from vmil import envs
    from vmil.data.episode import load_episodes
    from vmil.demos import record

    record("toy:reach", "scripted", 6, tmp_path / "demos", image_size=32, action_repeat=2, seed=0, quiet=True)
    expert = torch.cat([transition_inputs(ep.obs, 3, True) for ep in load_episodes(tmp_path / "demos")])
    env = envs.make("toy:reach", image_size=32, action_repeat=2, seed=1)
    rng, agent = np.random.default_rng(0), []
    for _ in range(6):
        ts = env.reset()
        frames = [ts.obs]
        while not ts.last:
            ts = env.step(rng.uniform(-1, 1, env.spec.action_dim).astype(np.float32))
            frames.append(ts.obs)
        agent.append(transition_inputs(np.stack(frames), 3, True))
    env.close()
    agent = torch.cat(agent)
    gen = torch.Generator().manual_seed(0)
    pe, pa = torch.randperm(len(expert), generator=gen), torch.randperm(len(agent), generator=gen)
    cut_e, cut_a = len(expert) * 3 // 4, len(agent) * 3 // 4
    torch.manual_seed(0)
    disc = PatchDiscriminator(18, channels=(16, 32, 64))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-4)
    for _ in range(300):
        ie, ia = pe[torch.randint(cut_e, (32,))], pa[torch.randint(cut_a, (32,))]
        loss, metrics = discriminator_loss(disc, expert[ie], agent[ia], gp_weight=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        r_expert, r_agent = aggregate(disc(expert[pe[cut_e:]])), aggregate(disc(agent[pa[cut_a:]]))
    gap = (r_expert.mean() - r_agent.mean()) / torch.cat([r_expert, r_agent]).std()
    assert gap > 1.0, (float(gap), metrics)
    assert metrics["gp"] < 0.1
