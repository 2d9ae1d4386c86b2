"""Pixel networks of Relational Mimic (Blondé et al.) and its baselines, in one place.

- :class:`NatureCNN` (Mnih et al. 2015) and :class:`ImpalaLarge` (Espeholt et al. 2018): the baselines
  of the paper's Table 2.
- :class:`RelationalAgent` (Table 1): one convolution (8x8 / 4; 4x4 / 2 on frames under 64 pixels), one 3-D max-pool over space *and* the frame
  stack's features, pre-activation residual blocks (three 3x3 convolutions each), a second, feature-only
  max-pool, two more residual blocks. ``relational=True`` inserts the relational block after the first
  residual block (the Non-Local Agent); without it, it is the Local Agent.
- :class:`RewardNet` (Table 3): three convolutions with leaky ReLU, relational block, convolution,
  relational block, convolution, dense; spectral norm optional on every layer (RM uses it together
  with the gradient penalty).
- :class:`RelationalBlock` (Figure 2): theta / phi / g 1x1 embeddings (theta and phi at half of g's
  channels), a softmax over the exponentiated dot products of every pair of positions, an output
  embedding and a residual connection; no batch norm.

The paper lost its channel counts and input size; the defaults here are chosen so that the counts of
``vmil bench rm`` land near Table 2 (see its JSON). Every encoder maps standardised float frames
``[B, k*C, H, W]`` to ``[B, out_dim]`` features; the dense layers that follow carry LayerNorm (the
paper uses layer normalisation in every dense layer).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ENCODERS = ("nature", "impala", "local", "nonlocal", "small")


class RelationalBlock(nn.Module):
    """Self-attention over every spatial position of a feature map (the frame stack sits on channels,
    so positions are space-time): y = x + W(softmax(theta^T phi) g)."""

    def __init__(self, channels: int, inner: int | None = None, sn: bool = False):
        super().__init__()
        inner = inner or max(channels // 2, 1)
        key = max(inner // 2, 1)
        wrap = _sn if sn else (lambda m: m)
        self.theta = wrap(nn.Conv2d(channels, key, 1))
        self.phi = wrap(nn.Conv2d(channels, key, 1))
        self.g = wrap(nn.Conv2d(channels, inner, 1))
        self.out = wrap(nn.Conv2d(inner, channels, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """softmax_j(theta_i . phi_j) for every pair of positions: [B, N, N], N = H * W."""
        theta = self.theta(x).flatten(2)  # [B, K, N]
        phi = self.phi(x).flatten(2)
        return torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g = self.g(x).flatten(2)  # [B, G, N]
        y = g @ self.attention(x).transpose(1, 2)  # y_i = sum_j a_ij g_j
        return x + self.out(y.reshape(b, -1, h, w))


def _sn(module: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module)


class ResidualBlock(nn.Module):
    """Three 3x3 convolutions with ReLU pre-activations and a skip connection (Table 1(b))."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.convs:
            y = conv(F.relu(y))
        return x + y


class FeaturePool(nn.Module):
    """MaxPool3D over (features, height, width): the channel axis is pooled like a depth axis."""

    def __init__(self, features: int, space: int):
        super().__init__()
        self.pool = nn.MaxPool3d((features, space, space))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.unsqueeze(1)).squeeze(1)


def _flat_dim(net: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(net(torch.zeros(1, *in_shape)).flatten(1).shape[1])


class _Encoder(nn.Module):
    """convs -> flatten -> Linear -> LayerNorm -> ReLU."""

    out_dim: int

    def _finish(self, convs: nn.Module, in_shape: tuple[int, int, int], hidden: int) -> None:
        self.convs = convs
        self.fc = nn.Sequential(nn.Linear(_flat_dim(convs, in_shape), hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x).flatten(1))


class NatureCNN(_Encoder):
    """Mnih et al. 2015: 8x8/4 (32), 4x4/2 (64), 3x3/1 (64), dense 512."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 32, hidden: int = 512):
        super().__init__()
        c = width
        convs = nn.Sequential(nn.Conv2d(in_shape[0], c, 8, 4), nn.ReLU(), nn.Conv2d(c, 2 * c, 4, 2), nn.ReLU(),
                              nn.Conv2d(2 * c, 2 * c, 3, 1), nn.ReLU())
        self._finish(convs, in_shape, hidden)


class _ImpalaSection(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.res = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                                               nn.Conv2d(cout, cout, 3, padding=1)) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))
        for block in self.res:
            x = x + block(x)
        return x


class ImpalaLarge(_Encoder):
    """Espeholt et al. 2018: three sections (16, 32, 32 channels) of conv, 3x3/2 max-pool and two
    residual blocks (15 convolutions), dense 256."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 16, hidden: int = 256):
        super().__init__()
        chans = (width, 2 * width, 2 * width)
        sections, cin = [], in_shape[0]
        for c in chans:
            sections.append(_ImpalaSection(cin, c))
            cin = c
        self._finish(nn.Sequential(*sections, nn.ReLU()), in_shape, hidden)


class RelationalAgent(_Encoder):
    """Table 1(a): the Local Agent (``relational=False``) or the Non-Local Agent."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 32, hidden: int = 512,
                 relational: bool = True, kernel: int = 0, stride: int = 0):
        super().__init__()
        c = width
        if not kernel:  # 8x8 / 4 on the paper's frames; 4x4 / 2 on small ones (32x32 -> 15x15)
            kernel, stride = (8, 4) if min(in_shape[1:]) >= 64 else (4, 2)
        if c % 4:
            raise ValueError(f"RelationalAgent width must be a multiple of 4 (two feature pools), got {c}")
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], c, kernel, stride), nn.ReLU(), FeaturePool(2, 2),
                                   ResidualBlock(c // 2)]
        if relational:  # g at a quarter of the block's channels: ~200 parameters, as Table 2's difference
            layers.append(RelationalBlock(c // 2, inner=max(c // 8, 2)))
        layers += [ResidualBlock(c // 2), nn.ReLU(), FeaturePool(2, 1), ResidualBlock(c // 4),
                   ResidualBlock(c // 4), nn.ReLU()]
        self._finish(nn.Sequential(*layers), in_shape, hidden)


class SmallCNN(_Encoder):
    """Two strided 3x3 convolutions: tests and CPU presets on small frames."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 16, hidden: int = 64):
        super().__init__()
        convs = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, 2), nn.ReLU(), nn.Conv2d(width, width, 3, 2), nn.ReLU())
        self._finish(convs, in_shape, hidden)


def make_encoder(name: str, in_shape: tuple[int, int, int], width: int = 0, hidden: int = 0) -> _Encoder:
    """An encoder by name (``ENCODERS``); width / hidden 0 keep the network's own defaults."""
    builders: dict[str, Callable[..., _Encoder]] = {
        "nature": NatureCNN, "impala": ImpalaLarge, "small": SmallCNN,
        "local": lambda s, **kw: RelationalAgent(s, relational=False, **kw),
        "nonlocal": lambda s, **kw: RelationalAgent(s, relational=True, **kw)}
    if name not in builders:
        raise ValueError(f"unknown encoder '{name}' (valid: {', '.join(ENCODERS)})")
    kwargs = {k: v for k, v in (("width", width), ("hidden", hidden)) if v}
    return builders[name](in_shape, **kwargs)


class RewardNet(nn.Module):
    """Table 3: D(stacked states) -> one logit. Three 4x4/2 convolutions with leaky ReLU (0.2),
    relational block, 3x3 convolution, relational block, 3x3 convolution, dense (LayerNorm) -> 1.
    ``relational=False`` drops both blocks (RM's baseline, GAIfO); ``sn`` wraps every layer in
    spectral normalisation (and the relational blocks' embeddings)."""

    def __init__(self, in_shape: tuple[int, int, int], width: int = 16, hidden: int = 64,
                 relational: bool = True, sn: bool = True, slope: float = 0.2):
        super().__init__()
        wrap = _sn if sn else (lambda m: m)
        c = width
        act = lambda: nn.LeakyReLU(slope)  # noqa: E731
        layers: list[nn.Module] = [wrap(nn.Conv2d(in_shape[0], c, 4, 2, 1)), act(),
                                   wrap(nn.Conv2d(c, 2 * c, 4, 2, 1)), act(),
                                   wrap(nn.Conv2d(2 * c, 2 * c, 4, 2, 1)), act()]
        if relational:
            layers.append(RelationalBlock(2 * c, sn=sn))
        layers += [wrap(nn.Conv2d(2 * c, 2 * c, 3, 1, 1)), act()]
        if relational:
            layers.append(RelationalBlock(2 * c, sn=sn))
        layers += [wrap(nn.Conv2d(2 * c, c, 3, 1, 1)), act()]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(wrap(nn.Linear(_flat_dim(self.convs, in_shape), hidden)), nn.LayerNorm(hidden),
                                  act(), wrap(nn.Linear(hidden, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, 1]."""
        return self.head(self.convs(x).flatten(1))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(module: nn.Module, in_shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass on one input (torch's counter: 2 per multiply-add of convolutions,
    dense layers and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *in_shape))
    return float(counter.get_total_flops())
