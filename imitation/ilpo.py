"""Imitating latent policies from observation (ILPO; Edwards et al. 2019, the observation-imitation
slides). Discrete actions only.

Step 1, on expert transitions (the first ``latent_updates`` updates): a latent forward model
G(E_p(s), z) predicts s_{t+1} for each of Z discrete latent actions, trained on min_z of its error;
a latent policy pi(z | s) is trained so that its expectation sum_z pi(z|s) G(E_p(s), z) predicts
s_{t+1} (:func:`imitation.ifo.ilpo_losses`). Step 2, by interaction (every update, on the agent's
own transitions): each (s_t, a_t, s_{t+1}) gets its closest latent action z = argmin_z ||s_{t+1} -
G(E_p(s_t), z)|| and the action-remapping network pi_xi(a | z, E_a(s)) learns a_t by cross-entropy.
Acting: z = argmax pi(z|s), a = argmax pi_xi(a | z, s); collecting takes an epsilon-greedy action.

"s_{t+1}" is :class:`imitation.ifo.DeltaTarget`: the standardised one-step change of the state
and/or the pooled last frame (G predicts it without an image decoder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from imitation.ifo import (DeltaTarget, Inputs, ObsEncoder, action_targets, check_demos, closest_latent,
                           ilpo_losses, mlp, require_discrete)
from vmil.base import BatchRequest, EnvSpec, Obs, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, optimize, weighted_sum


@dataclass(frozen=True)
class Config:
    frame_stack: int = doc(3, "Frames stacked as an observation (pixels).")
    use_pixels: bool = doc(True, "Read the frame stack (false: state observations only, with env.proprio=true).")
    use_proprio: bool = doc(False, "Read the env's state (env.proprio=true; recorded demos need --proprio).")
    channels: tuple[int, ...] = doc((16, 32, 64), "Channels of the conv encoders' 4x4 stride-2 layers (pixels).")
    feature_dim: int = doc(50, "Conv encoder output size (pixels).")
    hidden_dim: int = doc(256, "Hidden units of every MLP.")
    latents: int = doc(0, "Number of latent actions Z; 0: the env's number of actions.")
    batch_size: int = doc(256, "Agent transitions per remapping update.")
    expert_batch_size: int = doc(256, "Expert transitions per latent-policy update.")
    lr: float = doc(1e-3, "Adam learning rate.")
    latent_updates: int = doc(2000, "Updates of step 1 (latent model and policy; run them as train.pretrain_updates).")
    epsilon: float = doc(0.1, "Random-action probability when collecting (step 2's epsilon-greedy).")
    pool: int = doc(8, "Pixels: the last frame is predicted average-pooled to pool x pool.")
    loss_weights: tuple[float, float] = doc((1.0, 1.0), "Weights of the min-over-z and expectation losses.")


class LatentModel(nn.Module):
    """E_p, G (all Z predictions at once) and pi(z | s) on detached E_p features."""

    def __init__(self, encoder: ObsEncoder, latents: int, out_dim: int, hidden: int):
        super().__init__()
        self.encoder, self.latents, self.out_dim = encoder, latents, out_dim
        self.forward_model = mlp(encoder.out_dim, hidden, latents * out_dim)
        self.policy = mlp(encoder.out_dim, hidden, latents)

    def forward(self, image, state) -> tuple[torch.Tensor, torch.Tensor]:
        """(G [B, Z, D], pi logits [B, Z])."""
        h = self.encoder(image, state)
        pred = self.forward_model(h).view(-1, self.latents, self.out_dim)
        return pred, self.policy(h.detach())


class Remap(nn.Module):
    """pi_xi(a | z, E_a(s))."""

    def __init__(self, encoder: ObsEncoder, latents: int, actions: int, hidden: int):
        super().__init__()
        self.encoder, self.latents = encoder, latents
        self.head = mlp(encoder.out_dim + latents, hidden, actions)

    def forward(self, image, state, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(image, state), F.one_hot(z, self.latents).float()], dim=-1))


class ILPO:
    name = "ilpo"

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        require_discrete("ilpo", spec)
        self.cfg, self.spec, self.device = cfg, spec, device
        self.inputs = Inputs("ilpo", spec, cfg.frame_stack, cfg.use_pixels, cfg.use_proprio, device)
        self.latents = cfg.latents or spec.action_dim

        def encoder() -> ObsEncoder:
            return ObsEncoder(self.inputs.obs_shape, self.inputs.state_dim, cfg.use_pixels, cfg.channels,
                              cfg.feature_dim)

        self.target = DeltaTarget(self.inputs.obs_shape, spec.obs_shape[0], self.inputs.state_dim, cfg.use_pixels,
                                  cfg.pool).to(device)
        self.model = LatentModel(encoder(), self.latents, self.target.dim, cfg.hidden_dim).to(device)
        self.remap = Remap(encoder(), self.latents, spec.action_dim, cfg.hidden_dim).to(device)
        self.model_opt = adam(self.model.parameters(), cfg.lr)
        self.remap_opt = adam(self.remap.parameters(), cfg.lr)
        self.request = BatchRequest(kind="transition", batch_size=cfg.batch_size, frame_stack=cfg.frame_stack,
                                    nstep=1, expert_batch_size=cfg.expert_batch_size)
        self.updates = 0
        self.fitted = False

    @torch.no_grad()
    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[int, Any]:
        if explore and torch.rand(()) < self.cfg.epsilon:
            return int(torch.randint(self.spec.action_dim, ())), None
        image, st = self.inputs.obs(obs)
        _, logits = self.model(image, st)
        z = logits.argmax(-1)
        return int(self.remap(image, st, z).argmax(-1)[0]), None

    def update(self, batch: TransitionBatch | None, expert: TransitionBatch | None, step: int) -> dict[str, float]:
        if batch is None or expert is None:
            raise ValueError("ilpo: update needs an expert batch (step 1) and an agent batch (step 2)")
        e_now, e_next = self.inputs.now(expert), self.inputs.next(expert)
        if not self.fitted:
            if e_now[1] is not None:
                self.model.encoder.fit_state(e_now[1])
                self.remap.encoder.fit_state(e_now[1])
            self.target.fit(e_now, e_next)
            self.fitted = True
        metrics: dict[str, float] = {}
        if self.updates < self.cfg.latent_updates:
            pred, logits = self.model(*e_now)
            losses = ilpo_losses(pred, self.target(e_now, e_next), logits)
            w_min, w_exp = self.cfg.loss_weights
            info = optimize(weighted_sum(losses, {"min_z": w_min, "expected": w_exp}), self.model_opt,
                            self.model.parameters())
            metrics.update({f"{k}_loss": float(v.detach()) for k, v in losses.items()})
            metrics["model_skipped"] = info["skipped"]
            with torch.no_grad():
                metrics["latent_entropy"] = float(torch.distributions.Categorical(logits=logits).entropy().mean())
        now, nxt = self.inputs.now(batch), self.inputs.next(batch)
        with torch.no_grad():
            pred, _ = self.model(*now)
            z = closest_latent(pred, self.target(now, nxt))
        action = action_targets(batch.action.to(self.device), self.spec)
        out = self.remap(*now, z)
        loss = F.cross_entropy(out, action)
        info = optimize(loss, self.remap_opt, self.remap.parameters())
        metrics.update(remap_loss=float(loss.detach()), remap_accuracy=float((out.argmax(-1) == action).float().mean()),
                       skipped=max(info["skipped"], metrics.get("model_skipped", 0.0)))
        self.updates += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "remap": self.remap.state_dict(), "target": self.target.state_dict(),
                "model_opt": self.model_opt.state_dict(), "remap_opt": self.remap_opt.state_dict(),
                "updates": self.updates, "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("model", "remap", "target", "model_opt", "remap_opt"):
            getattr(self, key).load_state_dict(state[key])
        self.updates, self.fitted = int(state["updates"]), bool(state["fitted"])


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> ILPO:
    require_discrete("ilpo", spec)
    check_demos("ilpo", spec, demos, cfg.use_proprio, min_transitions=1)
    return ILPO(cfg, spec, device)
