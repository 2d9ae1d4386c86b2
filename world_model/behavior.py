"""Latent actor-critic (Dreamer V1): imagine from posterior states under a tanh-Gaussian actor, train
the actor by backpropagating lambda-returns through the learned dynamics and the reward, and the
critic by regression on stop-gradient lambda-returns (optionally bootstrapped by a slow target)."""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vmil.config import ConfigError, doc
from world_model.networks import mlp
from world_model.returns import discount_weights, lambda_return
from world_model.rssm import RSSM, State


@dataclass(frozen=True)
class BehaviorConfig:
    horizon: int = doc(15, "Imagination horizon H (steps imagined from every posterior state).")
    gamma: float = doc(0.99, "Discount of imagined returns.")
    lam: float = doc(0.95, "Lambda of the lambda-returns.")
    units: int = doc(400, "Hidden units of the actor and critic.")
    actor_layers: int = doc(4, "Hidden layers of the actor.")
    critic_layers: int = doc(3, "Hidden layers of the critic.")
    actor_lr: float = doc(8e-5, "Actor learning rate (Adam).")
    critic_lr: float = doc(8e-5, "Critic learning rate (Adam).")
    eps: float = doc(1e-5, "Adam epsilon of the actor and critic optimisers.")
    init_std: float = doc(5.0, "Actor's initial pre-tanh standard deviation.")
    min_std: float = doc(1e-4, "Actor's minimum pre-tanh standard deviation.")
    mean_scale: float = doc(5.0, "The actor's pre-tanh mean is squashed to (-mean_scale, mean_scale).")
    entropy: float = doc(0.0, "Actor entropy bonus weight (0 in Dreamer V1 / VMIL).")
    pre_tanh_reg: float = doc(0.0, "Weight of mean(pre-tanh actor mean^2) in the actor loss (0 in Dreamer / "
                              "VMIL). Keeps the policy out of tanh saturation, where its gradient vanishes.")
    slow_target: bool = doc(False, "Bootstrap lambda-returns with a slowly updated copy of the critic.")
    slow_target_update: int = doc(100, "Updates between slow-target refreshes.")
    slow_target_fraction: float = doc(1.0, "Fraction moved toward the critic at each refresh (1: copy).")

    def __post_init__(self) -> None:
        if self.horizon <= 0:
            raise ConfigError(f"agent.behavior.horizon (the imagination horizon) must be positive, got {self.horizon}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"agent.behavior.gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"agent.behavior.lam must be in [0, 1], got {self.lam}")
        for name in ("units", "slow_target_update"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.behavior.{name} must be positive, got {getattr(self, name)}")
        if self.pre_tanh_reg < 0:
            raise ConfigError(f"agent.behavior.pre_tanh_reg must be >= 0, got {self.pre_tanh_reg}")
        for name in ("actor_lr", "critic_lr", "init_std", "min_std", "mean_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.behavior.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.slow_target_fraction <= 1.0:
            raise ConfigError(f"agent.behavior.slow_target_fraction must be in (0, 1], got {self.slow_target_fraction}")


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` need no gradient inside the block: the graph still carries
    gradients through them to the inputs (the actor's actions), but the backward pass skips their
    weight gradients."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Actor(nn.Module):
    """tanh(N(mean, std)) policy over actions in [-1, 1]."""

    def __init__(self, feat_dim: int, action_dim: int, units: int, layers: int, init_std: float = 5.0,
                 min_std: float = 1e-4, mean_scale: float = 5.0):
        super().__init__()
        self.action_dim, self.min_std, self.mean_scale = action_dim, min_std, mean_scale
        self.raw_init_std = math.log(math.expm1(init_std))
        self.net = mlp(feat_dim, 2 * action_dim, units, layers)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh mean and std."""
        mean, std = self.net(feat).chunk(2, -1)
        mean = self.mean_scale * torch.tanh(mean / self.mean_scale)
        return mean, F.softplus(std + self.raw_init_std) + self.min_std

    def sample(self, feat: torch.Tensor, with_log_prob: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reparameterised action (and its log-probability under the tanh-Gaussian)."""
        mean, std = self(feat)
        eps = torch.randn_like(mean)
        u = mean + std * eps
        action = torch.tanh(u)
        if not with_log_prob:
            return action, None
        log_prob = (-0.5 * eps.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
        log_prob = log_prob - (2 * (math.log(2.0) - u - F.softplus(-2 * u))).sum(-1)
        return action, log_prob

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(feat)[0])


class Critic(nn.Module):
    def __init__(self, feat_dim: int, units: int, layers: int):
        super().__init__()
        self.net = mlp(feat_dim, 1, units, layers)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat).squeeze(-1)


def imagine(rssm: RSSM, actor: Actor, start: State, horizon: int,
            with_log_prob: bool = False) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Roll the prior forward ``horizon`` steps from ``start`` [N, ...] under the actor.

    Returns states [H+1, N, ...] (index 0 is ``start``), their features [H+1, N, F], actions
    [H, N, A] (action t leads from state t to t+1) and, if asked, log-probabilities [H, N]. The actor
    reads detached features (as in Dreamer), so its gradient flows only through the actions it
    takes and the dynamics they drive."""
    state = start
    states, feats, actions, log_probs = [start], [rssm.feat(start)], [], []
    for _ in range(horizon):
        action, log_prob = actor.sample(feats[-1].detach(), with_log_prob)
        state = rssm.img_step(state, action)
        states.append(state)
        feats.append(rssm.feat(state))
        actions.append(action)
        log_probs.append(log_prob)
    stacked = State(*(torch.stack(x, 0) for x in zip(*states)))
    logp = torch.stack(log_probs, 0) if with_log_prob else None
    return stacked, torch.stack(feats, 0), torch.stack(actions, 0), logp


class ActorCritic(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, cfg: BehaviorConfig):
        super().__init__()
        self.cfg = cfg
        self.actor = Actor(feat_dim, action_dim, cfg.units, cfg.actor_layers, cfg.init_std, cfg.min_std,
                           cfg.mean_scale)
        self.critic = Critic(feat_dim, cfg.units, cfg.critic_layers)
        self.target = copy.deepcopy(self.critic) if cfg.slow_target else None
        if self.target is not None:
            self.target.requires_grad_(False)

    def bootstrap_critic(self) -> nn.Module:
        return self.target if self.target is not None else self.critic

    def actor_loss(self, feats: torch.Tensor, reward: torch.Tensor, log_prob: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-E[w_t G_t] over an imagined rollout (feats [H+1, N, F], reward [H, N]); call it with the
        critic frozen. Returns (loss, returns [H, N], weights [H, N], metrics)."""
        H = reward.shape[0]
        if feats.shape[0] != H + 1:
            raise ValueError(f"feats must have H+1={H + 1} steps for {H} rewards, got {feats.shape[0]}")
        next_value = self.bootstrap_critic()(feats[1:])
        if log_prob is not None and self.cfg.entropy > 0:
            reward = reward - self.cfg.entropy * log_prob  # entropy bonus, as a per-step reward
        returns = lambda_return(reward, next_value, self.cfg.gamma, self.cfg.lam)
        weights = discount_weights(self.cfg.gamma, H, returns)
        loss = -(weights * returns).mean()
        metrics = {"return_mean": returns.detach().mean(), "value_mean": next_value.detach().mean()}
        if self.cfg.pre_tanh_reg > 0:
            pre_tanh = self.actor(feats[:-1].detach())[0].float().pow(2).mean()
            loss = loss + self.cfg.pre_tanh_reg * pre_tanh
            metrics["pre_tanh_sq"] = pre_tanh.detach()
        if log_prob is not None:
            metrics["entropy"] = -log_prob.detach().mean()
        return loss, returns, weights, metrics

    def critic_loss(self, feats: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted squared error of V(s_t) against stop-gradient lambda-returns, t < H."""
        value = self.critic(feats[:-1].detach())
        return 0.5 * (weights * (value - returns.detach()).pow(2)).mean()

    @torch.no_grad()
    def update_target(self, updates: int) -> None:
        """Refresh the slow target every ``slow_target_update`` updates."""
        if self.target is None or updates % self.cfg.slow_target_update != 0:
            return
        mix = self.cfg.slow_target_fraction
        for t, s in zip(self.target.parameters(), self.critic.parameters()):
            t.lerp_(s, mix)
