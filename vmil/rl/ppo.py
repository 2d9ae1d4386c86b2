"""PPO (Schulman et al. 2017) from pixels: the on-policy learner of GAIL, GAIfO and Relational Mimic
(``imitation/rm.py``); on its own (``--algo ppo``) it learns from the env's true reward, which checks
the learner independently of imitation (as ``drqv2`` does for PatchAIL).

Separate policy and value networks (Relational Mimic separates them), generalised advantage
estimation, the clipped surrogate objective, optional value clipping, advantage normalisation,
running per-pixel observation standardisation, LayerNorm in the dense layers, continuous (Gaussian)
and discrete (categorical) actions. Rollouts of ``num_envs`` envs (``num_workers`` processes) are
collected by :class:`vmil.rl.onpolicy.OnPolicyRunner`; ``update`` takes one :class:`Rollout`.

Read top to bottom: config, rollout, GAE and the losses (pure functions), observation
standardisation, networks, the learner (act / update), ``build``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmil.base import BatchRequest, EnvSpec, Obs
from vmil.checkpoint import load_parts, parts_state
from vmil.config import doc
from vmil.nn import adam, normal_log_prob, optimize, timed, weighted_sum
from vmil.rl import distributed
from vmil.rl.networks import make_encoder

Net = Literal["nature", "impala", "local", "nonlocal", "small"]
NEEDS_DEMOS = False  # learns from the true reward; demos, when given, only set the normalised score
ON_POLICY = True  # `vmil train` runs it with vmil.rl.onpolicy.OnPolicyRunner


@dataclass(frozen=True)
class Config:
    num_envs: int = doc(8, "Envs collecting in parallel (per learner).")
    num_workers: int = doc(0, "Worker processes stepping the envs (0: in the learner's own process; at most "
                              "num_envs). Pixel envs that render (MuJoCo) gain from workers; toy:reach does not.")
    rollout_steps: int = doc(128, "Steps per env between updates: a rollout holds num_envs x rollout_steps.")
    frame_stack: int = doc(4, "Frames stacked on the channel axis (the paper compares 4 and 8).")
    epochs: int = doc(4, "Passes over each rollout.")
    minibatches: int = doc(4, "Minibatches per pass (each one optimiser step).")
    discount: float = doc(0.99, "Discount per agent step.")
    gae_lambda: float = doc(0.95, "lambda of generalised advantage estimation.")
    clip: float = doc(0.2, "Clip of the probability ratio in the surrogate objective.")
    value_clip: float = doc(0.0, "Clip of the value prediction around the rollout's values (PPO2); 0: no clip.")
    lr: float = doc(3e-4, "Adam learning rate (policy and value).")
    value_weight: float = doc(0.5, "Weight of the value loss.")
    entropy_weight: float = doc(0.0, "Weight of the entropy bonus (the loss is minus the entropy).")
    grad_clip: float = doc(0.5, "Gradient-norm clip; 0 for none.")
    normalize_advantages: bool = doc(True, "Standardise advantages over each rollout's valid steps.")
    obs_norm: bool = doc(True, "Standardise frames with running per-pixel mean / std (clipped to +-5); "
                               "false: x / 255 - 0.5.")
    policy_net: Net = doc("nature", "Policy encoder: nature, impala (large), local / nonlocal (the paper's "
                                    "agents), small (tests, tiny frames).")
    value_net: Net = doc("nature", "Value encoder (a separate network), same choices.")
    net_width: int = doc(0, "Base channel count of both encoders; 0: each network's default.")
    hidden_dim: int = doc(0, "Width of the encoders' dense layer (LayerNorm + ReLU); 0: the network's default.")
    init_log_std: float = doc(0.0, "Initial log std of the Gaussian policy (state-independent).")

    def __post_init__(self):
        from vmil.config import ConfigError

        for name in ("num_envs", "rollout_steps", "frame_stack", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.num_workers <= self.num_envs:
            raise ConfigError(f"agent.num_workers must be in [0, num_envs={self.num_envs}], got {self.num_workers}")
        if not (0 <= self.discount <= 1 and 0 <= self.gae_lambda <= 1):
            raise ConfigError(f"agent.discount and agent.gae_lambda must be in [0, 1], got {self.discount}, "
                              f"{self.gae_lambda}")
        if self.num_envs * self.rollout_steps < self.minibatches:
            raise ConfigError(f"a rollout of {self.num_envs} x {self.rollout_steps} steps cannot fill "
                              f"agent.minibatches={self.minibatches}")


# ---------------------------------------------------------------------------------------------
# Rollouts, GAE, losses


class Rollout(NamedTuple):
    """num_envs (N) streams of rollout_steps (T) steps, each env's stream as the vectorised workers
    give it: after an episode's last step the env resets, and that step is no transition (``valid``
    False, its action was ignored)."""

    obs: torch.Tensor  # uint8 [T + 1, N, k*C, H, W]: the stack at each step, and the one after the last
    action: torch.Tensor  # float32 [T, N, A] raw Gaussian samples (before clipping), or int64 [T, N]
    reward: torch.Tensor  # float32 [T, N]: true env reward (PPO learns from it; imitation only logs it)
    terminal: torch.Tensor  # bool [T, N]: obs[t + 1] is terminal (no bootstrapping from it)
    last: torch.Tensor  # bool [T, N]: obs[t + 1] ends its episode (terminal or time limit)
    valid: torch.Tensor  # bool [T, N]: step t is a transition (False while the env resets)


def gae(reward: torch.Tensor, value: torch.Tensor, terminal: torch.Tensor, last: torch.Tensor,
        valid: torch.Tensor, discount: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [T, N] streams; returns (advantages, value targets).

    ``value`` is [T + 1, N]: V(obs[t]) for every stack including the one after the last step. A
    terminal next state gives no bootstrap; a time-limit end bootstraps from V of its final stack; an
    episode end stops the recursion; invalid (reset) steps get advantage 0."""
    t_len = reward.shape[0]
    assert value.shape == (t_len + 1, *reward.shape[1:]), \
        f"value has shape {tuple(value.shape)}, expected {(t_len + 1, *reward.shape[1:])} (one more step than reward)"
    for name, x in (("terminal", terminal), ("last", last), ("valid", valid)):
        assert x.shape == reward.shape, f"{name} has shape {tuple(x.shape)}, expected {tuple(reward.shape)}"
    adv = torch.zeros_like(reward)
    next_adv = torch.zeros_like(reward[0])
    for t in reversed(range(t_len)):
        bootstrap = discount * value[t + 1] * (~terminal[t]).to(value.dtype)
        delta = reward[t] + bootstrap - value[t]
        a = delta + discount * lam * (~last[t]).to(value.dtype) * next_adv
        a = torch.where(valid[t], a, torch.zeros_like(a))
        adv[t] = a
        next_adv = a
    return adv, adv + value[:-1]


def ppo_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor, value: torch.Tensor,
               old_value: torch.Tensor, target: torch.Tensor, entropy: torch.Tensor, clip: float,
               value_clip: float = 0.0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The clipped surrogate, the (optionally clipped) value loss and minus the entropy, as a named
    dict, and diagnostics (clip fraction, approximate KL)."""
    n = log_prob.shape[0]
    for name, x in (("old_log_prob", old_log_prob), ("advantage", advantage), ("value", value),
                    ("old_value", old_value), ("target", target), ("entropy", entropy)):
        assert x.shape == (n,), f"{name} has shape {tuple(x.shape)}, expected ({n},)"
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
    value_err = (value - target).pow(2)
    if value_clip > 0:
        clipped = old_value + (value - old_value).clamp(-value_clip, value_clip)
        value_err = torch.max(value_err, (clipped - target).pow(2))
    losses = {"policy": -surrogate.mean(), "value": 0.5 * value_err.mean(), "entropy": -entropy.mean()}
    with torch.no_grad():
        info = {"clip_fraction": ((ratio - 1).abs() > clip).float().mean(),
                "approx_kl": ((ratio - 1) - log_ratio).mean()}
    return losses, info


# ---------------------------------------------------------------------------------------------
# Observation standardisation


class ObsNorm(nn.Module):
    """Running per-pixel mean and variance of single frames (merged batch by batch, Chan et al.);
    each frame of a stack is standardised with them and clipped to +-clip. The std is floored at one
    grey level, so pixels that never change (a background) do not blow up. Before the first
    statistics arrive (and with ``enabled=False``) frames map to x / 255 - 0.5."""

    def __init__(self, frame_shape: tuple[int, int, int], enabled: bool = True, clip: float = 5.0):
        super().__init__()
        self.channels = frame_shape[0]
        self.enabled, self.clip = enabled, clip
        self.register_buffer("mean", torch.zeros(frame_shape))
        self.register_buffer("var", torch.ones(frame_shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self._ready = False  # mirrors count > 0 without a device sync per forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if not (self.enabled and self._ready):
            return x / 255.0 - 0.5
        k = x.shape[1] // self.channels
        mean = self.mean.repeat(k, 1, 1)
        std = (self.var.repeat(k, 1, 1) + 1.0).sqrt()
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, frames: torch.Tensor) -> None:
        """Merge the statistics of ``frames`` (uint8 [M, C, H, W]); with several learners, of every
        learner's frames, so the statistics stay equal everywhere."""
        if not self.enabled:
            return
        x = frames.double()
        n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
        s, ss = x.sum(0), x.pow(2).sum(0)
        n, s, ss = distributed.all_sum(n, s, ss)
        if float(n) == 0:
            return
        b_mean = s / n
        b_var = (ss / n - b_mean.pow(2)).clamp(min=0)
        total = self.count + n
        delta = b_mean - self.mean.double()
        mean = self.mean.double() + delta * n / total
        m2 = self.var.double() * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.mean.copy_(mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)
        self._ready = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # keep _ready in step with count
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.count > 0)


# ---------------------------------------------------------------------------------------------
# Networks


def _init_head(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class PolicyNet(nn.Module):
    """encoder -> Gaussian mean (state-independent log std) or categorical logits."""

    def __init__(self, encoder: nn.Module, action_dim: int, discrete: bool, init_log_std: float):
        super().__init__()
        self.encoder = encoder
        self.discrete = discrete
        self.head = _init_head(nn.Linear(encoder.out_dim, action_dim), 0.01)
        self.log_std = None if discrete else nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def log_prob_entropy(self, out: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            logp = F.log_softmax(out, -1)
            return logp.gather(-1, action.long()[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
        log_std = self.log_std.expand_as(out)
        entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        return normal_log_prob(action, out, log_std), entropy

    def sample(self, out: torch.Tensor, explore: bool) -> torch.Tensor:
        if self.discrete:
            return torch.distributions.Categorical(logits=out).sample() if explore else out.argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out) if explore else out


class ValueNet(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = _init_head(nn.Linear(encoder.out_dim, 1), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# The learner


class PPO:
    """Policy + value networks, one Adam over both. ``update`` learns from the rollout's true reward;
    imitation agents override :meth:`rewards` (and learn their discriminator there)."""

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device, expert_batch_size: int = 0):
        self.cfg, self.spec, self.device = cfg, spec, device
        c, h, w = spec.obs_shape
        self.obs_shape = (c * cfg.frame_stack, h, w)
        self.discrete = spec.discrete
        self.request = BatchRequest(kind="rollout", batch_size=cfg.num_envs * cfg.rollout_steps,
                                    frame_stack=cfg.frame_stack, discount=cfg.discount,
                                    expert_batch_size=expert_batch_size)
        enc = lambda name: make_encoder(name, self.obs_shape, cfg.net_width, cfg.hidden_dim)  # noqa: E731
        self.obs_norm = ObsNorm(spec.obs_shape, cfg.obs_norm).to(device)
        self.policy = PolicyNet(enc(cfg.policy_net), spec.action_dim, spec.discrete, cfg.init_log_std).to(device)
        self.value = ValueNet(enc(cfg.value_net)).to(device)
        distributed.broadcast_module(self.policy)  # every learner starts from learner 0's weights
        distributed.broadcast_module(self.value)
        self.params = list(self.policy.parameters()) + list(self.value.parameters())
        self.opt = adam(self.params, cfg.lr)
        self.updates = 0
        self.timings: dict[str, float] | None = None  # set to {} to time the parts of each update (ms)

    def timed(self, name: str):
        return timed(self.timings, name, self.device)

    def parts(self) -> dict[str, Any]:
        return {"policy": self.policy, "value": self.value, "opt": self.opt, "obs_norm": self.obs_norm}

    # -- acting -----------------------------------------------------------------------------------
    def to_env_action(self, raw: torch.Tensor) -> np.ndarray:
        """Raw samples [N, A] / [N] -> env actions (clipped to [-1, 1], mapped to the env's bounds)."""
        if self.discrete:
            return raw.cpu().numpy().astype(np.int64)
        low, high = self.spec.action_low, self.spec.action_high
        unit = raw.clamp(-1.0, 1.0).cpu().numpy()
        return (low + (unit + 1.0) * 0.5 * (high - low)).astype(np.float32)

    @torch.no_grad()
    def act_batch(self, images: torch.Tensor, explore: bool = True) -> torch.Tensor:
        """uint8 stacks [N, k*C, H, W] -> raw actions [N, A] (float) or [N] (int64)."""
        assert tuple(images.shape[1:]) == self.obs_shape, \
            f"act_batch: stacks have shape {tuple(images.shape[1:])}, expected {self.obs_shape}"
        return self.policy.sample(self.policy(self.obs_norm(images.to(self.device))), explore)

    @torch.no_grad()
    def act(self, obs: Obs, state: Any = None, explore: bool = False) -> tuple[np.ndarray | int, Any]:
        image = torch.as_tensor(obs.image, device=self.device)
        if tuple(image.shape) != self.obs_shape:
            raise ValueError(f"act: observation has shape {tuple(image.shape)}, expected {self.obs_shape} "
                             f"(the runner must stack {self.cfg.frame_stack} frames)")
        action = self.to_env_action(self.act_batch(image[None], explore))[0]
        return (int(action) if self.discrete else action), None

    # -- learning ---------------------------------------------------------------------------------
    def check(self, rollout: Rollout) -> None:
        t, n = rollout.reward.shape
        expected = (t + 1, n, *self.obs_shape)
        if tuple(rollout.obs.shape) != expected:
            raise ValueError(f"rollout obs have shape {tuple(rollout.obs.shape)}, expected {expected} "
                             f"(T + 1 stacks of frame_stack={self.cfg.frame_stack} x {self.spec.obs_shape})")
        action_shape = (t, n) if self.discrete else (t, n, self.spec.action_dim)
        if tuple(rollout.action.shape) != action_shape:
            raise ValueError(f"rollout actions have shape {tuple(rollout.action.shape)}, expected {action_shape}")

    def rewards(self, rollout: Rollout, expert: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The reward PPO maximises, [T, N]: here the env's; imitation agents learn their own."""
        return rollout.reward.to(self.device), {}

    def update(self, rollout: Rollout, expert: Any, step: int) -> dict[str, float]:
        self.check(rollout)
        cfg = self.cfg
        t_len, n = rollout.reward.shape
        with self.timed("rewards"):
            reward, metrics = self.rewards(rollout, expert)
        assert reward.shape == (t_len, n), f"rewards have shape {tuple(reward.shape)}, expected {(t_len, n)}"
        obs = rollout.obs.to(self.device)
        valid = rollout.valid.to(self.device)
        with torch.no_grad(), self.timed("advantages"):
            x = self.obs_norm(obs.flatten(0, 1))
            value = self.value(x).reshape(t_len + 1, n)
            x = x.reshape(t_len + 1, n, *x.shape[1:])[:-1].flatten(0, 1)
            action = rollout.action.to(self.device).flatten(0, 1)
            old_log_prob, _ = self.policy.log_prob_entropy(self.policy(x), action)
            adv, target = gae(reward, value, rollout.terminal.to(self.device), rollout.last.to(self.device), valid,
                              cfg.discount, cfg.gae_lambda)
            idx = valid.flatten().nonzero().squeeze(1)
            x, action, old_log_prob = x[idx], action[idx], old_log_prob[idx]
            adv, target, old_value = adv.flatten()[idx], target.flatten()[idx], value[:-1].flatten()[idx]
            adv_std = float(adv.std()) if idx.numel() > 1 else 0.0
            if cfg.normalize_advantages and idx.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        weights = {"policy": 1.0, "value": cfg.value_weight, "entropy": cfg.entropy_weight}
        sums: dict[str, float] = {}
        count = 0
        with self.timed("ppo"):
            for _ in range(cfg.epochs):
                perm = torch.randperm(idx.numel(), device=self.device)
                for mb in perm.tensor_split(cfg.minibatches):
                    out = self.policy(x[mb])
                    log_prob, entropy = self.policy.log_prob_entropy(out, action[mb])
                    losses, info = ppo_losses(log_prob, old_log_prob[mb], adv[mb], self.value(x[mb]), old_value[mb],
                                              target[mb], entropy, cfg.clip, cfg.value_clip)
                    step_info = optimize(weighted_sum(losses, weights), self.opt, self.params, cfg.grad_clip)
                    for k, v in {**{f"{k}_loss": l.detach() for k, l in losses.items()}, **info}.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + step_info["grad_norm"]
                    sums["skipped"] = max(sums.get("skipped", 0.0), step_info["skipped"])
                    count += 1
        newest = obs[1:, :, -self.spec.obs_shape[0]:].flatten(0, 1)  # each frame once (the stacks overlap)
        self.obs_norm.update(newest)
        self.updates += 1
        metrics.update({k: (v if k == "skipped" else v / count) for k, v in sums.items()})
        metrics.update(value_mean=float(old_value.mean()), advantage_std=adv_std,
                       true_reward_mean=float(rollout.reward[rollout.valid].mean()) if bool(rollout.valid.any()) else 0.0,
                       valid_fraction=float(rollout.valid.float().mean()))
        if not self.discrete:
            metrics["policy_std"] = float(self.policy.log_std.detach().exp().mean())
        return metrics

    # -- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return parts_state(self.parts(), updates=self.updates)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = load_parts(state, self.parts(), ("updates",), "ppo",
                              "saved with other agent.policy_net / value_net / net_width?")
        self.updates = counters["updates"]


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> PPO:
    """``demos`` only give the expert's return for the normalised score."""
    return PPO(cfg, spec, device)
