"""Internal model reward learning (IMRL; the observation-imitation slides, after Kimura et al. 2018):
a next-state model theta(s_t) fitted to the expert transitions (a Gaussian likelihood with fixed
variance: mean squared error), then frozen; the reward of a transition is

    r_t = -psi(||s_{t+1} - theta(s_t)||) + offset

with psi ``identity`` (scale * e) or ``tanh`` (scale * tanh(e); the slides' eq. 13 uses scale 10).
Errors are measured on :class:`imitation.ifo.DeltaTarget` (the one-step change of the state and/or
the pooled frame, standardised by the expert's statistics). The reward is <= offset: with the
default 0 an agent is paid to end episodes early, which suits tasks whose episodes end at the goal
(Acrobot, MountainCar); ``offset`` (e.g. scale / 2) pays for staying alive (CartPole).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from imitation.ifo import DeltaTarget, check_demos, imrl_reward, mlp
from imitation.ifo_rl import RewardAgent, RewardAgentConfig, with_learner
from vmil.base import EnvSpec, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, optimize


@dataclass(frozen=True)
class Config(RewardAgentConfig):
    psi: Literal["identity", "tanh"] = doc("tanh", "psi of r = -psi(||s' - theta(s)||): identity or tanh.")
    scale: float = doc(10.0, "psi's scale: scale * e or scale * tanh(e).")
    offset: float = doc(0.0, "Added to every reward (> 0 pays for staying alive).")
    pool: int = doc(8, "Pixels: the last frame is compared average-pooled to pool x pool.")


class NextStateModel(nn.Module):
    def __init__(self, encoder: nn.Module, out_dim: int, hidden: int):
        super().__init__()
        self.encoder = encoder
        self.head = mlp(encoder.out_dim, hidden, out_dim)

    def forward(self, image, state) -> torch.Tensor:
        return self.head(self.encoder(image, state))


class IMRL(RewardAgent):
    name = "imrl"

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        super().__init__(cfg, spec, device)
        self.target = DeltaTarget(self.inputs.obs_shape, spec.obs_shape[0], self.inputs.state_dim, cfg.use_pixels,
                                  cfg.pool).to(device)
        self.model = NextStateModel(self.make_encoder(), self.target.dim, cfg.reward_hidden).to(device)
        self.reward_modules = nn.ModuleDict({"model": self.model, "target": self.target})
        self.reward_opt = adam(self.model.parameters(), cfg.reward_lr)

    def fit_statistics(self, now: tuple, nxt: tuple) -> None:
        super().fit_statistics(now, nxt)
        if now[1] is not None:
            self.model.encoder.fit_state(now[1])
        self.target.fit(now, nxt)

    def error(self, now: tuple, nxt: tuple) -> torch.Tensor:
        """||s_{t+1} - theta(s_t)|| per sample, in standardised units."""
        return (self.target(now, nxt) - self.model(*now)).pow(2).sum(-1).sqrt()

    def reward_step(self, expert: TransitionBatch, batch: TransitionBatch | None) -> tuple[dict, dict]:
        now, nxt = self.inputs.now(expert), self.inputs.next(expert)
        loss = (self.target(now, nxt) - self.model(*now)).pow(2).sum(-1).mean()
        info = optimize(loss, self.reward_opt, self.model.parameters())
        out = {"model_loss": float(loss.detach()), "reward_grad_norm": info["grad_norm"], "skipped": info["skipped"]}
        if batch is not None:
            with torch.no_grad():
                out["agent_error"] = float(self.error(self.inputs.now(batch), self.inputs.next(batch)).mean())
        return out

    def reward(self, now: tuple, nxt: tuple, expert: TransitionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        err = self.error(now, nxt)
        r = imrl_reward(err, self.cfg.psi, self.cfg.scale, self.cfg.offset)
        return r, {"reward_mean": float(r.mean()), "model_error": float(err.mean())}


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> Any:
    """Demos may be observation-only; a model fitted to a single transition is no model (>= 2)."""
    check_demos("imrl", spec, demos, cfg.use_proprio, min_transitions=2)
    return with_learner(IMRL(cfg, spec, device))
