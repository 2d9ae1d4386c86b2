"""Imitation rewards from discriminator logits, as pure functions (Liu et al. 2023, Sec. 3.2).

Logits x = log D - log(1 - D). A patch discriminator gives [B, 1, P, P] (or any [B, ...]) logits,
a scalar one [B, 1]. Everything here is differentiable-free arithmetic on tensors; callers run it
under ``torch.no_grad()``.

- ``transform``: h(D) per patch (Eq. 5): ``logit`` (AIRL/DAC, the paper's default), ``neg_log_one_minus``
  (-log(1 - D), GAIL), ``log`` (log D), ``fairl`` (FAIRL: -x e^x, as the public code).
- ``aggregate``: Aggr over patches -> [B]: mean (default), max, min, median.
- ``patch_distribution`` / ``similarity``: Δ and Sim of Eqs. (7)-(8); ``patch_reward``: Eqs. (5),
  (9), (10). The paper applies h before Aggr (Eq. 5); the public code aggregates the logits first
  (``transform_first=False``); both agree for the default logit + mean.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

TransformKind = Literal["logit", "neg_log_one_minus", "log", "fairl"]
AggregateKind = Literal["mean", "max", "min", "median"]
RewardMode = Literal["plain", "weighted", "bonus"]

TRANSFORMS = ("logit", "neg_log_one_minus", "log", "fairl")
AGGREGATES = ("mean", "max", "min", "median")
MODES = ("plain", "weighted", "bonus")

# Table 2 of the paper: PatchAIL-W lambda 1.3; PatchAIL-B lambda 0.5 with reward scale 0.5.
WEIGHTED_LAMBDA = 1.3
BONUS_LAMBDA = 0.5
BONUS_REWARD_SCALE = 0.5


def _real(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 logits from autocast), float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def transform(logits: torch.Tensor, kind: TransformKind = "logit") -> torch.Tensor:
    """h(D) elementwise, from logits, in numerically stable forms."""
    if kind == "logit":
        return logits  # log D - log(1 - D) = the logit itself
    if kind == "neg_log_one_minus":
        return F.softplus(logits)  # -log(1 - sigmoid(x)) = log(1 + e^x)
    if kind == "log":
        return -F.softplus(-logits)  # log sigmoid(x)
    if kind == "fairl":
        return -logits * torch.exp(logits)
    raise ValueError(f"unknown reward transform '{kind}'; use one of {', '.join(TRANSFORMS)}")


def aggregate(values: torch.Tensor, kind: AggregateKind = "mean") -> torch.Tensor:
    """Aggregate every non-batch dimension: [B, ...] -> [B]. ``median`` is torch's lower median
    for an even patch count (39x39 = 1521 is odd)."""
    if values.ndim < 2:
        raise ValueError(f"aggregate expects [B, ...patches], got shape {tuple(values.shape)}")
    flat = values.flatten(1)
    if kind == "mean":
        return flat.mean(1)
    if kind == "max":
        return flat.amax(1)
    if kind == "min":
        return flat.amin(1)
    if kind == "median":
        return flat.median(1).values
    raise ValueError(f"unknown aggregation '{kind}'; use one of {', '.join(AGGREGATES)}")


def log_patch_distribution(logits: torch.Tensor) -> torch.Tensor:
    """log Δ(D) [B, N]: the patch probabilities sigmoid(x) normalised to sum to one per sample.

    The paper (Sec. 3.2) builds "a normalized probability mass of a discrete distribution
    Δ(D_PxP(s, s'))" from the logits without fixing the map; its public code normalises the
    patch probabilities, Δ_ij = sigmoid(x_ij) / Σ_kl sigmoid(x_kl), which is what this does."""
    if logits.ndim < 2:
        raise ValueError(f"expects logits [B, ...patches], got shape {tuple(logits.shape)}")
    log_p = F.logsigmoid(_real(logits.flatten(1)))
    return log_p - torch.logsumexp(log_p, dim=1, keepdim=True)


def patch_distribution(logits: torch.Tensor) -> torch.Tensor:
    """Δ(D) [B, N] (see ``log_patch_distribution``); rows sum to one."""
    return log_patch_distribution(logits).exp()


def expert_mean_logits(expert_logits: torch.Tensor, kind: Literal["logits", "probs"] = "logits") -> torch.Tensor:
    """The expert reference [1, ...] for ``similarity``: ``logits`` averages the expert logits,
    Δ(E[D(s_E, s'_E)]) of Eq. (7); ``probs`` averages the patch probabilities (the public code),
    returned as the logit of the mean so that Δ of it is the normalised mean probability."""
    if kind == "logits":
        return _real(expert_logits).mean(0, keepdim=True)
    if kind == "probs":
        p = torch.sigmoid(_real(expert_logits)).mean(0, keepdim=True)
        return torch.logit(p, eps=1e-7)
    raise ValueError(f"unknown expert reference '{kind}'; use 'logits' (Eq. 7) or 'probs' (the public code)")


def similarity(agent_logits: torch.Tensor, expert_mean_logits: torch.Tensor) -> torch.Tensor:
    """Sim [B] = exp(-KL(Δ(agent) || Δ(expert mean))), Eq. (8) with the reference of Eq. (7):
    Σ_ij Δ_ij(agent) log(Δ_ij(agent) / Δ_ij(expert mean)). 1 when the distributions match."""
    ref = expert_mean_logits
    if ref.ndim == agent_logits.ndim - 1:
        ref = ref.unsqueeze(0)
    if ref.shape[0] != 1 or ref.shape[1:] != agent_logits.shape[1:]:
        raise ValueError(f"expert mean logits {tuple(expert_mean_logits.shape)} do not match the agent's patches "
                         f"{tuple(agent_logits.shape[1:])}; average the expert logits over the batch "
                         "(expert_mean_logits(expert_logits))")
    log_p = log_patch_distribution(agent_logits)
    log_q = log_patch_distribution(ref)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    return torch.exp(-kl.clamp_min(0.0))  # KL >= 0; rounding can make it -1e-8


def patch_reward(agent_logits: torch.Tensor, expert_mean_logits: torch.Tensor | None = None,
                 mode: RewardMode = "plain", lam: float = WEIGHTED_LAMBDA, transform_kind: TransformKind = "logit",
                 aggregate_kind: AggregateKind = "mean", scale: float = 1.0,
                 transform_first: bool = True) -> torch.Tensor:
    """Reward [B] of each (s, s'):
    plain R = scale * Aggr(h(D)) (Eq. 5); weighted (PatchAIL-W) R = lam * Sim * scale * Aggr(h(D))
    (Eq. 9); bonus (PatchAIL-B) R = lam * Sim + scale * Aggr(h(D)) (Eq. 10). The scale multiplies
    the aggregated reward before Sim is applied, as in the public code."""
    if mode not in MODES:
        raise ValueError(f"unknown patch reward mode '{mode}'; use one of {', '.join(MODES)}")
    if transform_first:
        base = aggregate(transform(_real(agent_logits), transform_kind), aggregate_kind)
    else:
        base = transform(aggregate(_real(agent_logits), aggregate_kind), transform_kind)
    base = scale * base
    if mode == "plain":
        return base
    if expert_mean_logits is None:
        raise ValueError(f"mode '{mode}' needs the expert mean logits for Sim; pass expert_mean_logits")
    sim = similarity(agent_logits, expert_mean_logits)
    return lam * sim * base if mode == "weighted" else lam * sim + base


def scalar_reward(logits: torch.Tensor, transform_kind: TransformKind = "logit") -> torch.Tensor:
    """Reward [B] from a scalar discriminator's logits [B, 1] (or [B])."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 1:
        raise ValueError(f"scalar_reward expects logits [B, 1] or [B], got {tuple(logits.shape)}; "
                         "use patch_reward for patch logits")
    return transform(_real(logits), transform_kind)


def initial_lambda(initial: float, sim: torch.Tensor) -> float:
    """The public code's 'auto-<initial>' lambda: initial / mean Sim of the first batch, so the
    first rewards carry a similarity term of ``initial`` on average."""
    return float(initial) / max(float(sim.mean()), 1e-8)
