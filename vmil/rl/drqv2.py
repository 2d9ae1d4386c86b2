"""DrQ-v2 (Yarats et al. 2021): DDPG from pixels with random-shift augmentation, double Q and
n-step returns. The learner of PatchAIL and of every model-free imitation agent in
``imitation.patchail``; on its own (``--algo drqv2``) it learns from the env's true reward, which
checks the learner independently of imitation.

Read top to bottom: config, networks, the learner (act / critic step / actor step / update),
``build``. Random exploration before the first update is the runner's ``train.prefill_steps`` and
"update every 2 steps" is ``train.update_every`` (both set in ``configs/algo/drqv2.yaml``).
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmil.base import BatchRequest, EnvSpec, Obs, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, linear_schedule, optimize, soft_update, timed, weighted_sum


@dataclass(frozen=True)
class Config:
    batch_size: int = doc(256, "Agent transitions per update.")
    frame_stack: int = doc(3, "Frames stacked on the channel axis of each observation.")
    nstep: int = doc(3, "n of the n-step TD target.")
    discount: float = doc(0.99, "Discount per agent step.")
    lr: float = doc(1e-4, "Adam learning rate of encoder, critic and actor.")
    feature_dim: int = doc(50, "Width of the trunk (Linear + LayerNorm + tanh) after the encoder.")
    hidden_dim: int = doc(1024, "Hidden width of the actor and critic MLPs.")
    encoder_channels: int = doc(32, "Channels of the four 3x3 encoder convolutions.")
    critic_tau: float = doc(0.01, "Soft-update rate of the target critic.")
    std_schedule: tuple[float, float, int] = doc(
        (1.0, 0.1, 500_000), "Exploration std: linear(init, final, over this many env steps; 0 keeps init).")
    std_clip: float = doc(0.3, "Clip of the target-policy and actor-update noise.")
    augment_pad: int = doc(4, "Random-shift padding in pixels (0 disables augmentation).")
    grad_clip: float = doc(0.0, "Gradient-norm clip per optimiser; 0 for none.")
    pre_tanh_reg: float = doc(
        0.0, "Weight of mean(pre-tanh actor output^2) in the actor loss (0: DrQ-v2 as published). Keeps "
        "the policy out of tanh saturation, where Adam can push it on a weak critic gradient and it stops "
        "exploring; a stalled policy in a corner was seen with imitation rewards on toy:reach.")
    channels_last: bool = doc(True, "channels_last convolutions (about 2x faster on CPU).")
    bf16: bool = doc(False, "bf16 autocast for forward passes (faster on CPUs with avx512_bf16 and on GPUs).")




# ---------------------------------------------------------------------------------------------
# Networks


def _init(module: nn.Module) -> None:
    """DrQ-v2's init: orthogonal weights (ReLU gain for convs), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """Four 3x3 convolutions (the first with stride 2) -> flat features (32x35x35 for 84x84)."""

    def __init__(self, obs_shape: tuple[int, int, int], channels: int = 32):
        super().__init__()
        c = channels
        self.convs = nn.Sequential(
            nn.Conv2d(obs_shape[0], c, 3, stride=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1), nn.ReLU())
        with torch.no_grad():
            self.repr_dim = int(self.convs(torch.zeros(1, *obs_shape)).numel())
        self.apply(_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: float [B, C, H, W] in [0, 255] -> [B, repr_dim]."""
        return self.convs(obs / 255.0 - 0.5).flatten(1)


def _trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class Actor(nn.Module):
    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.policy = _mlp(feature_dim, hidden_dim, action_dim)
        self.apply(_init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Mean action in [-1, 1]; the std comes from the schedule, not the network."""
        return torch.tanh(self.pre_tanh(h))

    def pre_tanh(self, h: torch.Tensor) -> torch.Tensor:
        return self.policy(self.trunk(h))


class Critic(nn.Module):
    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.q1 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.apply(_init)

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.trunk(h), action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def sample_action(mean: torch.Tensor, std: float, clip: float | None = None) -> torch.Tensor:
    """DrQ-v2's truncated normal: clipped noise, then a clamp to (-1, 1) that lets gradients
    through (straight-through), so the actor still learns at the boundary."""
    noise = torch.randn_like(mean) * std
    if clip is not None:
        noise = noise.clamp(-clip, clip)
    x = mean + noise
    return x - x.detach() + x.detach().clamp(-1 + 1e-6, 1 - 1e-6)


# ---------------------------------------------------------------------------------------------
# The learner


class DrQV2:
    """Encoder + actor + double critic. ``update`` learns from the batch's true reward; imitation
    agents call ``encode`` / ``critic_step`` / ``actor_step`` / ``soft_update`` with their own
    rewards instead."""

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device, expert_batch_size: int = 0,
                 batch_size: int | None = None):
        if spec.discrete:
            raise ValueError(f"DrQ-v2 needs a continuous action space; {spec.env_id} is discrete "
                             "(use an algorithm for discrete actions)")
        if cfg.frame_stack < 1 or cfg.nstep < 1:
            raise ValueError(f"frame_stack and nstep must be >= 1, got {cfg.frame_stack}, {cfg.nstep}")
        self.cfg, self.spec, self.device = cfg, spec, device
        c, h, w = spec.obs_shape
        self.obs_shape = (c * cfg.frame_stack, h, w)
        self.action_dim = spec.action_dim
        self.request = BatchRequest(kind="transition", batch_size=batch_size or cfg.batch_size, frame_stack=cfg.frame_stack,
                                    nstep=cfg.nstep, discount=cfg.discount, expert_batch_size=expert_batch_size)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.encoder = Encoder(self.obs_shape, cfg.encoder_channels).to(device, memory_format=self.memory_format)
        repr_dim = self.encoder.repr_dim
        self.actor = Actor(repr_dim, self.action_dim, cfg.feature_dim, cfg.hidden_dim).to(device)
        self.critic = Critic(repr_dim, self.action_dim, cfg.feature_dim, cfg.hidden_dim).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # One Adam over encoder + critic equals DrQ-v2's two (Adam is per parameter); fused on CPU and GPU.
        self.critic_params = list(self.encoder.parameters()) + list(self.critic.parameters())
        self.critic_opt = adam(self.critic_params, cfg.lr)
        self.actor_opt = adam(self.actor.parameters(), cfg.lr)
        self.step = 0  # env steps at the last update: drives the exploration schedule in act()
        self.timings: dict[str, float] | None = None  # set to {} to time the parts of each update (ms)

    # -- helpers ----------------------------------------------------------------------------------
    def autocast(self):
        if not self.cfg.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def timed(self, name: str):
        """Adds the wall time of the block to ``timings[name]`` when timing is on (benchmarks)."""
        return timed(self.timings, name, self.device)

    def std(self, step: int) -> float:
        return linear_schedule(step, *self.cfg.std_schedule)

    def to_float(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> float [0, 255] in the convolution memory format."""
        return obs.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)

    def augment(self, obs: torch.Tensor) -> torch.Tensor:
        """Random shift of uint8 or float frames -> float [0, 255]."""
        if self.cfg.augment_pad <= 0:
            return self.to_float(obs)
        from vmil.data.augment import random_shift
        return random_shift(obs.to(self.device), pad=self.cfg.augment_pad).float().contiguous(
            memory_format=self.memory_format)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.encoder(obs).float()

    def to_unit_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env action range -> [-1, 1] (the networks' range)."""
        low, high = self.spec.action_low, self.spec.action_high
        if (low, high) == (-1.0, 1.0):
            return action
        return 2.0 * (action - low) / (high - low) - 1.0

    def check_batch(self, batch: TransitionBatch, what: str = "agent batch") -> None:
        shape = tuple(batch.obs.shape[1:])
        if shape != self.obs_shape:
            raise ValueError(f"{what}: observations have shape {shape}, expected {self.obs_shape} "
                             f"(frame_stack={self.cfg.frame_stack} x {self.spec.obs_shape}); sample with "
                             f"this agent's request (frame_stack={self.cfg.frame_stack}) from frames of the env's size")
        if batch.next_obs.shape != batch.obs.shape:
            raise ValueError(f"{what}: next_obs {tuple(batch.next_obs.shape)} != obs {tuple(batch.obs.shape)}")

    # -- acting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Obs, state: Any = None, explore: bool = False) -> tuple[np.ndarray, Any]:
        image = torch.as_tensor(obs.image, device=self.device)
        if tuple(image.shape) != self.obs_shape:
            raise ValueError(f"act: observation has shape {tuple(image.shape)}, expected {self.obs_shape} "
                             f"(the runner must stack {self.cfg.frame_stack} frames)")
        h = self.encode(self.to_float(image[None]))
        mean = self.actor(h)
        action = sample_action(mean, self.std(self.step)) if explore else mean
        action = action.clamp(-1.0, 1.0)[0].cpu().numpy().astype(np.float32)
        low, high = self.spec.action_low, self.spec.action_high
        return (low + (action + 1.0) * 0.5 * (high - low)).astype(np.float32), None

    # -- learning ---------------------------------------------------------------------------------
    def critic_step(self, h: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                    h_next: torch.Tensor, step: int) -> dict[str, float]:
        """TD(n) with clipped double Q; the gradient trains the critic and the encoder."""
        with torch.no_grad(), self.autocast():
            next_action = sample_action(self.actor(h_next), self.std(step), self.cfg.std_clip)
            target_q1, target_q2 = self.critic_target(h_next, next_action)
            target = reward + discount * torch.min(target_q1, target_q2).float()
        with self.autocast():
            q1, q2 = self.critic(h, action)
        losses = {"q1": F.mse_loss(q1.float(), target), "q2": F.mse_loss(q2.float(), target)}
        loss = weighted_sum(losses, {"q1": 1.0, "q2": 1.0})
        info = optimize(loss, self.critic_opt, self.critic_params, self.cfg.grad_clip)
        return {"critic_loss": float(loss.detach()), "critic_q1": float(q1.detach().mean()), "critic_target_q": float(target.mean()),
                "critic_grad_norm": info["grad_norm"], "critic_skipped": info["skipped"]}

    def actor_step(self, h: torch.Tensor, step: int, extra: dict[str, torch.Tensor] | None = None,
                   extra_weights: dict[str, float] | None = None) -> dict[str, float]:
        """Deterministic policy gradient through min(Q1, Q2) on detached features; ``extra`` adds
        named losses (e.g. BC) with their weights (a weight for "actor" replaces its 1)."""
        # The critic only passes gradients to the action: frozen, its weight gradients (which
        # DrQ-v2 computes and throws away) are never computed.
        self.critic.requires_grad_(False)
        try:
            with self.autocast():
                pre = self.actor.pre_tanh(h)
                action = sample_action(torch.tanh(pre), self.std(step), self.cfg.std_clip)
                q1, q2 = self.critic(h, action)
            losses = {"actor": -torch.min(q1, q2).float().mean(), **(extra or {})}
            weights = {"actor": 1.0, **(extra_weights or {})}
            if self.cfg.pre_tanh_reg > 0:
                losses["pre_tanh"] = pre.float().pow(2).mean()
                weights["pre_tanh"] = self.cfg.pre_tanh_reg
            loss = weighted_sum(losses, weights)
            info = optimize(loss, self.actor_opt, self.actor.parameters(), self.cfg.grad_clip)
        finally:
            self.critic.requires_grad_(True)
        out = {f"{k}_loss": float(v.detach()) for k, v in losses.items()}
        out.update({"actor_grad_norm": info["grad_norm"], "actor_skipped": info["skipped"],
                    "actor_std": self.std(step)})
        return out

    @torch.no_grad()
    def soft_update(self) -> None:
        soft_update(self.critic_target, self.critic, self.cfg.critic_tau)

    def update(self, batch: TransitionBatch, expert: TransitionBatch | None, step: int) -> dict[str, float]:
        """One DrQ-v2 update from the true n-step reward (``--algo drqv2``)."""
        self.check_batch(batch)
        self.step = step
        with self.timed("critic"):
            action = self.to_unit_action(batch.action.to(self.device))
            h = self.encode(self.augment(batch.obs))
            with torch.no_grad():
                h_next = self.encode(self.augment(batch.next_obs))
            metrics = self.critic_step(h, action, batch.reward.to(self.device), batch.discount.to(self.device),
                                       h_next, step)
        with self.timed("actor"):
            metrics.update(self.actor_step(h.detach(), step))
            self.soft_update()
        metrics["reward_mean"] = float(batch.reward.mean())
        metrics["skipped"] = max(metrics["critic_skipped"], metrics["actor_skipped"])
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"encoder", "actor", "critic", "critic_target", "critic_opt", "actor_opt", "step"} - set(state)
        if missing:
            raise KeyError(f"DrQ-v2 checkpoint lacks {sorted(missing)}; was it saved by another algorithm?")
        self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.step = int(state["step"])


NEEDS_DEMOS = False  # the true reward; demos, when given, only set the normalised score


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> DrQV2:
    """DrQ-v2 on the true reward; demos are not used."""
    return DrQV2(cfg, spec, device)
