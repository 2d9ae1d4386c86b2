"""Shared pieces of every learner (vmil.nn): Adam, timing and FLOPs of an update's parts, metrics to
the host, the host heap's reuse of freed memory."""
from __future__ import annotations

import platform
import resource

import pytest
import torch
from torch import nn

from vmil.nn import adam, metrics_to_host, retain_freed_host_memory, timed


def test_shared_update_helpers():
    """adam: fused on CPU with the given eps; timed: adds each block's ms under its name, nothing when
    off; metrics_to_host: floats for tensors and numbers alike."""
    w = nn.Parameter(torch.ones(3))
    opt = adam([w], 0.1, eps=1e-5)
    group = opt.param_groups[0]
    assert group["fused"] and group["eps"] == 1e-5 and group["lr"] == 0.1
    (w ** 2).sum().backward()
    opt.step()
    assert torch.allclose(w, torch.full((3,), 0.9))  # Adam's first step moves by lr against the gradient's sign
    timings: dict[str, float] = {}
    for _ in range(2):
        with timed(timings, "part", torch.device("cpu")):
            sum(range(1000))
    with timed(None, "part", torch.device("cpu")):
        pass
    assert set(timings) == {"part"} and timings["part"] > 0
    flops: dict[str, float] = {}
    a = torch.ones(4, 8)
    for _ in range(2):  # a part entered twice adds up: 2 x (2 * 4 * 8 * 3)
        with timed(None, "matmul", torch.device("cpu"), flops):
            a @ torch.ones(8, 3)
    assert flops == {"matmul": 2 * 2 * 4 * 8 * 3}
    out = metrics_to_host({"a": torch.tensor(1.5), "b": 2, "c": torch.tensor([3.0], dtype=torch.bfloat16)},
                          torch.device("cpu"))
    assert out == {"a": 1.5, "b": 2.0, "c": 3.0} and all(type(v) is float for v in out.values())


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_retained_heap_reuses_freed_blocks_without_page_faults():
    """Blocks above glibc's largest mmap threshold (32 MB) are mapped afresh on every allocation by
    default, so each one is faulted in again; retained, freed blocks are reused from the heap."""
    assert retain_freed_host_memory()
    pages = (64 << 20) // 4096
    counts = []
    for _ in range(30):
        before = _page_faults()
        block = torch.empty(64 << 20, dtype=torch.uint8)
        block.fill_(1)
        counts.append(_page_faults() - before)
        del block
    # The first allocations may grow the heap (unless earlier tests left a large free block): glibc's
    # aligned allocation does not fit a freed block of exactly its size, so the heap can grow for a
    # few cycles until freed blocks coalesce (at most 8 seen); from then on every cycle reuses memory
    # that is already mapped. By default each of the 30 cycles faults in all its pages.
    assert sum(counts[-10:]) < pages // 4, counts
