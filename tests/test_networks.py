"""The shared MLP builder and the option that reaches every head built from it; the decoder's
phase-conv image layer against the transposed conv it replaces."""
from __future__ import annotations

import pytest
import torch

from imitation.latent_discriminator import LatentDiscriminator
from world_model.behavior import ActorCritic, BehaviorConfig
from world_model.networks import (ConvDecoder, ConvEncoder, PatchConv2d, StrideTwoConv2d, StrideTwoConvTranspose2d,
                                  mlp)



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


@pytest.mark.parametrize("transposed,phases,kernel,size", [
    (True, True, 6, 30), (True, True, 4, 7), (True, True, 6, 14), (True, False, 5, 5), (True, False, 6, 13),
    (False, False, 4, 31), (False, False, 4, 14)])
@pytest.mark.parametrize("input_grad", [True, False])
def test_stride_two_convs_match_torch(transposed, phases, kernel, size, input_grad):
    """The decoder's and encoder's convs compute torch's (the phase-conv forward to float rounding),
    and their backward (bias gradient as a sum) gives torch's gradients, also when the input needs
    none (the encoder's first layer)."""
    torch.manual_seed(0)
    if transposed:
        fast = StrideTwoConvTranspose2d(5, 3, kernel, phases=phases)
        reference = torch.nn.ConvTranspose2d(5, 3, kernel, stride=2)
        out_size = 2 * size - 2 + kernel
    else:
        fast, reference = StrideTwoConv2d(5, 3, kernel), torch.nn.Conv2d(5, 3, kernel, stride=2)
        out_size = (size - kernel) // 2 + 1
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(4, 5, size, size).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 3, out_size, out_size)
    outs, grads = [], []
    for module in (fast, reference):
        xx = x.detach().requires_grad_(input_grad)
        y = module(xx)
        y.backward(grad)
        outs.append(y)
        grads.append((xx.grad, module.weight.grad, module.bias.grad))
        module.zero_grad()
    assert outs[0].shape == outs[1].shape == grad.shape
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert (grads[0][0] is None) == (not input_grad)
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="even kernel"):
        StrideTwoConvTranspose2d(5, 3, 5, phases=True)


@pytest.mark.parametrize("transposed,phases", [(True, True), (True, False), (False, False)])
def test_stride_two_convs_without_a_bias_match_torch(transposed, phases):
    torch.manual_seed(0)
    fast = StrideTwoConvTranspose2d(5, 3, 6, phases=phases) if transposed else StrideTwoConv2d(5, 3, 4)
    fast.bias = None
    x = torch.randn(2, 5, 9, 9).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    torch.testing.assert_close(fast(x), conv(x, fast.weight, None, stride=2), rtol=1e-5, atol=1e-5)


def test_decoder_uses_the_phase_conv_for_its_last_layer_only():
    decoder = ConvDecoder(16, 3, image_size=64, depth=4)
    transposed = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [type(m) is StrideTwoConvTranspose2d for m in transposed] == [True] * 3
    assert [m.phases for m in transposed] == [False, False, True]
    assert decoder(torch.randn(2, 16)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("batch,cin,cout,size,routed", [(3, 5, 7, 6, False), (3, 5, 7, 8, False), (80, 8, 32, 6, True)])
def test_patch_conv_matches_the_conv(batch, cin, cout, size, routed):
    """The matmul over stacked patches computes the conv (output, input, weight and bias gradients),
    also where the matmul goes to oneDNN (>= 256 patch rows and 32 features, 2 threads)."""
    from vmil.dense import routes_to_onednn

    torch.manual_seed(0)
    fast = PatchConv2d(cin, cout, 4)
    reference = torch.nn.Conv2d(cin, cout, 4, stride=2)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=torch.channels_last)
    out_size = (size - 4) // 2 + 1
    rows = batch * out_size ** 2
    grad = torch.randn(batch, cout, out_size, out_size)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert routes_to_onednn(torch.empty(rows, cin * 16), torch.empty(cout, cin * 16)) == routed
        for module in (fast, reference):
            xx = x.detach().requires_grad_(True)
            y = module(xx)
            y.backward(grad)
            results.append((y, xx.grad, module.weight.grad, module.bias.grad))
    finally:
        torch.set_num_threads(threads)
    assert results[0][0].shape == (batch, cout, out_size, out_size)
    for a, b in zip(*results):
        # oneDNN sums in another order: gradients summed over 320 rows differ in the last bits.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4 if routed else 1e-5)


def test_encoder_uses_the_patch_conv_for_its_last_layer_only():
    for size, layers in ((64, 4), (32, 3)):
        encoder = ConvEncoder(3, image_size=size, depth=4)
        convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [type(m) is PatchConv2d for m in convs] == [False] * (layers - 1) + [True]
        assert [type(m) is StrideTwoConv2d for m in convs] == [True] * (layers - 1) + [False]
        assert encoder(torch.randn(2, 3, size, size)).shape == (2, encoder.out_dim)
