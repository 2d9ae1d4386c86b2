"""An ensemble of one-step latent predictors whose disagreement measures how little the world model
knows about a transition (Plan2Explore's ensemble, Sekar et al. 2020; used here the other way round,
as a penalty, like the uncertainty penalties of model-based offline RL).

Each head maps (feat_t, a_t) to the posterior mean of the next stochastic state z_t+1. Trained on
the same observed sequences as the world model, the heads agree where the data are dense and
disagree where the actor asks the model about transitions it has hardly seen (on cartpole: pushing an
upright pole in ways the replay does not hold); subtracting that disagreement from the imagined
reward keeps the actor from exploiting the model there."""
from __future__ import annotations

import torch
from torch import nn

from world_model.networks import mlp


class DisagreementEnsemble(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, target_dim: int, heads: int, units: int, layers: int):
        super().__init__()
        if heads < 2:
            raise ValueError(f"a disagreement ensemble needs at least 2 heads, got {heads}")
        self.feat_dim, self.action_dim, self.target_dim = feat_dim, action_dim, target_dim
        self.heads = nn.ModuleList(mlp(feat_dim + action_dim, target_dim, units, layers) for _ in range(heads))

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Predictions [K, ..., target_dim] of K heads for feat [..., F] and action [..., A]."""
        if (feat.shape[-1] != self.feat_dim or action.shape[-1] != self.action_dim
                or feat.shape[:-1] != action.shape[:-1]):
            raise ValueError(f"ensemble expects feat [..., {self.feat_dim}] and action [..., {self.action_dim}] with "
                             f"the same leading shape; got {tuple(feat.shape)} and {tuple(action.shape)}")
        x = torch.cat([feat, action], -1)
        return torch.stack([head(x) for head in self.heads])

    def loss(self, feat: torch.Tensor, action: torch.Tensor, target: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of every head against the target [..., D] (each head on the same data;
        their different initialisations are what makes them disagree off the data). ``mask`` [...]
        drops transitions that cross an episode start."""
        err = (self(feat, action) - target.detach().unsqueeze(0)).pow(2).mean(-1)  # [K, ...]
        if mask is None:
            return err.mean()
        mask = mask.to(err.dtype).unsqueeze(0).expand_as(err)
        return (err * mask).sum() / mask.sum().clamp(min=1.0)

    def disagreement(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The heads' variance, averaged over the target's dimensions: [...]."""
        return self(feat, action).var(0, unbiased=False).mean(-1)
