"""Relational Mimic (Blondé et al.) and the adversarial on-policy family it extends: GAIL (Ho & Ermon
2016) and GAIfO (Torabi et al. 2018), all on the PPO learner of ``vmil/rl/ppo.py``.

Algorithm 1 of the paper, per iteration: the runner collects a rollout; its transitions get the
reward of the current discriminator; the discriminator then takes ``disc_steps`` steps, each on a
minibatch of the rollout's transitions against one of expert transitions (an equal mixture); PPO
updates the policy and value on the rollout.

- ``gail``: D(s, a) on the stack at t and the action (broadcast as constant image planes). Needs
  demos with actions.
- ``gaifo``: D over the stack at t + 1, whose last two frames give (s, s') (the paper's form of
  GAIfO over stacked states; needs frame_stack >= 2). Observation-only demos.
- ``rm``: GAIfO with the relational reward network (Table 3), spectral norm *and* the gradient
  penalty, and local / non-local policy and value networks (``rm-l-l``, ``rm-l-nl``, ``rm-nl-nl``:
  Table 4 of the paper, presets in ``configs/algo/``).

The reward is -log(1 - D) = softplus(logit), numerically safe (``reward_transform`` chooses another
form of ``imitation.rewards.transform``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from imitation import discriminators as D
from imitation import rewards as R
from vmil.base import EnvSpec, TransitionBatch
from vmil.checkpoint import load_parts, parts_state
from vmil.config import doc
from vmil.nn import adam, optimize
from vmil.rl import distributed
from vmil.rl import ppo
from vmil.rl.networks import RewardNet
from vmil.rl.ppo import Rollout

ON_POLICY = True


class NeedsActions(ValueError):
    """GAIL was given observation-only demos."""


@dataclass(frozen=True)
class Config(ppo.Config):
    variant: Literal["gail", "gaifo", "rm"] = doc("rm", "gail: D(s, a); gaifo: D over stacked states (s, s'); "
                                                      "rm: gaifo with relational networks, spectral norm + GP.")
    reward_net: Literal["local", "nonlocal"] = doc("nonlocal", "Reward network of Table 3 with (nonlocal) or "
                                                               "without (local) its two relational blocks.")
    disc_width: int = doc(16, "Channels of the reward network's first convolution (then 2x, 2x, 2x, 1x).")
    disc_hidden: int = doc(64, "Width of the reward network's dense layer (LayerNorm + leaky ReLU).")
    spectral_norm: bool = doc(True, "Spectral normalisation on every layer of the reward network.")
    gp_weight: float = doc(10.0, "Weight of the gradient penalty (||grad D|| - 1)^2 at expert / agent interpolates.")
    disc_lr: float = doc(3e-4, "Adam learning rate of the discriminator.")
    disc_steps: int = doc(1, "Discriminator steps per iteration.")
    expert_batch_size: int = doc(64, "Expert (and agent) transitions per discriminator step.")
    reward_transform: R.TransformKind = doc("neg_log_one_minus", "Reward from D's logit: neg_log_one_minus "
                                            "(-log(1 - D), the paper's), logit, log (log D), fairl.")

    def __post_init__(self):
        super().__post_init__()
        from vmil.config import ConfigError

        if self.variant in ("gaifo", "rm") and self.frame_stack < 2:
            raise ConfigError(f"{self.variant} discriminates stacked states whose last two frames are (s, s'): "
                              f"agent.frame_stack must be >= 2, got {self.frame_stack}")
        for name in ("disc_steps", "expert_batch_size", "disc_width", "disc_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"agent.{name} must be >= 1, got {getattr(self, name)}")


class AdversarialPPO(ppo.PPO):
    """PPO whose reward is a discriminator's, learnt each iteration against expert transitions."""

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        super().__init__(cfg, spec, device, expert_batch_size=cfg.disc_steps * cfg.expert_batch_size)
        self.cfg: Config = cfg
        c, h, w = self.obs_shape
        extra = spec.action_dim if cfg.variant == "gail" else 0
        self.disc = RewardNet((c + extra, h, w), cfg.disc_width, cfg.disc_hidden, relational=cfg.reward_net == "nonlocal",
                              sn=cfg.spectral_norm).to(device)
        distributed.broadcast_module(self.disc)
        self.disc_opt = adam(self.disc.parameters(), cfg.disc_lr)
        self.disc_updates = 0

    def parts(self) -> dict[str, Any]:
        return {**super().parts(), "disc": self.disc, "disc_opt": self.disc_opt}

    # -- discriminator inputs ----------------------------------------------------------------------
    def unit_action(self, action: torch.Tensor, raw: bool) -> torch.Tensor:
        """Agent actions (raw Gaussian samples, ``raw``) or expert ones (env units) -> [-1, 1] / one-hot."""
        if self.discrete:
            return F.one_hot(action.long().reshape(-1), self.spec.action_dim).float()
        if raw:
            return action.float().clamp(-1.0, 1.0)
        low, high = self.spec.action_low, self.spec.action_high
        return 2.0 * (action.float() - low) / (high - low) - 1.0

    def disc_input(self, s: torch.Tensor, s_next: torch.Tensor, action: torch.Tensor | None) -> torch.Tensor:
        """uint8 stacks at t and t + 1 (and the action) -> D's float input."""
        if self.cfg.variant != "gail":
            return D.normalize_image(s_next.to(self.device))
        x = D.normalize_image(s.to(self.device))
        planes = action.to(self.device)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return torch.cat([x, planes], 1)

    def rollout_inputs(self, rollout: Rollout, idx: torch.Tensor) -> torch.Tensor:
        """D's inputs for the rollout's flat transition indices ``idx`` (of [T * N])."""
        obs = rollout.obs
        flat_s, flat_next = obs[:-1].flatten(0, 1), obs[1:].flatten(0, 1)
        action = None
        if self.cfg.variant == "gail":
            action = self.unit_action(rollout.action.flatten(0, 1)[idx.to(rollout.action.device)], raw=True)
        pick = idx.to(obs.device)
        return self.disc_input(flat_s[pick], flat_next[pick], action)

    def expert_inputs(self, expert: TransitionBatch) -> torch.Tensor:
        action = None
        if self.cfg.variant == "gail":
            if expert.action is None:
                raise NeedsActions("gail needs expert actions but the expert batch has none; record demos with "
                                   "`vmil demos record ... --keep-actions`, or use gaifo / rm")
            action = self.unit_action(expert.action, raw=False)
        return self.disc_input(expert.obs, expert.step_obs, action)

    # -- rewards and the discriminator ---------------------------------------------------------------
    @torch.no_grad()
    def reward_of(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        self.disc.eval()  # spectral norm: no power iteration while scoring
        try:
            logits = torch.cat([self.disc(part).squeeze(1) for part in x.split(chunk)])
        finally:
            self.disc.train()
        return R.transform(logits, self.cfg.reward_transform)

    def rewards(self, rollout: Rollout, expert: TransitionBatch | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The current discriminator's reward for every valid transition (Algorithm 1), then
        ``disc_steps`` discriminator steps on the rollout against the expert batch."""
        if expert is None:
            raise ValueError(f"{self.cfg.variant} needs an expert batch each update (request.expert_batch_size="
                             f"{self.request.expert_batch_size}); give the runner demos (--demos DIR)")
        cfg = self.cfg
        t_len, n = rollout.reward.shape
        valid = rollout.valid.flatten()
        idx = valid.nonzero().squeeze(1)
        reward = torch.zeros(t_len * n, device=self.device)
        if idx.numel():
            reward[idx.to(self.device)] = self.reward_of(self.rollout_inputs(rollout, idx))
        metrics = {"reward_mean": float(reward[idx.to(self.device)].mean()) if idx.numel() else 0.0}
        expert_x = self.expert_inputs(expert).split(cfg.expert_batch_size)
        sums: dict[str, float] = {}
        for chunk in expert_x:
            m = chunk.shape[0]
            pick = idx[torch.randint(idx.numel(), (m,))] if idx.numel() else None
            if pick is None:
                break
            loss, info = D.discriminator_loss(self.disc, chunk, self.rollout_inputs(rollout, pick), cfg.gp_weight)
            step = optimize(loss, self.disc_opt, self.disc.parameters(), cfg.grad_clip)
            self.disc_updates += 1
            for k, v in {**info, "grad_norm": step["grad_norm"], "skipped": step["skipped"]}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(expert_x)
        metrics.update({f"disc_{k}": v for k, v in sums.items()})
        if "disc_expert_acc" in metrics:
            metrics["disc_accuracy"] = 0.5 * (metrics["disc_expert_acc"] + metrics["disc_agent_acc"])
        return reward.reshape(t_len, n), metrics

    def update(self, rollout: Rollout, expert: Any, step: int) -> dict[str, float]:
        metrics = super().update(rollout, expert, step)
        metrics["skipped"] = max(metrics.get("skipped", 0.0), metrics.get("disc_skipped", 0.0))
        return metrics

    # -- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return parts_state(self.parts(), updates=self.updates, disc_updates=self.disc_updates)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = load_parts(state, self.parts(), ("updates", "disc_updates"), self.cfg.variant,
                              "saved with other agent.*_net / disc_width / variant?")
        self.updates, self.disc_updates = counters["updates"], counters["disc_updates"]


def check_demos(cfg: Config, spec: EnvSpec, demos: Any) -> None:
    """Demo frames must be single frames of the env's size; gail needs actions."""
    if demos is None:
        return
    where = getattr(demos, "directory", "") or "demos"
    if tuple(demos.obs_shape) != tuple(spec.obs_shape):
        raise ValueError(f"{where}: demo frames are C,H,W={tuple(demos.obs_shape)} but env {spec.env_id} gives "
                         f"{tuple(spec.obs_shape)}; record them with the same env.image_size / env.grayscale")
    if cfg.variant == "gail" and not demos.has_actions:
        raise NeedsActions(f"{where}: gail needs demos with actions, but these are observation-only; record them "
                           "with `vmil demos record ... --keep-actions`, or use gaifo / rm, which need none")


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> AdversarialPPO:
    check_demos(cfg, spec, demos)
    return AdversarialPPO(cfg, spec, device)
