"""The shared MLP builder and the option that reaches every head built from it; the decoder's
phase-conv image layer against the transposed conv it replaces."""
from __future__ import annotations

import pytest
import torch

from imitation.latent_discriminator import LatentDiscriminator
from world_model.behavior import ActorCritic, BehaviorConfig
from world_model.networks import ConvDecoder, ConvEncoder, ImageConvTranspose2d, PatchConv2d, mlp



def test_mlp_layer_norm_normalises_every_hidden_layer_and_reaches_the_heads():
    torch.manual_seed(0)
    net = mlp(5, 3, units=16, layers=2, layer_norm=True)
    x = torch.randn(7, 5) * 10 + 3
    h = x
    for module in net[:-1]:
        h = module(h)
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.allclose(h.mean(-1), torch.zeros(7), atol=1e-5)
            assert torch.allclose(h.var(-1, unbiased=False), torch.ones(7), atol=1e-3)
    assert net(x).shape == (7, 3)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in net) == 2
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in mlp(5, 3, units=16, layers=2))
    ac = ActorCritic(9, 2, BehaviorConfig(units=8, actor_layers=2, critic_layers=1, layer_norm=True))
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in ac.actor.modules()) == 2
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in ac.critic.modules()) == 1
    disc = LatentDiscriminator(5, 2, "zz", units=8, layers=2, layer_norm=True)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in disc.modules()) == 2


@pytest.mark.parametrize("kernel,size", [(6, 30), (4, 7), (6, 14)])
def test_image_transposed_conv_matches_the_transposed_conv(kernel, size):
    """The phase-conv forward computes the same transposed conv (to float rounding), and its
    backward gives the transposed conv's gradients."""
    torch.manual_seed(0)
    fast = ImageConvTranspose2d(5, 3, kernel)
    reference = torch.nn.ConvTranspose2d(5, 3, kernel, stride=2)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(4, 5, size, size).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 3, 2 * size - 2 + kernel, 2 * size - 2 + kernel)
    outs, grads = [], []
    for module in (fast, reference):
        xx = x.detach().requires_grad_(True)
        y = module(xx)
        y.backward(grad)
        outs.append(y)
        grads.append((xx.grad, module.weight.grad, module.bias.grad))
        module.zero_grad()
    assert outs[0].shape == outs[1].shape == grad.shape
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="even kernel"):
        ImageConvTranspose2d(5, 3, 5)


def test_decoder_uses_the_phase_conv_for_its_last_layer_only():
    decoder = ConvDecoder(16, 3, image_size=64, depth=4)
    transposed = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [type(m) is ImageConvTranspose2d for m in transposed] == [False, False, True]
    assert decoder(torch.randn(2, 16)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("size", [6, 8])
def test_patch_conv_matches_the_conv(size):
    """The matmul over stacked patches computes the conv (output, input, weight and bias gradients)."""
    torch.manual_seed(0)
    fast = PatchConv2d(5, 7, 4)
    reference = torch.nn.Conv2d(5, 7, 4, stride=2)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(3, 5, size, size).contiguous(memory_format=torch.channels_last)
    out_size = (size - 4) // 2 + 1
    grad = torch.randn(3, 7, out_size, out_size)
    results = []
    for module in (fast, reference):
        xx = x.detach().requires_grad_(True)
        y = module(xx)
        y.backward(grad)
        results.append((y, xx.grad, module.weight.grad, module.bias.grad))
    assert results[0][0].shape == (3, 7, out_size, out_size)
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


def test_encoder_uses_the_patch_conv_for_its_last_layer_only():
    for size, layers in ((64, 4), (32, 3)):
        encoder = ConvEncoder(3, image_size=size, depth=4)
        convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [type(m) is PatchConv2d for m in convs] == [False] * (layers - 1) + [True]
        assert encoder(torch.randn(2, 3, size, size)).shape == (2, encoder.out_dim)
