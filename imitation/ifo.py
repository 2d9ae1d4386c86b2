"""Shared pieces of the imitation-from-observation family (BCO, ILPO, IMRL, PMI): what a transition
looks like to them, the observation encoder (state or pixels), demo checks, and the pure functions
behind their losses and rewards (each unit-tested against a hand-written reference).

Observations. Every method sees a transition (s_t, s_{t+1}) of the runner's transition sampler with
``nstep=1``: pixels are the frame stacks ``obs`` / ``step_obs``; state observations are the env's
proprioception ``state`` / ``next_state`` (``env.proprio=true``; classic control's state is the
gymnasium observation). ``use_pixels`` picks the image, ``use_proprio`` the state; both together
concatenate the conv feature and the state.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vmil.base import EnvSpec, TransitionBatch


class NeedsActions(ValueError):
    """A method that needs demo actions was given observation-only demos."""


# ---------------------------------------------------------------------------------------------
# Checks


def check_inputs(name: str, spec: EnvSpec, use_pixels: bool, use_proprio: bool) -> None:
    if not use_pixels and not use_proprio:
        raise ValueError(f"{name}: agent.use_pixels and agent.use_proprio are both false; the agent would see nothing")
    if use_proprio and spec.state_dim == 0:
        raise ValueError(f"{name}: agent.use_proprio=true needs state observations, but {spec.env_id} returns none; "
                         "set env.proprio=true (and record the demos with --proprio), or agent.use_proprio=false")


def check_demos(name: str, spec: EnvSpec, demos: Any, use_proprio: bool, min_transitions: int = 1,
                needs_actions: bool = False) -> None:
    """One-line errors for demos that cannot train this method (None: evaluating a saved agent)."""
    if demos is None:
        return
    where = getattr(demos, "directory", "") or "demos"
    if tuple(demos.obs_shape) != tuple(spec.obs_shape):
        raise ValueError(f"{where}: demo frames are C,H,W={tuple(demos.obs_shape)} but {spec.env_id} gives "
                         f"{tuple(spec.obs_shape)}; record the demos with the run's env.image_size / env.grayscale")
    if use_proprio and demos.state_dim != spec.state_dim:
        raise ValueError(f"{where}: {name} reads state observations, but the demos hold state of size "
                         f"{demos.state_dim} and the env {spec.state_dim}; record them with `vmil demos record ... --proprio`")
    transitions = sum(demos.lengths)
    if transitions < min_transitions:
        raise ValueError(f"{where}: {name} needs at least {min_transitions} expert transitions (it contrasts or "
                         f"fits several), these demos hold {transitions}; record more episodes")
    if needs_actions and not demos.has_actions:
        raise NeedsActions(f"{where}: {name} needs demos with actions; record them with --keep-actions")


def require_discrete(name: str, spec: EnvSpec) -> None:
    if not spec.discrete:
        raise ValueError(f"{name} needs a discrete action space (its latent actions remap to discrete ones); "
                         f"{spec.env_id} is continuous: use bco, imrl or pmi there")


# ---------------------------------------------------------------------------------------------
# Observation encoder


class ObsEncoder(nn.Module):
    """State and/or a frame stack -> one feature vector.

    Pixels: 4x4 stride-2 convs -> Linear -> LayerNorm -> tanh (BC's encoder). State: standardised by
    statistics fixed on the first expert batch (:meth:`fit_state`), so MountainCar's 0.07-scale
    velocity weighs as much as its position."""

    def __init__(self, obs_shape: tuple[int, int, int], state_dim: int, use_pixels: bool,
                 channels: tuple[int, ...], feature_dim: int):
        super().__init__()
        self.use_pixels = use_pixels
        self.state_dim = state_dim
        self.conv = None
        out = state_dim
        if use_pixels:
            from imitation.bc import Encoder

            self.conv = Encoder(obs_shape, channels, feature_dim)
            out += feature_dim
        self.out_dim = out
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    @torch.no_grad()
    def fit_state(self, state: torch.Tensor) -> None:
        if self.state_dim:
            self.state_mean.copy_(state.float().mean(0))
            self.state_std.copy_(state.float().std(0).clamp_min(1e-3) if state.shape[0] > 1 else torch.ones_like(self.state_std))

    def forward(self, image: torch.Tensor | None, state: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.conv is not None:
            parts.append(self.conv(image.float().div(255.0).sub(0.5)))
        if self.state_dim:
            parts.append((state.float() - self.state_mean) / self.state_std)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden if layers else inp, out))
    return nn.Sequential(*mods)


class Inputs:
    """Takes (image, state) pairs out of transition batches and observations, on one device."""

    def __init__(self, name: str, spec: EnvSpec, frame_stack: int, use_pixels: bool, use_proprio: bool,
                 device: torch.device):
        check_inputs(name, spec, use_pixels, use_proprio)
        c, h, w = spec.obs_shape
        self.name, self.spec, self.device = name, spec, device
        self.obs_shape = (c * frame_stack, h, w)
        self.use_pixels, self.use_proprio = use_pixels, use_proprio
        self.state_dim = spec.state_dim if use_proprio else 0

    def _image(self, image: torch.Tensor | None) -> torch.Tensor | None:
        if not self.use_pixels:
            return None
        if tuple(image.shape[1:]) != self.obs_shape:
            raise ValueError(f"{self.name}: observations have shape {tuple(image.shape[1:])}, expected {self.obs_shape}")
        return image.to(self.device)

    def _state(self, state: torch.Tensor | None) -> torch.Tensor | None:
        if not self.use_proprio:
            return None
        if state is None:
            raise ValueError(f"{self.name}: the batch has no state; record the demos with --proprio and run with "
                             "env.proprio=true, or set agent.use_proprio=false")
        return state.to(self.device, torch.float32)

    def now(self, batch: TransitionBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self._image(batch.obs), self._state(batch.state)

    def next(self, batch: TransitionBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """s_{t+1} (the request's nstep is 1, so ``next_state`` is the state at t + 1)."""
        return self._image(batch.step_obs), self._state(batch.next_state)

    def obs(self, obs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        image = torch.as_tensor(obs.image)[None] if self.use_pixels else None
        state = torch.as_tensor(obs.proprio, dtype=torch.float32)[None] if self.use_proprio else None
        return self._image(image), self._state(state)


def action_targets(action: torch.Tensor, spec: EnvSpec) -> torch.Tensor:
    """Replay actions -> training targets: class indices (discrete; the replay stores one-hot) or
    actions scaled to [-1, 1] (continuous)."""
    if spec.discrete:
        return action.argmax(-1) if action.ndim == 2 else action.long().reshape(-1)
    scale = (spec.action_high - spec.action_low) / 2.0
    offset = (spec.action_high + spec.action_low) / 2.0
    return (action.float() - offset) / scale


def env_action(out: torch.Tensor, spec: EnvSpec, explore: bool, std: float = 0.0) -> Any:
    """A policy head's output for one observation -> an env action (int, or float32 in the env's bounds)."""
    import numpy as np

    if spec.discrete:
        if explore:
            return int(torch.distributions.Categorical(logits=out).sample())
        return int(out.argmax())
    a = out + std * torch.randn_like(out) if explore and std > 0 else out
    a = a.clamp(-1.0, 1.0)
    scale = (spec.action_high - spec.action_low) / 2.0
    offset = (spec.action_high + spec.action_low) / 2.0
    return (a * scale + offset).cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Pure functions (unit-tested against hand-written references)


def info_nce_loss(scores: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (14): -mean log( f(x_i, positive_i) / sum_j f(x_i, candidate_j) ) with f = exp(score).

    ``scores`` [B, M]: the log-scores of every candidate next state for each s_t; ``positive`` [B]:
    the column of the true next state (default: the diagonal, ``arange(B)``)."""
    if positive is None:
        positive = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, positive)


def softmax_reward(scores: torch.Tensor, positive: torch.Tensor, baseline: bool = True) -> torch.Tensor:
    """Eq. (18) per sample: log softmax of the true next state's score among the candidates.

    The slides write r~ with a minus sign (a cost); as a reward to maximise it is the log-probability
    itself. ``baseline`` adds log M (M candidates): then the reward estimates the pointwise mutual
    information of eq. (16), positive for a transition more likely than a random expert next state."""
    logp = scores.log_softmax(-1).gather(1, positive[:, None]).squeeze(1)
    return logp + math.log(scores.shape[1]) if baseline else logp


def transition_accuracy(scores: torch.Tensor, positive: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
    """Eq. (20): for each trajectory k, the fraction of its steps t whose highest-scoring candidate
    next state is the true s_{t+1}, then the mean over trajectories (each weighs equally, whatever
    its length). ``scores`` [N, M]; ``positive`` [N]: the true column; ``episode`` [N]: trajectory ids."""
    hit = (scores.argmax(-1) == positive).float()
    ids, inverse = torch.unique(episode, return_inverse=True)
    per_episode = torch.zeros(len(ids), device=scores.device).index_add_(0, inverse, hit)
    counts = torch.zeros(len(ids), device=scores.device).index_add_(0, inverse, torch.ones_like(hit))
    return (per_episode / counts).mean()


def ilpo_losses(pred: torch.Tensor, target: torch.Tensor, policy_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """ILPO's step 1 (its Algorithm, lines 5-6). ``pred`` [B, Z, D]: G(E(s), z) for every latent action;
    ``target`` [B, D]: s_{t+1}; ``policy_logits`` [B, Z]: pi(z | s).

    - ``min_z``: mean over the batch of min_z ||G(E(s), z) - s'||^2 (trains the forward model: only
      the best latent action of each transition gets the gradient);
    - ``expected``: mean of ||sum_z pi(z|s) G(E(s), z) - s'||^2 with G detached (trains the policy)."""
    err = (pred - target[:, None]).pow(2).sum(-1)  # [B, Z]
    min_z = err.min(dim=1).values.mean()
    mix = (policy_logits.softmax(-1)[:, :, None] * pred.detach()).sum(1)
    expected = (mix - target).pow(2).sum(-1).mean()
    return {"min_z": min_z, "expected": expected}


def closest_latent(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ILPO's step 2 line 10: argmin_z ||s_{t+1} - G(E(s_t), z)|| per sample -> [B] latent indices."""
    return (pred - target[:, None]).pow(2).sum(-1).argmin(1)


def imrl_reward(error: torch.Tensor, psi: str, scale: float, offset: float = 0.0) -> torch.Tensor:
    """r = -psi(||s_{t+1} - theta(s_t)||) + offset: ``identity`` psi(e) = scale * e; ``tanh``
    psi(e) = scale * tanh(e) (the slides' eq. 13 uses scale 10)."""
    if psi == "identity":
        return -scale * error + offset
    if psi == "tanh":
        return -scale * torch.tanh(error) + offset
    raise ValueError(f"imrl: psi must be identity or tanh, got {psi!r}")


class DeltaTarget(nn.Module):
    """What the forward models (IMRL's theta, ILPO's G) predict for s_{t+1}: the change
    v(s_{t+1}) - v(s_t) of v(s) = [state, the last frame average-pooled to ``pool`` x ``pool`` in
    [0, 1]], standardised per feature by statistics fixed on the first expert batch (:meth:`fit`),
    so every feature's one-step change weighs alike. No decoder: pixels are compared pooled."""

    def __init__(self, obs_shape: tuple[int, int, int], frame_channels: int, state_dim: int, use_pixels: bool,
                 pool: int = 8):
        super().__init__()
        self.use_pixels, self.state_dim, self.pool, self.c = use_pixels, state_dim, pool, frame_channels
        self.dim = state_dim + (frame_channels * pool * pool if use_pixels else 0)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))

    def raw(self, image: torch.Tensor | None, state: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.state_dim:
            parts.append(state.float())
        if self.use_pixels:
            last = image[:, -self.c:].float().div(255.0)
            parts.append(F.adaptive_avg_pool2d(last, self.pool).flatten(1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    @torch.no_grad()
    def fit(self, now: tuple, nxt: tuple) -> None:
        delta = self.raw(*nxt) - self.raw(*now)
        self.mean.copy_(delta.mean(0))
        self.std.copy_(delta.std(0).clamp_min(1e-3) if delta.shape[0] > 1 else torch.ones_like(self.std))

    def forward(self, now: tuple, nxt: tuple) -> torch.Tensor:
        return (self.raw(*nxt) - self.raw(*now) - self.mean) / self.std
