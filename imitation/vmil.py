"""VMIL: variational model-based imitation learning (Rafailov et al. 2021).

A Dreamer V1 world model (RSSM on pixels, no reward head) trains on agent *and* expert sequences.
A latent discriminator separates expert transitions (posterior features of demo sequences) from
agent transitions (imagined rollouts of the actor); its output is the reward that a Dreamer actor
maximises by backpropagating lambda-returns through the learned dynamics. One :meth:`update` runs,
in order: world model (+ inverse dynamics) -> imagination -> actor -> critic -> discriminator.

Observation-only demos (the default use). The expert's actions are unknown, so:

* the discriminator reads (z_t, z_t+1) on *both* sides -- state-only adversarial imitation, as in
  GAIfO -- (``disc.inputs=auto``; with actions in the demos it reads (z_t, a_t, z_t+1) as the paper);
* the expert's posterior still needs actions (the RSSM's transition takes a_t-1). By default
  (``expert_actions=infer``) an inverse-dynamics model on encoder embeddings, trained on the agent's
  own transitions, labels each expert transition; the world model then also trains its dynamics on
  the expert sequences with these labels. ``expert_actions=zeros`` instead feeds zero actions and
  masks the expert sequences out of the KL term, so they train the encoder/decoder only.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imitation.health import episode_sequence, pearson
from imitation.latent_discriminator import (LatentDiscriminator, discriminator_losses, imagined_transitions,
                                            reward_from_logit, sequence_transitions)
from imitation.vmil_config import Config
from vmil.base import BatchRequest, EnvSpec, Obs, SequenceBatch
from vmil.checkpoint import load_parts, parts_state
from vmil.nn import adam, linear_schedule, metrics_to_host, optimize, timed, weighted_sum
from world_model.analysis import openloop_strips
from world_model.behavior import (ActorCritic, exploration_noise, frozen, imagine, plan_candidate_set,
                                  planned_action)
from world_model.model import WorldModel
from world_model.networks import InverseDynamics
from world_model.rssm import State


class VMILAgent:
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device, demos_have_actions: bool):
        self.cfg, self.spec, self.device = cfg, spec, device
        self.action_dim, self.demos_have_actions = spec.action_dim, demos_have_actions
        inputs = cfg.disc.inputs if cfg.disc.inputs != "auto" else ("zaz" if demos_have_actions else "zz")
        features = cfg.disc.features if cfg.disc.features != "auto" else ("full" if demos_have_actions else "stoch")
        self.disc_stoch_only = features == "stoch"
        self.use_idm = not demos_have_actions and cfg.expert_actions == "infer"
        self.wm = WorldModel.from_config(cfg.model, spec.obs_shape, spec.action_dim, spec.state_dim).to(device)
        self.ac = ActorCritic(self.wm.feat_dim, spec.action_dim, cfg.behavior).to(device)
        self.disc = LatentDiscriminator(cfg.model.stoch if self.disc_stoch_only else self.wm.feat_dim, spec.action_dim,
                                        inputs, cfg.disc.units, cfg.disc.layers, cfg.disc.layer_norm).to(device)
        self.idm = (InverseDynamics(self.wm.embed_dim, spec.action_dim, cfg.idm_units, cfg.idm_layers).to(device)
                    if self.use_idm else None)
        m, b = cfg.model, cfg.behavior
        self._model_params = list(self.wm.parameters()) + (list(self.idm.parameters()) if self.idm else [])
        self.opt_model = adam(self.wm.parameters(), m.lr, m.eps)
        if self.idm is not None:
            self.opt_model.add_param_group({"params": list(self.idm.parameters()), "lr": cfg.idm_lr})
        # A separate optimiser: its extra steps must not advance the world model optimiser's moments.
        self.opt_prior = adam(self.wm.dynamics_parameters(), m.lr, m.eps) if m.prior_steps else None
        self.opt_actor = adam(self.ac.actor.parameters(), b.actor_lr, b.eps)
        self.opt_critic = adam(self.ac.critic.parameters(), b.critic_lr, b.eps)
        self.opt_disc = adam(self.disc.parameters(), cfg.disc.lr, cfg.disc.eps)
        self.request = BatchRequest(kind="sequence", batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                    expert_batch_size=cfg.expert_batch_size)
        self.updates = 0
        self.timings: dict[str, float] | None = None  # set to {} to time the parts of each update (ms)
        self.part_flops: dict[str, float] | None = None  # set to {} to count their FLOPs
        # Compiled paths wrap the forward passes; optimiser steps and the discriminator's
        # double-backward gradient penalty stay eager.
        self._model_fn = torch.compile(self._model_losses) if cfg.compile else self._model_losses
        self._behavior_fn = torch.compile(self._behavior_losses) if cfg.compile else self._behavior_losses
        self._last_step = 0
        low, high = spec.action_low, spec.action_high
        self._a_scale, self._a_shift = (high - low) / 2.0, (high + low) / 2.0
        self._plan_set = plan_candidate_set(spec.action_dim, cfg.behavior.plan_candidates, device)
        self.plan_counts = {"steps": 0, "replaced": 0}  # the deterministic policy's steps, and the planner's

    # ------------------------------------------------------------------ helpers

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def _part(self, name: str):
        return timed(self.timings, name, self.device, self.part_flops)

    def disc_features(self, state: State) -> torch.Tensor:
        """The latent features [..., F] of ``state`` the discriminator reads (``disc.features``,
        ``disc.latent``)."""
        z = state.mean if self.cfg.disc.latent == "mean" else state.stoch
        return z if self.disc_stoch_only else torch.cat([z, state.deter], -1)

    def _norm_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env action range -> [-1, 1], the actor's range."""
        return ((action.to(self.device, torch.float32) - self._a_shift) / self._a_scale).clamp(-1, 1)

    def check_batch(self, batch: SequenceBatch, name: str) -> None:
        obs = batch.obs
        if obs.dim() != 5 or tuple(obs.shape[2:]) != tuple(self.spec.obs_shape) or obs.dtype != torch.uint8:
            raise ValueError(f"VMIL {name} batch: expected uint8 obs [B, T, {', '.join(map(str, self.spec.obs_shape))}]"
                             f", got {obs.dtype} {tuple(obs.shape)}; demos and env must share image size/channels")
        if batch.action is not None and tuple(batch.action.shape) != (*obs.shape[:2], self.action_dim):
            raise ValueError(f"VMIL {name} batch: actions {tuple(batch.action.shape)} do not match "
                             f"[B, T, {self.action_dim}]")

    def proprio(self, *batches: SequenceBatch) -> torch.Tensor | None:
        if not self.cfg.model.proprio:
            return None
        if any(b.state is None for b in batches):
            raise ValueError("model.proprio=true but a batch has no proprioceptive state")
        return torch.cat([b.state.to(self.device, torch.float32) for b in batches])

    def _infer_actions(self, embed: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
        """Actions [B, T, A] for sequences without recorded ones: inverse dynamics on consecutive
        embeddings (``expert_actions=infer``) or zeros; zero where ``is_first`` and at t = 0."""
        B, T = embed.shape[:2]
        first = torch.zeros(B, 1, self.action_dim, device=embed.device)
        if self.idm is None:
            return first.expand(B, T, self.action_dim)
        with torch.no_grad():
            e = embed.detach().float()
            action = torch.cat([first, self.idm(e[:, :-1], e[:, 1:]).float()], 1)
        return action * (~is_first).unsqueeze(-1)

    def sequence_actions(self, batch: SequenceBatch, embed: torch.Tensor | None = None) -> torch.Tensor:
        """Actions in [-1, 1] for a batch: recorded or inferred (needs its embeddings)."""
        if batch.action is not None:
            return self._norm_action(batch.action)
        if embed is None:
            embed = self.wm.encode(self.wm.images(batch.obs.to(self.device)), self.proprio(batch))
        return self._infer_actions(embed, batch.is_first.to(self.device))

    # ------------------------------------------------------------------ update

    def _model_losses(self, image: torch.Tensor | None, is_first: torch.Tensor, proprio: torch.Tensor | None,
                      agent_action: torch.Tensor, expert_action: torch.Tensor | None):
        """World-model (and inverse-dynamics) losses on the concatenated agent + expert batch."""
        B, T = agent_action.shape[:2]
        losses: dict[str, torch.Tensor] = {}
        kl_mask = None
        with self._autocast():
            embed = self.wm.encode(image, proprio)
            expert_recorded = expert_action is not None
            if expert_action is None:
                if self.idm is not None:
                    e = embed.float() if self.cfg.idm_encoder_grad else embed.detach().float()
                    pred = self.idm(e[:B, :-1], e[:B, 1:])
                    mask = (~is_first[:B, 1:]).unsqueeze(-1).float()
                    err = (pred.float() - agent_action[:, 1:]).pow(2) * mask
                    losses["idm"] = err.sum() / (mask.sum() * self.action_dim).clamp(min=1.0)
                else:  # zero actions: keep the expert sequences out of the dynamics (KL) term
                    kl_mask = torch.cat([torch.ones(B, T, device=embed.device),
                                         torch.zeros(embed.shape[0] - B, T, device=embed.device)])
                expert_action = self._infer_actions(embed[B:], is_first[B:])
            recorded = torch.ones(embed.shape[0], device=embed.device)
            if not expert_recorded:  # inferred or zero expert actions must not shape the latents
                recorded[B:] = 0.0
            action = torch.cat([agent_action, expert_action])
            wm_losses, post, _, metrics = self.wm.losses(
                image, embed, action, is_first, proprio, free_nats=self.cfg.model.free_nats,
                kl_balance=self.cfg.model.kl_balance, kl_mask=kl_mask, action_mask=recorded,
                focus_fraction=self.cfg.model.image_focus_fraction if self.cfg.model.image_focus > 0 else 0.0)
        losses.update(wm_losses)
        return losses, post, expert_action, metrics

    def _reward(self, z: torch.Tensor, action: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """D's reward for transitions given as discriminator features (:meth:`disc_features`)."""
        c = self.cfg.disc
        return reward_from_logit(self.disc.transition_logit(z, action, z_next).float(), c.reward, c.reward_scale)

    def _transition_reward(self, state: State, action: torch.Tensor, next_state: State) -> torch.Tensor:
        return self._reward(self.disc_features(state), action, self.disc_features(next_state))

    def _behavior_losses(self, start: State):
        """Imagine from ``start``, reward each imagined transition with D, actor loss (call with the
        world model, discriminator and critic frozen)."""
        b = self.cfg.behavior
        with self._autocast():
            rollout = imagine(self.wm.rssm, self.ac.actor, start, b.horizon, with_log_prob=b.entropy > 0,
                              input_grad=b.actor_input_grad)
            z = self.disc_features(rollout.states)
            reward = self._reward(z[:-1], rollout.actions, z[1:])
            loss, returns, weights, metrics = self.ac.actor_loss(rollout.feats, reward, rollout.log_prob,
                                                                 rollout.raw)
            if b.lookahead > 0:
                look, look_metrics = self.ac.lookahead_loss(self.wm.rssm, self._transition_reward, rollout.states)
                loss = loss + b.lookahead * look
                metrics.update(look_metrics)
        return z, rollout.feats, rollout.actions, reward, loss, returns, weights, metrics

    def update(self, batch: SequenceBatch, expert: SequenceBatch, step: int) -> dict[str, float]:
        if batch is None or expert is None:
            raise ValueError("VMIL updates need an agent batch and an expert batch (request.expert_batch_size > 0)")
        self.check_batch(batch, "agent")
        self.check_batch(expert, "expert")
        if batch.obs.shape[1] != expert.obs.shape[1]:
            raise ValueError(f"agent and expert sequences must have the same length, got {batch.obs.shape[1]} "
                             f"and {expert.obs.shape[1]}")
        if batch.action is None:
            raise ValueError("the agent batch has no actions; VMIL needs the agent's own actions")
        cfg, dev = self.cfg, self.device
        self._last_step = step
        B = batch.obs.shape[0]
        m: dict[str, Any] = {}

        # World model (+ inverse dynamics) on agent + expert sequences in one encoder/decoder pass.
        with self._part("world_model"):
            image = self.wm.images(torch.cat([batch.obs, expert.obs]).to(dev))
            is_first = torch.cat([batch.is_first, expert.is_first]).to(dev)
            expert_given = self._norm_action(expert.action) if expert.action is not None else None
            agent_action, agent_first = self._norm_action(batch.action), batch.is_first.to(dev)
            losses, post, expert_action, wm_metrics = self._model_fn(
                image, is_first, self.proprio(batch, expert), agent_action, expert_given)
            weights = {"image": cfg.model.image_scale, "image_focus": cfg.model.image_focus, "kl": cfg.model.kl_scale,
                       "proprio": cfg.model.proprio_scale, "idm": cfg.idm_scale,
                       "latent_action": cfg.model.latent_action_scale}
            weights = {k: v for k, v in weights.items() if k in losses}
            out = optimize(weighted_sum(losses, weights), self.opt_model, self._model_params, cfg.grad_clip)
            m.update({f"model/{k}": v.detach() for k, v in losses.items()})
            m.update({f"model/{k}": v for k, v in wm_metrics.items()})
            m["model/grad_norm"], skipped = out["grad_norm"], out["skipped"]
            # CUDA autocast hands back bf16 states; what follows (prior fit, imagination starts) runs in fp32.
            post = post.map(lambda x: x.detach().float())
            agent_post = post.map(lambda x: x[:B])
            if self.opt_prior is not None:
                dynamics = self.wm.dynamics_parameters()
                for _ in range(cfg.model.prior_steps):
                    fit = self.wm.prior_fit_loss(agent_post, agent_action, agent_first, cfg.model.prior_horizon)
                    out = optimize(fit, self.opt_prior, dynamics, cfg.grad_clip)
                    skipped += out["skipped"]
                m["model/prior_fit"] = fit.detach()
            # Whether the prior uses the actions at all; without that the actor has no gradient.
            sens = self.wm.action_sensitivity(agent_post, agent_action, agent_first)
            m.update({f"model/{k}": v for k, v in sens.items()})
        if self.updates < cfg.model_warmup:
            self.updates += 1
            return metrics_to_host({**m, "skipped": skipped}, self.device)
        z_expert = self.disc_features(post.map(lambda x: x[B:]))

        # Imagination from every agent (and, with imagine_from=both, expert) posterior state; the actor
        # learns through dynamics and reward.
        with self._part("imagination"):
            starts = post if cfg.imagine_from == "both" else agent_post
            with frozen(self.wm, self.disc, self.ac.critic):
                z_imagined, feats, actions, reward, actor_loss, returns, weights, am = self._behavior_fn(
                    starts.flatten())
        with self._part("actor"):
            b = cfg.behavior
            actor_lr = linear_schedule(step, b.actor_lr, b.actor_lr_final, b.actor_lr_anneal_steps)
            for group in self.opt_actor.param_groups:
                group["lr"] = actor_lr
            out = optimize(actor_loss, self.opt_actor, self.ac.actor.parameters(), cfg.grad_clip)
            self.ac.update_actor_average()
            m.update({"actor/loss": actor_loss.detach(), "actor/grad_norm": out["grad_norm"], "actor/lr": actor_lr,
                      "reward/imagined_mean": reward.detach().mean()})
            m.update({f"actor/{k}": v for k, v in am.items()})
            skipped += out["skipped"]
        with self._part("critic"):
            with self._autocast():
                critic_loss = self.ac.critic_loss(feats, returns, weights)
            out = optimize(critic_loss, self.opt_critic, self.ac.critic.parameters(), cfg.grad_clip)
            self.ac.update_target(self.updates + 1)
            m.update({"critic/loss": critic_loss.detach(), "critic/grad_norm": out["grad_norm"]})
            skipped += out["skipped"]

        # Discriminator: expert posterior transitions (real) vs agent transitions (fake), as many
        # agent ones as expert ones unless disc.agent_samples says otherwise.
        with self._part("discriminator"):
            samples = cfg.disc.agent_samples or expert.obs.shape[0] * (expert.obs.shape[1] - 1)
            n_replay = {"replay": samples, "imagined": 0, "both": samples // 2}[cfg.disc.agent_source]
            parts = []
            if n_replay > 0:
                x_replay, w_replay = sequence_transitions(self.disc_features(agent_post),
                                                          agent_action, agent_first, self.disc.inputs)
                x_replay = x_replay[w_replay > 0]
                if x_replay.shape[0] == 0:
                    raise ValueError("the agent batch holds no transitions (every step starts an episode); "
                                     "agent.seq_len must be >= 2 and episodes longer than one step")
                parts.append(x_replay[torch.randint(x_replay.shape[0], (n_replay,), device=dev)])
            if samples - n_replay > 0:  # only the sampled imagined transitions are assembled, not all H x N
                idx = torch.randint(actions.shape[0] * actions.shape[1], (samples - n_replay,), device=dev)
                parts.append(imagined_transitions(z_imagined.detach(), actions.detach(), self.disc.inputs, idx))
            x_agent = torch.cat(parts)
            dm, skip = self._disc_update(z_expert, expert_action.detach(), expert.is_first.to(dev), x_agent, step,
                                         n_replay)
            m.update(dm)
            skipped += skip
        self.updates += 1
        return metrics_to_host({**m, "skipped": skipped}, self.device)

    def _disc_update(self, z_e: torch.Tensor, action_e: torch.Tensor, first_e: torch.Tensor,
                     x_a: torch.Tensor, step: int, n_replay: int) -> tuple[dict[str, Any], float]:
        """One discriminator step: expert posterior transitions (real) against the sampled agent
        transitions ``x_a`` [N, in_dim] (fake), whose first ``n_replay`` are replayed, the rest imagined."""
        c = self.cfg.disc
        x_e, w_e = sequence_transitions(z_e, action_e, first_e, self.disc.inputs)
        std = linear_schedule(step, c.noise_std, c.noise_final_std, c.noise_anneal_steps)
        with self._autocast():
            losses, weights, logit_e, logit_a = discriminator_losses(
                self.disc, x_e.float(), x_a.float(), w_e, c.penalty, c.penalty_coef, std)
        loss = weighted_sum(losses, weights)
        out = optimize(loss, self.opt_disc, self.disc.parameters(), self.cfg.grad_clip)
        metrics = {"disc/loss": loss.detach(), "disc/grad_norm": out["grad_norm"], "disc/noise_std": std,
                   "disc/expert_acc": ((logit_e.detach() > 0).float() * w_e).sum() / w_e.sum().clamp(min=1.0),
                   "disc/agent_acc": (logit_a.detach() < 0).float().mean(),
                   # Per source: D judging imagined transitions more expert-like than real ones shows here.
                   **{f"disc/{name}_acc": (part.detach() < 0).float().mean()
                      for name, part in (("replay", logit_a[:n_replay]), ("imagined", logit_a[n_replay:]))
                      if part.numel() > 0},
                   "reward/expert_mean": reward_from_logit(logit_e.detach(), c.reward, c.reward_scale).mean()}
        metrics.update({f"disc/{k}": v.detach() for k, v in losses.items()})
        return metrics, out["skipped"]

    # ------------------------------------------------------------------ acting

    def _expl_amount(self) -> float:
        c = self.cfg
        return exploration_noise(self._last_step, c.expl_noise, c.expl_decay, c.expl_min)

    @torch.no_grad()
    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        post = self.wm.filter_obs(obs.image, obs.proprio, obs.first, state, explore, "VMIL")
        feat = self.wm.rssm.feat(post)
        if explore:
            action = self.ac.actor.explore(feat, self._expl_amount())
        elif self._plan_set is not None:
            action = planned_action(self.wm.rssm, self.ac, self._transition_reward, post, self._plan_set,
                                    self.plan_counts)
        else:
            action = self.ac.eval_actor().mode(feat)
        env_action = (action * self._a_scale + self._a_shift)[0].cpu().numpy().astype(np.float32)
        return env_action, (post, action)

    # ------------------------------------------------------------------ diagnostics

    def slice_batch(self, batch: SequenceBatch, n: int, T: int) -> SequenceBatch:
        """The first ``n`` sequences' first ``T`` steps, on this agent's device."""
        cut = lambda x: None if x is None else x[:n, :T].to(self.device)  # noqa: E731
        return SequenceBatch(*(cut(x) for x in batch))

    def visualize(self, expert: SequenceBatch | None, batch: SequenceBatch | None,
                  sequences: int = 4) -> dict[str, np.ndarray]:
        """Open-loop prediction strips of an expert and an agent batch (:func:`openloop_strips`)."""
        return openloop_strips(self, {"openloop_expert": expert, "openloop_agent": batch}, sequences)

    @torch.no_grad()
    def health(self, episodes: list, expert: SequenceBatch | None, batch: SequenceBatch | None) -> dict[str, float]:
        """The adversarial health signals (:mod:`imitation.health`) from the evaluation's episodes and
        fresh expert / agent-replay batches."""
        learned, true, real, imagined = [], [], [], []
        for ep in episodes:
            b = episode_sequence(ep, self.device)
            if b.action is None or b.obs.shape[1] < 2:
                continue
            embed = self.wm.encode(self.wm.images(b.obs), self.proprio(b))
            action = self._norm_action(b.action)
            post, _ = self.wm.rssm.observe(embed, action, b.is_first, sample=False)
            z = self.disc_features(post)
            r = self._reward(z[:, :-1], action[:, 1:], z[:, 1:])[0]
            learned.append(r)
            true.append(torch.as_tensor(ep.reward, device=self.device))
            rollout = imagine(self.wm.rssm, self.ac.actor, post.flatten(), self.cfg.behavior.horizon)
            zi = self.disc_features(rollout.states)
            imagined.append(self._reward(zi[:-1], rollout.actions, zi[1:]).mean())
        out: dict[str, float] = {}
        if learned:
            lr, tr = torch.cat(learned), torch.cat(true)
            out.update(reward_true_corr=pearson(lr.cpu().numpy(), tr.cpu().numpy()),
                       reward_real_mean=float(lr.mean()), reward_imagined_mean=float(torch.stack(imagined).mean()))
        if expert is not None:
            e = self.slice_batch(expert, expert.obs.shape[0], expert.obs.shape[1])
            embed = self.wm.encode(self.wm.images(e.obs), self.proprio(e))
            action = self.sequence_actions(e, embed)
            post, _ = self.wm.rssm.observe(embed, action, e.is_first)
            x, w = sequence_transitions(self.disc_features(post), action, e.is_first, self.disc.inputs)
            logit = self.disc(x)
            out["disc_expert_acc"] = float(((logit > 0).float() * w).sum() / w.sum().clamp(min=1.0))
        if batch is not None:
            a = self.slice_batch(batch, batch.obs.shape[0], batch.obs.shape[1])
            embed = self.wm.encode(self.wm.images(a.obs), self.proprio(a))
            action = self._norm_action(a.action)
            post, _ = self.wm.rssm.observe(embed, action, a.is_first)
            x, w = sequence_transitions(self.disc_features(post), action, a.is_first, self.disc.inputs)
            logit = self.disc(x)
            out["disc_replay_acc"] = float(((logit < 0).float() * w).sum() / w.sum().clamp(min=1.0))
            rollout = imagine(self.wm.rssm, self.ac.actor, post.flatten(), self.cfg.behavior.horizon)
            zi = self.disc_features(rollout.states)
            logit = self.disc.transition_logit(zi[:-1], rollout.actions, zi[1:])
            out["disc_imagined_acc"] = float((logit < 0).float().mean())
        return out

    # ------------------------------------------------------------------ persistence

    def _parts(self) -> dict[str, Any]:
        parts = {"world_model": self.wm, "actor_critic": self.ac, "disc": self.disc, "opt_model": self.opt_model,
                 "opt_actor": self.opt_actor, "opt_critic": self.opt_critic, "opt_disc": self.opt_disc}
        if self.idm is not None:
            parts["idm"] = self.idm
        if self.opt_prior is not None:
            parts["opt_prior"] = self.opt_prior
        return parts

    def state_dict(self) -> dict[str, Any]:
        return parts_state(self._parts(), updates=self.updates, last_step=self._last_step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counters = load_parts(state, self._parts(), ("updates", "last_step"), "VMIL",
                              "an inverse-dynamics model exists only for demos without actions and "
                              "expert_actions=infer")
        self.updates, self._last_step = counters["updates"], counters["last_step"]


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any) -> VMILAgent:
    """A VMIL agent for ``spec``; ``demos`` (a :class:`vmil.data.episode.DemoInfo`) says whether the
    demos carry actions, which picks the discriminator's inputs and how expert actions are handled."""
    if not isinstance(cfg, Config):
        raise TypeError(f"vmil.build expects imitation.vmil.Config, got {type(cfg).__name__}")
    if spec.discrete:
        raise ValueError(f"VMIL needs continuous actions; {spec.env_id} has discrete actions")
    if demos is None:
        raise ValueError("VMIL imitates demonstrations: pass --demos DIR (record some with `vmil demos record`)")
    if tuple(demos.obs_shape) != tuple(spec.obs_shape):
        raise ValueError(f"demos in {demos.directory} have observations {tuple(demos.obs_shape)} but {spec.env_id} "
                         f"gives {tuple(spec.obs_shape)}; record demos with the same image size and channels")
    has_actions = bool(demos.has_actions)
    if has_actions and demos.action_dim != spec.action_dim:
        raise ValueError(f"demos in {demos.directory} have {demos.action_dim}-d actions but {spec.env_id} has "
                         f"{spec.action_dim}")
    if not has_actions and cfg.disc.inputs in ("zaz", "za") and cfg.expert_actions == "zeros":
        raise ValueError(f"disc.inputs={cfg.disc.inputs} needs expert actions but the demos have none and "
                         "expert_actions=zeros; use disc.inputs=auto (or zz), or expert_actions=infer")
    if cfg.model.proprio and spec.state_dim <= 0:
        raise ValueError(f"model.proprio=true but {spec.env_id} has no proprioceptive state; set model.proprio=false")
    return VMILAgent(cfg, spec, device, has_actions)
