"""VMIL's configuration: world model, behaviour, discriminator, and the agent's own settings
(batches, exploration, observation-only demos). Presets: ``configs/algo/vmil.yaml``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imitation.latent_discriminator import DiscriminatorConfig
from vmil.config import ConfigError, doc
from world_model.behavior import BehaviorConfig
from world_model.model import ModelConfig


@dataclass(frozen=True)
class Config:
    model: ModelConfig = doc(ModelConfig(), "World model (RSSM, encoder, decoder, KL).")
    behavior: BehaviorConfig = doc(BehaviorConfig(), "Imagination and actor-critic.")
    disc: DiscriminatorConfig = doc(DiscriminatorConfig(), "Latent discriminator and reward.")
    batch_size: int = doc(25, "Agent sequences per update. The world model trains on these and the expert "
                              "sequences in one batch (batch_size + expert_batch_size).")
    seq_len: int = doc(50, "Sequence length (agent and expert).")
    expert_batch_size: int = doc(25, "Expert sequences per update: the discriminator's real transitions, and "
                                     "part of the world model's batch.")
    grad_clip: float = doc(100.0, "Gradient norm clip for every optimiser; 0 disables it.")
    expl_noise: float = doc(0.3, "Std of Gaussian noise added to the actor's sampled action in the env.")
    expl_decay: int = doc(0, "Env steps over which the exploration noise halves; 0 keeps it constant.")
    expl_min: float = doc(0.0, "Lower bound of the decayed exploration noise.")
    expert_actions: Literal["infer", "zeros"] = doc(
        "infer", "For demos without actions: infer = label expert transitions with an inverse-dynamics "
                 "model trained on agent data; zeros = zero actions, expert sequences left out of the KL.")
    model_warmup: int = doc(0, "First updates that train only the world model (and inverse dynamics): the "
                               "discriminator and the actor read its latents, and chasing a latent space that "
                               "does not yet reconstruct the frames only adds noise (Dreamer pretrains too).")
    imagine_from: Literal["agent", "both"] = doc(
        "agent", "Posterior states the imagined rollouts start from: agent = the agent batch's (Dreamer); both = the "
                 "agent's and the expert's. Expert starts show the actor the states it should reach (e.g. resting "
                 "on a goal), which its own replay holds rarely early on; they double the imagination cost.")
    idm_units: int = doc(256, "Hidden units of the inverse-dynamics model.")
    idm_layers: int = doc(2, "Hidden layers of the inverse-dynamics model.")
    idm_lr: float = doc(3e-4, "Inverse-dynamics learning rate.")
    idm_scale: float = doc(1.0, "Weight of the inverse-dynamics loss.")
    idm_encoder_grad: bool = doc(False, "Let the inverse-dynamics loss train the image encoder too (an auxiliary "
                                        "that makes the embedding carry what the actions change).")
    openloop_context: int = doc(5, "Frames the open-loop prediction strip conditions on.")
    openloop_steps: int = doc(20, "Frames shown in the open-loop strip (context included).")
    amp: Literal["none", "bf16"] = doc("none", "Autocast the update's forward passes to bf16 (CPU with "
                                               "avx512_bf16, or GPU).")
    compile: bool = doc(False, "torch.compile the world-model and imagination forward passes (GPU).")

    def __post_init__(self) -> None:
        for name in ("batch_size", "expert_batch_size", "idm_units", "idm_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ConfigError(f"agent.seq_len must be >= 2 (transitions need two frames), got {self.seq_len}")
        for name in ("grad_clip", "expl_noise", "expl_decay", "expl_min", "idm_layers", "model_warmup", "idm_scale"):
            if getattr(self, name) < 0:
                raise ConfigError(f"agent.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.openloop_context < self.openloop_steps:
            raise ConfigError(f"agent.openloop_context must be in [1, openloop_steps), got {self.openloop_context}")
