"""`vmil bench replay`: replay memory per frame and sampler / augmentation throughput.

All numbers come from one run so their ratios are comparable on a shared machine; trust the
absolute rates only when ``cpu_time_over_wall`` is close to the number of torch threads (CPU).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import numpy as np
import torch

from vmil.base import EnvSpec
from vmil.data.augment import random_shift
from vmil.data.episode import Episode
from vmil.data.replay import Replay
from vmil.nn import resolve_device


def _synthetic_episode(rng: np.random.Generator, spec: EnvSpec, steps: int) -> Episode:
    return Episode(
        obs=rng.integers(0, 256, size=(steps + 1, *spec.obs_shape), dtype=np.uint8),
        action=rng.uniform(-1, 1, size=(steps, spec.action_dim)).astype(np.float32),
        reward=rng.standard_normal(steps).astype(np.float32),
        terminal=np.zeros(steps, dtype=np.bool_),
        meta=spec.metadata(),
    )


def _filled_replay(image_size: int, episodes: int, steps: int, device: torch.device, seed: int) -> Replay:
    spec = EnvSpec(env_id="bench:synthetic", obs_shape=(3, image_size, image_size), action_dim=6)
    replay = Replay(spec, capacity_frames=episodes * (steps + 1), device=device)
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        replay.add_episode(_synthetic_episode(rng, spec, steps))
    return replay


def _rate(fn: Callable[[], Any], device: torch.device, seconds: float, min_iters: int) -> dict[str, float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (allocator, caches)
    sync()
    iters = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while iters < min_iters or time.perf_counter() - wall0 < seconds:
        fn()
        iters += 1
        if iters % 8 == 0:
            sync()
    sync()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"per_s": iters / wall, "wall": wall, "cpu": cpu}


def bench_replay(device: str | torch.device = "cpu", image_size: int = 84, seq_image_size: int = 64,
                 episodes: int = 8, episode_steps: int = 500, seconds: float = 2.0, min_iters: int = 5,
                 seed: int = 0) -> dict[str, Any]:
    """Measure the replay on ``device``: sequence batches B=16,T=50 at ``seq_image_size``;
    transition batches B=256, k=3, n=3 and random shift (pad 4) of their stacks at ``image_size``."""
    dev = resolve_device(device) if isinstance(device, str) else device
    seq = _filled_replay(seq_image_size, episodes, episode_steps, dev, seed)
    trans = _filled_replay(image_size, episodes, episode_steps, dev, seed + 1)
    gen_seq = torch.Generator(device=dev).manual_seed(seed)
    gen_tr = torch.Generator(device=dev).manual_seed(seed + 1)
    gen_aug = torch.Generator(device=dev).manual_seed(seed + 2)
    stacks = trans.sample_transitions(256, 3, 3, 0.99, gen_tr).obs

    timings = {
        "sequence": _rate(lambda: seq.sample_sequences(16, 50, gen_seq), dev, seconds, min_iters),
        "transition": _rate(lambda: trans.sample_transitions(256, 3, 3, 0.99, gen_tr), dev, seconds, min_iters),
        "random_shift": _rate(lambda: random_shift(stacks, 4, gen_aug), dev, seconds, min_iters),
    }
    wall = sum(t["wall"] for t in timings.values())
    cpu = sum(t["cpu"] for t in timings.values())
    return {
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "image_size": image_size,
        "seq_image_size": seq_image_size,
        "stored_frames": trans.num_frames,
        "bytes_per_frame": trans.bytes_per_frame,
        "frame_bytes": trans.frame_bytes,
        "sequence_batches_per_s": timings["sequence"]["per_s"],
        "sequence_batch": {"batch": 16, "length": 50, "image_size": seq_image_size},
        "transition_batches_per_s": timings["transition"]["per_s"],
        "transition_batch": {"batch": 256, "frame_stack": 3, "nstep": 3, "image_size": image_size},
        "random_shift_batches_per_s": timings["random_shift"]["per_s"],
        "random_shift_batch": {"shape": list(stacks.shape), "pad": 4},
        "cpu_time_over_wall": cpu / wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="vmil bench replay", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--image-size", type=int, default=84, help="transition / random-shift frames")
    parser.add_argument("--seq-image-size", type=int, default=64, help="sequence frames")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_replay(device=args.device, image_size=args.image_size, seq_image_size=args.seq_image_size,
                          seconds=args.seconds)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
