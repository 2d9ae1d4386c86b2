"""`vmil bench vmil`: where the time of one VMIL update goes, and how close it runs to the machine's peak.

One full update = world model (+ inverse dynamics) on one batch of agent and expert sequences,
imagination from its posterior states (the preset's ``imagine_from``), actor, critic, discriminator.
``batch`` counts the world model's sequences, as a Dreamer batch does, so a VMIL update at 16x50
does the world-model work of a Dreamer update at 16x50; half of them are expert sequences unless
``expert_batch`` says otherwise. Batches are synthetic (random frames,
observation-only expert data, the default use); convolution and matmul costs do not depend on the
pixel values. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one update; the
fp32 matmul peak (the faster of the BLAS and oneDNN, ``peak_gflops_by_library``) is measured in the
same process with the same threads, so the ratio is
meaningful on a shared machine only when ``cpu_wall_ratio`` is close to ``threads``.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
import types
from typing import Any

import torch

from vmil.base import EnvSpec, SequenceBatch
from vmil.dense import dense_backend, onednn_matmul_t, set_dense_backend, using_dense_backend


HEAP_MODES = ("retain", "default", "compare")
DENSE_MODES = ("auto", "onednn", "blas", "compare")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sustained_gflops(fn, flop: float, device: torch.device, seconds: float) -> float:
    """GFLOP/s of ``fn`` (best of three timed rounds after a calibration of ``seconds`` / 4)."""
    for _ in range(2):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    iters = 0
    while iters == 0 or time.perf_counter() - t0 < seconds / 4:  # at least one call, even when descheduled
        fn()
        iters += 1
    _sync(device)
    per = max((time.perf_counter() - t0) / iters, 1e-9)
    reps = max(1, int(seconds / 3 / per))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return flop / best / 1e9


def matmul_peaks(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                 seconds: float = 1.0) -> dict[str, float]:
    """Sustained GFLOP/s of an n x n matmul by each library torch has for it: 'blas' (``a @ b``:
    MKL's sgemm on x86 CPUs) and, on CPU, 'onednn' (the same product as a 1x1 convolution, see
    vmil.dense). They differ by 2x on AMD CPUs with AVX-512, where MKL runs its AVX2 kernels."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    kernels = {"blas": lambda: a @ b}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        # a @ b^T: the same FLOPs, and b as it is (a transposed view as the weight runs ~25% slower).
        kernels["onednn"] = lambda: onednn_matmul_t(a, b)
    return {name: _sustained_gflops(fn, 2 * n ** 3, device, seconds) for name, fn in kernels.items()}


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                       seconds: float = 1.0) -> float:
    """The machine's matmul peak: the fastest of :func:`matmul_peaks`."""
    return max(matmul_peaks(device, dtype, n, seconds).values())


def synthetic_batch(batch: int, seq: int, spec: EnvSpec, device: torch.device, actions: bool,
                    generator: torch.Generator) -> SequenceBatch:
    B, T = batch, seq
    obs = torch.randint(0, 256, (B, T, *spec.obs_shape), dtype=torch.uint8, generator=generator)
    action = torch.rand(B, T, spec.action_dim, generator=generator) * 2 - 1 if actions else None
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    if action is not None:
        action[:, 0] = 0
    state = torch.randn(B, T, spec.state_dim, generator=generator) if spec.state_dim else None
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return SequenceBatch(to(obs), to(action), torch.zeros(B, T, device=device), to(is_first),
                         torch.zeros(B, T, dtype=torch.bool, device=device), to(state))


def bench_vmil(preset: str = "paper", batch: int | None = 16, seq: int | None = 50, *, expert_batch: int | None = None,
               updates: int = 5, warmup: int = 1, device: str = "cpu", threads: int = 0, amp: str = "none",
               compile: bool = False, action_dim: int = 6, count_flops: bool = True,
               overrides: tuple[str, ...] = (), peak_seconds: float = 1.0, image_size: int | None = None,
               heap: str = "retain", dense: str = "auto") -> dict[str, Any]:
    """Time ``updates`` full VMIL updates (after ``warmup``) at a preset's model sizes; the median
    update gives ``ms_per_update`` and the FLOP rate, ``parts`` (ms) are means over the updates, with
    each part's FLOPs in ``parts_gflop`` and its rate in ``parts_gflops``.

    ``batch``/``seq`` (None: 16 and 50) set the world model's batch, of which ``expert_batch`` (None:
    half) are expert sequences and the rest agent ones. ``amp='bf16'`` autocasts the forward passes;
    ``compile`` wraps them in torch.compile. ``heap``: 'retain' reuses freed host memory as training
    does (``retain_host_memory``), 'default' leaves the C library's default, 'compare' times the
    updates under the default first, then retained, in this one process (``heap_speedup``). ``dense``:
    'auto' runs the large dense layers as training does by default (``run.dense_backend``: the BLAS on
    Intel CPUs, oneDNN elsewhere), 'onednn' / 'blas' on that library, 'compare' times the BLAS first,
    then oneDNN (``dense_speedup``)."""
    from imitation import vmil
    from vmil.config import resolve
    from vmil.nn import resolve_device, retain_freed_host_memory

    batch = 16 if batch is None else batch
    seq = 50 if seq is None else seq
    expert_batch = batch // 2 if expert_batch is None else expert_batch
    agent_batch = batch - expert_batch
    if expert_batch < 1 or agent_batch < 1:
        raise ValueError(f"the batch of {batch} sequences must hold at least one agent and one expert sequence "
                         f"(expert_batch={expert_batch}); use batch >= 2 and 1 <= expert_batch < batch")
    if heap not in HEAP_MODES:
        raise ValueError(f"heap must be one of {HEAP_MODES}, got {heap!r}")
    if dense not in DENSE_MODES:
        raise ValueError(f"dense must be one of {DENSE_MODES}, got {dense!r}")
    if heap == "compare" and dense == "compare":
        raise ValueError("compare one thing per run: heap='compare' or dense='compare', not both")
    with using_dense_backend("onednn" if dense == "compare" else dense):
        if threads > 0:
            torch.set_num_threads(threads)
        heap_retained = heap == "retain" and retain_freed_host_memory()
        dev = resolve_device(device)
        run_cfg = resolve("vmil", vmil.Config, None, preset, list(overrides))
        # model_warmup 0: a preset's warm-up (world model only) would leave the timed updates partial.
        cfg = dataclasses.replace(run_cfg.agent, batch_size=agent_batch, seq_len=seq, expert_batch_size=expert_batch,
                                  amp=amp, compile=compile, model_warmup=0)
        size = image_size or run_cfg.env.image_size
        spec = EnvSpec("bench:synthetic", (3, size, size), action_dim)
        demos = types.SimpleNamespace(directory="synthetic", obs_shape=spec.obs_shape, has_actions=False, action_dim=0)
        torch.manual_seed(0)
        agent = vmil.build(cfg, spec, dev, demos)
        gen = torch.Generator().manual_seed(0)
        agent_seqs = synthetic_batch(agent_batch, seq, spec, dev, True, gen)
        expert = synthetic_batch(expert_batch, seq, spec, dev, False, gen)

        for i in range(warmup):
            agent.update(agent_seqs, expert, i)
        gflop, part_gflop = float("nan"), {}
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            agent.part_flops = {}
            with counter:
                agent.update(agent_seqs, expert, warmup)
            gflop = counter.get_total_flops() / 1e9
            part_gflop = {k: v / 1e9 for k, v in agent.part_flops.items()}
            agent.part_flops = None

        step = warmup + 1

        def timed_updates() -> tuple[list[float], dict[str, float], float, float]:
            nonlocal step
            agent.timings = {}
            _sync(dev)
            each_ms = []
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(updates):
                t0 = time.perf_counter()
                agent.update(agent_seqs, expert, step)
                step += 1
                _sync(dev)
                each_ms.append((time.perf_counter() - t0) * 1000)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            parts = {k: round(v / updates, 1) for k, v in agent.timings.items()}
            agent.timings = None
            return each_ms, parts, wall, cpu

        if dense == "compare":
            set_dense_backend("blas")  # timed first; the FLOPs above were counted as training runs
        each_ms, parts, wall, cpu = timed_updates()
        comparison: dict[str, Any] = {}
        if "compare" in (heap, dense):
            # The other setting was timed; switch to training's and time the same updates again.
            if heap == "compare":
                heap_retained = retain_freed_host_memory()
                if not heap_retained:
                    raise RuntimeError("heap='compare' needs Linux with glibc (mallopt); nothing to compare here")
                agent.update(agent_seqs, expert, step)  # the first update under the new setting grows the heap
                step += 1
                other, speedup = "default_heap", "heap_speedup"
            else:
                set_dense_backend("onednn")
                other, speedup = "blas_dense", "dense_speedup"
            other_ms = statistics.median(each_ms)
            each_ms, parts, wall, cpu = timed_updates()
            comparison = {f"ms_per_update_{other}": round(other_ms, 1),
                          speedup: round(other_ms / statistics.median(each_ms), 3)}

        n = 2048 if peak_seconds >= 0.5 else 512  # quick checks (tests) use a small matrix
        peaks = matmul_peaks(dev, torch.float32, n=n, seconds=peak_seconds)
        peak = max(peaks.values())
        # The median: on a shared machine one update can lose a second to another tenant, and a mean
        # would carry that into the ratio; every update's time is reported next to it.
        ms = statistics.median(each_ms)
        achieved = gflop / (ms / 1000)
        result: dict[str, Any] = {
            "ms_per_update": round(ms, 1),
            "ms_each_update": [round(t, 1) for t in each_ms],
            "gflop_per_update": float(f"{gflop:.4g}"),  # significant digits: smoke sizes are ~0.05
            "achieved_gflops": float(f"{achieved:.4g}"),
            "peak_gflops": round(peak, 1),
            "peak_gflops_by_library": {k: round(v, 1) for k, v in peaks.items()},
            "peak_fraction": round(achieved / peak, 3),
            "parts": parts,
            # Where the fraction of peak is lost: each part's FLOPs and its FLOP rate at its mean time.
            "parts_gflop": {k: float(f"{v:.4g}") for k, v in part_gflop.items()},
            "parts_gflops": {k: float(f"{v / (parts[k] / 1000):.4g}") for k, v in part_gflop.items()
                             if parts.get(k, 0) > 0},
            "preset": preset, "image_size": size, "batch": batch, "agent_batch": agent_batch,
            "expert_batch": expert_batch, "seq": seq, "imagine_from": cfg.imagine_from,
            "horizon": cfg.behavior.horizon, "amp": amp, "compile": compile, "device": str(dev),
            "threads": torch.get_num_threads(), "updates": updates,
            "cpu_wall_ratio": round(cpu / wall, 2) if dev.type == "cpu" else None,
            "host_heap_retained": heap_retained, "dense_backend": dense_backend(), **comparison,
            "torch": torch.__version__,
        }
        if amp == "bf16":
            bf16 = matmul_peak_gflops(dev, torch.bfloat16, n=n, seconds=peak_seconds)
            result["peak_bf16_gflops"] = round(bf16, 1)
            result["peak_fraction_bf16"] = round(achieved / bf16, 3)
        return result
