"""`vmil bench vmil`: its keys, batch composition, FLOP scaling, heap and dense-backend modes, and peak."""
from __future__ import annotations

import platform

import pytest
import torch


def test_bench_reports_its_keys(monkeypatch):
    from vmil.bench import vmil as bench_module
    from vmil.bench.vmil import bench_vmil

    # A preset's model_warmup must not turn the timed updates into world-model-only ones.
    out = bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05,
                     overrides=("agent.model_warmup=100",))
    for key in ("ms_per_update", "gflop_per_update", "achieved_gflops", "peak_gflops", "peak_fraction"):
        assert out[key] > 0, key
    assert set(out["parts"]) == {"world_model", "imagination", "actor", "critic", "discriminator"}
    # The parts' FLOPs add up to the update's (nothing outside them computes), each at its own rate.
    assert set(out["parts_gflop"]) == set(out["parts"]) and min(out["parts_gflop"].values()) > 0
    assert sum(out["parts_gflop"].values()) == pytest.approx(out["gflop_per_update"], rel=1e-3)
    world = out["parts"]["world_model"]
    assert out["parts_gflops"]["world_model"] == pytest.approx(out["parts_gflop"]["world_model"] / world * 1000,
                                                               rel=0.01)
    assert out["image_size"] == 64
    # batch counts the world model's sequences: half expert by default, or as many as asked.
    assert (out["batch"], out["agent_batch"], out["expert_batch"]) == (2, 1, 1)
    three = bench_vmil("smoke", batch=4, expert_batch=3, seq=4, updates=1, warmup=0, peak_seconds=0.05)
    assert (three["agent_batch"], three["expert_batch"]) == (1, 3)
    half = bench_vmil("smoke", batch=4, seq=4, updates=3, warmup=0, peak_seconds=0.05)
    assert (half["agent_batch"], half["expert_batch"]) == (2, 2)
    # ms_per_update is the median update, and the FLOP rate is read at it.
    each = half["ms_each_update"]
    assert len(each) == 3 and half["ms_per_update"] == pytest.approx(sorted(each)[1], abs=0.06)
    assert half["achieved_gflops"] == pytest.approx(half["gflop_per_update"] / half["ms_per_update"] * 1000, rel=0.02)
    # Every part of the update is linear in the sequences: twice the batch, twice the FLOPs; and the
    # world model (most of the work) sees `batch` sequences however they split.
    assert half["gflop_per_update"] == pytest.approx(2 * out["gflop_per_update"], rel=0.02)
    assert three["gflop_per_update"] == pytest.approx(half["gflop_per_update"], rel=0.05)
    with pytest.raises(ValueError, match="at least one agent and one expert"):
        bench_vmil("smoke", batch=4, expert_batch=4, seq=4, updates=1, warmup=0, peak_seconds=0.05)
    small = bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05, image_size=32)
    assert small["image_size"] == 32 and small["gflop_per_update"] < out["gflop_per_update"]
    # The heap setting training uses is the benchmark's default; 'compare' times both in one process.
    assert out["host_heap_retained"] is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    if out["host_heap_retained"]:
        both = bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05, heap="compare")
        assert both["heap_speedup"] == pytest.approx(both["ms_per_update_default_heap"] / both["ms_per_update"],
                                                     rel=0.01)
    with pytest.raises(ValueError, match="heap must be one of"):
        bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05, heap="keep")
    # The peak is the fastest matmul library's; dense layers run as training runs them, or both are timed.
    assert out["peak_gflops"] == max(out["peak_gflops_by_library"].values())
    assert set(out["peak_gflops_by_library"]) == ({"blas", "onednn"} if torch.backends.mkldnn.is_available()
                                                  else {"blas"})
    from vmil.dense import machine_dense_backend
    assert out["dense_backend"] == machine_dense_backend(), "by default the dense layers run as training's default"
    # Whichever library is faster on this machine sets the peak.
    for peaks in ({"blas": 100.0, "onednn": 200.0}, {"blas": 200.0, "onednn": 100.0}):
        monkeypatch.setattr(bench_module, "matmul_peaks", lambda *a, peaks=peaks, **k: peaks)
        assert bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, count_flops=False)["peak_gflops"] == 200.0
    monkeypatch.undo()
    dense = bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05, dense="compare")
    assert dense["dense_backend"] == "onednn", "'compare' reports training's backend last"
    assert dense["dense_speedup"] == pytest.approx(dense["ms_per_update_blas_dense"] / dense["ms_per_update"],
                                                   rel=0.01)
    assert bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05,
                      dense="blas")["dense_backend"] == "blas"
    from vmil.dense import dense_backend
    assert dense_backend() == "onednn", "the benchmark must leave the process's dense backend as it found it"
    with pytest.raises(ValueError, match="not both"):
        bench_vmil("smoke", batch=2, seq=4, updates=1, warmup=0, peak_seconds=0.05, heap="compare", dense="compare")


def test_sustained_gflops_survives_a_stall_before_its_first_call(monkeypatch):
    """On a busy machine the process can be descheduled between starting the calibration clock and
    the first call; the calibration still times at least one call (it divided by zero before)."""
    from vmil.bench import vmil as bench

    clock = iter(range(0, 10_000, 1))  # every reading one second later: the calibration window is gone at once
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    calls = []
    gflops = bench._sustained_gflops(lambda: calls.append(1), 2e9, torch.device("cpu"), seconds=0.05)
    assert gflops > 0 and len(calls) >= 2 + 1 + 3
