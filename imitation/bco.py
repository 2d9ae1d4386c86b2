"""Behavioural cloning from observation (BCO; Torabi et al. 2018, the observation-imitation slides):
an inverse dynamics model p(a | s_t, s_{t+1}) learns from the agent's own transitions (which carry
the true actions), labels the observation-only expert transitions with its most likely action, and
a policy is cloned from those labels.

Schedule on the runner: ``train.prefill_steps`` random actions are the pre-demonstration
interaction; ``train.pretrain_updates`` (= ``agent.idm_updates`` in the presets) then fit both models
in one burst (BCO(0) when ``train.env_steps`` equals the prefill). With ``agent.iterate=true`` the
inverse model keeps training on the replay, which now also holds the policy's own transitions
(BCO(alpha)); otherwise it is frozen after ``idm_updates`` and only the policy trains on.
Discrete actions: cross-entropy, labels are the argmax; continuous: mean squared error on actions
scaled to [-1, 1], labels are the regressed means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from imitation.ifo import DeltaTarget, Inputs, ObsEncoder, action_targets, check_demos, env_action, mlp
from vmil.base import BatchRequest, EnvSpec, Obs, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, optimize


@dataclass(frozen=True)
class Config:
    frame_stack: int = doc(3, "Frames stacked as an observation (pixels).")
    use_pixels: bool = doc(True, "Read the frame stack (false: state observations only, with env.proprio=true).")
    use_proprio: bool = doc(False, "Read the env's state (env.proprio=true; recorded demos need --proprio).")
    channels: tuple[int, ...] = doc((16, 32, 64), "Channels of the conv encoders' 4x4 stride-2 layers (pixels).")
    feature_dim: int = doc(50, "Conv encoder output size (pixels).")
    hidden_dim: int = doc(256, "Hidden units of the inverse model's and the policy's MLPs.")
    batch_size: int = doc(256, "Agent transitions per inverse-model update.")
    expert_batch_size: int = doc(256, "Expert transitions labelled and cloned per update.")
    lr: float = doc(1e-3, "Adam learning rate of both models.")
    idm_updates: int = doc(2000, "Updates that train the inverse model (run them as train.pretrain_updates).")
    iterate: bool = doc(False, "Keep training the inverse model after idm_updates on the replay, which then holds "
                               "the policy's transitions too (BCO(alpha)); false: BCO(0).")
    explore_std: float = doc(0.2, "Continuous actions: Gaussian exploration noise (in [-1, 1] units) when collecting.")
    idm_delta: bool = doc(True, "Also feed the inverse model the one-step change s' - s standardised by the demos' "
                                "changes (imitation.ifo.DeltaTarget): an action moves MountainCar's velocity by "
                                "about 3% of its spread, which the raw pair hides.")


class InverseModel(nn.Module):
    """p(a | s_t, s_{t+1}): logits (discrete) or the action mean in [-1, 1] (continuous), from the
    encoded pair and (``delta``) the standardised one-step change."""

    def __init__(self, make_encoder, out_dim: int, hidden: int, delta: DeltaTarget | None = None):
        super().__init__()
        self.encoder = make_encoder()
        self.delta = delta
        self.head = mlp(2 * self.encoder.out_dim + (delta.dim if delta is not None else 0), hidden, out_dim)

    def forward(self, now: tuple, nxt: tuple) -> torch.Tensor:
        parts = [self.encoder(*now), self.encoder(*nxt)]
        if self.delta is not None:
            parts.append(self.delta(now, nxt))
        return self.head(torch.cat(parts, dim=-1))


class Policy(nn.Module):
    def __init__(self, make_encoder, out_dim: int, hidden: int):
        super().__init__()
        self.encoder = make_encoder()
        self.head = mlp(self.encoder.out_dim, hidden, out_dim)

    def forward(self, image, state) -> torch.Tensor:
        return self.head(self.encoder(image, state))


@torch.no_grad()
def label_actions(idm: InverseModel, now: tuple, nxt: tuple, discrete: bool) -> torch.Tensor:
    """The inverse model's labels for expert transitions: class indices, or actions in [-1, 1]."""
    out = idm(now, nxt)
    return out.argmax(-1) if discrete else out.clamp(-1.0, 1.0)


def action_loss(out: torch.Tensor, target: torch.Tensor, discrete: bool) -> torch.Tensor:
    return F.cross_entropy(out, target) if discrete else F.mse_loss(out, target)


class BCO:
    name = "bco"

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        self.cfg, self.spec, self.device = cfg, spec, device
        self.inputs = Inputs("bco", spec, cfg.frame_stack, cfg.use_pixels, cfg.use_proprio, device)

        def encoder() -> ObsEncoder:
            return ObsEncoder(self.inputs.obs_shape, self.inputs.state_dim, cfg.use_pixels, cfg.channels,
                              cfg.feature_dim)

        delta = None
        if cfg.idm_delta:
            delta = DeltaTarget(self.inputs.obs_shape, spec.obs_shape[0], self.inputs.state_dim, cfg.use_pixels)
        self.idm = InverseModel(encoder, spec.action_dim, cfg.hidden_dim, delta).to(device)
        self.policy = Policy(encoder, spec.action_dim, cfg.hidden_dim).to(device)
        self.idm_opt = adam(self.idm.parameters(), cfg.lr)
        self.policy_opt = adam(self.policy.parameters(), cfg.lr)
        self.request = BatchRequest(kind="transition", batch_size=cfg.batch_size, frame_stack=cfg.frame_stack,
                                    nstep=1, expert_batch_size=cfg.expert_batch_size)
        self.updates = 0
        self.fitted = False

    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[Any, Any]:
        with torch.no_grad():
            out = self.policy(*self.inputs.obs(obs))[0]
        return env_action(out, self.spec, explore, self.cfg.explore_std), None

    def update(self, batch: TransitionBatch | None, expert: TransitionBatch | None, step: int) -> dict[str, float]:
        if batch is None or expert is None:
            raise ValueError("bco: update needs an agent batch (its true actions train the inverse model) and an "
                             "expert batch")
        if batch.action is None:
            raise ValueError("bco: the agent batch has no actions; the inverse model learns from the agent's own "
                             "transitions")
        e_now, e_next = self.inputs.now(expert), self.inputs.next(expert)
        if not self.fitted:
            for enc in (self.idm.encoder, self.policy.encoder):
                if e_now[1] is not None:
                    enc.fit_state(e_now[1])
            if self.idm.delta is not None:
                self.idm.delta.fit(e_now, e_next)
            self.fitted = True
        metrics: dict[str, float] = {}
        if self.updates < self.cfg.idm_updates or self.cfg.iterate:
            target = action_targets(batch.action.to(self.device), self.spec)
            out = self.idm(self.inputs.now(batch), self.inputs.next(batch))
            idm_loss = action_loss(out, target, self.spec.discrete)
            info = optimize(idm_loss, self.idm_opt, self.idm.parameters())
            metrics.update(idm_loss=float(idm_loss.detach()), idm_skipped=info["skipped"])
            if self.spec.discrete:
                metrics["idm_accuracy"] = float((out.argmax(-1) == target).float().mean())
        labels = label_actions(self.idm, e_now, e_next, self.spec.discrete)
        if expert.action is not None:  # demos with actions: how right the labels are (never trained on)
            truth = action_targets(expert.action.to(self.device), self.spec)
            metrics["label_accuracy" if self.spec.discrete else "label_mse"] = float(
                (labels == truth).float().mean() if self.spec.discrete else F.mse_loss(labels, truth))
        out = self.policy(*e_now)
        bc_loss = action_loss(out, labels, self.spec.discrete)
        info = optimize(bc_loss, self.policy_opt, self.policy.parameters())
        metrics.update(bc_loss=float(bc_loss.detach()), grad_norm=info["grad_norm"],
                       skipped=max(info["skipped"], metrics.get("idm_skipped", 0.0)))
        self.updates += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"idm": self.idm.state_dict(), "policy": self.policy.state_dict(), "idm_opt": self.idm_opt.state_dict(),
                "policy_opt": self.policy_opt.state_dict(), "updates": self.updates, "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.idm.load_state_dict(state["idm"])
        self.policy.load_state_dict(state["policy"])
        self.idm_opt.load_state_dict(state["idm_opt"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.updates, self.fitted = int(state["updates"]), bool(state["fitted"])


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> BCO:
    """Demos may be observation-only (their actions, if any, are only used to report label accuracy)."""
    check_demos("bco", spec, demos, cfg.use_proprio, min_transitions=1)
    if demos is not None and demos.has_actions and demos.action_dim and demos.action_dim != spec.action_dim:
        raise ValueError(f"{demos.directory}: demo actions have dimension {demos.action_dim} but {spec.env_id} has "
                         f"{spec.action_dim}")
    return BCO(cfg, spec, device)
