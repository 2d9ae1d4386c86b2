"""Recurrent state-space model (PlaNet / Dreamer V1): a deterministic GRU path and a diagonal
Gaussian stochastic state, with a prior p(z_t | h_t) and a posterior q(z_t | h_t, e_t).

Shapes: ``B`` batch, ``T`` time, ``S`` stoch, ``D`` deter, ``E`` embedding, ``A`` action.
Actions follow :class:`vmil.base.SequenceBatch`: ``action[:, t]`` led to ``obs[:, t]``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vmil.dense import Dense, GRUCell, linear


class State(NamedTuple):
    """A latent state; every field has the same leading dims."""

    mean: torch.Tensor  # [..., S]
    std: torch.Tensor  # [..., S]
    stoch: torch.Tensor  # [..., S]
    deter: torch.Tensor  # [..., D]

    def map(self, fn) -> "State":
        return State(*(fn(x) for x in self))

    def flatten(self) -> "State":
        """Merge all leading dims: [B, T, X] -> [B*T, X]."""
        return self.map(lambda x: x.reshape(-1, x.shape[-1]))

    def detach(self) -> "State":
        return self.map(torch.Tensor.detach)


def kl_normal(mean1: torch.Tensor, std1: torch.Tensor, mean2: torch.Tensor, std2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, std1) || N(mean2, std2)) for diagonal Gaussians, summed over the last dim."""
    var_ratio = (std1 / std2).pow(2)
    t1 = ((mean1 - mean2) / std2).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


def free_nats_clamp(kl: torch.Tensor, free_nats: float) -> torch.Tensor:
    """max(kl, free_nats): below the threshold the KL term has no gradient, so the posterior can
    keep that many nats of information about each frame for free (PlaNet)."""
    return kl.clamp(min=free_nats)


def kl_loss(post: State, prior: State, free_nats: float, balance: float = 0.0,
            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL). The KL is averaged over batch and time and then clamped at ``free_nats``
    (Dreamer V1). ``balance`` in (0, 1) is KL balancing (Dreamer V2): that share of the gradient
    trains the prior toward the posterior, the rest regularises the posterior; 0 disables it.
    ``mask`` [B, T] (float) weights the per-step KL (e.g. to leave some sequences out)."""
    if not 0.0 <= balance < 1.0:
        raise ValueError(f"KL balance must be in [0, 1) (0 disables it), got {balance}")

    def mean(x: torch.Tensor) -> torch.Tensor:
        if mask is None:
            return x.mean()
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    value = mean(kl_normal(post.mean, post.std, prior.mean, prior.std))
    if balance == 0.0:
        return free_nats_clamp(value, free_nats), value
    sg = torch.Tensor.detach
    lhs = mean(kl_normal(sg(post.mean), sg(post.std), prior.mean, prior.std))  # trains the prior
    rhs = mean(kl_normal(post.mean, post.std, sg(prior.mean), sg(prior.std)))  # trains the posterior
    loss = balance * free_nats_clamp(lhs, free_nats) + (1 - balance) * free_nats_clamp(rhs, free_nats)
    return loss, value


class RSSM(nn.Module):
    def __init__(self, action_dim: int, embed_dim: int, stoch: int = 30, deter: int = 200, hidden: int = 200,
                 min_std: float = 0.1, act: type[nn.Module] = nn.ELU, residual_prior: bool = False):
        super().__init__()
        for name, v in (("action_dim", action_dim), ("embed_dim", embed_dim), ("stoch", stoch),
                        ("deter", deter), ("hidden", hidden)):
            if v <= 0:
                raise ValueError(f"RSSM {name} must be positive, got {v}")
        self.action_dim, self.embed_dim = action_dim, embed_dim
        self.stoch_size, self.deter_size, self.min_std = stoch, deter, min_std
        # The prior's mean as the last stochastic state plus a change: a network holds its output to about
        # 1% of the range it spans, so a step's small change is predicted far more precisely than the
        # state it leads to (docs/experiments/2026-12-07-dmc-cartpole-world-model.md).
        self.residual_prior = residual_prior
        self.act = act()
        self.inp = Dense(stoch + action_dim, hidden)
        self.cell = GRUCell(hidden, deter)
        self.prior_h = Dense(deter, hidden)
        self.prior_out = Dense(hidden, 2 * stoch)
        self.post_h = Dense(deter + embed_dim, hidden)
        self.post_out = Dense(hidden, 2 * stoch)

    @property
    def feat_dim(self) -> int:
        return self.stoch_size + self.deter_size

    @staticmethod
    def feat(state: State) -> torch.Tensor:
        """The model state the heads read: concat(stoch, deter)."""
        return torch.cat([state.stoch, state.deter], -1)

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        z = torch.zeros(batch, self.stoch_size, device=device)
        return State(z, torch.ones_like(z), z, torch.zeros(batch, self.deter_size, device=device))

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = x.chunk(2, -1)
        return mean, F.softplus(std) + self.min_std

    def _prior_stats(self, deter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stats(self.prior_out(self.act(self.prior_h(deter))))

    def img_step(self, state: State, action: torch.Tensor, sample: bool = True) -> State:
        """One prior step p(z_t+1 | h_t+1), h_t+1 = GRU(h_t, z_t, a_t); reparameterised sample."""
        x = self.act(self.inp(torch.cat([state.stoch, action], -1)))
        deter = self.cell(x, state.deter)
        mean, std = self._prior_stats(deter)
        if self.residual_prior:
            mean = state.stoch + mean
        stoch = mean + std * torch.randn_like(std) if sample else mean
        return State(mean, std, stoch, deter)

    def obs_step(self, state: State, action: torch.Tensor, embed: torch.Tensor,
                 sample: bool = True) -> tuple[State, State]:
        """One filtering step (acting in the env): (posterior, prior) at the new time step."""
        prior = self.img_step(state, action, sample)
        h = self.act(self.post_h(torch.cat([prior.deter, embed], -1)))
        mean, std = self._stats(self.post_out(h))
        stoch = mean + std * torch.randn_like(std) if sample else mean
        return State(mean, std, stoch, prior.deter), prior

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None, sample: bool = True) -> tuple[State, State]:
        """Filter a sequence: (posterior, prior), each [B, T, ...]. The state resets to zeros where
        ``is_first``. Only the GRU and the posterior run per step; the embedding and action halves of
        their input layers, and the whole prior head (it reads only the GRU state), are batched
        over time."""
        B, T = embed.shape[:2]
        if embed.shape[-1] != self.embed_dim or action.shape != (B, T, self.action_dim) or is_first.shape != (B, T):
            raise ValueError(f"observe expects embed [B, T, {self.embed_dim}], action [B, T, {self.action_dim}], "
                             f"is_first [B, T]; got {tuple(embed.shape)}, {tuple(action.shape)}, "
                             f"{tuple(is_first.shape)}")
        if state is None:
            state = self.initial(B, embed.device)
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)  # [B, T, 1]
        S = self.stoch_size
        a_proj = linear(action * keep, self.inp.weight[:, S:], self.inp.bias)
        e_proj = linear(embed, self.post_h.weight[:, self.deter_size:], self.post_h.bias)
        w_in, w_post = self.inp.weight[:, :S], self.post_h.weight[:, :self.deter_size]
        noise = torch.randn(B, T, S, device=embed.device, dtype=embed.dtype) if sample else None
        stoch, deter = state.stoch, state.deter
        means, stds, stochs, deters, starts = [], [], [], [], []
        for t in range(T):
            stoch, deter = stoch * keep[:, t], deter * keep[:, t]
            starts.append(stoch)
            x = self.act(linear(stoch, w_in) + a_proj[:, t])
            deter = self.cell(x, deter)
            mean, std = self._stats(self.post_out(self.act(linear(deter, w_post) + e_proj[:, t])))
            stoch = mean + std * noise[:, t] if noise is not None else mean
            means.append(mean), stds.append(std), stochs.append(stoch), deters.append(deter)
        deter_all = torch.stack(deters, 1)
        post = State(torch.stack(means, 1), torch.stack(stds, 1), torch.stack(stochs, 1), deter_all)
        p_mean, p_std = self._prior_stats(deter_all)
        if self.residual_prior:
            p_mean = p_mean + torch.stack(starts, 1)
        p_stoch = p_mean + p_std * torch.randn_like(p_std) if sample else p_mean
        return post, State(p_mean, p_std, p_stoch, deter_all)

    def imagine_actions(self, action: torch.Tensor, state: State, sample: bool = True) -> State:
        """Roll the prior forward under given actions [B, T, A] from ``state`` [B, ...]:
        states [B, T, ...] where step t used ``action[:, t]`` (open-loop prediction)."""
        states = []
        for t in range(action.shape[1]):
            state = self.img_step(state, action[:, t], sample)
            states.append(state)
        return State(*(torch.stack(x, 1) for x in zip(*states)))
