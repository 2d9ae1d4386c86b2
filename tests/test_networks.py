"""The shared MLP builder and the option that reaches every head built from it."""
from __future__ import annotations

import torch

from imitation.latent_discriminator import LatentDiscriminator
from world_model.behavior import ActorCritic, BehaviorConfig
from world_model.networks import mlp



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
