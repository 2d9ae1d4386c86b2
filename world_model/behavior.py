"""Latent actor-critic (Dreamer V1): imagine from posterior states under a tanh-Gaussian actor, train
the actor by backpropagating lambda-returns through the learned dynamics and the reward, and the
critic by regression on stop-gradient lambda-returns (optionally bootstrapped by a slow target)."""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vmil.config import ConfigError, doc
from vmil.nn import normal_log_prob, soft_update, tanh_log_det
from world_model.networks import mlp
from world_model.returns import discount_weights, lambda_return
from world_model.rssm import RSSM, State


@dataclass(frozen=True)
class BehaviorConfig:
    horizon: int = doc(15, "Imagination horizon H (steps imagined from every posterior state).")
    gamma: float = doc(0.99, "Discount of imagined returns.")
    lam: float = doc(0.95, "Lambda of the lambda-returns.")
    units: int = doc(400, "Hidden units of the actor and critic.")
    actor_layers: int = doc(4, "Hidden layers of the actor.")
    critic_layers: int = doc(3, "Hidden layers of the critic.")
    layer_norm: bool = doc(False, "LayerNorm in the actor's and critic's hidden layers (Dreamer V2/V3; V1 and "
                                  "VMIL have none).")
    actor_lr: float = doc(8e-5, "Actor learning rate (Adam).")
    critic_lr: float = doc(8e-5, "Critic learning rate (Adam).")
    actor_lr_final: float = doc(0.0, "Actor learning rate reached after actor_lr_anneal_steps (linear).")
    actor_lr_anneal_steps: int = doc(
        0, "Env steps over which the actor's rate goes linearly from actor_lr to actor_lr_final; 0 keeps "
           "actor_lr. Meant to settle a policy whose adversarial loop drifts after its peak; on "
           "toy:reach it did not stop the drift (README).")
    eps: float = doc(1e-5, "Adam epsilon of the actor and critic optimisers.")
    init_std: float = doc(5.0, "Actor's initial pre-tanh standard deviation.")
    min_std: float = doc(1e-4, "Actor's minimum pre-tanh standard deviation.")
    mean_scale: float = doc(5.0, "The actor's pre-tanh mean is squashed to (-mean_scale, mean_scale).")
    dist: Literal["tanh_normal", "normal"] = doc(
        "tanh_normal", "Actor distribution: tanh_normal = tanh of a Gaussian (Dreamer V1 / VMIL); normal = a Gaussian "
                       "with mean tanh(x) and std in [min_std, max_std], sample clipped to [-1, 1] (Dreamer V3). "
                       "init_std and mean_scale apply to tanh_normal, max_std to normal.")
    max_std: float = doc(1.0, "The normal actor's maximum standard deviation.")
    entropy: float = doc(0.0, "Actor entropy bonus weight (0 in Dreamer V1 / VMIL).")
    actor_grad: Literal["dynamics", "reinforce", "both"] = doc(
        "dynamics", "Actor gradient: dynamics = backpropagate the lambda-returns through the learned dynamics "
                    "(Dreamer V1 / VMIL); reinforce = score function of the taken (pre-tanh) actions times the "
                    "advantage G_t - V(s_t) (Dreamer V2's choice for discrete actions); both = actor_grad_mix of "
                    "the first plus the rest of the second. REINFORCE judges a whole action by the critic, so "
                    "it does not depend on the local slope of the later imagined steps.")
    actor_grad_mix: float = doc(0.5, "With actor_grad=both, the weight of the dynamics gradient (1 - it: REINFORCE).")
    actor_input_grad: bool = doc(
        False, "Let the actor gradient flow through the actor's own inputs in imagination too: the pathwise "
               "gradient of the closed-loop return (SVG / PILCO), which credits how the later actions respond "
               "to the state an action leads to. Dreamer stops it (false), so each return's gradient treats "
               "the later actions as fixed; on an unstable system that open-loop gradient can fail even with "
               "the true dynamics (the cart-pole, tests/test_behavior_learning.py).")
    lookahead: float = doc(
        0.0, "Weight of the one-step lookahead regression in the actor loss (0 in Dreamer / VMIL). At "
             "lookahead_states imagined states, candidate actions (half sampled from the actor, half uniform) "
             "are scored by one prior step: r + gamma V(next); the actor's mean regresses on their softmax-"
             "weighted mean. It credits what the local slope of the return misses, e.g. resting on a goal "
             "instead of a 2-cycle around it, whose open-loop gradient is zero (on toy:reach it removed the "
             "jumps but stopped short of the goal; README).")
    lookahead_candidates: int = doc(16, "Candidate actions per lookahead state (half from the actor, half uniform).")
    lookahead_steps: int = doc(
        1, "Prior steps each lookahead candidate is held for before the critic bootstraps: q = sum_t<k gamma^t "
           "r_t + gamma^k V(s_k). Where the toy:reach policy rests far from a goal, the model scores one step "
           "toward the goal 0.13 above the policy's own action and five steps 0.72, so k > 1 sees what one "
           "step hardly does; with k = 5 the failing episodes halved on one seed, the score did not rise "
           "(README).")
    lookahead_states: int = doc(256, "Imagined states per update the lookahead scores candidates at.")
    lookahead_temperature: float = doc(
        0.1, "Softmax temperature over the candidates' values, in units of their standard deviation at that "
             "state (small: the best candidate).")
    plan_candidates: int = doc(
        0, "Decision-time planning for the deterministic (evaluation) policy: this many fixed candidate actions "
           "(a scrambled Sobol set over [-1, 1]^A), and the actor's own first action, are each held for plan_steps "
           "prior steps and scored r-sum + gamma^k V with the agent's reward (D's for VMIL, the reward head's "
           "for Dreamer) and the critic; the best replaces the actor's action where it beats the actor's own "
           "k-step rollout. Training and exploration are unchanged. 0 acts with the actor alone (Dreamer / VMIL).")
    plan_steps: int = doc(10, "Prior steps each planning candidate (and the actor's rollout it is compared with) "
                              "runs before the critic bootstraps.")
    plan_margin: float = doc(0.0, "How much higher (in imagined return) the best held candidate must score than "
                                  "the actor's rollout to replace its action.")
    plan_hold: int = doc(0, "Prior steps each planning candidate is held before the actor acts for the rest of "
                            "plan_steps (0: held for all of them).")
    pre_tanh_reg: float = doc(0.0, "Weight of mean(pre-tanh actor mean^2) in the actor loss (0 in Dreamer / "
                              "VMIL). Keeps the policy out of tanh saturation, where its gradient vanishes.")
    actor_average: float = doc(
        0.0, "Decay of an exponential moving average of the actor's weights, moved after every actor step; the "
             "deterministic (evaluation) policy acts with it, exploration with the actor itself. Averaging the "
             "generator's weights steadies adversarial training (Yazici et al. 2019), and here the policy is the "
             "generator. E.g. 0.995 (~200 updates); 0 disables it (Dreamer V1 / VMIL).")
    slow_target: bool = doc(False, "Bootstrap lambda-returns with a slowly updated copy of the critic.")
    slow_target_update: int = doc(100, "Updates between slow-target refreshes.")
    slow_target_fraction: float = doc(1.0, "Fraction moved toward the critic at each refresh (1: copy).")

    def __post_init__(self) -> None:
        if self.horizon <= 0:
            raise ConfigError(f"agent.behavior.horizon (the imagination horizon) must be positive, got {self.horizon}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"agent.behavior.gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"agent.behavior.lam must be in [0, 1], got {self.lam}")
        for name in ("units", "slow_target_update", "lookahead_states", "lookahead_temperature", "lookahead_steps",
                     "plan_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.behavior.{name} must be positive, got {getattr(self, name)}")
        if self.lookahead_candidates < 2:
            raise ConfigError(f"agent.behavior.lookahead_candidates must be >= 2, got {self.lookahead_candidates}")
        for name in ("pre_tanh_reg", "entropy", "lookahead", "actor_lr_final", "actor_lr_anneal_steps",
                     "plan_candidates", "plan_margin", "plan_hold"):
            if getattr(self, name) < 0:
                raise ConfigError(f"agent.behavior.{name} must be >= 0, got {getattr(self, name)}")
        if self.plan_hold > self.plan_steps:
            raise ConfigError(f"agent.behavior.plan_hold ({self.plan_hold}) must be at most plan_steps "
                              f"({self.plan_steps})")
        if not 0.0 <= self.actor_grad_mix <= 1.0:
            raise ConfigError(f"agent.behavior.actor_grad_mix must be in [0, 1], got {self.actor_grad_mix}")
        if self.dist == "normal" and not 0 < self.min_std < self.max_std:
            raise ConfigError(f"agent.behavior: the normal actor needs 0 < min_std < max_std, got {self.min_std} "
                              f"and {self.max_std}")
        if self.dist == "normal" and self.pre_tanh_reg > 0:
            raise ConfigError("agent.behavior.pre_tanh_reg applies to the tanh_normal actor; the normal actor's "
                              "mean is already bounded")
        for name in ("actor_lr", "critic_lr", "init_std", "min_std", "mean_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.behavior.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.actor_average < 1.0:
            raise ConfigError(f"agent.behavior.actor_average must be in [0, 1) (0 disables it), "
                              f"got {self.actor_average}")
        if not 0.0 < self.slow_target_fraction <= 1.0:
            raise ConfigError(f"agent.behavior.slow_target_fraction must be in (0, 1], got {self.slow_target_fraction}")


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` need no gradient inside the block: the graph still carries
    gradients through them to the inputs (the actor's actions), but the backward pass skips their
    weight gradients."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def exploration_noise(step: int, noise: float, halve_every: int, floor: float) -> float:
    """The std of the noise added to explored actions at env step ``step``: ``noise`` halved every
    ``halve_every`` steps (0: constant), never below ``floor``."""
    halvings = step / halve_every if halve_every else 0.0
    return max(noise * 0.5 ** halvings, floor)


ACTOR_DISTS = ("tanh_normal", "normal")


class Actor(nn.Module):
    """A policy over actions in [-1, 1], one of two distributions (``dist``):

    * ``tanh_normal`` (Dreamer V1): action = tanh(u), u ~ N(mean, std), mean squashed to
      (-mean_scale, mean_scale), std = softplus(x + softplus^-1(init_std)) + min_std.
    * ``normal`` (Dreamer V3's bounded normal): action = clip(x), x ~ N(tanh(m), std), std =
      (max_std - min_std) sigmoid(x_std + 2) + min_std; the clip passes the gradient straight through.
      A tanh-Gaussian can make its samples deterministic only by saturating (a mean far beyond +-1,
      where tanh's slope vanishes), which leaves bang-bang control; here the noise is set by the std
      alone, so small actions stay precise and learnable.

    ``raw`` below is the distribution's own sample: u for tanh_normal, x before the clip for normal."""

    def __init__(self, feat_dim: int, action_dim: int, units: int, layers: int, init_std: float = 5.0,
                 min_std: float = 1e-4, mean_scale: float = 5.0, dist: str = "tanh_normal", max_std: float = 1.0,
                 layer_norm: bool = False):
        super().__init__()
        if dist not in ACTOR_DISTS:
            raise ValueError(f"unknown actor distribution {dist!r}; use one of {ACTOR_DISTS}")
        self.action_dim, self.min_std, self.mean_scale, self.dist = action_dim, min_std, mean_scale, dist
        self.max_std = max_std
        self.raw_init_std = math.log(math.expm1(init_std))
        self.net = mlp(feat_dim, 2 * action_dim, units, layers, layer_norm=layer_norm)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the Gaussian: pre-tanh for tanh_normal, in action space for normal."""
        mean, std = self.net(feat).chunk(2, -1)
        if self.dist == "normal":
            return torch.tanh(mean), (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        mean = self.mean_scale * torch.tanh(mean / self.mean_scale)
        return mean, F.softplus(std + self.raw_init_std) + self.min_std

    def squash(self, raw: torch.Tensor) -> torch.Tensor:
        if self.dist == "normal":
            return raw + (raw.clamp(-1.0, 1.0) - raw).detach()
        return torch.tanh(raw)

    def sample(self, feat: torch.Tensor, with_log_prob: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reparameterised action (and its log-probability)."""
        action, log_prob, _ = self.sample_raw(feat, with_log_prob)
        return action, log_prob

    def sample_raw(self, feat: torch.Tensor, with_log_prob: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """:meth:`sample` plus the raw sample (action = squash(raw))."""
        mean, std = self(feat)
        eps = torch.randn_like(mean)
        raw = mean + std * eps
        action = self.squash(raw)
        if not with_log_prob:
            return action, None, raw
        return action, self._jacobian(normal_log_prob(raw, mean, std.log()), raw), raw

    def explore(self, feat: torch.Tensor, noise: float) -> torch.Tensor:
        """A sampled action plus Gaussian noise of std ``noise`` (Dreamer's exploration), in [-1, 1]."""
        action = self.sample(feat)[0]
        if noise > 0:
            action = (action + noise * torch.randn_like(action)).clamp(-1, 1)
        return action

    def log_prob_of(self, feat: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """log-probability of given raw samples, differentiable in the actor's weights only (the score
        function REINFORCE needs)."""
        mean, std = self(feat)
        return self._jacobian(normal_log_prob(raw.detach(), mean, std.log()), raw.detach())

    def _jacobian(self, log_prob: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """The tanh-Gaussian's change of variables; the normal's clip is left out (a density in x)."""
        return log_prob - tanh_log_det(raw) if self.dist == "tanh_normal" else log_prob

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        mean = self(feat)[0]
        return mean if self.dist == "normal" else torch.tanh(mean)

    def regression_loss(self, feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the distribution's mean against target actions in [-1, 1], in the
        Gaussian's own space (pre-tanh for tanh_normal), so saturated means still get a gradient."""
        mean = self(feat)[0]
        if self.dist == "tanh_normal":
            target = torch.atanh(target.clamp(-1 + 1e-3, 1 - 1e-3))
        return (mean - target.detach()).pow(2).sum(-1).mean()


class Critic(nn.Module):
    def __init__(self, feat_dim: int, units: int, layers: int, layer_norm: bool = False):
        super().__init__()
        self.net = mlp(feat_dim, 1, units, layers, layer_norm=layer_norm)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat).squeeze(-1)


class Rollout(NamedTuple):
    """An imagined rollout: states [H+1, N, ...] (index 0 is the start), their features [H+1, N, F],
    actions [H, N, A] (action t leads from state t to t+1), the actor's raw samples behind them
    [H, N, A] (:class:`Actor`) and, if asked, log-probabilities [H, N]."""
    states: State
    feats: torch.Tensor
    actions: torch.Tensor
    log_prob: torch.Tensor | None
    raw: torch.Tensor


def imagine(rssm: RSSM, actor: Actor, start: State, horizon: int, with_log_prob: bool = False,
            input_grad: bool = False) -> Rollout:
    """Roll the prior forward ``horizon`` steps from ``start`` [N, ...] under the actor. By default the
    actor reads detached features (as in Dreamer), so its gradient flows only through the actions it
    takes and the dynamics they drive; ``input_grad`` also lets it flow through the actor's inputs."""
    state = start
    states, feats, actions, log_probs, raws = [start], [rssm.feat(start)], [], [], []
    for _ in range(horizon):
        action, log_prob, u = actor.sample_raw(feats[-1] if input_grad else feats[-1].detach(), with_log_prob)
        state = rssm.img_step(state, action)
        states.append(state)
        feats.append(rssm.feat(state))
        actions.append(action)
        log_probs.append(log_prob)
        raws.append(u)
    stacked = State(*(torch.stack(x, 0) for x in zip(*states)))
    logp = torch.stack(log_probs, 0) if with_log_prob else None
    return Rollout(stacked, torch.stack(feats, 0), torch.stack(actions, 0), logp, torch.stack(raws, 0))


RewardFn = Callable[[State, torch.Tensor, State], torch.Tensor]


def sample_states(states: State, n: int) -> State:
    """Up to ``n`` of the states [T, N, ...], drawn with replacement; one index serves every field,
    so each drawn state stays whole."""
    flat = states.map(lambda x: x.reshape(-1, *x.shape[2:]))
    total = flat.deter.shape[0]
    index = torch.randint(total, (min(n, total),), device=flat.deter.device)
    return flat.map(lambda x: x[index])


@torch.no_grad()
def rollout_value(rssm: RSSM, value: Callable[[torch.Tensor], torch.Tensor], reward_fn: RewardFn, state: State,
                  policy: Callable[[int, State], torch.Tensor], gamma: float, steps: int) -> torch.Tensor:
    """q [N] of following ``policy`` ((step, state) -> action [N, A]) from states [N, ...] for ``steps``
    deterministic prior steps: sum_t<steps gamma^t reward_fn(s_t, a_t, s_t+1) + gamma^steps value(s_steps)."""
    if steps < 1:
        raise ValueError(f"rollout_value: steps must be >= 1, got {steps}")
    q = torch.zeros(state.deter.shape[0], device=state.deter.device)
    for t in range(steps):
        action = policy(t, state)
        nxt = rssm.img_step(state, action, sample=False)
        q = q + gamma ** t * reward_fn(state, action, nxt)
        state = nxt
    return q + gamma ** steps * value(rssm.feat(state))


@torch.no_grad()
def held_action_values(rssm: RSSM, value: Callable[[torch.Tensor], torch.Tensor], reward_fn: RewardFn, state: State,
                       candidates: torch.Tensor, gamma: float, steps: int, hold: int | None = None,
                       then: Callable[[State], torch.Tensor] | None = None) -> torch.Tensor:
    """q [K, M] of candidate actions [K, M, A] at states [M, ...], each held for ``hold`` (default: all
    ``steps``) prior steps, after which ``then`` (state -> action) acts for the rest (:func:`rollout_value`)."""
    K, M, A = candidates.shape
    if state.deter.shape[0] != M:
        raise ValueError(f"{state.deter.shape[0]} states for candidates [K, M={M}, A]")
    hold = steps if hold is None else hold
    if not 1 <= hold <= steps or (hold < steps and then is None):
        raise ValueError(f"held_action_values: hold must be in [1, steps={steps}], and below steps only with a "
                         f"policy to follow, got hold={hold}")
    tiled = state.map(lambda x: x.unsqueeze(0).expand(K, *x.shape).reshape(K * M, *x.shape[1:]))
    action = candidates.reshape(K * M, A)
    policy = lambda t, s: action if t < hold else then(s)  # noqa: E731
    return rollout_value(rssm, value, reward_fn, tiled, policy, gamma, steps).reshape(K, M)


@torch.no_grad()
def lookahead_targets(rssm: RSSM, value: Callable[[torch.Tensor], torch.Tensor], reward_fn: RewardFn, state: State,
                      candidates: torch.Tensor, gamma: float, temperature: float, steps: int = 1
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score candidate actions [K, M, A] at states [M, ...], each held for ``steps`` deterministic prior
    steps, q = sum_t<steps gamma^t reward_fn(s_t, a, s_t+1) + gamma^steps value(s_steps), and return
    their softmax(q / (temperature * std_K q))-weighted mean [M, A] with metrics."""
    if steps < 1:
        raise ValueError(f"lookahead: steps must be >= 1, got {steps}")
    q = held_action_values(rssm, value, reward_fn, state, candidates, gamma, steps)
    spread = q.std(0, keepdim=True).clamp(min=1e-6)
    weights = torch.softmax((q - q.max(0, keepdim=True).values) / (temperature * spread), 0)
    target = (weights.unsqueeze(-1) * candidates).sum(0)
    return target, {"lookahead_q_spread": spread.mean(), "lookahead_target_abs": target.abs().mean()}


class Plan(NamedTuple):
    """What :func:`plan_action` chose at each of M states: the action [M, A], the actor's own
    rollout's value [M], the best held candidate's [M], and whether that candidate replaced the actor
    [M] (bool)."""
    action: torch.Tensor
    q_actor: torch.Tensor
    q_held: torch.Tensor
    replaced: torch.Tensor


@torch.no_grad()
def plan_action(rssm: RSSM, actor: Actor, value: Callable[[torch.Tensor], torch.Tensor], reward_fn: RewardFn,
                state: State, candidates: torch.Tensor, gamma: float, steps: int, margin: float = 0.0,
                hold: int = 0) -> Plan:
    """Decision-time planning at states [M, ...]: the actor's deterministic rollout and each candidate
    action [K, A] (and the actor's first action) held for ``hold`` prior steps (0: all ``steps``), the
    actor acting for the rest, are scored by :func:`rollout_value`; a held candidate replaces the
    actor's action only where it scores more than ``margin`` higher (the best of many noisy estimates
    is biased upwards, so a margin keeps the actor where the two are close)."""
    if candidates.dim() != 2 or candidates.shape[1] != actor.action_dim:
        raise ValueError(f"plan candidates must be [K, A={actor.action_dim}], got {tuple(candidates.shape)}")
    if not 0 <= hold <= steps:
        raise ValueError(f"plan hold must be in [0, steps={steps}], got {hold}")
    M = state.deter.shape[0]
    act = lambda s: actor.mode(rssm.feat(s))  # noqa: E731
    own = act(state)
    held = torch.cat([own.unsqueeze(0), candidates.unsqueeze(1).expand(-1, M, -1)])
    q_held = held_action_values(rssm, value, reward_fn, state, held, gamma, steps, hold or steps, act)
    if 0 < hold < steps:  # the actor's own first action, then the actor: that is the actor's rollout
        q_actor = q_held[0]
    else:
        q_actor = rollout_value(rssm, value, reward_fn, state, lambda _, s: act(s), gamma, steps)
    best = q_held.max(0)
    replaced = best.values > q_actor + margin
    chosen = held[best.indices, torch.arange(M, device=own.device)]
    return Plan(torch.where(replaced.unsqueeze(-1), chosen, own), q_actor, best.values, replaced)


def plan_candidate_set(action_dim: int, count: int, device: torch.device | str) -> torch.Tensor | None:
    """The fixed planning candidates [count, A] over [-1, 1]^A (a scrambled Sobol set drawn with its
    own generator, so planning in evaluations leaves the global random stream, and with it the
    training, as it was); None when ``count`` is 0 (no planning)."""
    if not count:
        return None
    return torch.quasirandom.SobolEngine(action_dim, scramble=True, seed=0).draw(count).to(device) * 2 - 1


def planned_action(rssm: RSSM, ac: "ActorCritic", reward_fn: RewardFn, state: State, candidates: torch.Tensor,
                   counts: dict[str, int]) -> torch.Tensor:
    """:func:`plan_action` with the actor-critic's settings (its evaluation actor, bootstrap critic
    and ``plan_*`` options); adds the states planned and the actions replaced to ``counts``."""
    cfg = ac.cfg
    plan = plan_action(rssm, ac.eval_actor(), ac.bootstrap_critic(), reward_fn, state, candidates, cfg.gamma,
                       cfg.plan_steps, cfg.plan_margin, cfg.plan_hold)
    counts["steps"] += plan.action.shape[0]
    counts["replaced"] += int(plan.replaced.sum())
    return plan.action


class ActorCritic(nn.Module):
    def __init__(self, feat_dim: int, action_dim: int, cfg: BehaviorConfig):
        super().__init__()
        self.cfg = cfg
        self.actor = Actor(feat_dim, action_dim, cfg.units, cfg.actor_layers, cfg.init_std, cfg.min_std,
                           cfg.mean_scale, cfg.dist, cfg.max_std, cfg.layer_norm)
        self.critic = Critic(feat_dim, cfg.units, cfg.critic_layers, cfg.layer_norm)
        self.target = copy.deepcopy(self.critic) if cfg.slow_target else None
        if self.target is not None:
            self.target.requires_grad_(False)
        self.actor_avg = copy.deepcopy(self.actor).requires_grad_(False) if cfg.actor_average > 0 else None

    def eval_actor(self) -> Actor:
        """The policy that acts deterministically: the weight average when there is one."""
        return self.actor_avg if self.actor_avg is not None else self.actor

    @torch.no_grad()
    def update_actor_average(self) -> None:
        """avg <- decay * avg + (1 - decay) * actor, for every parameter (after each actor step)."""
        if self.actor_avg is not None:
            soft_update(self.actor_avg, self.actor, 1.0 - self.cfg.actor_average)

    def bootstrap_critic(self) -> nn.Module:
        return self.target if self.target is not None else self.critic

    def lookahead_loss(self, rssm: RSSM, reward_fn: RewardFn, states: State
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The actor's regression on :func:`lookahead_targets` at ``lookahead_states`` states drawn
        from ``states`` [H+1, N, ...] (an imagined rollout's, without its last step)."""
        cfg = self.cfg
        pick = sample_states(states.map(lambda x: x[:-1].detach()), cfg.lookahead_states)
        feat = rssm.feat(pick)
        K = cfg.lookahead_candidates
        with torch.no_grad():
            own = self.actor.sample(feat.unsqueeze(0).expand(K // 2, *feat.shape))[0]
            uniform = torch.rand(K - K // 2, *own.shape[1:], device=own.device) * 2 - 1
        target, metrics = lookahead_targets(rssm, self.bootstrap_critic(), reward_fn, pick,
                                            torch.cat([own, uniform]), cfg.gamma, cfg.lookahead_temperature,
                                            cfg.lookahead_steps)
        loss = self.actor.regression_loss(feat, target)
        metrics["lookahead_loss"] = loss.detach()
        return loss, metrics

    def actor_loss(self, feats: torch.Tensor, reward: torch.Tensor, log_prob: torch.Tensor | None = None,
                   raw: torch.Tensor | None = None, cont: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """-E[w_t objective_t] over an imagined rollout (feats [H+1, N, F], reward [H, N]; the
        objective is G_t for actor_grad=dynamics, and needs the rollout's raw actor samples [H, N, A]
        otherwise); call it with the critic frozen. ``cont`` [H, N], the probability that each
        imagined step s_t+1 is not terminal, multiplies the discount (Dreamer's pcont). Returns (loss,
        returns [H, N], weights [H, N], metrics)."""
        cfg = self.cfg
        H = reward.shape[0]
        if feats.shape[0] != H + 1:
            raise ValueError(f"feats must have H+1={H + 1} steps for {H} rewards, got {feats.shape[0]}")
        if cfg.actor_grad != "dynamics" and (raw is None or raw.shape[:2] != reward.shape):
            raise ValueError(f"actor_grad={cfg.actor_grad} needs the rollout's raw actor samples [H, N, A] for "
                             f"rewards {tuple(reward.shape)}, got {None if raw is None else tuple(raw.shape)}")
        critic = self.bootstrap_critic()
        next_value = critic(feats[1:])
        if log_prob is not None and cfg.entropy > 0:
            reward = reward - cfg.entropy * log_prob  # entropy bonus, as a per-step reward
        if cont is not None and cont.shape != reward.shape:
            raise ValueError(f"cont {tuple(cont.shape)} must match reward {tuple(reward.shape)}")
        discount = cfg.gamma if cont is None else cfg.gamma * cont
        returns = lambda_return(reward, next_value, discount, cfg.lam)
        weights = discount_weights(discount, H, returns)
        metrics = {"return_mean": returns.detach().mean(), "value_mean": next_value.detach().mean()}
        objective = returns
        if cfg.actor_grad != "dynamics":
            advantage = (returns - critic(feats[:-1])).detach()
            score = self.actor.log_prob_of(feats[:-1].detach(), raw) * advantage
            mix = cfg.actor_grad_mix if cfg.actor_grad == "both" else 0.0
            objective = mix * returns + (1 - mix) * score
            metrics["advantage_abs"] = advantage.abs().mean()
        loss = -(weights * objective).mean()
        if cfg.pre_tanh_reg > 0:
            pre_tanh_sq = self.actor(feats[:-1].detach())[0].float().pow(2).mean()
            loss = loss + cfg.pre_tanh_reg * pre_tanh_sq
            metrics["pre_tanh_sq"] = pre_tanh_sq.detach()
        if log_prob is not None:
            metrics["entropy"] = -log_prob.detach().mean()
        return loss, returns, weights, metrics

    def critic_loss(self, feats: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted squared error of V(s_t) against stop-gradient lambda-returns, t < H."""
        value = self.critic(feats[:-1].detach())
        return 0.5 * (weights * (value - returns.detach()).pow(2)).mean()

    @torch.no_grad()
    def update_target(self, updates: int) -> None:
        """Refresh the slow target every ``slow_target_update`` updates."""
        if self.target is None or updates % self.cfg.slow_target_update != 0:
            return
        soft_update(self.target, self.critic, self.cfg.slow_target_fraction)
