"""Small shared pieces for every learner: one optimisation step, Adam, timing of an update's parts,
Gaussian policy densities, schedules, device choice, seeding, the host heap's reuse of freed memory."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import platform
import random
import time
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)) of a diagonal Gaussian, summed over the last dim."""
    return (-0.5 * ((x - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """sum log |d tanh(u) / du| = sum 2 (log 2 - u - softplus(-2u)), stable for large |u|."""
    return (2 * (math.log(2.0) - u - F.softplus(-2 * u))).sum(-1)


def optimize(loss: torch.Tensor, opt: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
             clip: float | None = None) -> dict[str, float]:
    """Backward, clip, step. A non-finite loss or gradient skips the step (parameters and
    optimiser state stay untouched) and reports ``skipped=1`` so the runner can count it.

    With several learners (``torch.distributed``, see :mod:`vmil.rl.distributed`) the gradients are
    averaged over them before the clip, and all of them skip when any one's loss is non-finite."""
    from vmil.rl import distributed

    params = [p for p in params if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss.detach()).all())
    if distributed.active():
        if finite:
            loss.backward()
        if not distributed.average_gradients(params, finite):
            opt.zero_grad(set_to_none=True)
            return {"grad_norm": float("nan"), "skipped": 1.0}
    elif not finite:
        return {"grad_norm": float("nan"), "skipped": 1.0}
    else:
        loss.backward()
    max_norm = clip if clip and clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return {"grad_norm": float("nan"), "skipped": 1.0}
    opt.step()
    return {"grad_norm": float(norm), "skipped": 0.0}


@functools.lru_cache(maxsize=1)
def _fused_adam_available() -> bool:
    try:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)
        return True
    except (RuntimeError, TypeError):
        return False


def adam(params: Iterable[torch.nn.Parameter], lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) on CPU and CUDA where this torch has it, else foreach."""
    params = list(params)
    device = params[0].device.type if params else "cpu"
    if device in ("cpu", "cuda") and _fused_adam_available():
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, name: str, device: torch.device,
          flops: dict[str, float] | None = None) -> Iterator[None]:
    """Adds the block's wall time (ms) to ``timings[name]`` and, with ``flops``, its FLOPs (torch's
    flop counter) to ``flops[name]``; None turns either off. CUDA work is asynchronous, so the device
    is synchronised at both ends."""
    if timings is None and flops is None:  # the training path: nothing to measure
        yield
        return
    with contextlib.ExitStack() as stack:
        counter = None
        if flops is not None:
            from torch.utils.flop_counter import FlopCounterMode

            counter = stack.enter_context(FlopCounterMode(display=False))
        if timings is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        yield
        if timings is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0) * 1000
    if counter is not None:
        flops[name] = flops.get(name, 0.0) + counter.get_total_flops()


@torch.no_grad()
def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, every parameter in one foreach call (Polyak
    averaging: slow critic targets, the actor's weight average)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def metrics_to_host(metrics: dict[str, torch.Tensor | float], device: torch.device) -> dict[str, float]:
    """Scalar metrics (tensors on ``device`` or numbers) as floats, in one device -> host transfer
    instead of one synchronisation per metric."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32).to(device).reshape(()) for v in metrics.values()])
    return dict(zip(metrics.keys(), values.tolist()))


def weighted_sum(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The total of a named loss dict under a weights dict with the same names."""
    if set(losses) != set(weights):
        raise KeyError(f"loss names {sorted(losses)} and weight names {sorted(weights)} differ")
    return sum(weights[k] * losses[k] for k in losses)


def linear_schedule(step: int, start: float, end: float, steps: int) -> float:
    """start -> end linearly over ``steps`` (0: constant start), then end."""
    if steps <= 0:
        return start
    frac = min(max(step / steps, 0.0), 1.0)
    return start + frac * (end - start)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit CUDA request without CUDA fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; use device=cpu or device=auto")
    return device


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below this come from the heap and stay there when freed; larger ones (a replay's storage)
# are still mapped and unmapped on their own. An int, as mallopt takes.
HEAP_RETAIN_BYTES = 1 << 30


def retain_freed_host_memory() -> bool:
    """Keep freed CPU blocks up to HEAP_RETAIN_BYTES in the process heap for the next allocation;
    returns whether it was applied (glibc only).

    Why: glibc maps every block above its mmap threshold (at most 32 MB) afresh and unmaps it on
    free, so the kernel faults in and zeroes each large activation again on every update: 200-300k
    page faults per VMIL update at 16x50 frames, ~1/4 s of system time. The heap keeps its peak
    size instead (the memory is reused, not leaked: RSS stays flat over updates)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_RETAIN_BYTES)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, HEAP_RETAIN_BYTES))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
