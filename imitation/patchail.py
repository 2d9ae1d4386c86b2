"""PatchAIL (Liu et al. 2023) and the model-free imitation agents compared with it, all on the
DrQ-v2 learner (``vmil.rl.drqv2``). One ``Config.variant`` picks the agent (each
``configs/algo/<variant>.yaml`` sets it):

- ``patchail``: patch discriminator on (s, s'), R = scale * Aggr(h(D)) (the paper's "w.o. Reg.").
- ``patchail-w``: R = lambda * Sim * scale * Aggr(h(D)); ``patchail-b``: R = lambda * Sim + scale * Aggr(h(D)),
  Sim = exp(-KL(patch distribution || mean expert patch distribution)). lambda is set from its
  initial value as the public code does ('auto-1.3'): lambda = sim_lambda / mean Sim of the first
  batch, then fixed (saved in checkpoints).
- ``patchail-bc``: PatchAIL plus an annealed BC term on the actor (needs demos with actions).
- ``shared-enc-ail``: scalar discriminator MLP on the critic encoder's features, detached so the
  discriminator never trains the encoder (Cohen et al. 2021).
- ``ind-enc-ail``: scalar discriminator with its own conv encoder.
- ``sqil``: SQIL with DrQ-v2: expert transitions get reward 1, agent transitions 0 (needs actions);
  each batch of batch_size transitions holds expert_batch_size expert ones (half by default).

Choices (stated because the public code differs):
- Rewards are computed with the current discriminator for every sampled batch, after its update,
  on un-augmented frames (the public code labels each episode once, when it ends, with the
  discriminator of that time; that option is not implemented). The n-step reward is the exact
  sum_{i < steps} gamma^i r(s_{t+i}, s_{t+i+1}): the intermediate frame stacks are rebuilt from the
  stacks at t and t+steps (needs nstep <= frame_stack), and steps is read off the batch's discount
  (gamma**steps where the sampler cut the horizon at a time limit). A transition that ends in a
  terminal state within n steps (discount 0) gets only its first step's reward. This costs nstep
  discriminator forwards of the agent batch per update (on CPU about as much as the
  discriminator's own step); ``nstep=1`` makes it one.
- The discriminator sees expert_batch_size expert and as many agent pairs per update (the public
  code's batch // 2 each); one random shift per (s, s') pair, so both frames move together.
- The mean expert patch distribution for Sim comes from the expert batch, not a whole demo.
- The discriminator (its step, gradient penalty and the reward pass) runs in bf16 autocast where
  the device computes bf16 natively (``disc_precision=auto``): the convolutions are about 2x
  faster on this project's CPU and rewards differ from fp32 by well under 1%; the learner stays fp32.
- The gradient penalty (weight 10, per sample, w.r.t. [0, 1] pixels) constrains the gradient of
  each sample's *mean* patch logit by default. Constraining the patch *sum* (``gp_reduce=sum``)
  asks every one of the P x P patches for a P^2 times smaller slope; on toy:reach it pinned the
  discriminator at chance (logits ~0, rewards ~0.01). The public code's penalty is neither: its
  norm runs over rows of the whole batch's gradient and is divided by batch x patches, which
  leaves its discriminator nearly unconstrained.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from imitation import discriminators as D
from imitation import rewards as R
from imitation.health import pearson, stacked_pairs
from vmil.base import EnvSpec, Obs, TransitionBatch
from vmil.config import doc
from vmil.nn import adam, linear_schedule, optimize
from vmil.rl import drqv2
from vmil.rl.drqv2 import DrQV2

VARIANTS = ("patchail", "patchail-w", "patchail-b", "patchail-bc", "shared-enc-ail", "ind-enc-ail", "sqil")
Variant = Literal["patchail", "patchail-w", "patchail-b", "patchail-bc", "shared-enc-ail", "ind-enc-ail", "sqil"]
PATCH = ("patchail", "patchail-w", "patchail-b", "patchail-bc")
NEEDS_ACTIONS = ("patchail-bc", "sqil")


class NeedsActions(ValueError):
    """The variant learns from expert actions but the demos are observation-only."""


@dataclass(frozen=True)
class Config(drqv2.Config):
    variant: Variant = doc("patchail", "Which agent: " + ", ".join(VARIANTS) + " (set by configs/algo/<name>.yaml).")
    expert_batch_size: int = doc(0, "Expert transitions per update; 0 for batch_size // 2 (the public code).")
    disc_lr: float = doc(1e-4, "Adam learning rate of the discriminator.")
    disc_pair: bool = doc(True, "Discriminate (s, s') stacked on channels (the paper); false: s alone.")
    kernel_size: int = doc(4, "Patch discriminator kernel size (the ablation: 2, 3, 4, 5, 8).")
    one_by_one: bool = doc(False, "All-1x1 patch discriminator (the ablation's 1x1 variant).")
    disc_channels: tuple[int, int, int] = doc((32, 64, 128), "Channels of the patch discriminator's first three convs.")
    gp_weight: float = doc(10.0, "Weight of the per-sample gradient penalty on interpolates.")
    gp_reduce: Literal["mean", "sum"] = doc(
        "mean", "Penalise the input gradient of each sample's mean (default) or sum of patch logits; see the module doc.")
    disc_augment: bool = doc(True, "Random shift of discriminator inputs (pad = augment_pad).")
    reward_transform: Literal["logit", "neg_log_one_minus", "log", "fairl"] = doc(
        "logit", "h(D): logit = log D - log(1 - D) (the paper), -log(1 - D), log D, or FAIRL.")
    reward_aggregate: Literal["mean", "max", "min", "median"] = doc("mean", "Aggregation over patches.")
    reward_scale: float = doc(1.0, "Scale of Aggr(h(D)) (the paper: 0.5 for PatchAIL-B).")
    sim_lambda: float = doc(1.3, "Initial lambda of PatchAIL-W/-B (the paper: 1.3 for W, 0.5 for B).")
    sim_reference: Literal["logits", "probs"] = doc(
        "logits", "Sim's expert reference: mean expert logits (the paper's Eq. 7) or mean patch probabilities (the public code).")
    bc_schedule: tuple[float, float, int] = doc(
        (1.0, 0.01, 400_000), "patchail-bc: BC weight w, linear(init, final, env steps; 0 keeps init); "
                              "actor loss (1-w)*RL + w*bc_scale*BC.")
    bc_scale: float = doc(0.03, "patchail-bc: scale of the BC negative log-likelihood (the public code).")
    bc_std: float = doc(0.1, "patchail-bc: std of the Gaussian whose log-likelihood of expert actions is the BC loss.")
    sqil_expert_reward: float = doc(1.0, "sqil: reward of each expert step (agent steps get 0).")
    disc_precision: Literal["auto", "bf16", "fp32"] = doc(
        "auto", "Discriminator step and reward pass in bf16 autocast (weights stay fp32) or fp32; auto: bf16 "
        "where the device computes it natively (CUDA with bf16, CPUs with avx512_bf16/AMX), about 2x faster "
        "convolutions there; fp32 elsewhere, where bf16 is emulated and slower.")
    disc_warmup: int = doc(
        0, "Updates at the start that train only the discriminator (0: none, the paper). An untrained "
        "discriminator's reward carries no signal, and the actor follows the random critic's action "
        "gradient into tanh saturation, from which it does not recover (seen on toy:reach).")


def effective_steps(discount: torch.Tensor, gamma: float, nstep: int) -> torch.Tensor:
    """Steps each n-step transition spans: the sampler cuts the horizon at an episode's end, so
    discount = gamma**steps (time limit) or 0 (terminal; counted as 1 step, see the module doc)."""
    steps = torch.round(torch.log(discount.clamp_min(1e-30)) / math.log(gamma)).long()
    return torch.where(discount > 0, steps, torch.ones_like(steps)).clamp(1, nstep)


def frame_stacks(obs: torch.Tensor, next_obs: torch.Tensor, steps: torch.Tensor, nstep: int,
                 frames: int) -> list[torch.Tensor]:
    """The stacks at t, t+1, ..., t+nstep rebuilt from the stacks at t and t+steps (``frames`` frames of
    C channels each; needs nstep <= frames). Stack t+i is exact for i <= steps; later ones repeat
    the last frame and are never used. Frame t+1+j sits at position frames - steps + j of the stack at t+steps."""
    assert nstep <= frames, f"nstep={nstep} > frame_stack={frames}"
    b, kc, h, w = obs.shape
    c = kc // frames
    past = obs.reshape(b, frames, c, h, w)
    ahead = next_obs.reshape(b, frames, c, h, w)
    where = (frames - steps[:, None] + torch.arange(nstep, device=obs.device)).clamp(0, frames - 1)
    future = ahead[torch.arange(b, device=obs.device)[:, None], where]
    line = torch.cat([past, future], dim=1)  # frames t-frames+1 .. t+nstep
    return [line[:, i:i + frames].reshape(b, kc, h, w) for i in range(nstep + 1)]


class ImitationAgent:
    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device):
        self.cfg, self.spec, self.device = cfg, spec, device
        self.expert_batch_size = cfg.expert_batch_size or cfg.batch_size // 2
        agent_batch = cfg.batch_size
        if cfg.variant == "sqil":  # SQIL's balanced batches: batch_size transitions, expert_batch_size of them expert
            agent_batch = cfg.batch_size - self.expert_batch_size
            if agent_batch < 1:
                raise ValueError(f"sqil: expert_batch_size {self.expert_batch_size} leaves no agent transitions in "
                                 f"batch_size {cfg.batch_size}; use expert_batch_size < batch_size (0: half)")
        elif self.expert_batch_size > cfg.batch_size:
            raise ValueError(f"expert_batch_size {self.expert_batch_size} > batch_size {cfg.batch_size}: the "
                             "discriminator pairs each expert sample with one agent sample")
        if cfg.nstep > 1 and not 0 < cfg.discount < 1:
            raise ValueError(f"discount must be in (0, 1) with nstep > 1 (got {cfg.discount}): the n-step "
                             "span of each transition is read off its discount")
        if cfg.variant != "sqil" and cfg.nstep > cfg.frame_stack:
            raise ValueError(f"nstep={cfg.nstep} > frame_stack={cfg.frame_stack}: per-batch imitation rewards "
                             "rebuild the intermediate frame stacks from the stacks at t and t+n; use nstep <= frame_stack")
        self.rl = DrQV2(cfg, spec, device, expert_batch_size=self.expert_batch_size, batch_size=agent_batch)
        self.request = self.rl.request
        k_c = self.rl.obs_shape[0] * (2 if cfg.disc_pair else 1)
        self.disc: torch.nn.Module | None = None
        if cfg.variant in PATCH:
            self.disc = D.PatchDiscriminator(k_c, kernel_size=cfg.kernel_size, channels=cfg.disc_channels,
                                             one_by_one=cfg.one_by_one)
        elif cfg.variant == "shared-enc-ail":
            self.disc = D.FeatureDiscriminator(cfg.feature_dim * (2 if cfg.disc_pair else 1), cfg.hidden_dim)
        elif cfg.variant == "ind-enc-ail":
            self.disc = D.EncoderDiscriminator(k_c, cfg.feature_dim, cfg.hidden_dim, image_size=spec.obs_shape[-1])
        self.disc_opt = None
        if self.disc is not None:
            self.disc.to(device, memory_format=self.rl.memory_format)
            self.disc_opt = adam(self.disc.parameters(), cfg.disc_lr)
        self.disc_bf16 = cfg.bf16 or cfg.disc_precision == "bf16" or (cfg.disc_precision == "auto"
                                                                     and native_bf16(device))
        self.sim_scale = 0.0  # lambda of PatchAIL-W/-B, set at the first update
        self.disc_updates = 0  # discriminator steps so far: counts off cfg.disc_warmup

    @property
    def timings(self) -> dict[str, float] | None:
        """ms per part of the update when set to {} (benchmarks); kept by the learner."""
        return self.rl.timings

    @timings.setter
    def timings(self, value: dict[str, float] | None) -> None:
        self.rl.timings = value

    # -- acting and checkpoints ------------------------------------------------------------------
    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        return self.rl.act(obs, state, explore)

    def state_dict(self) -> dict[str, Any]:
        out = {"rl": self.rl.state_dict(), "sim_scale": self.sim_scale, "disc_updates": self.disc_updates}
        if self.disc is not None:
            out.update(disc=self.disc.state_dict(), disc_opt=self.disc_opt.state_dict())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted({"rl", "sim_scale", "disc_updates"} - set(state))
        if missing:
            raise KeyError(f"{self.cfg.variant} checkpoint lacks {missing}: it was saved by another algorithm or "
                           "by an older vmil; start a new run")
        self.rl.load_state_dict(state["rl"])
        self.sim_scale = float(state["sim_scale"])
        self.disc_updates = int(state["disc_updates"])
        if self.disc is not None:
            if "disc" not in state:
                raise KeyError(f"{self.cfg.variant} checkpoint has no discriminator; was it saved by another variant?")
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])

    @torch.no_grad()
    def visualize(self, expert: TransitionBatch | None, batch: TransitionBatch | None,
                  max_items: int = 4) -> dict[str, np.ndarray]:
        """Patch-reward maps (the paper's Figure 1) of up to ``max_items`` expert (top row) and agent
        (bottom row) transitions, each on its newest frame: {"patch_rewards": uint8 [H, W, 3]}.
        The runner logs them at each evaluation; non-patch variants return {}."""
        if not isinstance(self.disc, D.PatchDiscriminator) or expert is None:
            return {}
        from imitation import viz

        c = self.spec.obs_shape[0]
        inputs, frames = [], []
        for data in (expert, batch):
            if data is None:
                inputs.append(None)
                frames.append(None)
                continue
            s, s_next = data.obs[:max_items], data.step_obs[:max_items]
            inputs.append(self.disc_image(self.pair(s, s_next), augment=False))
            frames.append(s_next[:, -c:])  # drawn on the newest frame the discriminator sees
        return {"patch_rewards": viz.batch_figure(self.disc, inputs[0], inputs[1], frames[0], frames[1],
                                                  self.cfg.reward_transform)}

    # -- discriminator inputs ----------------------------------------------------------------------
    def pair(self, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        """uint8 stacks -> the discriminator's input frames, uint8: (s, s') on channels, or s."""
        return torch.cat([s, s_next], dim=1) if self.cfg.disc_pair else s

    def disc_image(self, x: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 frames -> float [0, 1] for the image discriminators, optionally shifted (one shift
        per sample, so s and s' move together)."""
        x = x.to(self.device)
        if augment and self.cfg.disc_augment and self.cfg.augment_pad > 0:
            x = self.rl.augment(x)
        return D.normalize_image(x).contiguous(memory_format=self.rl.memory_format)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Critic trunk features of float frame stacks, detached (shared-encoder AIL)."""
        with torch.no_grad(), self.rl.autocast():
            return self.rl.critic.trunk(self.rl.encoder(x)).float()

    def disc_autocast(self):
        """bf16 autocast for the discriminator's convolutions (``disc_precision``)."""
        if not self.disc_bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def disc_logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.disc_autocast():
            return self.disc(x).float()

    def transition_logits(self, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        """D's logits of uint8 frame-stack pairs (s, s'), un-augmented: patch maps or scalars."""
        if self.cfg.variant == "shared-enc-ail":
            f = self.features(self.rl.to_float(s.to(self.device)))
            x = torch.cat([f, self.features(self.rl.to_float(s_next.to(self.device)))], 1) if self.cfg.disc_pair else f
        else:
            x = self.disc_image(self.pair(s, s_next), augment=False)
        return self.disc_logits(x)

    @torch.no_grad()
    def health(self, episodes: list, expert: TransitionBatch | None, batch: TransitionBatch | None,
               chunk: int = 256) -> dict[str, float]:
        """The adversarial health signals (:mod:`imitation.health`): the one-step learned reward of
        every evaluation transition against its true reward, and D's accuracy on fresh expert and
        agent-replay transitions. SQIL has no discriminator and reports none."""
        if self.disc is None:
            return {}
        cfg = self.cfg
        mode = {"patchail-w": "weighted", "patchail-b": "bonus"}.get(cfg.variant, "plain")
        expert_mean = None
        if mode != "plain":
            if expert is None:
                return {}
            expert_mean = R.expert_mean_logits(self.transition_logits(expert.obs, expert.step_obs), cfg.sim_reference)
        learned, true = [], []
        for ep in episodes:
            s, s_next = stacked_pairs(ep.obs, cfg.frame_stack)
            for i in range(0, s.shape[0], chunk):
                logits = self.transition_logits(s[i:i + chunk], s_next[i:i + chunk])
                lam = self.sim_scale
                if mode != "plain" and lam == 0.0:  # before the first update sets lambda
                    lam = R.initial_lambda(cfg.sim_lambda, R.similarity(logits, expert_mean))
                learned.append(R.patch_reward(logits, expert_mean, mode=mode, lam=lam,
                                              transform_kind=cfg.reward_transform,
                                              aggregate_kind=cfg.reward_aggregate, scale=cfg.reward_scale).float())
            true.append(torch.as_tensor(ep.reward))
        out: dict[str, float] = {}
        if learned:
            out["reward_true_corr"] = pearson(torch.cat(learned).cpu().numpy(), torch.cat(true).numpy())
            out["reward_real_mean"] = float(torch.cat(learned).mean())
        if expert is not None:
            out["disc_expert_acc"] = float((self.transition_logits(expert.obs, expert.step_obs) > 0).float().mean())
        if batch is not None:
            out["disc_replay_acc"] = float((self.transition_logits(batch.obs, batch.step_obs) < 0).float().mean())
        return out

    # -- the update ------------------------------------------------------------------------------
    def check(self, batch: TransitionBatch, expert: TransitionBatch | None) -> None:
        self.rl.check_batch(batch, "agent batch")
        if expert is None:
            raise ValueError(f"{self.cfg.variant} needs an expert batch each update (request.expert_batch_size="
                             f"{self.request.expert_batch_size}); give the runner demos (--demos DIR)")
        self.rl.check_batch(expert, "expert batch")
        if expert.obs.shape[0] != self.expert_batch_size:
            raise ValueError(f"expert batch has {expert.obs.shape[0]} samples, expected "
                             f"request.expert_batch_size={self.expert_batch_size}")
        if self.cfg.variant in NEEDS_ACTIONS and expert.action is None:
            raise NeedsActions(f"{self.cfg.variant} needs expert actions but the expert batch has none; "
                               "record demos with actions (`vmil demos record ... --keep-actions`)")

    def update(self, batch: TransitionBatch, expert: TransitionBatch | None, step: int) -> dict[str, float]:
        self.check(batch, expert)
        self.rl.step = step
        if self.cfg.variant == "sqil":
            return self.update_sqil(batch, expert, step)
        rl, cfg = self.rl, self.cfg
        with rl.timed("critic"):
            action = rl.to_unit_action(batch.action.to(self.device))
            h = rl.encode(rl.augment(batch.obs))
        with rl.timed("discriminator"):
            metrics = self.update_discriminator(batch, expert, h)
        self.disc_updates += 1
        if self.disc_updates <= cfg.disc_warmup:  # the discriminator learns first; the agent waits
            metrics.update(true_reward_mean=float(batch.reward.mean()), skipped=metrics["disc_skipped"],
                           disc_warmup=1.0)
            return metrics
        with rl.timed("reward"):
            reward, reward_metrics = self.reward(batch, expert)
        metrics.update(reward_metrics)
        with rl.timed("critic"):
            with torch.no_grad():  # only after the warm-up: until then the critic does not train
                h_next = rl.encode(rl.augment(batch.next_obs))
            metrics.update(rl.critic_step(h, action, reward, batch.discount.to(self.device), h_next, step))
        with rl.timed("actor"):
            extra, weights = None, None
            if cfg.variant == "patchail-bc":
                extra, weights = self.bc_loss(expert, step)
                metrics["bc_weight"] = weights["bc"] / cfg.bc_scale
            metrics.update(rl.actor_step(h.detach(), step, extra, weights))
            rl.soft_update()
        metrics["true_reward_mean"] = float(batch.reward.mean())
        metrics["skipped"] = max(metrics["disc_skipped"], metrics["critic_skipped"], metrics["actor_skipped"])
        return metrics

    def update_discriminator(self, batch: TransitionBatch, expert: TransitionBatch,
                             h: torch.Tensor) -> dict[str, float]:
        m = self.expert_batch_size
        if self.cfg.variant == "shared-enc-ail":
            # The critic's own encoding of the (augmented) agent obs is reused; the rest is encoded
            # without gradients, so the discriminator cannot move the shared encoder.
            rl = self.rl
            with torch.no_grad():
                agent_s = rl.critic.trunk(h[:m].detach())
                others = [expert.obs] + ([expert.step_obs, batch.step_obs[:m]] if self.cfg.disc_pair else [])
                feats = self.features(rl.augment(torch.cat(others))).split(m)
            expert_x = torch.cat([feats[0], feats[1]], 1) if self.cfg.disc_pair else feats[0]
            agent_x = torch.cat([agent_s, feats[2]], 1) if self.cfg.disc_pair else agent_s
        else:
            expert_x = self.disc_image(self.pair(expert.obs, expert.step_obs), augment=True)
            agent_x = self.disc_image(self.pair(batch.obs[:m], batch.step_obs[:m]), augment=True)
        with self.disc_autocast():
            loss, info = D.discriminator_loss(self.disc, expert_x, agent_x, gp_weight=self.cfg.gp_weight,
                                              patch_reduce=self.cfg.gp_reduce)
        opt = optimize(loss.float(), self.disc_opt, self.disc.parameters(), self.cfg.grad_clip)
        out = {f"disc_{k}": float(v) for k, v in info.items()}
        out["disc_accuracy"] = 0.5 * (out["disc_expert_acc"] + out["disc_agent_acc"])
        out.update(disc_grad_norm=opt["grad_norm"], disc_skipped=opt["skipped"])
        return out

    @torch.no_grad()
    def reward(self, batch: TransitionBatch, expert: TransitionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The n-step imitation reward sum_{i < steps} gamma^i r(s_{t+i}, s_{t+i+1}) from the current
        discriminator, on un-augmented frames."""
        cfg, b = self.cfg, batch.obs.shape[0]
        steps = effective_steps(batch.discount.to(self.device), cfg.discount, cfg.nstep)
        stacks = frame_stacks(batch.obs.to(self.device), batch.next_obs.to(self.device), steps, cfg.nstep,
                              cfg.frame_stack)
        stacks[1] = batch.step_obs.to(self.device)  # the sampler's own stack at t+1 (equal where valid)
        mode = {"patchail-w": "weighted", "patchail-b": "bonus"}.get(cfg.variant, "plain")
        expert_mean = None
        if mode != "plain":
            expert_x = self.disc_image(self.pair(expert.obs, expert.step_obs), augment=False)
            expert_mean = R.expert_mean_logits(self.disc_logits(expert_x), cfg.sim_reference)
        feats = None
        if cfg.variant == "shared-enc-ail":  # each stack is encoded once, whichever pairs it is in
            needed = cfg.nstep + 1 if cfg.disc_pair else cfg.nstep
            feats = [self.features(self.rl.to_float(stacks[i])) for i in range(needed)]
        total = torch.zeros(b, device=self.device)
        sims = []
        for i in range(cfg.nstep):
            valid = steps > i
            if not bool(valid.any()):
                break
            s, s_next = stacks[i][valid], stacks[i + 1][valid]
            if feats is not None:
                x = torch.cat([feats[i][valid], feats[i + 1][valid]], 1) if cfg.disc_pair else feats[i][valid]
            else:
                x = self.disc_image(self.pair(s, s_next), augment=False)
            logits = self.disc_logits(x)
            if mode != "plain":
                sims.append(R.similarity(logits, expert_mean))
                if self.sim_scale == 0.0:  # lambda from its initial value, once (the public 'auto-<init>')
                    self.sim_scale = R.initial_lambda(cfg.sim_lambda, sims[-1])
            r = R.patch_reward(logits, expert_mean, mode=mode, lam=self.sim_scale, transform_kind=cfg.reward_transform,
                               aggregate_kind=cfg.reward_aggregate, scale=cfg.reward_scale)
            assert r.shape == (int(valid.sum()),), f"reward shape {tuple(r.shape)}, expected ({int(valid.sum())},)"
            total[valid] += cfg.discount ** i * r
        out = {"reward_mean": float(total.mean()), "reward_std": float(total.std()) if b > 1 else 0.0}
        if sims:
            out.update(sim_mean=float(torch.cat(sims).mean()), sim_lambda=self.sim_scale)
        return total, out

    def bc_loss(self, expert: TransitionBatch, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """-log N(a_E; actor mean, bc_std) on detached expert features, annealed against the RL loss."""
        rl = self.rl
        with torch.no_grad():
            h_e = rl.encode(rl.augment(expert.obs))
        target = rl.to_unit_action(expert.action.to(self.device, torch.float32))
        with rl.autocast():
            mean = rl.actor(h_e).float()
        nll = -torch.distributions.Normal(mean, self.cfg.bc_std).log_prob(target).sum(-1).mean()
        w = linear_schedule(step, *self.cfg.bc_schedule)
        return {"bc": nll}, {"actor": 1.0 - w, "bc": w * self.cfg.bc_scale}

    def update_sqil(self, batch: TransitionBatch, expert: TransitionBatch, step: int) -> dict[str, float]:
        """Agent transitions reward 0, expert transitions reward 1 per step (n-step summed), one batch."""
        rl, cfg = self.rl, self.cfg
        steps = effective_steps(expert.discount.to(self.device), cfg.discount, cfg.nstep).float()
        expert_reward = cfg.sqil_expert_reward * (1 - cfg.discount ** steps) / (1 - cfg.discount)
        obs = torch.cat([batch.obs, expert.obs])
        next_obs = torch.cat([batch.next_obs, expert.next_obs])
        action = rl.to_unit_action(torch.cat([batch.action, expert.action.to(batch.action.dtype)]).to(self.device))
        reward = torch.cat([torch.zeros(batch.obs.shape[0], device=self.device), expert_reward])
        discount = torch.cat([batch.discount, expert.discount]).to(self.device)
        with rl.timed("critic"):
            h = rl.encode(rl.augment(obs))
            with torch.no_grad():
                h_next = rl.encode(rl.augment(next_obs))
            metrics = rl.critic_step(h, action, reward, discount, h_next, step)
        with rl.timed("actor"):
            metrics.update(rl.actor_step(h.detach(), step))
            rl.soft_update()
        metrics.update(reward_mean=float(reward.mean()), true_reward_mean=float(batch.reward.mean()),
                       skipped=max(metrics["critic_skipped"], metrics["actor_skipped"]))
        return metrics


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls and convolutions natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def check_demos(cfg: Config, spec: EnvSpec, demos: Any) -> None:
    """Demo frames must be single frames of the env's size; BC variants and SQIL need actions."""
    if demos is None:
        return
    where = getattr(demos, "directory", "") or "demos"
    shape, env_shape = tuple(demos.obs_shape), tuple(spec.obs_shape)
    if shape != env_shape:
        hint = ""
        if shape[1:] == env_shape[1:] and shape[0] == env_shape[0] * cfg.frame_stack:
            hint = (f"; their {shape[0]} channels look like stacks of {cfg.frame_stack} frames: save single "
                    f"frames (the sampler stacks frame_stack={cfg.frame_stack} of them)")
        elif shape[1:] == env_shape[1:] and shape[0] % env_shape[0] == 0:
            hint = (f"; {shape[0]} channels = {shape[0] // env_shape[0]} stacked frames, which does not match "
                    f"frame_stack={cfg.frame_stack}: save single frames")
        else:
            hint = "; record the demos with the same env.image_size / env.grayscale, or set them to match"
        raise ValueError(f"{where}: demo frames are C,H,W={shape} but env {spec.env_id} gives {env_shape}{hint}")
    if cfg.variant in NEEDS_ACTIONS and not demos.has_actions:
        raise NeedsActions(f"{where}: {cfg.variant} needs demos with actions, but these are observation-only; "
                           "record them with `vmil demos record ... --keep-actions`, or use patchail / "
                           "patchail-w / patchail-b / shared-enc-ail / ind-enc-ail, which need no actions")
    if demos.has_actions and demos.action_dim and demos.action_dim != spec.action_dim:
        raise ValueError(f"{where}: demo actions have dimension {demos.action_dim} but env {spec.env_id} has "
                         f"{spec.action_dim}")


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any = None) -> ImitationAgent:
    """``demos`` (a DemoInfo) is checked against the env and the variant; None skips the checks
    (evaluating a saved agent)."""
    check_demos(cfg, spec, demos)
    return ImitationAgent(cfg, spec, device)
