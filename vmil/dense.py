"""Dense layers whose large CPU matmuls run on oneDNN instead of the BLAS.

Why: torch's fp32 ``addmm`` on CPU calls MKL's sgemm, and MKL picks its kernels by CPU vendor: on
AMD processors with AVX-512 (Zen 4/5) it runs its AVX2 path, about half of what the cores do. oneDNN
(torch's convolution library) dispatches on the instruction set itself. Measured on this project's
2-core AMD EPYC (Zen 5), 2 threads: a 2048^3 matmul 178 GFLOP/s through MKL, 385 as a oneDNN 1x1
convolution; a 784x400 @ 400x400 layer 183 against 365 forward, 185 against 342 for the input
gradient, 180 against 262-292 for the weight gradient.

A matrix [N, C] in row-major memory *is* a channels_last image [1, C, 1, N] (N pixels, C channels),
so ``x @ W^T`` is a 1x1 convolution of that image with W as [out, in, 1, 1]: no copies. The weight
gradient ``g^T @ x`` contracts over N, so there N plays the channels, in chunks of 2048 rows
(one convolution over all rows of 11760 fell to 154 GFLOP/s, chunks keep 260).

Only large enough layers are routed (``MIN_ROWS``, ``MIN_FEATURES``): a 16-row step of the RSSM's
filter or a 1-unit output is faster, and bit-for-bit unchanged, on the BLAS. Nor is anything routed
with one torch thread: torch then runs a 1x1 convolution of one image on its own (BLAS) path, not
oneDNN's, and both libraries measured 85-95 GFLOP/s on one thread here, so routing would only
change the rounding. Results equal F.linear up to float rounding (a different summation order).
``set_dense_backend("blas")`` turns the routing off for the whole process (the runner sets it from
``run.dense_backend``, whose default "auto" is :func:`machine_dense_backend`: on an Intel Xeon with
AVX-512 and AMX, MKL runs its own AVX-512 kernels and the paper-preset update was 1.02-1.13x faster on
the BLAS, so "auto" keeps the BLAS on Intel CPUs and routes to oneDNN elsewhere).

Known cost: a custom Function's ``needs_input_grad`` says which inputs require grad, not which ones
an ``autograd.grad(..., inputs)`` call asks for, so a gradient penalty w.r.t. a discriminator's
input also computes the routed layers' weight gradients (0.3 of the paper update's 310 GFLOP).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("onednn", "blas")
CHOICES = ("auto", *BACKENDS)  # "auto": machine_dense_backend()
MIN_ROWS = 256
MIN_FEATURES = 32
GRAD_WEIGHT_CHUNK = 2048

_backend = "onednn"


def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...) from /proc/cpuinfo; "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: no /proc
        pass
    return ""


def machine_dense_backend(vendor: str | None = None) -> str:
    """The backend "auto" picks: the BLAS on Intel CPUs (MKL dispatches its best kernels there), oneDNN
    elsewhere (on AMD, MKL runs AVX2 kernels at about half of what AVX-512 cores do). Chosen by vendor, not
    by timing at start-up, so that one machine always gets the same backend and the same rounding."""
    vendor = cpu_vendor() if vendor is None else vendor
    return "blas" if vendor == "GenuineIntel" else "onednn"


def set_dense_backend(name: str) -> None:
    """'onednn' routes large fp32 CPU matmuls of :func:`linear` through oneDNN, 'blas' keeps F.linear,
    'auto' takes :func:`machine_dense_backend`."""
    global _backend
    if name not in CHOICES:
        raise ValueError(f"dense backend must be one of {CHOICES}, got {name!r}")
    _backend = machine_dense_backend() if name == "auto" else name


def dense_backend() -> str:
    return _backend


@contextlib.contextmanager
def using_dense_backend(name: str) -> Iterator[None]:
    """:func:`set_dense_backend` for a block, then back to the previous backend."""
    previous = _backend
    set_dense_backend(name)
    try:
        yield
    finally:
        set_dense_backend(previous)


def _as_image(m: torch.Tensor) -> torch.Tensor:
    """[N, C] row-major -> the same memory viewed as a channels_last [1, C, 1, N] image."""
    return m.view(1, 1, *m.shape).permute(0, 3, 1, 2)


def _from_image(image: torch.Tensor) -> torch.Tensor:
    """[1, C, 1, N] -> [N, C]: a view for a channels_last image (what oneDNN returns here)."""
    return image.permute(0, 2, 3, 1).reshape(image.shape[3], image.shape[1])


def _matmul_t_image(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a [N, K] @ b[M, K]^T (+ bias) as a oneDNN 1x1 convolution -> the [1, M, 1, N] image."""
    return F.conv2d(_as_image(a.contiguous()), b.reshape(b.shape[0], b.shape[1], 1, 1), bias)


def onednn_matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [N, K] @ b[M, K]^T -> [N, M] on oneDNN (no autograd Function: for the backward and the
    benchmark's peak)."""
    return _from_image(_matmul_t_image(a, b))


def _grad_weight(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad [N, M]^T @ x [N, K] -> [M, K], the rows N as channels of a [1, N, 1, K] image, in chunks."""
    grad, x = grad.contiguous(), x.contiguous()
    total = None
    for start in range(0, x.shape[0], GRAD_WEIGHT_CHUNK):
        xs, gs = x[start:start + GRAD_WEIGHT_CHUNK], grad[start:start + GRAD_WEIGHT_CHUNK]
        n = xs.shape[0]
        part = F.conv2d(xs.view(1, n, 1, x.shape[1]), gs.t().reshape(grad.shape[1], n, 1, 1))
        part = part.reshape(grad.shape[1], x.shape[1])
        total = part if total is None else total + part  # out of place: stays twice differentiable
    return total


class _OneDnnLinear(torch.autograd.Function):
    """x [N, in] @ W^T + b -> [1, out, 1, N], the forward and both gradients as oneDNN convolutions. The backward
    is built from differentiable ops, so gradient penalties (create_graph=True) work through it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        # The image itself, not the [N, out] view of it: autograd forbids in-place ops (the ReLU
        # after the decoder's dense layers) on a view made inside a Function.
        return _matmul_t_image(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = _from_image(grad)
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = onednn_matmul_t(grad, weight.t()) if need_x else None
        grad_w = _grad_weight(grad, x) if need_w else None
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def routes_to_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` sends this product to oneDNN (see the module's docstring). Never while
    torch.compile traces: the compiler picks its own kernels, and the size test on symbolic shapes
    would stop it (inductor: "cannot determine truth value of Relational")."""
    return (_backend == "onednn" and not torch.compiler.is_compiling() and x.device.type == "cpu"
            and torch.get_num_threads() > 1
            and x.dtype == torch.float32
            and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu") and min(weight.shape) >= MIN_FEATURES
            and x.numel() >= MIN_ROWS * x.shape[-1] > 0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with large fp32 CPU products on oneDNN."""
    if not routes_to_onednn(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    out = _from_image(_OneDnnLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias))
    return out.reshape(*lead, weight.shape[0])


class Dense(nn.Linear):
    """nn.Linear (same parameters and state dict) through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class GRUCell(nn.GRUCell):
    """nn.GRUCell (same parameters and state dict) whose two gate products go through :func:`linear`
    when they are large; small batches keep torch's own cell. Same equations as torch's:
    r, z = sigmoid(.), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h."""

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None or x.dim() != 2 or not routes_to_onednn(x, self.weight_ih):
            return super().forward(x, h)
        gi = linear(x, self.weight_ih, self.bias_ih)
        gh = linear(h, self.weight_hh, self.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)
