"""Dreamer (Hafner et al. 2020) on the env's TRUE reward: the model-based RL control of VMIL.

The same world model (RSSM on pixels), imagination and latent actor-critic as :mod:`imitation.vmil`,
with a reward head (and, where episodes terminate, a continuation head) in place of the
discriminator. It is to VMIL what :mod:`vmil.rl.drqv2` is to PatchAIL: if Dreamer does not learn a
task, the fault is in the world model or the actor-critic, not in the imitation part. One
:meth:`update` runs, in order: world model + reward (+ continuation) -> imagination -> actor -> critic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from vmil.base import BatchRequest, EnvSpec, Obs, SequenceBatch
from vmil.checkpoint import load_parts, parts_state
from vmil.config import ConfigError, doc
from vmil.nn import adam, metrics_to_host, optimize, timed, weighted_sum
from world_model.behavior import (ActorCritic, BehaviorConfig, exploration_noise, frozen, imagine,
                                  plan_candidate_set, planned_action)
from world_model.ensemble import DisagreementEnsemble
from world_model.model import ModelConfig, WorldModel
from world_model.networks import mlp
from vmil.stats import pearson
from world_model.analysis import batch_openloop_strip, episode_sequence, imagined_vs_real

NEEDS_DEMOS = False  # learns from the true reward; demos, when given, only set the normalised score


@dataclass(frozen=True)
class Config:
    model: ModelConfig = doc(ModelConfig(), "World model (RSSM, encoder, decoder, KL).")
    behavior: BehaviorConfig = doc(BehaviorConfig(), "Imagination and actor-critic.")
    batch_size: int = doc(50, "Sequences per update (Dreamer V1: 50).")
    seq_len: int = doc(50, "Sequence length (Dreamer V1: 50).")
    head_units: int = doc(400, "Hidden units of the reward and continuation heads.")
    head_layers: int = doc(2, "Hidden layers of the reward and continuation heads.")
    reward_scale: float = doc(1.0, "Weight of the reward log-likelihood in the world-model loss.")
    continuation: Literal["auto", "always", "never"] = doc(
        "auto", "Continuation head p(not terminal | s) that discounts imagined returns: always, never, or auto = "
                "from the first batch that holds a terminal state (DMC never terminates; gym's Hopper does).")
    continuation_scale: float = doc(10.0, "Weight of the continuation log-likelihood (Dreamer V1's pcont_scale).")
    grad_clip: float = doc(100.0, "Gradient norm clip for every optimiser; 0 disables it.")
    expl_noise: float = doc(0.3, "Std of Gaussian noise added to the actor's sampled action in the env.")
    expl_decay: int = doc(0, "Env steps over which the exploration noise halves; 0 keeps it constant.")
    expl_min: float = doc(0.0, "Lower bound of the decayed exploration noise.")
    model_warmup: int = doc(0, "First updates that train only the world model and its heads.")
    behavior_every: int = doc(
        1, "The actor and critic train on every behavior_every-th update only; the world model on every one. "
           "With train.update_every lowered by the same factor, the model trains more per env step while the "
           "actor does not (a model the actor would otherwise exploit before it is accurate).")
    disagreement_heads: int = doc(
        0, "One-step latent predictors (feat_t, a_t) -> z_t+1 trained beside the model; their disagreement "
           "measures what the model has hardly seen (world_model.ensemble). 0 builds none; else >= 2.")
    disagreement_penalty: float = doc(
        0.0, "Weight of the ensemble's disagreement subtracted from every imagined reward, so the actor does "
             "not exploit transitions the model knows little about (0: off; needs disagreement_heads).")
    openloop_context: int = doc(5, "Frames the open-loop prediction strip conditions on.")
    openloop_steps: int = doc(20, "Frames shown in the open-loop strip (context included).")
    amp: Literal["none", "bf16"] = doc("none", "Autocast the update's forward passes to bf16.")

    def __post_init__(self) -> None:
        for name in ("batch_size", "head_units", "behavior_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ConfigError(f"agent.seq_len must be >= 2 (transitions need two frames), got {self.seq_len}")
        for name in ("head_layers", "reward_scale", "continuation_scale", "grad_clip", "expl_noise", "expl_decay",
                     "expl_min", "model_warmup", "disagreement_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(f"agent.{name} must be >= 0, got {getattr(self, name)}")
        if self.disagreement_heads == 1 or self.disagreement_heads < 0:
            raise ConfigError(f"agent.disagreement_heads must be 0 (none) or >= 2, got {self.disagreement_heads}")
        if self.disagreement_penalty > 0 and not self.disagreement_heads:
            raise ConfigError("agent.disagreement_penalty needs an ensemble: set agent.disagreement_heads >= 2")
        if not 0 < self.openloop_context < self.openloop_steps:
            raise ConfigError(f"agent.openloop_context must be in [1, openloop_steps), got {self.openloop_context}")


class DreamerAgent:
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        self.cfg, self.spec, self.device = cfg, spec, device
        self.action_dim = spec.action_dim
        self.wm = WorldModel.from_config(cfg.model, spec.obs_shape, spec.action_dim, spec.state_dim).to(device)
        feat = self.wm.feat_dim
        self.reward_head = mlp(feat, 1, cfg.head_units, cfg.head_layers).to(device)
        self.cont_head = mlp(feat, 1, cfg.head_units, cfg.head_layers).to(device)
        self.ac = ActorCritic(feat, spec.action_dim, cfg.behavior).to(device)
        m, b = cfg.model, cfg.behavior
        self._model_params = [*self.wm.parameters(), *self.reward_head.parameters(), *self.cont_head.parameters()]
        self.opt_model = adam(self._model_params, m.lr, m.eps)
        self.opt_prior = adam(self.wm.dynamics_parameters(), m.lr, m.eps) if m.prior_steps else None
        self.opt_actor = adam(self.ac.actor.parameters(), b.actor_lr, b.eps)
        self.opt_critic = adam(self.ac.critic.parameters(), b.critic_lr, b.eps)
        self.ensemble = self.opt_ensemble = None
        if cfg.disagreement_heads:
            self.ensemble = DisagreementEnsemble(feat, spec.action_dim, self.wm.rssm.stoch_size, cfg.disagreement_heads,
                                                 cfg.head_units, cfg.head_layers).to(device)
            self.opt_ensemble = adam(self.ensemble.parameters(), m.lr, m.eps)
        self.request = BatchRequest(kind="sequence", batch_size=cfg.batch_size, seq_len=cfg.seq_len)
        self.updates = 0
        self.seen_terminal = cfg.continuation == "always"
        self.timings: dict[str, float] | None = None
        self._last_step = 0
        low, high = spec.action_low, spec.action_high
        self._a_scale, self._a_shift = (high - low) / 2.0, (high + low) / 2.0
        self._plan_set = plan_candidate_set(spec.action_dim, cfg.behavior.plan_candidates, device)
        self.plan_counts = {"steps": 0, "replaced": 0}  # the deterministic policy's steps, and the planner's

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def _use_continuation(self) -> bool:
        return self.cfg.continuation != "never" and self.seen_terminal

    def check_batch(self, batch: SequenceBatch, name: str = "agent") -> None:
        obs = batch.obs
        if obs.dim() != 5 or tuple(obs.shape[2:]) != tuple(self.spec.obs_shape) or obs.dtype != torch.uint8:
            raise ValueError(f"Dreamer {name} batch: expected uint8 obs [B, T, {', '.join(map(str, self.spec.obs_shape))}]"
                             f", got {obs.dtype} {tuple(obs.shape)}")
        if batch.action is None or tuple(batch.action.shape) != (*obs.shape[:2], self.action_dim):
            raise ValueError(f"Dreamer {name} batch: needs actions [B, T, {self.action_dim}], got "
                             f"{None if batch.action is None else tuple(batch.action.shape)}")
        if batch.reward is None or tuple(batch.reward.shape) != tuple(obs.shape[:2]):
            raise ValueError(f"Dreamer {name} batch: needs rewards [B, T] (the true env reward it learns from)")

    def _norm_action(self, action: torch.Tensor) -> torch.Tensor:
        return ((action.to(self.device, torch.float32) - self._a_shift) / self._a_scale).clamp(-1, 1)

    def proprio(self, batch: SequenceBatch) -> torch.Tensor | None:
        if not self.cfg.model.proprio:
            return None
        if batch.state is None:
            raise ValueError("model.proprio=true but a batch has no proprioceptive state")
        return batch.state.to(self.device, torch.float32)

    def reward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.reward_head(feat).squeeze(-1)

    def imagined_reward(self, feats: torch.Tensor, actions: torch.Tensor, metrics: dict[str, Any]) -> torch.Tensor:
        """The reward of each imagined step [H, N] (feats [H+1, N, F], actions [H, N, A]): the reward
        head's at the state reached, less disagreement_penalty times the ensemble's disagreement on
        the transition that led there."""
        reward = self.reward(feats[1:]).float()
        if self.ensemble is None:
            return reward
        disagreement = self.ensemble.disagreement(feats[:-1], actions).float()
        metrics["reward/disagreement"] = disagreement.detach().mean()
        return reward - self.cfg.disagreement_penalty * disagreement

    def _plan_reward(self, state: Any, action: torch.Tensor, nxt: Any) -> torch.Tensor:
        return self.reward(self.wm.rssm.feat(nxt))

    def update(self, batch: SequenceBatch, expert: Any, step: int) -> dict[str, float]:
        if batch is None:
            raise ValueError("Dreamer updates need an agent batch")
        self.check_batch(batch)
        cfg, dev = self.cfg, self.device
        self._last_step = step
        m: dict[str, Any] = {}
        with timed(self.timings, "world_model", dev):
            image = self.wm.images(batch.obs.to(dev))
            action, is_first = self._norm_action(batch.action), batch.is_first.to(dev)
            reward, terminal = batch.reward.to(dev, torch.float32), batch.terminal.to(dev)
            if bool(terminal.any()) and cfg.continuation == "auto":
                self.seen_terminal = True
            proprio = self.proprio(batch)
            with self._autocast():
                embed = self.wm.encode(image, proprio)
                losses, post, _, wm_metrics = self.wm.losses(image, embed, action, is_first, proprio,
                                                             free_nats=cfg.model.free_nats,
                                                             kl_balance=cfg.model.kl_balance,
                                                             focus_fraction=cfg.model.image_focus_fraction
                                                             if cfg.model.image_focus > 0 else 0.0)
                feat = self.wm.rssm.feat(post)
                # reward[:, t] is the reward of arriving at obs[:, t]; an episode's first frame has none.
                valid = (~is_first).float()
                pred = self.reward(feat).float()
                losses["reward"] = (0.5 * (pred - reward).pow(2) * valid).sum() / valid.sum().clamp(min=1.0)
                if self._use_continuation():
                    cont_logit = self.cont_head(feat).squeeze(-1).float()
                    losses["continuation"] = F.binary_cross_entropy_with_logits(cont_logit, (~terminal).float())
            weights = {"image": cfg.model.image_scale, "image_focus": cfg.model.image_focus, "kl": cfg.model.kl_scale,
                       "proprio": cfg.model.proprio_scale, "latent_action": cfg.model.latent_action_scale,
                       "reward": cfg.reward_scale, "continuation": cfg.continuation_scale}
            weights = {k: v for k, v in weights.items() if k in losses}
            out = optimize(weighted_sum(losses, weights), self.opt_model, self._model_params, cfg.grad_clip)
            skipped = out["skipped"]
            m.update({f"model/{k}": v.detach() for k, v in losses.items()})
            m.update({f"model/{k}": v for k, v in wm_metrics.items()})
            m["model/grad_norm"] = out["grad_norm"]
            post = post.map(lambda x: x.detach().float())
            if self.opt_prior is not None:
                dynamics = self.wm.dynamics_parameters()
                for _ in range(cfg.model.prior_steps):
                    fit = self.wm.prior_fit_loss(post, action, is_first, cfg.model.prior_horizon)
                    skipped += optimize(fit, self.opt_prior, dynamics, cfg.grad_clip)["skipped"]
                m["model/prior_fit"] = fit.detach()
            m.update({f"model/{k}": v for k, v in self.wm.action_sensitivity(post, action, is_first).items()})
            if self.ensemble is not None:
                # (feat_t, a_t+1) -> z_t+1: action[:, t+1] is the one taken from state t.
                feat_post = feat.detach().float()
                fit = self.ensemble.loss(feat_post[:, :-1], action[:, 1:], post.mean[:, 1:], ~is_first[:, 1:])
                skipped += optimize(fit, self.opt_ensemble, list(self.ensemble.parameters()), cfg.grad_clip)["skipped"]
                m["model/ensemble"] = fit.detach()
        if self.updates < cfg.model_warmup or self.updates % cfg.behavior_every:
            self.updates += 1
            return metrics_to_host({**m, "skipped": skipped}, dev)

        b = cfg.behavior
        with timed(self.timings, "imagination", dev):
            heads = [self.reward_head, self.cont_head, *([self.ensemble] if self.ensemble is not None else [])]
            with frozen(self.wm, self.ac.critic, *heads), self._autocast():
                rollout = imagine(self.wm.rssm, self.ac.actor, post.flatten(), b.horizon,
                                  with_log_prob=b.entropy > 0, input_grad=b.actor_input_grad)
                imagined_reward = self.imagined_reward(rollout.feats, rollout.actions, m)
                cont = torch.sigmoid(self.cont_head(rollout.feats[1:]).squeeze(-1).float()) \
                    if self._use_continuation() else None
                actor_loss, returns, weights, am = self.ac.actor_loss(rollout.feats, imagined_reward,
                                                                      rollout.log_prob, rollout.raw, cont)
        with timed(self.timings, "actor", dev):
            out = optimize(actor_loss, self.opt_actor, self.ac.actor.parameters(), cfg.grad_clip)
            self.ac.update_actor_average()
            skipped += out["skipped"]
            m.update({"actor/loss": actor_loss.detach(), "actor/grad_norm": out["grad_norm"],
                      "reward/imagined_mean": imagined_reward.detach().mean()})
            m.update({f"actor/{k}": v for k, v in am.items()})
        with timed(self.timings, "critic", dev):
            with self._autocast():
                critic_loss = self.ac.critic_loss(rollout.feats, returns, weights)
            out = optimize(critic_loss, self.opt_critic, self.ac.critic.parameters(), cfg.grad_clip)
            self.ac.update_target(self.updates + 1)
            skipped += out["skipped"]
            m.update({"critic/loss": critic_loss.detach(), "critic/grad_norm": out["grad_norm"]})
        self.updates += 1
        return metrics_to_host({**m, "skipped": skipped}, dev)

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        c = self.cfg
        post = self.wm.filter_obs(obs.image, obs.proprio, obs.first, state, explore, "Dreamer")
        feat = self.wm.rssm.feat(post)
        if explore:
            action = self.ac.actor.explore(feat, exploration_noise(self._last_step, c.expl_noise, c.expl_decay,
                                                                   c.expl_min))
        elif self._plan_set is not None:
            action = planned_action(self.wm.rssm, self.ac, self._plan_reward, post, self._plan_set,
                                    self.plan_counts)
        else:
            action = self.ac.eval_actor().mode(feat)
        env_action = (action * self._a_scale + self._a_shift)[0].cpu().numpy().astype(np.float32)
        return env_action, (post, action)

    # ------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def health(self, episodes: list, expert: Any, batch: Any) -> dict[str, float]:
        """Model health on the evaluation's episodes (the deterministic policy's, with true rewards):
        ``reward_head_corr``, the reward head on the posteriors against the true reward, and the
        deterministic policy's imagined H-step reward sums against the real ones from the same states
        (``imagined_return_mean``, ``real_return_mean``, ``imagined_return_corr``); imagined far above
        real means the actor exploits the model."""
        head, true, imagined, real = [], [], [], []
        policy = self.ac.eval_actor().mode
        for ep in episodes:
            b = episode_sequence(ep, self.device)
            T = b.obs.shape[1]
            if b.action is None or T <= self.cfg.behavior.horizon + 1:
                continue
            embed = self.wm.encode(self.wm.images(b.obs), self.proprio(b))
            post, _ = self.wm.rssm.observe(embed, self._norm_action(b.action), b.is_first, sample=False)
            post = post.map(lambda x: x[0])
            head.append(self.reward(self.wm.rssm.feat(post))[1:])
            true.append(b.reward[0, 1:])
            i, r = imagined_vs_real(self.wm.rssm, policy, self.reward, post, b.reward[0], self.cfg.behavior.horizon)
            imagined.append(i)
            real.append(r)
        if not head:
            return {}
        imagined_all, real_all = torch.cat(imagined).cpu(), torch.cat(real).cpu()
        return {"reward_head_corr": pearson(torch.cat(head).cpu(), torch.cat(true).cpu()),
                "imagined_return_mean": float(imagined_all.mean()), "real_return_mean": float(real_all.mean()),
                "imagined_return_corr": pearson(imagined_all, real_all)}

    @torch.no_grad()
    def visualize(self, expert: SequenceBatch | None, batch: SequenceBatch | None,
                  sequences: int = 4) -> dict[str, np.ndarray]:
        """Open-loop prediction strips of the agent's own sequences (and the demos', when given)."""
        c = self.cfg
        if not self.wm.reads_images:
            return {}  # a state-only model predicts no frames
        return {name: batch_openloop_strip(self.wm, b, lambda x: self._norm_action(x.action), self.proprio,
                                           c.openloop_steps, c.openloop_context, sequences)
                for name, b in (("openloop_agent", batch), ("openloop_expert", expert))
                if b is not None and b.action is not None}

    # ------------------------------------------------------------------ persistence

    def _parts(self) -> dict[str, Any]:
        parts = {"world_model": self.wm, "reward_head": self.reward_head, "cont_head": self.cont_head,
                 "actor_critic": self.ac, "opt_model": self.opt_model, "opt_actor": self.opt_actor,
                 "opt_critic": self.opt_critic}
        if self.opt_prior is not None:
            parts["opt_prior"] = self.opt_prior
        if self.ensemble is not None:
            parts.update(ensemble=self.ensemble, opt_ensemble=self.opt_ensemble)
        return parts

    def state_dict(self) -> dict[str, Any]:
        return parts_state(self._parts(), updates=self.updates, last_step=self._last_step,
                           seen_terminal=int(self.seen_terminal))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = load_parts(state, self._parts(), ("updates", "last_step", "seen_terminal"), "Dreamer")
        self.updates, self._last_step = counters["updates"], counters["last_step"]
        self.seen_terminal = bool(counters["seen_terminal"])


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> DreamerAgent:
    """Dreamer on the true reward; demos, when given, only set the normalised score."""
    if not isinstance(cfg, Config):
        raise TypeError(f"dreamer.build expects vmil.rl.dreamer.Config, got {type(cfg).__name__}")
    if spec.discrete:
        raise ValueError(f"Dreamer (this implementation) needs continuous actions; {spec.env_id} has discrete actions")
    if not spec.extra.get("has_reward", True):
        raise ValueError(f"{spec.env_id} gives no reward; Dreamer learns from the true reward (use vmil for imitation)")
    if cfg.model.proprio and spec.state_dim <= 0:
        raise ValueError(f"model.proprio=true but {spec.env_id} has no proprioceptive state; set model.proprio=false")
    if demos is not None and not any(demos.returns):
        raise ValueError(f"demos in {demos.directory} carry no reward (every return is 0), so they cannot set the "
                         "normalised score; drop --demos (Dreamer does not need them) or record demos with rewards")
    return DreamerAgent(cfg, spec, device)
