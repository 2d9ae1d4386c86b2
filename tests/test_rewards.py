"""Reward transforms, aggregation, the patch distribution, Sim and the PatchAIL rewards against
hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from imitation import rewards as R


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert torch.allclose(actual, expected, rtol=tol, atol=tol), f"{actual.tolist()} vs {expected.tolist()}"


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


X = [0.0, 2.0, -1.0, 0.5]


@pytest.mark.parametrize("kind,fn", [
    ("logit", lambda x: math.log(sig(x)) - math.log(1 - sig(x))),
    ("neg_log_one_minus", lambda x: -math.log(1 - sig(x))),
    ("log", lambda x: math.log(sig(x))),
    ("fairl", lambda x: -x * math.exp(x)),
])
def test_transforms_match_hand_values(kind, fn):
    x = torch.tensor(X, dtype=torch.float64)
    close(R.transform(x, kind), [fn(v) for v in X], 1e-12)


def test_transforms_are_stable_for_large_logits():
    x = torch.tensor([100.0, -100.0])
    close(R.transform(x, "neg_log_one_minus"), [100.0, 0.0], 1e-5)  # -log(1 - D), D -> 1
    close(R.transform(x, "log"), [0.0, -100.0], 1e-5)
    assert torch.isfinite(R.transform(x, "logit")).all()
    with pytest.raises(ValueError, match="logit, neg_log_one_minus, log, fairl"):
        R.transform(x, "airl")


def test_aggregations_match_hand_values():
    v = torch.tensor([[1.0, 2.0, 3.0, 10.0], [-1.0, 5.0, 0.0, 2.0]]).view(2, 1, 2, 2)
    close(R.aggregate(v, "mean"), [4.0, 1.5])
    close(R.aggregate(v, "max"), [10.0, 5.0])
    close(R.aggregate(v, "min"), [1.0, -1.0])
    close(R.aggregate(v, "median"), [2.0, 0.0])  # lower median of an even count
    odd = torch.tensor([[3.0, -2.0, 7.0, 0.0, 1.0, 9.0, 4.0, -5.0, 8.0]]).view(1, 1, 3, 3)
    close(R.aggregate(odd, "median"), [3.0])
    close(R.aggregate(R.transform(v, "logit")), [4.0, 1.5])  # default mean
    with pytest.raises(ValueError, match="mean, max, min, median"):
        R.aggregate(v, "sum")
    with pytest.raises(ValueError, match=r"\[B, ...patches\]"):
        R.aggregate(torch.zeros(3), "mean")


def test_patch_distribution_normalises_patch_probabilities():
    logits = torch.tensor([[0.0, 2.0, -1.0, 0.5]], dtype=torch.float64).view(1, 1, 2, 2)
    p = [sig(v) for v in X]
    close(R.patch_distribution(logits), [[q / sum(p) for q in p]], 1e-12)
    assert R.patch_distribution(torch.randn(5, 1, 7, 7)).sum(1).sub(1).abs().max() < 1e-6


def test_similarity_hand_value_and_limits():
    agent = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    expert = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    q = [sig(1.0) / (sig(1.0) + sig(-1.0)), sig(-1.0) / (sig(1.0) + sig(-1.0))]
    kl = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    close(R.similarity(agent, expert), [math.exp(-kl)], 1e-12)
    # Matched distributions: Sim = 1, for every sample of a batch.
    e = torch.randn(1, 1, 9, 9)
    close(R.similarity(e.repeat(4, 1, 1, 1), e), torch.ones(4), 1e-6)
    # [P, P] references broadcast like [1, 1, P, P].
    close(R.similarity(e, e[0]), torch.ones(1), 1e-6)


def test_similarity_decreases_as_distributions_diverge():
    torch.manual_seed(0)
    expert = torch.randn(1, 1, 13, 13)
    direction = torch.randn(1, 1, 13, 13)
    sims = R.similarity(torch.cat([expert + t * direction for t in (0.0, 0.5, 1.0, 2.0, 4.0)]), expert)
    assert sims[0] > 1 - 1e-6
    assert (sims[1:] < sims[:-1]).all(), sims.tolist()
    assert sims[-1] < 0.9
    with pytest.raises(ValueError, match="expert mean logits"):
        R.similarity(torch.zeros(2, 1, 5, 5), torch.zeros(1, 1, 4, 4))


def test_expert_reference_kinds():
    expert = torch.tensor([[0.0, 2.0], [2.0, -2.0]], dtype=torch.float64)
    close(R.expert_mean_logits(expert, "logits"), [[1.0, 0.0]])  # Eq. (7): mean logits
    ref = R.expert_mean_logits(expert, "probs")  # the public code: mean probabilities
    mean_p = [(sig(0.0) + sig(2.0)) / 2, (sig(2.0) + sig(-2.0)) / 2]
    close(R.patch_distribution(ref), [[mean_p[0] / sum(mean_p), mean_p[1] / sum(mean_p)]], 1e-9)


def test_patch_rewards_plain_weighted_bonus():
    agent = torch.tensor([[1.0, 3.0], [-2.0, 0.0]], dtype=torch.float64).view(2, 1, 1, 2)
    expert = torch.tensor([[0.5, 0.5]], dtype=torch.float64).view(1, 1, 1, 2)
    mean = torch.tensor([2.0, -1.0], dtype=torch.float64)
    sim = R.similarity(agent, expert)
    close(R.patch_reward(agent), mean)
    close(R.patch_reward(agent, expert, "plain", scale=0.5), 0.5 * mean)
    close(R.patch_reward(agent, expert, "weighted", lam=1.3), 1.3 * sim * mean, 1e-12)
    close(R.patch_reward(agent, expert, "bonus", lam=0.5, scale=0.5), 0.5 * sim + 0.5 * mean, 1e-12)
    close(R.patch_reward(agent, None, "plain", aggregate_kind="max"), [3.0, 0.0])
    # Eq. (5) applies h before Aggr; the public code aggregates logits first.
    h_then_mean = [(math.log(sig(1.0)) + math.log(sig(3.0))) / 2, (math.log(sig(-2.0)) + math.log(sig(0.0))) / 2]
    close(R.patch_reward(agent, transform_kind="log"), h_then_mean, 1e-12)
    close(R.patch_reward(agent, transform_kind="log", transform_first=False),
          [math.log(sig(2.0)), math.log(sig(-1.0))], 1e-12)
    with pytest.raises(ValueError, match="needs the expert mean logits"):
        R.patch_reward(agent, None, "weighted")
    with pytest.raises(ValueError, match="plain, weighted, bonus"):
        R.patch_reward(agent, expert, "both")


def test_paper_constants_and_initial_lambda():
    assert (R.WEIGHTED_LAMBDA, R.BONUS_LAMBDA, R.BONUS_REWARD_SCALE) == (1.3, 0.5, 0.5)
    assert math.isclose(R.initial_lambda(1.3, torch.tensor([0.5, 0.3], dtype=torch.float64)), 1.3 / 0.4)


def test_scalar_reward():
    logits = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    close(R.scalar_reward(logits, "neg_log_one_minus"), [math.log(2.0), -math.log(1 - sig(2.0))], 1e-12)
    close(R.scalar_reward(logits[:, 0]), [0.0, 2.0])
    with pytest.raises(ValueError, match="patch_reward"):
        R.scalar_reward(torch.zeros(2, 1, 3, 3))
