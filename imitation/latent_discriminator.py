"""Latent discriminator for VMIL: an MLP on world-model features of a transition, trained with
binary cross-entropy (expert = 1), Gaussian input noise and a gradient penalty; pure reward
transforms and schedules beside it.

Inputs (``inputs``): ``zaz`` = (z_t, a_t, z_t+1) (the paper), ``za`` = (z_t, a_t) (the public code),
``zz`` = (z_t, z_t+1) (state-only, for demos without actions), ``z`` = z_t+1 alone (state occupancy:
no transition cue such as "the state does not change", which an expert resting at its goal shares
with an agent pinned against a wall).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from imitation import rewards
from vmil.config import ConfigError, doc
from world_model.networks import mlp

INPUTS = ("zaz", "za", "zz", "z")
REWARD_FORMS = ("prob",) + rewards.TRANSFORMS


@dataclass(frozen=True)
class DiscriminatorConfig:
    inputs: Literal["auto", "zaz", "za", "zz", "z"] = doc(
        "auto", "Discriminator input: auto = (z, a, z') when the demos have actions, else (z, z'); "
                "zaz = (z, a, z'); za = (z, a); zz = (z, z'); z = z' alone (state occupancy). With za/zaz on observation-only demos the "
                "expert's actions come from the inverse-dynamics model.")
    features: Literal["auto", "full", "stoch"] = doc(
        "auto", "Latent features the discriminator reads: full = (stoch, deter); stoch = the stochastic state "
                "only; auto = full when the demos have actions, else stoch. The GRU state h_t+1 is a function of "
                "a_t, so with full features a (z, z') discriminator would still see the actions -- inferred ones "
                "on the expert side -- and could tell expert from agent by them instead of by the states.")
    latent: Literal["sample", "mean"] = doc(
        "sample", "Stochastic state the discriminator reads: sample = the reparameterised sample (the paper); "
                  "mean = the distribution's mean. Samples carry the posterior's and the prior's noise (min std "
                  "0.1 per dimension), which can drown the small state changes of one step.")
    agent_source: Literal["imagined", "replay", "both"] = doc(
        "imagined", "Agent transitions the discriminator trains on: imagined = the actor's imagined rollouts "
                    "(the paper); replay = posteriors of the agent's replayed sequences, computed the same way "
                    "as the expert's, so expert and agent differ only in behaviour, not in prior vs posterior; "
                    "both = half of each. The actor is rewarded on its imagined transitions either way, so with "
                    "replay alone it can find imagined states the discriminator never judged (on toy:reach the "
                    "imagined reward rose to ~0.8 while D called 93% of the real agent transitions fake); both "
                    "also shows it those.")
    units: int = doc(400, "Hidden units.")
    layers: int = doc(3, "Hidden layers.")
    layer_norm: bool = doc(False, "LayerNorm in the hidden layers (the paper has none).")
    lr: float = doc(8e-5, "Learning rate (Adam).")
    eps: float = doc(1e-5, "Adam epsilon.")
    noise_std: float = doc(0.1, "Std of Gaussian noise added to the discriminator's inputs while it trains.")
    noise_final_std: float = doc(0.1, "Input-noise std reached after noise_anneal_steps (linear).")
    noise_anneal_steps: int = doc(0, "Env steps over which the input noise goes from noise_std to "
                                     "noise_final_std; 0 keeps noise_std.")
    penalty: Literal["input", "params", "none"] = doc(
        "input", "Gradient penalty: input = (|grad_x D(x_mix)| - 1)^2 on expert/agent mixtures (WGAN-GP); "
                 "params = (|grad_theta mean D(x_mix)| - 1)^2 (the public code); none.")
    penalty_coef: float = doc(1.0, "Weight of the gradient penalty.")
    reward: Literal["prob", "log", "logit", "neg_log_one_minus", "fairl"] = doc(
        "prob", "Reward from D: prob = D (the paper), or a transform of imitation.rewards: log = log D, "
                "logit = log D - log(1 - D), neg_log_one_minus = -log(1 - D), fairl.")
    reward_scale: float = doc(1.0, "Multiplies the reward.")
    agent_samples: int = doc(0, "Imagined agent transitions per discriminator update; 0: as many as the "
                                "expert transitions in the batch.")

    def __post_init__(self) -> None:
        for name in ("units", "lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.disc.{name} must be positive, got {getattr(self, name)}")
        for name in ("layers", "noise_std", "noise_final_std", "noise_anneal_steps", "penalty_coef",
                     "agent_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"agent.disc.{name} must be >= 0, got {getattr(self, name)}")


def disc_input(z: torch.Tensor, a: torch.Tensor | None, z_next: torch.Tensor | None, inputs: str) -> torch.Tensor:
    """Concatenate the parts of a transition the discriminator reads."""
    if inputs == "zaz":
        parts = (z, a, z_next)
    elif inputs == "za":
        parts = (z, a)
    elif inputs == "zz":
        parts = (z, z_next)
    elif inputs == "z":
        parts = (z_next,)
    else:
        raise ValueError(f"discriminator inputs must be one of {INPUTS}, got {inputs!r}")
    if any(p is None for p in parts):
        raise ValueError(f"discriminator inputs {inputs!r} need " + {"zaz": "z, a and z'", "za": "z and a",
                                                                      "zz": "z and z'", "z": "z'"}[inputs])
    return torch.cat(parts, -1)


class LatentDiscriminator(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, inputs: str, units: int, layers: int,
                 layer_norm: bool = False):
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"discriminator inputs must be one of {INPUTS}, got {inputs!r}")
        self.inputs = inputs
        self.in_dim = {"zaz": 2 * feat_dim + action_dim, "za": feat_dim + action_dim, "zz": 2 * feat_dim,
                       "z": feat_dim}[inputs]
        self.net = mlp(self.in_dim, 1, units, layers, layer_norm=layer_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input features [..., in_dim] -> logits [...]."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"discriminator expects inputs [..., {self.in_dim}], got {tuple(x.shape)}")
        return self.net(x).squeeze(-1)

    def transition_logit(self, z: torch.Tensor, a: torch.Tensor | None, z_next: torch.Tensor | None) -> torch.Tensor:
        return self(disc_input(z, a, z_next, self.inputs))


def bce_losses(logit_expert: torch.Tensor, logit_agent: torch.Tensor,
               weight_expert: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Binary cross-entropy with expert = 1 (real) and agent = 0; ``weight_expert`` masks rows."""
    expert = F.binary_cross_entropy_with_logits(logit_expert, torch.ones_like(logit_expert), reduction="none")
    if weight_expert is not None:
        expert = (expert * weight_expert).sum() / weight_expert.sum().clamp(min=1.0)
    else:
        expert = expert.mean()
    agent = F.binary_cross_entropy_with_logits(logit_agent, torch.zeros_like(logit_agent))
    return {"expert": expert, "agent": agent}


def sequence_transitions(feat: torch.Tensor, action: torch.Tensor | None, is_first: torch.Tensor,
                         inputs: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator inputs of the T-1 transitions of sequences (feat [B, T, F], action [B, T, A]
    aligned as in :class:`vmil.base.SequenceBatch`: ``action[:, t+1]`` led from t to t+1) and their
    weights [B*(T-1)] (0 for a step into an episode start, which is no transition)."""
    B, T, F_ = feat.shape
    a = None if action is None else action[:, 1:].reshape(B * (T - 1), -1)
    x = disc_input(feat[:, :-1].reshape(-1, F_), a, feat[:, 1:].reshape(-1, F_), inputs)
    return x, (~is_first[:, 1:]).reshape(-1).float()


def imagined_transitions(feats: torch.Tensor, actions: torch.Tensor, inputs: str,
                         index: torch.Tensor | None = None) -> torch.Tensor:
    """Discriminator inputs of imagined transitions (feats [H+1, N, F], actions [H, N, A]), all H*N
    of them or those at ``index`` into the flattened [H*N]."""
    F_, A = feats.shape[-1], actions.shape[-1]
    z, a, z_next = feats[:-1].reshape(-1, F_), actions.reshape(-1, A), feats[1:].reshape(-1, F_)
    if index is not None:
        z, a, z_next = z[index], a[index], z_next[index]
    return disc_input(z, a, z_next, inputs)


def discriminator_losses(disc: nn.Module, x_expert: torch.Tensor, x_agent: torch.Tensor,
                         weight_expert: torch.Tensor | None, penalty: str, penalty_coef: float, noise_std: float = 0.0
                         ) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor, torch.Tensor]:
    """Named losses and their weights (BCE on each side, gradient penalty) on inputs with Gaussian
    noise of ``noise_std``, and the logits. The penalty runs in fp32 outside any autocast."""
    if noise_std > 0:
        x_expert = x_expert + noise_std * torch.randn_like(x_expert)
        x_agent = x_agent + noise_std * torch.randn_like(x_agent)
    logit_e, logit_a = disc(x_expert).float(), disc(x_agent).float()
    losses = bce_losses(logit_e, logit_a, weight_expert)
    weights = {"expert": 1.0, "agent": 1.0}
    k = min(x_expert.shape[0], x_agent.shape[0])
    if penalty != "none":
        fn = {"input": input_gradient_penalty, "params": param_gradient_penalty}.get(penalty)
        if fn is None:
            raise ValueError(f"gradient penalty must be input, params or none, got {penalty!r}")
        with torch.autocast(x_expert.device.type, enabled=False):
            losses["penalty"] = fn(disc, x_expert[:k].float(), x_agent[:k].float())
        weights["penalty"] = penalty_coef
    return losses, weights, logit_e, logit_a


def _mix(expert_x: torch.Tensor, agent_x: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    if expert_x.shape != agent_x.shape:
        raise ValueError(f"gradient penalty needs as many expert as agent samples: {tuple(expert_x.shape)} "
                         f"vs {tuple(agent_x.shape)}")
    if alpha is None:
        alpha = torch.rand(expert_x.shape[0], 1, device=expert_x.device, dtype=expert_x.dtype)
    return alpha * expert_x + (1 - alpha) * agent_x


def input_gradient_penalty(disc: nn.Module, expert_x: torch.Tensor, agent_x: torch.Tensor,
                           alpha: torch.Tensor | None = None) -> torch.Tensor:
    """mean over samples of (|d logit / d x|_2 - 1)^2 at x = alpha * expert + (1 - alpha) * agent."""
    leaf = _mix(expert_x.detach(), agent_x.detach(), alpha).requires_grad_(True)
    # Feed the network a non-leaf copy: module hooks (FlopCounterMode's, in the benchmark) break
    # autograd.grad on leaf module inputs (pytorch issue 131753).
    (grad,) = torch.autograd.grad(disc(leaf * 1.0).sum(), leaf, create_graph=True)
    return (grad.norm(2, dim=-1) - 1).pow(2).mean()


def param_gradient_penalty(disc: nn.Module, expert_x: torch.Tensor, agent_x: torch.Tensor,
                           alpha: torch.Tensor | None = None) -> torch.Tensor:
    """(|d mean(logit(x)) / d theta|_2 - 1)^2 over all parameters at the mixtures (public VMIL code)."""
    x = _mix(expert_x.detach(), agent_x.detach(), alpha)
    params = [p for p in disc.parameters() if p.requires_grad]
    grads = torch.autograd.grad(disc(x).mean(), params, create_graph=True)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return (norm - 1).pow(2)


def reward_from_logit(logit: torch.Tensor, form: str, scale: float = 1.0) -> torch.Tensor:
    """Reward from discriminator logits: prob = D = sigmoid(logit) (the paper), or one of the
    transforms of :func:`imitation.rewards.transform` (log D, the logit, -log(1 - D), FAIRL)."""
    if form not in REWARD_FORMS:
        raise ValueError(f"reward form must be one of {REWARD_FORMS}, got {form!r}")
    r = torch.sigmoid(logit) if form == "prob" else rewards.transform(logit, form)
    return scale * r


