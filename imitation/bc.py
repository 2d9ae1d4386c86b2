"""Behavioural cloning from pixels: regress the expert's action from a frame stack.

Offline: it asks the runner for expert transitions only (``BatchRequest(kind="none")``) and
collects no data. It needs demos recorded with actions (``vmil demos record --keep-actions``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vmil.base import BatchRequest, EnvSpec, Obs, TransitionBatch
from vmil.config import doc
from vmil.data.augment import random_shift
from vmil.nn import normal_log_prob, optimize


class NeedsActions(ValueError):
    """BC was given demos without actions."""


@dataclass(frozen=True)
class Config:
    frame_stack: int = doc(3, "Frames stacked as the policy input (one frame shows no velocity).")
    batch_size: int = doc(128, "Expert transitions per update.")
    lr: float = doc(3e-4, "Adam learning rate.")
    channels: tuple[int, ...] = doc((16, 32, 64, 128), "Channels of the conv encoder's 4x4 stride-2 layers.")
    feature_dim: int = doc(50, "Size of the encoder's output feature (after LayerNorm + tanh).")
    hidden_dim: int = doc(256, "Units of the two hidden layers of the policy head.")
    loss: Literal["mse", "nll"] = doc("mse", "mse on the action, or tanh-Gaussian negative log-likelihood "
                                              "(discrete envs always use cross-entropy).")
    augment_pad: int = doc(4, "Random-shift augmentation padding in pixels; 0 disables it.")
    grad_clip: float = doc(0.0, "Gradient norm clip; 0 disables it.")
    use_proprio: bool = doc(True, "Feed proprioception (when the env has it) next to the image feature.")
    channels_last: bool = doc(True, "channels_last memory format for the convs (about 2x faster on CPU).")


class Encoder(nn.Module):
    """Strided conv stack -> linear -> LayerNorm -> tanh (DrQ-v2's trunk after a cheaper conv)."""

    def __init__(self, obs_shape: tuple[int, int, int], channels: tuple[int, ...], feature_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = obs_shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.trunk = nn.Sequential(nn.Linear(flat, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.convs(image))


class Policy(nn.Module):
    def __init__(self, obs_shape: tuple[int, int, int], state_dim: int, out_dim: int, cfg: Config):
        super().__init__()
        self.encoder = Encoder(obs_shape, cfg.channels, cfg.feature_dim)
        self.head = nn.Sequential(
            nn.Linear(cfg.feature_dim + state_dim, cfg.hidden_dim), nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(),
            nn.Linear(cfg.hidden_dim, out_dim))

    def forward(self, image: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        h = self.encoder(image)
        if state is not None:
            h = torch.cat([h, state], dim=-1)
        return self.head(h)


def tanh_gaussian_nll(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """-log p(action) per sample under tanh(N(mean, std)); actions in (-1, 1)."""
    a = action.clamp(-1 + 1e-4, 1 - 1e-4)
    u = torch.atanh(a)
    return -(normal_log_prob(u, mean, log_std) - torch.log1p(-a.pow(2)).sum(-1))


class BC:
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        self.cfg = cfg
        self.spec = spec
        self.device = device
        c, h, w = spec.obs_shape
        self.obs_shape = (c * cfg.frame_stack, h, w)
        self.state_dim = spec.state_dim if cfg.use_proprio else 0
        if spec.discrete:
            out_dim = spec.action_dim
        else:
            out_dim = spec.action_dim * (2 if cfg.loss == "nll" else 1)
        self.policy = Policy(self.obs_shape, self.state_dim, out_dim, cfg).to(device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.policy.to(memory_format=self.memory_format)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.request = BatchRequest(kind="none", batch_size=cfg.batch_size, frame_stack=cfg.frame_stack,
                                    expert_batch_size=cfg.batch_size)
        self._scale = (spec.action_high - spec.action_low) / 2.0
        self._offset = (spec.action_high + spec.action_low) / 2.0

    # Images are uint8 [B, k*C, H, W]; the network sees floats in [-0.5, 0.5].
    def _image(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(self.device, torch.float32).div_(255.0).sub_(0.5)
        return x.contiguous(memory_format=self.memory_format)

    def _state(self, state: torch.Tensor | None) -> torch.Tensor | None:
        if not self.state_dim:
            return None
        if state is None:
            raise ValueError("bc: the env has proprioception (state_dim > 0) but the batch has no state; "
                             "set agent.use_proprio=false or record demos with state")
        return state.to(self.device, torch.float32)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(-5.0, 2.0)

    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray | int, Any]:
        assert obs.image.shape == self.obs_shape, f"bc: obs {obs.image.shape}, expected {self.obs_shape}"
        with torch.no_grad():
            image = self._image(torch.as_tensor(obs.image)[None])
            proprio = None
            if self.state_dim:
                proprio = torch.as_tensor(obs.proprio, dtype=torch.float32, device=self.device)[None]
            out = self.policy(image, proprio)[0]
            if self.spec.discrete:
                if explore:
                    return int(torch.distributions.Categorical(logits=out).sample()), None
                return int(out.argmax()), None
            if self.cfg.loss == "nll":
                mean, log_std = self._split(out)
                u = mean + log_std.exp() * torch.randn_like(mean) if explore else mean
                a = torch.tanh(u)
            else:
                a = out.clamp(-1.0, 1.0)
            action = (a * self._scale + self._offset).cpu().numpy().astype(np.float32)
        return action, None

    def update(self, batch: Any, expert: TransitionBatch | None, step: int) -> dict[str, float]:
        if expert is None or expert.action is None:
            raise NeedsActions("bc needs expert transitions with actions; record demos with "
                               "`vmil demos record ... --keep-actions`")
        b = expert.obs.shape[0]
        assert expert.obs.shape[1:] == self.obs_shape, f"bc: expert obs {tuple(expert.obs.shape)}, expected [B, *{self.obs_shape}]"
        image = self._image(expert.obs)
        if self.cfg.augment_pad > 0:
            image = random_shift(image, self.cfg.augment_pad)
        out = self.policy(image, self._state(expert.state))
        if self.spec.discrete:
            action = expert.action.to(self.device)
            # The replay stores discrete actions one-hot; episodes hold indices.
            target = action.argmax(-1) if action.ndim == 2 else action.long().reshape(b)
            loss = F.cross_entropy(out, target)
            metrics = {"accuracy": float((out.argmax(-1) == target).float().mean())}
        else:
            target = (expert.action.to(self.device, torch.float32) - self._offset) / self._scale
            assert target.shape == (b, self.spec.action_dim), f"bc: expert action {tuple(target.shape)}"
            if self.cfg.loss == "nll":
                mean, log_std = self._split(out)
                loss = tanh_gaussian_nll(mean, log_std, target).mean()
                metrics = {"action_mse": float(F.mse_loss(torch.tanh(mean.detach()), target))}
            else:
                loss = F.mse_loss(out, target)
                metrics = {"action_mse": float(loss.detach())}
        metrics["loss"] = float(loss.detach())
        metrics.update(optimize(loss, self.opt, self.policy.parameters(), self.cfg.grad_clip))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["opt"])


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any) -> BC:
    """``demos`` (a DemoInfo) must hold actions; None is allowed for evaluation of a saved agent."""
    if demos is not None and not demos.has_actions:
        raise NeedsActions("bc needs demos with actions, but these are observation-only; record them with "
                           "`vmil demos record ... --keep-actions`")
    return BC(cfg, spec, device)
