"""Networks of the world model family: conv image encoder/decoder (Dreamer V1 / PlaNet layout),
dense MLPs, proprioception encoder/decoder and an inverse-dynamics model on embeddings.

Convolutions run in channels_last memory format: on CPU (oneDNN) this is about twice as fast as
NCHW for these 4x4/stride-2 convolutions, and on GPU it is what cuDNN prefers for bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vmil.dense import Dense, linear

# Image sizes the conv stacks below are laid out for: the number of stride-2 layers (the encoder
# ends at 2x2) and the decoder's kernels (each output side is (in - 1) * 2 + kernel).
SUPPORTED_SIZES = (32, 64)
ENCODER_LAYERS = {32: 3, 64: 4}  # 32 -> 15 -> 6 -> 2; 64 -> 31 -> 14 -> 6 -> 2
DECODER_KERNELS = {32: (6, 6), 64: (5, 6, 6)}  # from 5x5: 32 <- 14 <- 5; 64 <- 30 <- 13 <- 5


def _check_size(name: str, image_size: int) -> None:
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"{name} supports image sizes {SUPPORTED_SIZES}, got {image_size}; "
                         f"set env.image_size to one of them")


def mlp(in_dim: int, out_dim: int, units: int, layers: int, act: type[nn.Module] = nn.ELU,
        layer_norm: bool = False) -> nn.Sequential:
    """``layers`` hidden layers of ``units`` with ``act``, then a linear output of ``out_dim``;
    ``layer_norm`` normalises each hidden layer before its activation (Dreamer V2/V3's heads)."""
    if layers < 0 or units <= 0:
        raise ValueError(f"mlp needs layers >= 0 and units > 0, got layers={layers}, units={units}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [Dense(dim, units), *([nn.LayerNorm(units)] if layer_norm else []), act()]
        dim = units
    mods.append(Dense(dim, out_dim))
    return nn.Sequential(*mods)


def preprocess_image(obs: torch.Tensor) -> torch.Tensor:
    """uint8 [..., C, H, W] in [0, 255] -> float in [-0.5, 0.5] (Dreamer's convention), laid out
    channels-last in memory (strides of [..., H, W, C]) so that the convs read it without a copy and
    the reconstruction loss compares tensors of the same layout (mixed layouts are ~10x slower)."""
    if obs.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 [..., C, H, W], got dtype {obs.dtype}")
    nd = obs.dim()
    to_last = (*range(nd - 3), nd - 2, nd - 1, nd - 3)
    to_first = (*range(nd - 3), nd - 1, nd - 3, nd - 2)
    hwc = obs.permute(*to_last).contiguous()  # the uint8 copy is 4x cheaper than a float one
    return hwc.float().div_(255.0).sub_(0.5).permute(*to_first)


def postprocess_image(image: torch.Tensor) -> torch.Tensor:
    """Float [-0.5, 0.5] -> uint8 [0, 255] (clipped), e.g. for decoded frames."""
    return ((image.detach().float() + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


class PatchConv2d(nn.Conv2d):
    """A stride-2 conv with few output positions (the encoder's last layer: 6x6 -> 2x2) run on CPU as
    one matmul over its input patches, stacked by slicing: oneDNN reaches ~75-100 GFLOP/s on this
    layer, the matmul and its two backward matmuls 2-3x that (15-23 + 39-58 against 34 + 66-88 ms
    at 800x128x6x6 -> 256x2x2). Same FLOPs, same parameters as nn.Conv2d. The matmul goes through
    vmil.dense (oneDNN on AMD CPUs: 58 against 104 ms forward + backward at that size)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        n, k = x.shape[0], self.kernel_size[0]
        rows, cols = (x.shape[2] - k) // 2 + 1, (x.shape[3] - k) // 2 + 1
        pixels = x.permute(0, 2, 3, 1)  # [n, h, w, c]: a view of a channels_last tensor
        patches = torch.stack([pixels[:, 2 * i:2 * i + k, 2 * j:2 * j + k] for i in range(rows)
                               for j in range(cols)], 1)  # [n, rows*cols, k, k, c]
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)  # matches (k, k, c)
        out = linear(patches.reshape(n * rows * cols, -1), weight, self.bias)
        return out.reshape(n, rows, cols, self.out_channels).permute(0, 3, 1, 2)


class ConvEncoder(nn.Module):
    """Images -> flat embedding: 4x4 stride-2 convs with widths depth*(1, 2, 4, 8) down to 2x2.
    64x64 takes all four (at depth 32: 256 channels at 2x2, a 1024-d embedding); 32x32 the first
    three (at depth 32: a 512-d embedding, at about a quarter of the FLOPs)."""

    def __init__(self, channels: int, image_size: int = 64, depth: int = 32, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        _check_size("ConvEncoder", image_size)
        if depth <= 0 or channels <= 0:
            raise ValueError(f"ConvEncoder needs depth > 0 and channels > 0, got depth={depth}, channels={channels}")
        self.channels, self.image_size = channels, image_size
        widths = (depth, 2 * depth, 4 * depth, 8 * depth)[:ENCODER_LAYERS[image_size]]
        mods: list[nn.Module] = []
        prev = channels
        for i, w in enumerate(widths):
            last = i == len(widths) - 1  # 6x6 -> 2x2
            mods += [PatchConv2d(prev, w, 4) if last else StrideTwoConv2d(prev, w, 4), act(inplace=True)]
            prev = w
        self.net = nn.Sequential(*mods)
        self.out_dim = widths[-1] * 2 * 2
        self.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """float [..., C, H, W] (preprocessed) -> [..., out_dim]."""
        lead = image.shape[:-3]
        if image.shape[-3:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"ConvEncoder expects images [..., {self.channels}, {self.image_size}, "
                             f"{self.image_size}], got {tuple(image.shape)}")
        x = image.reshape(-1, *image.shape[-3:]).contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(*lead, self.out_dim)


class _StrideTwoConv(torch.autograd.Function):
    """A stride-2 conv or transposed conv (no padding) whose backward takes the bias gradient as a
    plain sum: oneDNN computing it with the weight gradient costs 10-60 ms per layer at 800 frames
    (58 ms on the 64->32 transposed conv, 2 threads), the sum 1-4 ms. ``phases`` (transposed, even
    kernel 2m): the forward as one stride-1 m x m conv writing the four output phases as channels,
    then a pixel shuffle -- output pixel (2i+p, 2j+q) sums input (i-u, j-v) times weight tap
    (2u+p, 2v+q), u, v < m."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, transposed: bool,
                phases: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.transposed = transposed
        if not phases:
            conv = F.conv_transpose2d if transposed else F.conv2d
            return conv(x, weight, bias, stride=2)
        cin, cout, k, _ = weight.shape
        m = k // 2
        taps = torch.tensor([[2 * (m - 1 - u) + p for u in range(m)] for p in range(2)], device=weight.device)
        kernel = weight[:, :, taps][:, :, :, :, taps]  # [cin, cout, p, u, q, v]
        kernel = kernel.permute(1, 2, 4, 0, 3, 5).reshape(cout * 4, cin, m, m)
        z = F.conv2d(x, kernel.contiguous(memory_format=torch.channels_last),
                     None if bias is None else bias.repeat_interleave(4), padding=m - 1)
        return F.pixel_shuffle(z, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [2, 2], [0, 0], [1, 1], ctx.transposed, [0, 0], 1, [need_x, need_w, False])
        return grad_x, grad_w, grad.sum((0, 2, 3)) if need_b else None, None, None


class StrideTwoConv2d(nn.Conv2d):
    """nn.Conv2d(in, out, kernel, stride=2) (same parameters and maths); on CPU through
    :class:`_StrideTwoConv` for its cheaper bias gradient."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return _StrideTwoConv.apply(x, self.weight, self.bias, False, False)


class StrideTwoConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d(in, out, kernel, stride=2) (same parameters and maths); on CPU through
    :class:`_StrideTwoConv` for its cheaper bias gradient. ``phases`` (even kernels; the decoder's
    image layer): oneDNN's transposed conv with 3 output channels reaches ~35 GFLOP/s, the phase
    conv (12 output channels) 2.5x that (51-57 against 135-141 ms at 800x32x30x30 -> 3x64x64). The
    phase conv also multiplies the padding's zeros at the border, so it executes (and torch's FLOP
    counter counts) 14% more FLOPs than the transposed conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, phases: bool = False):
        if phases and kernel_size % 2:
            raise ValueError(f"the phase conv needs an even kernel, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, stride=2)
        self.phases = phases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return _StrideTwoConv.apply(x, self.weight, self.bias, True, self.phases)


class ConvDecoder(nn.Module):
    """Latent features -> mean image (unit-variance Gaussian likelihood), the mirror of
    :class:`ConvEncoder`: dense to 32*depth at 1x1, then transposed convs 5, 5, 6, 6 (stride 2) for
    64x64 (widths 4d, 2d, d, C) or 5, 6, 6 for 32x32 (widths 2d, d, C).

    The first transposed conv reads a 1x1 input, so it is a dense layer to 5x5 outputs and runs as
    one (with a bias per output position): a matmul is ~5x faster on CPU than this degenerate
    transposed conv."""

    def __init__(self, feat_dim: int, channels: int, image_size: int = 64, depth: int = 32,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        _check_size("ConvDecoder", image_size)
        kernels = DECODER_KERNELS[image_size]
        widths = [depth * 2 ** i for i in reversed(range(len(kernels)))] + [channels]  # e.g. 4d, 2d, d, C
        self.channels, self.image_size, self.first_width = channels, image_size, widths[0]
        self.fc = Dense(feat_dim, 32 * depth)
        self.first = Dense(32 * depth, widths[0] * 5 * 5)  # = ConvTranspose2d(32d, w0, 5, stride 2) on 1x1
        self.first_act = act(inplace=True)
        mods: list[nn.Module] = []
        for i, k in enumerate(kernels):
            last = i == len(kernels) - 1
            mods.append(StrideTwoConvTranspose2d(widths[i], widths[i + 1], k, phases=last and k % 2 == 0))
            if i < len(kernels) - 1:
                mods.append(act(inplace=True))
        self.net = nn.Sequential(*mods)
        self.to(memory_format=torch.channels_last)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """[..., feat_dim] -> mean image [..., C, H, W] in the preprocessed range."""
        lead = feat.shape[:-1]
        x = self.first_act(self.first(self.fc(feat.reshape(-1, feat.shape[-1]))))
        # [N, 5*5*w0] laid out (y, x, channel) is already a channels_last [N, w0, 5, 5] tensor.
        x = x.reshape(-1, 5, 5, self.first_width).permute(0, 3, 1, 2)
        x = self.net(x)
        return x.reshape(*lead, self.channels, self.image_size, self.image_size)


class ProprioEncoder(nn.Module):
    """Proprioceptive state -> a small embedding that is concatenated to the image embedding."""

    def __init__(self, state_dim: int, out_dim: int, units: int, layers: int):
        super().__init__()
        self.state_dim, self.out_dim = state_dim, out_dim
        self.net = mlp(state_dim, out_dim, units, layers)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"ProprioEncoder expects states [..., {self.state_dim}], got {tuple(state.shape)}")
        return self.net(state)


class InverseDynamics(nn.Module):
    """(embedding_t, embedding_t+1) -> the action taken at t, squashed to [-1, 1].

    Embeddings come straight from the encoder and do not depend on actions, so a model trained on
    the agent's own transitions can label observation-only expert transitions."""

    def __init__(self, embed_dim: int, action_dim: int, units: int, layers: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.net = mlp(2 * embed_dim, action_dim, units, layers)

    def forward(self, embed: torch.Tensor, next_embed: torch.Tensor) -> torch.Tensor:
        if embed.shape != next_embed.shape or embed.shape[-1] != self.embed_dim:
            raise ValueError(f"InverseDynamics expects two [..., {self.embed_dim}] embeddings, got "
                             f"{tuple(embed.shape)} and {tuple(next_embed.shape)}")
        return torch.tanh(self.net(torch.cat([embed, next_embed], -1)))
