"""PMI imitation learning (the observation-imitation slides, section 3): a discriminative model
f(s_{t+1}, s_t) = exp(phi1(s_{t+1})^T phi2(s_t) / tau) trained with InfoNCE (eq. 14) on expert
transitions, then frozen as the reward of an RL learner (:mod:`imitation.ifo_rl`).

- Candidates (the X of eq. 14): the true next state plus the other expert next states of the batch
  (``negatives=expert``), or also the agent's next states (``expert_agent``).
- Rewards: ``softmax``, eq. (18) with the expert batch's next states as X^IL (as a reward: the
  log-probability of the true next state, plus log M so that it estimates the PMI of eq. 16; see
  :func:`imitation.ifo.softmax_reward`), or ``cosine``, eq. (19): phi1(s_{t+1})^T phi2(s_t).
- ``normalize`` puts both embeddings on the unit sphere (DSSM's cosine); ``temperature`` is tau.
- Validation: the eq. (20) accuracy (:func:`imitation.ifo.transition_accuracy`) on each expert batch
  before the model trains on it, logged as ``val_accuracy``; :func:`episode_accuracy` computes it on
  whole demo episodes with every state of the episode as a candidate.

The reward is a fixed function of (s, s') once trained, so it can also label offline data
(:meth:`PMI.reward`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from imitation.ifo import check_demos, info_nce_loss, mlp, softmax_reward, transition_accuracy
from imitation.ifo_rl import RewardAgent, RewardAgentConfig, with_learner
from vmil.base import EnvSpec, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, optimize


@dataclass(frozen=True)
class Config(RewardAgentConfig):
    embed_dim: int = doc(64, "Size of the embeddings phi1, phi2.")
    temperature: float = doc(0.1, "tau of f = exp(phi1^T phi2 / tau) (training and the softmax reward).")
    normalize: bool = doc(True, "Unit-norm embeddings (the DSSM cosine); false: raw dot products.")
    negatives: Literal["expert", "expert_agent"] = doc(
        "expert", "InfoNCE candidates besides the positive: the expert batch's other next states, or those "
                  "plus the agent batch's next states.")
    reward: Literal["softmax", "cosine"] = doc("softmax", "softmax: eq. (18) (as a log-probability, plus log M); "
                                                         "cosine: eq. (19), phi1(s')^T phi2(s).")
    softmax_baseline: bool = doc(True, "softmax reward: add log M (the PMI estimate, positive for transitions "
                                       "likelier than a random expert next state); false: the bare log-softmax.")


class PMIModel(nn.Module):
    """One encoder per tower: phi2 reads s_t, phi1 reads s_{t+1}."""

    def __init__(self, make_encoder, cfg: Config):
        super().__init__()
        self.enc_now, self.enc_next = make_encoder(), make_encoder()
        self.phi2 = mlp(self.enc_now.out_dim, cfg.reward_hidden, cfg.embed_dim)
        self.phi1 = mlp(self.enc_next.out_dim, cfg.reward_hidden, cfg.embed_dim)
        self.normalize = cfg.normalize

    def embed_now(self, image, state) -> torch.Tensor:
        e = self.phi2(self.enc_now(image, state))
        return F.normalize(e, dim=-1) if self.normalize else e

    def embed_next(self, image, state) -> torch.Tensor:
        e = self.phi1(self.enc_next(image, state))
        return F.normalize(e, dim=-1) if self.normalize else e


class PMI(RewardAgent):
    name = "pmi"

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        if cfg.temperature <= 0:
            raise ValueError(f"pmi: agent.temperature must be > 0, got {cfg.temperature}")
        super().__init__(cfg, spec, device)
        self.model = PMIModel(self.make_encoder, cfg).to(device)
        self.reward_modules = self.model
        self.reward_opt = adam(self.model.parameters(), cfg.reward_lr)

    def fit_statistics(self, now: tuple, nxt: tuple) -> None:
        super().fit_statistics(now, nxt)
        if now[1] is not None:
            self.model.enc_now.fit_state(now[1])
            self.model.enc_next.fit_state(now[1])

    def scores(self, now: tuple, candidates: tuple) -> torch.Tensor:
        """[B, M]: phi1(candidate_j)^T phi2(s_i) / tau."""
        return self.model.embed_now(*now) @ self.model.embed_next(*candidates).T / self.cfg.temperature

    def reward_step(self, expert: TransitionBatch, batch: TransitionBatch | None) -> tuple[dict, dict]:
        now, nxt = self.inputs.now(expert), self.inputs.next(expert)
        cand = nxt
        if self.cfg.negatives == "expert_agent" and batch is not None:
            anxt = self.inputs.next(batch)
            cand = tuple(None if a is None else torch.cat([a, b]) for a, b in zip(nxt, anxt))
        scores = self.scores(now, cand)
        positive = torch.arange(scores.shape[0], device=self.device)
        with torch.no_grad():
            # Eq. (20) on a batch the model has not trained on yet: each transition is its own trajectory.
            val = transition_accuracy(scores.detach(), positive, positive)
        loss = info_nce_loss(scores, positive)
        info = optimize(loss, self.reward_opt, self.model.parameters())
        return {"infonce_loss": float(loss.detach()), "val_accuracy": float(val), "candidates": float(scores.shape[1]),
                "reward_grad_norm": info["grad_norm"], "skipped": info["skipped"]}

    def reward(self, now: tuple, nxt: tuple, expert: TransitionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The frozen reward of transitions (s_t, s_{t+1}); ``expert``'s next states are X^IL (eq. 18)."""
        e_now = self.model.embed_now(*now)
        e_next = self.model.embed_next(*nxt)
        dot = (e_now * e_next).sum(-1)
        if self.cfg.reward == "cosine":
            return dot, {"reward_mean": float(dot.mean())}
        negatives = self.model.embed_next(*self.inputs.next(expert))
        scores = torch.cat([dot[:, None], e_now @ negatives.T], dim=1) / self.cfg.temperature
        positive = torch.zeros(scores.shape[0], dtype=torch.long, device=self.device)
        r = softmax_reward(scores, positive, self.cfg.softmax_baseline)
        return r, {"reward_mean": float(r.mean()), "reward_cosine": float(dot.mean())}


@torch.no_grad()
def episode_accuracy(agent: PMI, episodes: list[Any]) -> float:
    """Eq. (20) on whole episodes: S_t^k = every state of episode k after the first; the hit is the
    true s_{t+1} scoring highest. Episodes are :class:`vmil.data.episode.Episode` (single frames:
    ``frame_stack`` must be 1 for pixels)."""
    scores, positive, ids = [], [], []
    for k, ep in enumerate(episodes):
        image = torch.as_tensor(ep.obs) if agent.cfg.use_pixels else None
        state = torch.as_tensor(ep.state) if agent.cfg.use_proprio else None
        img = lambda sl: None if image is None else image[sl].to(agent.device)  # noqa: E731
        st = lambda sl: None if state is None else state[sl].to(agent.device)  # noqa: E731
        s = agent.scores((img(slice(0, -1)), st(slice(0, -1))), (img(slice(1, None)), st(slice(1, None))))
        n = s.shape[0]
        scores.append(s)
        positive.append(torch.arange(n, device=agent.device))
        ids.append(torch.full((n,), k, device=agent.device))
    width = max(s.shape[1] for s in scores)
    padded = torch.cat([F.pad(s, (0, width - s.shape[1]), value=float("-inf")) for s in scores])
    return float(transition_accuracy(padded, torch.cat(positive), torch.cat(ids)))


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> Any:
    """Demos may be observation-only; they need at least 2 transitions (InfoNCE needs a negative)."""
    check_demos("pmi", spec, demos, cfg.use_proprio, min_transitions=2)
    return with_learner(PMI(cfg, spec, device))
