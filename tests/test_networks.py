"""The shared MLP builder and the option that reaches every head built from it; the decoder's
phase-conv image layer against the transposed conv it replaces."""
from __future__ import annotations

import pytest
import torch

from imitation.latent_discriminator import LatentDiscriminator
from world_model.behavior import ActorCritic, BehaviorConfig
from world_model.networks import ConvDecoder, ImageConvTranspose2d, mlp



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
