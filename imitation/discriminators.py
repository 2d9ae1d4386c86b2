"""Image and feature discriminators of the PatchAIL family, their loss, and the per-sample
gradient penalty (Liu et al. 2023, "Visual imitation learning with patch rewards").

Input convention for the image discriminators: float images in [0, 1] (``normalize_image`` turns
the learners' float [0, 255] frames into that), channels first, (s, s') frame stacks concatenated
on channels (or s alone; that choice lives in the agent). The networks centre them to
[-0.5, 0.5] internally, as the public code does with ``obs / 255 - 0.5``. On CPU the first sample
of each batch is range-checked (cheap) so [0, 255] inputs fail loudly; on GPU the check is skipped
to avoid a device sync.

``PatchDiscriminator`` output sizes (84x84 input, stride 2 then 1, padding 1 on every layer as in
the paper's ablation) and receptive fields:

    kernel 2: 46x46 patches, 8x8 RF      kernel 3: 42x42, 15x15     kernel 4: 39x39, 22x22 (default)
    kernel 5: 35x35, 29x29               kernel 8: 25x25, 50x50     one_by_one: 84x84, 1x1

Gradient penalty semantics (``gradient_penalty``): for each sample i, with x̂_i = α_i e_i +
(1 - α_i) a_i (α_i ~ U(0, 1)), gp_i = (||∇_{x̂_i} R(D(x̂_i))||_2 - 1)^2 with R the *mean* of that
sample's patch logits (default, ``patch_reduce="mean"``) or their sum (``"sum"``, the reduction the
public code differentiates: ``autograd.grad(disc(mix).sum())``). The loss adds
``gp_weight * mean_i gp_i``, gradients w.r.t. [0, 1] pixels.

Why mean is the default: the public code's penalty is not per sample (its norm is over
``grads.view(len(grads[0]), -1)``, rows of the whole batch's gradient cut by the channel count),
is divided by batch * patches and taken w.r.t. [0, 255] pixels, which together make it nearly
constant, i.e. almost no penalty. A real per-sample penalty of weight 10 on the patch *sum*
forces every patch logit to be nearly flat (the sum of P logits must be 1-Lipschitz): measured on
toy:reach (32x32, 13x13 patches, expert vs random-policy (s, s') pairs, 300 Adam steps, lr 1e-4,
batch 32), held-out reward gap / std was 1.60 without penalty, 1.57 with the mean penalty and
-0.69 (no separation, BCE stuck at 2 log 2) with the sum penalty.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.2  # LeakyReLU slope of the patch discriminator (pix2pix / the public code)
PatchReduce = Literal["sum", "mean"]


def normalize_image(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float [0, 255] frames -> float [0, 1], what the image discriminators take."""
    return x.float() / 255.0


def _init(module: nn.Module) -> None:
    """DrQ-v2 / public PatchAIL init: orthogonal weights (ReLU gain for convs), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
        nn.init.zeros_(module.bias)


def _check_image(x: torch.Tensor, channels: int, who: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{who} expects images [B, {channels}, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who} expects float images in [0, 1], got dtype {x.dtype}; "
                         "use imitation.discriminators.normalize_image(frames)")
    if x.device.type == "cpu" and x.shape[0] > 0:
        lo, hi = torch.aminmax(x[0].detach())
        if float(lo) < -1e-3 or float(hi) > 1.0 + 1e-3:
            raise ValueError(f"{who} expects float images in [0, 1], got values in [{float(lo):.3g}, "
                             f"{float(hi):.3g}]; use imitation.discriminators.normalize_image(frames)")


@dataclass(frozen=True)
class PatchGeometry:
    """Where patch (i, j) looks: input rows [i*stride - offset, i*stride - offset + receptive_field)
    (same for columns), clipped to the image."""

    receptive_field: int
    stride: int
    offset: int


class PatchDiscriminator(nn.Module):
    """Four convs [k, c1, s2, p1] [k, c2, s1, p1] [k, c3, s1, p1] [k, 1, s1, p1] with LeakyReLU
    0.2 between them, no MLP: one logit per patch, [B, 1, P, P] (39x39 for 84x84 with k = 4).
    ``one_by_one``: every conv 1x1 with stride 1 and no padding (a logit per pixel)."""

    def __init__(self, in_channels: int, kernel_size: int = 4, channels: tuple[int, ...] = (32, 64, 128),
                 one_by_one: bool = False):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels must give the first three convs' widths, e.g. (32, 64, 128); got {channels}")
        if not one_by_one and kernel_size < 2:
            raise ValueError(f"kernel_size={kernel_size}: use >= 2 (the paper: 2, 3, 4, 5, 8) or one_by_one=True")
        self.in_channels = in_channels
        k, pad = (1, 0) if one_by_one else (kernel_size, 1)
        strides = (1, 1, 1, 1) if one_by_one else (2, 1, 1, 1)
        widths = (in_channels, *channels, 1)
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], k, strides[i], pad) for i in range(4))
        self.apply(_init)
        # channels_last: ~2x faster convolutions on CPU (oneDNN), also fine on GPU.
        self.to(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.convs[0].weight.is_contiguous(memory_format=torch.channels_last):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        h, w = height, width
        for conv in self.convs:
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(f"{height}x{width} images are too small for this patch discriminator "
                             f"(kernel {self.convs[0].kernel_size[0]}); use larger images or a smaller kernel")
        return h, w

    def geometry(self) -> PatchGeometry:
        """Receptive field, total stride and offset of the patches, from the conv arithmetic."""
        rf, jump, offset = 1, 1, 0
        for conv in self.convs:
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            rf += (k - 1) * jump
            offset += p * jump
            jump *= s
        return PatchGeometry(rf, jump, offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> patch logits [B, 1, P, P]."""
        _check_image(x, self.in_channels, "PatchDiscriminator")
        self.output_shape(*x.shape[-2:])
        h = self._layout(x) - 0.5
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.leaky_relu(h, SLOPE)
        return h

    def input_gradient(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """∇_x of scale * Σ_patches D(x), per sample, differentiable w.r.t. the weights (not x).

        The network is piecewise linear in x, so this gradient is the transposed convolutions
        applied to a constant map, gated by the LeakyReLU slopes of a no-grad forward pass. This
        equals autograd's double backward almost everywhere but skips its useless work (the
        backward through the forward pass with zero second derivatives of LeakyReLU): about 1.5x
        less time for the penalty on CPU."""
        _check_image(x, self.in_channels, "PatchDiscriminator")
        x = self._layout(x.detach())
        pre, shapes = [], [x.shape]  # pre-activations: they fix the LeakyReLU slopes
        with torch.no_grad():
            h = x - 0.5
            for conv in self.convs[:-1]:
                h = conv(h)
                pre.append(h)
                shapes.append(h.shape)
                h = F.leaky_relu(h, SLOPE)
            out_hw = self.convs[-1](h).shape[-2:]
        g = self._layout(torch.full((x.shape[0], 1, *out_hw), scale, dtype=x.dtype, device=x.device))
        for i in reversed(range(len(self.convs))):
            conv = self.convs[i]
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            target = shapes[i][-2:]
            # conv_transpose can land short of the input size when the stride skipped pixels.
            pad_out = [target[d] - ((g.shape[-2 + d] - 1) * s - 2 * p + k) for d in range(2)]
            g = F.conv_transpose2d(g, conv.weight, None, conv.stride, conv.padding, output_padding=tuple(pad_out))
            if i > 0:
                # g * (1 if pre > 0 else SLOPE) in one pass; differentiable in g, pre is constant.
                g = torch.ops.aten.leaky_relu_backward(g, pre[i - 1], SLOPE, False)
        return g


class FeatureDiscriminator(nn.Module):
    """Shared-encoder AIL: an MLP on (detached) critic features -> one logit [B, 1]."""

    def __init__(self, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"FeatureDiscriminator expects features [B, {self.feature_dim}], got {tuple(x.shape)}")
        return self.net(x)


class EncoderDiscriminator(nn.Module):
    """Independent-encoder AIL: its own DrQ-style encoder (four 3x3 convs, the first stride 2,
    ReLU), a Linear + LayerNorm + tanh trunk to ``feature_dim``, then the MLP -> one logit [B, 1].
    Images as for the patch discriminator: float [0, 1], ``image_size`` x ``image_size``."""

    def __init__(self, in_channels: int, feature_dim: int = 50, hidden_dim: int = 1024, image_size: int = 84):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        c = 32
        self.convs = nn.Sequential(nn.Conv2d(in_channels, c, 3, stride=2), nn.ReLU(),
                                   nn.Conv2d(c, c, 3), nn.ReLU(), nn.Conv2d(c, c, 3), nn.ReLU(),
                                   nn.Conv2d(c, c, 3), nn.ReLU())
        side = (image_size - 3) // 2 + 1 - 6
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for the encoder; use >= 15")
        self.trunk = nn.Sequential(nn.Linear(c * side * side, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())
        self.head = FeatureDiscriminator(feature_dim, hidden_dim)
        self.apply(_init)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, "EncoderDiscriminator")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"EncoderDiscriminator was built for {self.image_size}x{self.image_size} images, "
                             f"got {x.shape[-2]}x{x.shape[-1]}; pass image_size={x.shape[-1]}")
        h = self.convs(x.contiguous(memory_format=torch.channels_last) - 0.5)
        return self.head(self.trunk(h.flatten(1)))


# ---------------------------------------------------------------------------------------------
# Loss


def _uniform(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device).to(like.device, like.dtype)


def gradient_penalty(disc: nn.Module, expert_x: torch.Tensor, agent_x: torch.Tensor,
                     generator: torch.Generator | None = None, patch_reduce: PatchReduce = "mean") -> torch.Tensor:
    """Per-sample penalty [B]: (||∇_x̂ R(D(x̂))||_2 - 1)^2 on random interpolates of paired expert
    and agent inputs, R = mean (default) or sum over each sample's outputs (module docstring). One batched
    gradient: samples never interact in these discriminators (no batch norm), so the gradient of
    the batch sum w.r.t. sample i is sample i's own gradient."""
    if expert_x.shape != agent_x.shape:
        raise ValueError(f"gradient penalty pairs expert and agent samples: shapes {tuple(expert_x.shape)} "
                         f"and {tuple(agent_x.shape)} differ; sample equal batch sizes")
    if patch_reduce not in ("sum", "mean"):
        raise ValueError(f"patch_reduce='{patch_reduce}': use 'mean' (default) or 'sum' (the public code's reduction)")
    b = expert_x.shape[0]
    alpha = _uniform(b, expert_x, generator).view(b, *([1] * (expert_x.ndim - 1)))
    mix = (alpha * expert_x.detach() + (1 - alpha) * agent_x.detach())
    if isinstance(disc, PatchDiscriminator):
        per_sample = 1
        if patch_reduce == "mean":
            p_h, p_w = disc.output_shape(*mix.shape[-2:])
            per_sample = p_h * p_w
        grad = disc.input_gradient(mix, scale=1.0 / per_sample)
    else:
        build_graph = torch.is_grad_enabled()
        with torch.enable_grad():  # also usable for monitoring under no_grad
            mix.requires_grad_(True)
            out = disc(mix).flatten(1)
            total = out.sum() if patch_reduce == "sum" else out.mean(1).sum()
            grad, = torch.autograd.grad(total, mix, create_graph=build_graph)
    norm = torch.linalg.vector_norm(grad.to(torch.promote_types(grad.dtype, torch.float32)), dim=tuple(range(1, grad.ndim)))
    return (norm - 1.0).pow(2)


def discriminator_loss(disc: nn.Module, expert_x: torch.Tensor, agent_x: torch.Tensor, gp_weight: float = 10.0,
                       generator: torch.Generator | None = None,
                       patch_reduce: PatchReduce = "mean") -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (4) per patch plus the gradient penalty:
    loss = mean BCE(D(expert), 1) + mean BCE(D(agent), 0) + gp_weight * mean_i gp_i,
    BCE averaged over samples and patches (the public code's sum / (batch * patches)). Expert and
    agent inputs go through one forward pass. Returns the loss and float metrics."""
    if expert_x.shape[1:] != agent_x.shape[1:]:
        raise ValueError(f"expert inputs {tuple(expert_x.shape)} and agent inputs {tuple(agent_x.shape)} differ")
    m = expert_x.shape[0]
    logits = disc(torch.cat([expert_x, agent_x]))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    expert_logits, agent_logits = logits[:m], logits[m:]
    losses = {
        "bce_expert": F.softplus(-expert_logits).mean(),  # -log D on expert patches
        "bce_agent": F.softplus(agent_logits).mean(),  # -log(1 - D) on agent patches
        "gp": (gradient_penalty(disc, expert_x, agent_x, generator, patch_reduce).mean() if gp_weight > 0
               else logits.new_zeros(())),
    }
    weights = {"bce_expert": 1.0, "bce_agent": 1.0, "gp": gp_weight}
    assert losses.keys() == weights.keys(), f"loss terms {sorted(losses)} vs weights {sorted(weights)}"
    loss = sum(weights[k] * losses[k] for k in losses)
    with torch.no_grad():
        values = torch.stack([
            loss.detach(), losses["bce_expert"].detach(), losses["bce_agent"].detach(), losses["gp"].detach(),
            (expert_logits > 0).to(logits.dtype).mean(), (agent_logits < 0).to(logits.dtype).mean(),
            torch.sigmoid(expert_logits).mean(), torch.sigmoid(agent_logits).mean(),
            expert_logits.mean(), agent_logits.mean()]).tolist()
    names = ("loss", "bce_expert", "bce_agent", "gp", "expert_acc", "agent_acc", "expert_d", "agent_d",
             "expert_logit", "agent_logit")
    metrics = dict(zip(names, values))
    metrics["bce"] = metrics["bce_expert"] + metrics["bce_agent"]
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# Micro-benchmark


def bench_discriminator(batch: int = 256, *, image_size: int = 84, in_channels: int = 18, kernel_size: int = 4,
                        repeats: int = 2, gp_weight: float = 10.0, device: str = "cpu") -> dict[str, float]:
    """ms per discriminator step (one forward of expert + agent, BCE, per-sample GP, backward) at
    ``batch`` expert + ``batch`` agent samples, three ways measured interleaved in one run: this
    module (channels_last, transposed-conv GP), channels_last with autograd's double backward,
    and NCHW with double backward (the public code's way). Best of ``repeats`` after a warm-up;
    ``cpu_ms_*`` is process CPU time (less sensitive than wall time to a busy machine)."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    expert = torch.rand(batch, in_channels, image_size, image_size, generator=gen).to(dev)
    agent = torch.rand(batch, in_channels, image_size, image_size, generator=gen).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def ours(disc: nn.Module) -> torch.Tensor:
        return discriminator_loss(disc, expert, agent, gp_weight)[0]

    def autograd_gp(disc: nn.Module) -> torch.Tensor:
        logits = disc(torch.cat([expert, agent]))
        bce = F.softplus(-logits[:batch]).mean() + F.softplus(logits[batch:]).mean()
        alpha = torch.rand(batch, 1, 1, 1, device=dev)
        mix = (alpha * expert + (1 - alpha) * agent).requires_grad_(True)
        grad, = torch.autograd.grad(disc(mix).sum(), mix, create_graph=True)
        return bce + gp_weight * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    fast = PatchDiscriminator(in_channels, kernel_size).to(dev)
    nchw = PatchDiscriminator(in_channels, kernel_size).to(dev, memory_format=torch.contiguous_format)
    variants = {"fast": (fast, ours), "channels_last_autograd_gp": (fast, autograd_gp),
                "nchw_autograd_gp": (nchw, autograd_gp)}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats + 1):
        for name, (disc, loss_fn) in variants.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            disc.zero_grad(set_to_none=True)
            loss_fn(disc).backward()
            sync()
            if i > 0:  # the first round warms up oneDNN's kernels
                wall[name].append(1000 * (time.perf_counter() - t0))
                cpu[name].append(1000 * (time.process_time() - c0))
    result: dict[str, float] = {"batch": float(batch), "threads": float(torch.get_num_threads())}
    for name in variants:
        result[f"ms_{name}"] = round(min(wall[name]), 1)
        result[f"cpu_ms_{name}"] = round(min(cpu[name]), 1)
    flops, h = 0.0, (image_size, image_size)
    for conv in fast.convs:  # forward FLOPs of one sample, 2 per multiply-add
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        h = ((h[0] + 2 * p - k) // s + 1, (h[1] + 2 * p - k) // s + 1)
        flops += 2 * h[0] * h[1] * conv.in_channels * conv.out_channels * k * k
    result["patches"] = float(h[0] * h[1])
    result["gflop_forward_per_sample"] = round(flops / 1e9, 4)
    result["speedup_vs_nchw_autograd"] = round(result["ms_nchw_autograd_gp"] / result["ms_fast"], 2)
    result["speedup_vs_channels_last_autograd"] = round(result["ms_channels_last_autograd_gp"] / result["ms_fast"], 2)
    return result
