"""The RL learner under the reward-learning methods (IMRL, PMI): a fixed reward r(s_t, s_{t+1}) goes
in, a policy comes out. The learner is a config choice (``agent.rl.learner``) behind one interface:

- ``act(image, state, explore) -> env action``
- ``update(batch, reward, step) -> metrics``: one update from an agent transition batch whose true
  reward is replaced by ``reward`` [B]
- ``state_dict() / load_state_dict()``

``ppo``: :mod:`vmil.rl.ppo` (on-policy, pixels only: its rollouts carry no state) with the reward
model's reward in place of the env's (:class:`PPOWithReward`); the run then goes through the
on-policy runner (rollouts of ``agent.rl.ppo.num_envs`` envs). Its settings are ``agent.rl.ppo.*``;
``frame_stack`` and ``discount`` are the agent's.

``sac``: soft actor-critic for discrete (Christodoulou 2019: expectations over the actions) and
continuous (tanh-Gaussian) actions, on state or pixels: the networks of ``vmil.experts.sac`` on the
features of an :class:`~imitation.ifo.ObsEncoder` that the critic trains (the actor reads detached
features, as in DrQ-v2). The entropy coefficient lambda_H of the slides' eq. (15) is the SAC
temperature: fixed (``alpha > 0``) or tuned to a target entropy (``alpha = 0``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn import functional as F

from vmil.base import EnvSpec, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, optimize, soft_update

from vmil.rl import ppo as _ppo

LEARNERS = ("sac", "ppo")


@dataclass(frozen=True)
class LearnerConfig:
    learner: Literal["sac", "ppo"] = doc("sac", "The RL learner: sac (discrete and continuous actions, state or "
                                                "pixels) or ppo (on-policy, pixels only).")
    hidden: int = doc(256, "Units per hidden layer of actor and critics.")
    layers: int = doc(2, "Hidden layers of actor and critics.")
    lr: float = doc(3e-4, "Adam learning rate of encoder, actor, critics and temperature.")
    discount: float = doc(0.99, "Discount per agent step.")
    tau: float = doc(0.005, "Polyak rate of the target critics.")
    alpha: float = doc(0.0, "Entropy coefficient lambda_H (eq. 15); 0 tunes it to the target entropy.")
    init_alpha: float = doc(0.1, "Initial temperature when it is tuned (alpha = 0).")
    discrete_entropy_ratio: float = doc(0.3, "Discrete actions: target entropy = ratio * log(n).")
    reward_scale: float = doc(1.0, "The learned reward is multiplied by this before the learner sees it.")
    ppo: _ppo.Config = doc(_ppo.Config(), "learner=ppo: PPO's settings (frame_stack and discount come from the "
                                          "agent; the pmi / imrl presets pick small networks).")
    reward_steps_per_rollout: int = doc(100, "learner=ppo: reward-model updates per rollout (on minibatches of "
                                             "that rollout's expert batch) until reward_updates are done.")


class SACLearner:
    def __init__(self, cfg: LearnerConfig, spec: EnvSpec, encoder: torch.nn.Module, device: torch.device):
        from vmil.experts.sac import Actor, SACConfig, TwinQ

        self.cfg, self.spec, self.device = cfg, spec, device
        self.discrete = spec.discrete
        sac_cfg = SACConfig(hidden=cfg.hidden, layers=cfg.layers)
        dim = encoder.out_dim
        self.encoder = encoder.to(device)
        self.actor = Actor(dim, spec.action_dim, self.discrete, sac_cfg).to(device)
        self.critic = TwinQ(dim, spec.action_dim, self.discrete, sac_cfg).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.encoder_target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.alpha if cfg.alpha > 0 else cfg.init_alpha), device=device,
                                      requires_grad=cfg.alpha <= 0)
        n = spec.action_dim
        self.target_entropy = cfg.discrete_entropy_ratio * math.log(n) if self.discrete else -float(n)
        self.critic_params = list(self.encoder.parameters()) + list(self.critic.parameters())
        self.critic_opt = adam(self.critic_params, cfg.lr)
        self.actor_opt = adam(self.actor.parameters(), cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)

    def _to_env(self, a: torch.Tensor) -> Any:
        import numpy as np

        low, high = self.spec.action_low, self.spec.action_high
        return (low + (a.clamp(-1, 1) + 1.0) * 0.5 * (high - low)).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def act(self, image: torch.Tensor | None, state: torch.Tensor | None, explore: bool) -> Any:
        h = self.encoder(image, state)
        if self.discrete:
            logits, _ = self.actor(h)
            if explore:
                return int(torch.distributions.Categorical(logits=logits[0]).sample())
            return int(logits[0].argmax())
        if explore:
            return self._to_env(self.actor.sample(h)[0][0])
        return self._to_env(torch.tanh(self.actor(h)[0])[0])

    def update(self, batch: TransitionBatch, now: tuple, nxt: tuple, reward: torch.Tensor) -> dict[str, float]:
        """``now`` / ``nxt``: (image, state) of s_t and s_{t+1} (from :class:`imitation.ifo.Inputs`)."""
        from imitation.ifo import action_targets

        reward = self.cfg.reward_scale * reward.detach()
        discount = batch.discount.to(self.device)
        action = action_targets(batch.action.to(self.device), self.spec)
        alpha = self.log_alpha.detach().exp()
        h = self.encoder(*now)
        with torch.no_grad():
            h_next = self.encoder_target(*nxt)
            if self.discrete:
                _, next_logp = self.actor(h_next)
                tq1, tq2 = self.critic_target(h_next)
                next_v = (next_logp.exp() * (torch.min(tq1, tq2) - alpha * next_logp)).sum(-1)
            else:
                next_a, next_logp = self.actor.sample(h_next)
                tq1, tq2 = self.critic_target(h_next, next_a)
                next_v = torch.min(tq1, tq2) - alpha * next_logp
            target = reward + discount * next_v
        q1, q2 = self.critic(h, None if self.discrete else action)
        if self.discrete:
            q1, q2 = q1.gather(1, action[:, None]).squeeze(1), q2.gather(1, action[:, None]).squeeze(1)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_info = optimize(critic_loss, self.critic_opt, self.critic_params)

        hd = h.detach()
        self.critic.requires_grad_(False)
        try:
            if self.discrete:
                _, logp = self.actor(hd)
                probs = logp.exp()
                q1_pi, q2_pi = self.critic(hd)
                actor_loss = (probs * (alpha * logp - torch.min(q1_pi, q2_pi))).sum(-1).mean()
                entropy = -(probs * logp).sum(-1).detach()
            else:
                a_pi, logp = self.actor.sample(hd)
                q1_pi, q2_pi = self.critic(hd, a_pi)
                actor_loss = (alpha * logp - torch.min(q1_pi, q2_pi)).mean()
                entropy = -logp.detach()
        finally:
            self.critic.requires_grad_(True)
        actor_info = optimize(actor_loss, self.actor_opt, self.actor.parameters())
        if self.cfg.alpha <= 0:
            alpha_loss = (self.log_alpha * (entropy - self.target_entropy)).mean()
            optimize(alpha_loss, self.alpha_opt, [self.log_alpha])
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        if self.encoder.conv is not None:  # a state-only encoder has no parameters
            soft_update(self.encoder_target, self.encoder, self.cfg.tau)
        return {"critic_loss": float(critic_loss.detach()), "actor_loss": float(actor_loss.detach()),
                "alpha": float(alpha), "entropy": float(entropy.mean()), "q": float(q1.detach().mean()),
                "rl_reward": float(reward.mean()),
                "skipped": max(critic_info["skipped"], actor_info["skipped"])}

    def state_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "encoder_target": self.encoder_target.state_dict(),
                "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("encoder", "encoder_target", "actor", "critic", "critic_target"):
            getattr(self, key).load_state_dict(state[key])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for key in ("actor_opt", "critic_opt", "alpha_opt"):
            getattr(self, key).load_state_dict(state[key])


def make_learner(cfg: LearnerConfig, spec: EnvSpec, encoder: torch.nn.Module, device: torch.device) -> SACLearner | None:
    """The off-policy learner; None for ppo, which wraps the agent instead (:func:`with_learner`)."""
    if cfg.learner == "sac":
        return SACLearner(cfg, spec, encoder, device)
    if cfg.learner == "ppo":
        return None
    raise ValueError(f"unknown RL learner {cfg.learner!r} (valid: {', '.join(LEARNERS)})")


# ---------------------------------------------------------------------------------------------
# Reward-learning agents (IMRL, PMI): fit a reward model on expert transitions, freeze it, then RL.


@dataclass(frozen=True)
class RewardAgentConfig:
    frame_stack: int = doc(3, "Frames stacked as an observation (pixels).")
    use_pixels: bool = doc(True, "Read the frame stack (false: state observations only, with env.proprio=true).")
    use_proprio: bool = doc(False, "Read the env's state (env.proprio=true; recorded demos need --proprio).")
    channels: tuple[int, ...] = doc((16, 32, 64), "Channels of the conv encoders' 4x4 stride-2 layers (pixels).")
    feature_dim: int = doc(50, "Conv encoder output size (pixels).")
    batch_size: int = doc(256, "Agent transitions per RL update.")
    expert_batch_size: int = doc(256, "Expert transitions per update (reward training; the negatives of eq. 18).")
    reward_updates: int = doc(2000, "Updates that fit the reward model on expert transitions before it is frozen "
                                    "and the RL learner starts (run them as train.pretrain_updates).")
    reward_lr: float = doc(1e-3, "Adam learning rate of the reward model.")
    reward_hidden: int = doc(256, "Hidden units of the reward model's MLPs.")
    rl: LearnerConfig = doc(LearnerConfig(), "The RL learner trained on the frozen reward.")


class RewardAgent:
    """``update`` fits the reward model for the first ``reward_updates`` calls (expert data only),
    then trains the RL learner on agent batches relabelled with the frozen reward. Subclasses give
    ``reward_modules`` (what trains), ``reward_step(expert, agent) -> (losses, metrics)`` and
    ``reward(now, nxt, expert) -> [B]``."""

    name = "reward"

    def __init__(self, cfg: RewardAgentConfig, spec: EnvSpec, device: torch.device):
        from imitation.ifo import Inputs, ObsEncoder
        from vmil.base import BatchRequest

        self.cfg, self.spec, self.device = cfg, spec, device
        self.inputs = Inputs(self.name, spec, cfg.frame_stack, cfg.use_pixels, cfg.use_proprio, device)
        self.request = BatchRequest(kind="transition", batch_size=cfg.batch_size, frame_stack=cfg.frame_stack,
                                    nstep=1, discount=cfg.rl.discount, expert_batch_size=cfg.expert_batch_size)

        def encoder() -> ObsEncoder:
            return ObsEncoder(self.inputs.obs_shape, self.inputs.state_dim, cfg.use_pixels, cfg.channels,
                              cfg.feature_dim).to(device)

        self.make_encoder = encoder
        self.learner = make_learner(cfg.rl, spec, encoder(), device)
        self.reward_steps = 0
        self.fitted = False

    # -- subclass hooks ---------------------------------------------------------------------------
    reward_modules: torch.nn.Module

    def fit_statistics(self, now: tuple, nxt: tuple) -> None:
        """Fix the input statistics on the first expert batch."""
        if self.learner is not None and now[1] is not None:
            for enc in (self.learner.encoder, self.learner.encoder_target):
                enc.fit_state(now[1])

    def reward_step(self, expert: TransitionBatch, batch: TransitionBatch | None) -> tuple[dict, dict]:
        raise NotImplementedError

    def reward(self, now: tuple, nxt: tuple, expert: TransitionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # -- Agent API --------------------------------------------------------------------------------
    def act(self, obs: Any, state: Any, explore: bool) -> tuple[Any, Any]:
        return self.learner.act(*self.inputs.obs(obs), explore), None

    def update(self, batch: TransitionBatch | None, expert: TransitionBatch | None, step: int) -> dict[str, float]:
        if expert is None:
            raise ValueError(f"{self.name}: update needs an expert batch (request.expert_batch_size > 0)")
        if not self.fitted:
            self.fit_statistics(self.inputs.now(expert), self.inputs.next(expert))
            self.fitted = True
        if self.reward_steps < self.cfg.reward_updates:
            self.reward_steps += 1
            return self.reward_step(expert, batch)
        now, nxt = self.inputs.now(batch), self.inputs.next(batch)
        with torch.no_grad():
            reward, metrics = self.reward(now, nxt, expert)
        metrics.update(self.learner.update(batch, now, nxt, reward))
        metrics["true_reward"] = float(batch.reward.mean())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        out = {"reward_model": self.reward_modules.state_dict(), "reward_opt": self.reward_opt.state_dict(),
               "reward_steps": self.reward_steps, "fitted": self.fitted}
        if self.learner is not None:
            out["learner"] = self.learner.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_modules.load_state_dict(state["reward_model"])
        self.reward_opt.load_state_dict(state["reward_opt"])
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        self.reward_steps, self.fitted = int(state["reward_steps"]), bool(state["fitted"])


class PPOWithReward(_ppo.PPO):
    """PPO whose reward is a :class:`RewardAgent`'s: each rollout first continues fitting the reward
    model (``reward_steps_per_rollout`` steps on minibatches of the rollout's expert batch, until
    ``reward_updates``), then relabels the rollout with the frozen reward."""

    def __init__(self, reward_agent: RewardAgent, spec: EnvSpec, device: torch.device):
        import dataclasses

        cfg = reward_agent.cfg
        ppo_cfg = dataclasses.replace(cfg.rl.ppo, frame_stack=cfg.frame_stack, discount=cfg.rl.discount)
        super().__init__(ppo_cfg, spec, device, expert_batch_size=cfg.expert_batch_size)
        self.reward_agent = reward_agent

    def rewards(self, rollout: Any, expert: TransitionBatch | None) -> tuple[torch.Tensor, dict[str, float]]:
        ra = self.reward_agent
        if expert is None:
            raise ValueError(f"{ra.name}: the rollout came without an expert batch (request.expert_batch_size > 0)")
        if not ra.fitted:
            ra.fit_statistics(ra.inputs.now(expert), ra.inputs.next(expert))
            ra.fitted = True
        metrics: dict[str, float] = {}
        size = min(ra.cfg.batch_size, expert.obs.shape[0])
        for _ in range(min(ra.cfg.rl.reward_steps_per_rollout, ra.cfg.reward_updates - ra.reward_steps)):
            idx = torch.randperm(expert.obs.shape[0], device=expert.obs.device)[:size]
            part = TransitionBatch(*[None if x is None else x[idx] for x in expert])
            metrics = {f"reward/{k}": v for k, v in ra.reward_step(part, None).items()}
            ra.reward_steps += 1
        t_len, n = rollout.reward.shape
        obs = rollout.obs.to(self.device)
        now = (obs[:-1].flatten(0, 1), None)
        nxt = (obs[1:].flatten(0, 1), None)
        with torch.no_grad():
            reward, info = ra.reward(now, nxt, expert)
        metrics.update(info)
        return ra.cfg.rl.reward_scale * reward.view(t_len, n), metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reward_agent": self.reward_agent.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.reward_agent.load_state_dict(state.pop("reward_agent"))
        super().load_state_dict(state)


def with_learner(agent: RewardAgent) -> Any:
    """The agent to run: itself (sac), or PPO with its reward (ppo: pixels only)."""
    if agent.cfg.rl.learner != "ppo":
        return agent
    if not agent.cfg.use_pixels or agent.cfg.use_proprio:
        raise ValueError(f"{agent.name}: agent.rl.learner=ppo reads pixels only (its rollouts carry no state); set "
                         "agent.use_pixels=true agent.use_proprio=false, or use agent.rl.learner=sac")
    return PPOWithReward(agent, agent.spec, agent.device)
