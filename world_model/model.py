"""The world model: encoder -> RSSM -> decoders, its loss (image log-likelihood + KL with free nats,
optional KL balancing, optional proprioception; no reward head) and open-loop prediction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vmil.config import ConfigError, doc
from world_model.networks import ConvDecoder, ConvEncoder, ProprioEncoder, mlp, postprocess_image, preprocess_image
from world_model.rssm import RSSM, State, kl_loss, kl_normal

CNN_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


@dataclass(frozen=True)
class ModelConfig:
    deter: int = doc(200, "GRU (deterministic) state size.")
    stoch: int = doc(30, "Gaussian stochastic state size.")
    hidden: int = doc(200, "Hidden units inside the RSSM.")
    depth: int = doc(32, "Conv encoder/decoder width multiplier (32: 1024-d embedding at 64x64).")
    cnn_act: Literal["relu", "elu"] = doc(
        "relu", "Activation of the conv encoder/decoder: relu (Dreamer V1, the paper) or elu (Dreamer V2). On "
                "small objects over a dark background (toy:reach) a ReLU autoencoder plateaus for ~700 updates "
                "before it draws anything; an ELU one reconstructs both discs within a few hundred.")
    min_std: float = doc(0.1, "Lower bound on prior/posterior standard deviations.")
    free_nats: float = doc(3.0, "KL below this many nats (batch mean) is not penalised.")
    kl_scale: float = doc(1.0, "Weight of the KL term.")
    kl_balance: float = doc(0.0, "KL balancing (Dreamer V2): share of the KL gradient that trains the prior, "
                                 "in (0, 1), e.g. 0.8; 0 disables it (plain KL, as in the paper).")
    latent_action_scale: float = doc(
        0.0, "Weight of the latent-action loss: a linear map of the posterior step z_t+1 - z_t must recover "
             "the action a_t (E2C-style locally linear latents). It makes the prior's dependence on the action "
             "learnable within a few hundred updates on pixels; 0 disables it (the paper's model).")
    prior_horizon: int = doc(
        1, "Open-loop steps of each prior_steps fit: the prior, rolled forward from each posterior under the "
           "recorded actions, is fitted to the posteriors 1..prior_horizon steps later. Where an action acts "
           "through velocities its one-step effect is below the posterior's noise, and a one-step fit learns a "
           "prior that ignores the actions (cartpole: the same 12-step predictions under true, zero and "
           "negated actions); 1: one step.")
    prior_steps: int = doc(
        0, "Extra optimiser steps per update that fit only the dynamics (GRU input layer, GRU, prior head) one "
           "step ahead to the batch's detached posteriors of recorded-action sequences: "
           "KL(sg post_t+1 || prior(sg post_t, a_t+1)). No conv runs, so a step is cheap; within the first "
           "thousand updates a small pixel model's prior otherwise predicts no better than 'nothing moves'. "
           "0 disables it (the paper's model).")
    image_scale: float = doc(1.0, "Weight of the image log-likelihood.")
    image_focus: float = doc(
        0.0, "Weight of an extra reconstruction term on each frame's worst-reconstructed pixels (the top "
             "image_focus_fraction of its squared errors). Small moving objects (cartpole's 1-2 pixel wide pole "
             "at 64x64, under 1% of the pixels) otherwise give the autoencoder too little gradient once the "
             "background is drawn; 0 disables it (the paper's model).")
    image_focus_fraction: float = doc(0.02, "Share of each frame's pixels the image_focus term reads.")
    proprio: bool = doc(False, "Also encode and reconstruct the proprioceptive state (Baoding balls).")
    image: bool = doc(
        True, "Encode and reconstruct the images; false: the model reads only the proprioceptive state (needs "
              "proprio=true and env.proprio=true). A state-based Dreamer or VMIL, and the fast control that "
              "tells a pixel-representation fault from a dynamics or actor-critic one.")
    proprio_embed: int = doc(64, "Proprioception embedding size (concatenated to the image embedding).")
    proprio_units: int = doc(200, "Hidden units of the proprioception encoder/decoder.")
    proprio_scale: float = doc(1.0, "Weight of the proprioception log-likelihood.")
    residual_prior: bool = doc(
        False, "The prior's mean is the last stochastic state plus a predicted change (false: the state itself, "
               "as in PlaNet / Dreamer). A one-step change is far smaller than the range of the state, and a "
               "network's output is precise to a fraction of what it spans.")
    lr: float = doc(6e-4, "World model learning rate (Adam).")
    eps: float = doc(1e-5, "Adam epsilon of the world model optimiser.")

    def __post_init__(self) -> None:
        for name in ("deter", "stoch", "hidden", "depth", "proprio_embed", "proprio_units"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.model.{name} must be positive, got {getattr(self, name)}")
        if self.min_std <= 0:
            raise ConfigError(f"agent.model.min_std must be positive, got {self.min_std}")
        if self.free_nats < 0:
            raise ConfigError(f"agent.model.free_nats must be >= 0, got {self.free_nats}")
        if not 0.0 <= self.kl_balance < 1.0:
            raise ConfigError(f"agent.model.kl_balance must be in [0, 1) (0 disables it), got {self.kl_balance}")
        if self.latent_action_scale < 0:
            raise ConfigError(f"agent.model.latent_action_scale must be >= 0, got {self.latent_action_scale}")
        if self.prior_horizon < 1:
            raise ConfigError(f"agent.model.prior_horizon must be >= 1, got {self.prior_horizon}")
        if self.prior_steps < 0:
            raise ConfigError(f"agent.model.prior_steps must be >= 0, got {self.prior_steps}")
        if self.lr <= 0:
            raise ConfigError(f"agent.model.lr must be positive, got {self.lr}")
        if not self.image and not self.proprio:
            raise ConfigError("agent.model.image=false leaves the model nothing to read: set agent.model.proprio=true "
                              "and env.proprio=true (a state-based model), or keep image=true")
        if self.image_focus < 0 or not 0 < self.image_focus_fraction <= 1:
            raise ConfigError(f"agent.model.image_focus must be >= 0 and image_focus_fraction in (0, 1], got "
                              f"{self.image_focus} and {self.image_focus_fraction}")


def focus_loss(recon: torch.Tensor, image: torch.Tensor, fraction: float) -> torch.Tensor:
    """Half the sum of each frame's largest ``fraction`` of per-pixel squared errors (summed over
    channels), averaged over frames [..., C, H, W]."""
    err = (recon - image).pow(2).sum(-3).reshape(-1, image.shape[-2] * image.shape[-1])
    k = max(1, int(round(fraction * err.shape[1])))
    return 0.5 * err.topk(k, dim=1).values.sum(1).mean()


def _one_step_pairs(post: State, action: torch.Tensor, is_first: torch.Tensor
                    ) -> tuple[State, torch.Tensor, State, torch.Tensor]:
    """Flattened one-step pairs of a [B, T] posterior: (state_t, a_t+1, state_t+1, weight), with
    weight 0 where t+1 starts an episode."""
    prev = post.map(lambda x: x[:, :-1].reshape(-1, x.shape[-1]))
    nxt = post.map(lambda x: x[:, 1:].reshape(-1, x.shape[-1]))
    act = action[:, 1:].reshape(-1, action.shape[-1])
    keep = (~is_first[:, 1:]).reshape(-1).to(post.mean.dtype)
    return prev, act, nxt, keep


class WorldModel(nn.Module):
    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int, state_dim: int = 0, *,
                 deter: int = 200, stoch: int = 30, hidden: int = 200, depth: int = 32, cnn_act: str = "relu",
                 min_std: float = 0.1, proprio: bool = False, proprio_embed: int = 64, proprio_units: int = 200,
                 latent_action: bool = False, image: bool = True, residual_prior: bool = False):
        super().__init__()
        C, H, W = obs_shape
        if H != W:
            raise ValueError(f"the world model needs square images, got {H}x{W}; set env.image_size")
        if proprio and state_dim <= 0:
            raise ValueError("model.proprio=true but the env has no proprioceptive state; set model.proprio=false")
        self.obs_shape, self.action_dim = (C, H, W), action_dim
        self.state_dim = state_dim if proprio else 0
        if cnn_act not in CNN_ACTS:
            raise ValueError(f"cnn_act must be one of {sorted(CNN_ACTS)}, got {cnn_act!r}")
        if not image and not proprio:
            raise ValueError("a world model without images (image=False) needs proprio=True")
        # Without images the embedding is the state's alone (no conv runs); frames are still stored and shown.
        self.encoder = ConvEncoder(C, H, depth, CNN_ACTS[cnn_act]) if image else None
        embed_dim = self.encoder.out_dim if image else 0
        self.proprio_encoder = self.proprio_decoder = None
        if proprio:
            self.proprio_encoder = ProprioEncoder(state_dim, proprio_embed, proprio_units, 2)
            embed_dim += proprio_embed
        self.embed_dim = embed_dim
        self.rssm = RSSM(action_dim, embed_dim, stoch, deter, hidden, min_std, residual_prior=residual_prior)
        self.decoder = ConvDecoder(self.rssm.feat_dim, C, H, depth, CNN_ACTS[cnn_act]) if image else None
        if proprio:
            self.proprio_decoder = mlp(self.rssm.feat_dim, state_dim, proprio_units, 2)
        self.action_head = nn.Linear(stoch, action_dim) if latent_action else None

    @classmethod
    def from_config(cls, cfg: ModelConfig, obs_shape: tuple[int, int, int], action_dim: int,
                    state_dim: int = 0) -> "WorldModel":
        return cls(obs_shape, action_dim, state_dim, deter=cfg.deter, stoch=cfg.stoch, hidden=cfg.hidden,
                   depth=cfg.depth, cnn_act=cfg.cnn_act, min_std=cfg.min_std, proprio=cfg.proprio,
                   proprio_embed=cfg.proprio_embed, proprio_units=cfg.proprio_units, latent_action=cfg.latent_action_scale > 0,
                   image=cfg.image, residual_prior=cfg.residual_prior)

    @property
    def reads_images(self) -> bool:
        return self.decoder is not None

    @property
    def feat_dim(self) -> int:
        return self.rssm.feat_dim

    def images(self, obs: torch.Tensor) -> torch.Tensor | None:
        """uint8 frames [..., C, H, W] as this model reads them: preprocessed, or None for a state-only
        model (``image=False``), which then spends no time converting frames it never reads."""
        return preprocess_image(obs) if self.encoder is not None else None

    def encode(self, image: torch.Tensor | None, proprio: torch.Tensor | None = None) -> torch.Tensor:
        """Preprocessed images [..., C, H, W] (:meth:`images`; and states [..., S]) -> embeddings
        [..., E]. A model without images (``image=False``) ignores ``image``."""
        embeds = [self.encoder(image)] if self.encoder is not None else []
        if self.proprio_encoder is not None:
            if proprio is None:
                raise ValueError("this world model encodes proprioception (model.proprio=true) but the batch "
                                 "has no state; record demos/episodes with states or set model.proprio=false")
            embeds.append(self.proprio_encoder(proprio))
        return embeds[0] if len(embeds) == 1 else torch.cat(embeds, -1)

    def losses(self, image: torch.Tensor | None, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
               proprio: torch.Tensor | None = None, *, free_nats: float, kl_balance: float = 0.0,
               kl_mask: torch.Tensor | None = None, action_mask: torch.Tensor | None = None,
               focus_fraction: float = 0.0) -> tuple[dict[str, torch.Tensor], State, State, dict[str, float]]:
        """Named negative log-likelihood / KL terms for a batch of sequences, the posterior and prior
        states, and float metrics. ``image`` [B, T, C, H, W] preprocessed, ``embed`` from
        :meth:`encode`, ``action`` [B, T, A] in [-1, 1], ``is_first`` [B, T]. ``action_mask`` [B]
        (float) marks the sequences whose actions were recorded, the only ones the latent-action
        loss reads (default: all). ``focus_fraction`` > 0 adds ``image_focus``: half the summed squared
        error of each frame's worst ``focus_fraction`` of pixels, averaged over frames."""
        post, prior = self.rssm.observe(embed, action, is_first)
        feat = self.rssm.feat(post)
        kl, kl_value = kl_loss(post, prior, free_nats, kl_balance, kl_mask)
        losses = {"kl": kl}
        metrics = {"kl_value": kl_value.detach(), "prior_std": prior.std.detach().mean(),
                   "post_std": post.std.detach().mean()}
        if self.decoder is not None:
            losses.update(self._image_losses(feat, image, focus_fraction, metrics))
        if self.action_head is not None:
            losses["latent_action"] = self.latent_action_loss(post, action, is_first, action_mask)
        if self.proprio_decoder is not None:
            losses["proprio"] = 0.5 * (self.proprio_decoder(feat) - proprio).pow(2).sum(-1).mean()
        return losses, post, prior, metrics

    def _image_losses(self, feat: torch.Tensor, image: torch.Tensor, focus_fraction: float,
                      metrics: dict[str, Any]) -> dict[str, torch.Tensor]:
        recon = self.decoder(feat)
        # Unit-variance Gaussian NLL per frame, without its constant: half the squared error summed
        # over a frame, averaged over frames. mse_loss fuses the difference, square and sum (and its
        # backward), which saves three passes over the batch's pixels; the MSE metric follows from it.
        if recon.shape != image.shape:
            raise ValueError(f"decoded images {tuple(recon.shape)} do not match the batch's {tuple(image.shape)}")
        pixels = image.shape[-3:].numel()
        image_nll = 0.5 * F.mse_loss(recon.float(), image, reduction="sum") / (image.numel() // pixels)
        metrics["image_mse"] = image_nll.detach() * 2 / pixels
        losses = {"image": image_nll}
        if focus_fraction > 0:
            losses["image_focus"] = focus_loss(recon.float(), image, focus_fraction)
        return losses

    def latent_action_loss(self, post: State, action: torch.Tensor, is_first: torch.Tensor,
                           action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of ``action_head(z_t+1 - z_t)`` (posterior means) against ``a_t+1``,
        over transitions inside an episode of the sequences ``action_mask`` [B] marks."""
        if self.action_head is None:
            raise ValueError("this world model has no latent-action head (model.latent_action_scale=0)")
        pred = self.action_head(post.mean[:, 1:] - post.mean[:, :-1])
        weight = (~is_first[:, 1:]).to(pred.dtype)
        if action_mask is not None:
            weight = weight * action_mask.to(pred.dtype)[:, None]
        err = (pred.float() - action[:, 1:].float()).pow(2).mean(-1)
        return (err * weight).sum() / weight.sum().clamp(min=1.0)

    def dynamics_parameters(self) -> list[nn.Parameter]:
        """The parameters :meth:`prior_fit_loss` trains: the RSSM's prior path (z, a -> h -> prior)."""
        r = self.rssm
        return [p for m in (r.inp, r.cell, r.prior_h, r.prior_out) for p in m.parameters()]

    def prior_fit_loss(self, post: State, action: torch.Tensor, is_first: torch.Tensor, horizon: int = 1
                       ) -> torch.Tensor:
        """Open-loop KL(post_t+j || prior_j(post_t, a_t+1..t+j)) for j = 1..``horizon`` from every
        posterior state, the prior rolled forward on its own means under the recorded actions, with the
        posteriors detached; averaged over the (start, j) pairs that stay inside an episode and the
        sequence. Trains only :meth:`dynamics_parameters`. One step (horizon 1) leaves an action's effect
        below the posterior's noise where it acts through velocities (cartpole: 0.5 a dt^2); a few
        steps let it compound (PlaNet's overshooting, on the dynamics alone). ``post`` [B, T, ...] from
        :meth:`losses`, ``action`` [B, T, A] (the action that led to each frame, recorded)."""
        if horizon < 1:
            raise ValueError(f"prior fit horizon must be >= 1, got {horizon}")
        if horizon == 1:
            prev, act, target, keep = _one_step_pairs(post.detach(), action, is_first)
            prior = self.rssm.img_step(prev, act, sample=False)
            kl = kl_normal(target.mean, target.std, prior.mean.float(), prior.std.float())
            return (kl * keep).sum() / keep.sum().clamp(min=1.0)
        post = post.detach()
        B, T, A = action.shape
        starts = torch.arange(T - 1, device=action.device)
        state = post.map(lambda x: x[:, :-1].reshape(B * (T - 1), x.shape[-1]))
        alive = torch.ones(B, T - 1, dtype=torch.bool, device=action.device)
        total = action.new_zeros(())
        count = action.new_zeros(())
        for j in range(1, min(horizon, T - 1) + 1):
            index = (starts + j).clamp(max=T - 1)
            alive = alive & (starts + j <= T - 1) & ~is_first[:, index]
            state = self.rssm.img_step(state, action[:, index].reshape(-1, A), sample=False)
            target = post.map(lambda x: x[:, index].reshape(B * (T - 1), x.shape[-1]))
            kl = kl_normal(target.mean, target.std, state.mean.float(), state.std.float())
            weight = alive.reshape(-1).to(kl.dtype)
            total = total + (kl * weight).sum()
            count = count + weight.sum()
        return total / count.clamp(min=1.0)

    @torch.no_grad()
    def action_sensitivity(self, post: State, action: torch.Tensor, is_first: torch.Tensor) -> dict[str, torch.Tensor]:
        """One-step prior error from each posterior state, with the recorded actions and with zero
        actions: ``|prior(z_t, a_t+1).mean - post_t+1.mean|``, averaged over transitions. If the two
        match, the prior ignores the actions and imagination gives the actor no gradient."""
        prev, act, nxt, keep = _one_step_pairs(post, action, is_first)
        target = nxt.mean
        n = keep.sum().clamp(min=1.0)

        def err(a: torch.Tensor) -> torch.Tensor:
            return ((self.rssm.img_step(prev, a, sample=False).mean - target).norm(dim=-1) * keep).sum() / n

        change = ((post.mean[:, 1:] - post.mean[:, :-1]).reshape(-1, target.shape[-1]).norm(dim=-1) * keep).sum() / n
        return {"prior_err": err(act), "prior_err_zero_action": err(torch.zeros_like(act)), "latent_step": change}

    @torch.no_grad()
    def open_loop(self, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, context: int,
                  proprio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition on the first ``context`` frames, then predict the rest from the recorded actions
        alone (prior means). Returns (truth, prediction) as uint8 [B, T, C, H, W]; the first
        ``context`` predicted frames are reconstructions."""
        T = obs.shape[1]
        if not 0 < context < T:
            raise ValueError(f"open-loop context must be in [1, {T - 1}] for sequences of {T} frames, got {context}")
        image = preprocess_image(obs)
        embed = self.encode(image[:, :context], None if proprio is None else proprio[:, :context])
        post, _ = self.rssm.observe(embed, action[:, :context], is_first[:, :context], sample=False)
        last = post.map(lambda x: x[:, -1])
        prior = self.rssm.imagine_actions(action[:, context:], last, sample=False)
        feat = torch.cat([self.rssm.feat(post), self.rssm.feat(prior)], 1)
        return obs, postprocess_image(self._decoder()(feat))

    @torch.no_grad()
    def filter_obs(self, image: Any, proprio: Any, first: bool, state: tuple[State, torch.Tensor] | None,
                   sample: bool, who: str) -> State:
        """One filtering step while acting: the posterior [1, ...] after the uint8 image [C, H, W] (and
        proprioception [S] when the model reads it), from the last step's ``state`` = (posterior, action
        in [-1, 1]), or from the initial state at an episode's first step. ``sample=False`` filters with
        posterior means, so a deterministic policy is deterministic. ``who`` names the agent in errors."""
        device = next(self.parameters()).device
        image = torch.as_tensor(image, device=device)
        if tuple(image.shape) != tuple(self.obs_shape) or image.dtype != torch.uint8:
            raise ValueError(f"{who} acts on uint8 images {self.obs_shape}, got {image.dtype} {tuple(image.shape)}")
        if self.proprio_encoder is not None:
            if proprio is None:
                raise ValueError("model.proprio=true but the observation has no proprioceptive state")
            proprio = torch.as_tensor(proprio, dtype=torch.float32, device=device)[None]
        else:
            proprio = None
        if state is None or first:
            latent, prev = self.rssm.initial(1, device), torch.zeros(1, self.action_dim, device=device)
        else:
            latent, prev = state
        post, _ = self.rssm.obs_step(latent, prev, self.encode(self.images(image[None]), proprio), sample=sample)
        return post

    @torch.no_grad()
    def decode_states(self, state: State) -> torch.Tensor:
        """Decoded frames (uint8 [..., C, H, W]) of latent states [..., ...]."""
        return postprocess_image(self._decoder()(self.rssm.feat(state)))

    def _decoder(self) -> nn.Module:
        if self.decoder is None:
            raise ValueError("this world model reads no images (model.image=false): it has no frames to decode")
        return self.decoder
