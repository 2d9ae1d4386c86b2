"""How fast an env produces pixel frames: default vs fast rendering, one vs two worker processes.

All measurements run back to back in one call, so their ratios are comparable even on a busy
machine. Each carries ``cpu_time_over_wall``: CPU seconds (all threads of the processes involved)
per wall second. A timing is trustworthy when that ratio is close to the number of threads the
measurement should keep busy (about 1 per process with fast rendering; MuJoCo's default
rendering through llvmpipe uses more than one thread); a much lower ratio means the processes were
waiting for a CPU that other work held.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _random_actions(spec, rng: np.random.Generator, n: int | None = None):
    shape = (spec.action_dim,) if n is None else (n, spec.action_dim)
    if spec.discrete:
        return rng.integers(spec.action_dim, size=None if n is None else n)
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


def _measure_single(env_id: str, steps: int, warmup: int, seed: int, **make_kwargs: Any) -> dict[str, float]:
    from vmil.envs import make

    env = make(env_id, seed=seed, **make_kwargs)
    rng = np.random.default_rng(seed)
    try:
        ts = env.reset()  # the first frame creates the GL context: keep it out of the timing
        for _ in range(warmup):
            ts = env.reset() if ts.last else env.step(_random_actions(env.spec, rng))
        frames = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while frames < steps:
            ts = env.reset() if ts.last else env.step(_random_actions(env.spec, rng))
            frames += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        env.close()
    return {"fps": frames / wall, "ms_per_frame": 1000 * wall / frames, "cpu_time_over_wall": cpu / wall,
            "frames": frames, "wall_s": wall}


def _measure_vector(env_id: str, steps: int, warmup: int, seed: int, workers: int,
                    **make_kwargs: Any) -> dict[str, float]:
    from vmil.envs.vector import VectorEnv

    rng = np.random.default_rng(seed)
    with VectorEnv.from_id(env_id, workers, seed=seed, num_workers=workers, **make_kwargs) as venv:
        venv.reset()
        for _ in range(warmup):
            venv.step(_random_actions(venv.spec, rng, workers))
        cpu_workers0 = sum(venv.worker_cpu_times())
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(steps):  # every call steps each env once (or resets one whose episode ended)
            venv.step(_random_actions(venv.spec, rng, workers))
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0 + sum(venv.worker_cpu_times()) - cpu_workers0
    frames = steps * workers
    return {"fps": frames / wall, "ms_per_frame": 1000 * wall / frames, "cpu_time_over_wall": cpu / wall,
            "frames": frames, "wall_s": wall}


def bench_env(env_id: str = "dmc:cheetah_run", image_size: int = 84, steps: int = 300,
              action_repeat: int = 2, warmup: int = 20, seed: int = 0, workers: int = 2) -> dict[str, Any]:
    """Frames per second of ``env_id`` (one rendered frame per agent step, ``action_repeat`` physics
    steps each) with default rendering, fast rendering, and fast rendering in ``workers`` worker
    processes (one env each). The defaults are the issue's measurement: dmc:cheetah_run at 84x84,
    1 vs 2 workers. Returns a JSON-serialisable dict; the keys of the vectorised measurement name
    the worker count (``fps_fast_2workers`` with the default)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    common = {"image_size": image_size, "action_repeat": action_repeat}
    default = _measure_single(env_id, steps, warmup, seed, fast_render=False, **common)
    fast = _measure_single(env_id, steps, warmup, seed, fast_render=True, **common)
    vec = _measure_vector(env_id, steps, warmup, seed, workers, fast_render=True, **common)
    w = f"{workers}workers"
    return {
        "env_id": env_id,
        "fps_default": default["fps"],
        "fps_fast": fast["fps"],
        f"fps_fast_{w}": vec["fps"],
        "ms_per_frame_default": default["ms_per_frame"],
        "ms_per_frame_fast": fast["ms_per_frame"],
        f"ms_per_frame_fast_{w}": vec["ms_per_frame"],
        "cpu_time_over_wall_default": default["cpu_time_over_wall"],
        "cpu_time_over_wall_fast": fast["cpu_time_over_wall"],
        f"cpu_time_over_wall_fast_{w}": vec["cpu_time_over_wall"],
        "speedup_fast_over_default": fast["fps"] / default["fps"],
        f"speedup_{w}_over_1": vec["fps"] / fast["fps"],
        "settings": {
            "image_size": image_size, "action_repeat": action_repeat, "steps": steps, "warmup": warmup,
            "seed": seed, "workers": workers, "cpu_count": os.cpu_count(),
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS", ""), "mujoco": _version("mujoco"),
            "python": platform.python_version(), "machine": platform.machine(),
            "fast_render": "model.vis.quality.shadowsize=0, offsamples=0",
            "vectorised": f"VectorEnv, {workers} spawned processes, one env each, frames in shared memory",
        },
    }
