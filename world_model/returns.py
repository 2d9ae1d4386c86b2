"""Pure return computations for imagined rollouts (time is the first axis)."""
from __future__ import annotations

import torch


def lambda_return(reward: torch.Tensor, next_value: torch.Tensor, discount: torch.Tensor | float,
                  lam: float) -> torch.Tensor:
    """TD(lambda) targets G_t = r_t + d_t * ((1 - lam) * V(s_t+1) + lam * G_t+1), with G_H = V(s_H).

    ``reward`` [H, ...]: r_t of the transition s_t -> s_t+1; ``next_value`` [H, ...]: V(s_t+1);
    ``discount`` [H, ...] or a float. Returns [H, ...]. lam = 1 gives the discounted Monte-Carlo
    return bootstrapped with V(s_H); lam = 0 gives one-step TD targets."""
    if reward.shape != next_value.shape:
        raise ValueError(f"reward {tuple(reward.shape)} and next_value {tuple(next_value.shape)} must match")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    if not torch.is_tensor(discount):
        discount = torch.full_like(reward, float(discount))
    elif discount.shape != reward.shape:
        discount = discount.expand_as(reward)
    # Everything except the recursion is batched over time.
    inputs = reward + discount * next_value * (1 - lam)
    decay = discount * lam
    last = next_value[-1]
    out = []
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + decay[t] * last
        out.append(last)
    return torch.stack(out[::-1], 0)


def discount_weights(discount: torch.Tensor | float, horizon: int, like: torch.Tensor) -> torch.Tensor:
    """Weights [H, ...] = prod_{k<t} d_k (1 at t = 0): how much a step of an imagined rollout counts
    in the actor and critic losses (Dreamer)."""
    if not torch.is_tensor(discount):
        d = torch.full((horizon,) + tuple(like.shape[1:]), float(discount), device=like.device, dtype=like.dtype)
    else:
        d = discount.expand(horizon, *like.shape[1:])
    ones = torch.ones_like(d[:1])
    return torch.cumprod(torch.cat([ones, d[:-1]], 0), 0).detach()
