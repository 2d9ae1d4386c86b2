"""`vmil bench rm`: the paper's networks counted beside Relational Mimic's Table 2 (parameters and
forward MFLOPs per network), and the time of one RM iteration (discriminator step, rewards, PPO
epochs) with its GFLOP and the fraction of the machine's matmul peak it reaches.

Counts are for the policy network of each architecture (encoder, its dense layer with LayerNorm, and
a Gaussian head for Hopper's 3 actions) on one grayscale stack of ``frame_stack`` frames of
``image_size`` pixels. FLOPs are torch's counter: 2 per multiply-add of convolutions, dense layers and
matrix products (the attention of the relational block included); pooling, activations and
normalisation are not counted. The paper does not say how it counted, nor its channel counts or input
size: see the module docstring of ``vmil/rl/networks.py``.

The iteration is timed on a synthetic rollout (random frames; costs do not depend on pixel values).
Trust absolute timings only when ``cpu_wall_ratio`` is close to ``threads``.
"""
from __future__ import annotations

import dataclasses
import time
import types
from typing import Any

import torch

from vmil.base import EnvSpec

# Table 2 of the paper: parameters, forward FLOPs, convolutional depth.
PAPER = {"nature": (1.276e6, 16.62e6, 3), "impala": (0.5002e6, 84.52e6, 15),
         "local": (0.4575e6, 13.71e6, 13), "nonlocal": (0.4577e6, 13.84e6, 15)}


def network_table(image_size: int = 84, frame_stack: int = 4, action_dim: int = 3) -> dict[str, Any]:
    """Parameters and forward MFLOPs of each policy network and of the reward network, with the paper's."""
    from vmil.rl.networks import RelationalBlock, RewardNet, count_params, forward_flops, make_encoder
    from vmil.rl.ppo import PolicyNet

    shape = (frame_stack, image_size, image_size)
    out: dict[str, Any] = {}
    for name, (params, flops, depth) in PAPER.items():
        net = PolicyNet(make_encoder(name, shape), action_dim, False, 0.0)
        blocks = sum(isinstance(m, RelationalBlock) for m in net.modules())
        # Depth: theta / phi run beside g, so a relational block adds two layers (g, then its output).
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) - 2 * blocks
        out[name] = {"params": count_params(net), "mflops": round(forward_flops(net, shape) / 1e6, 2),
                     "conv_depth": convs, "paper_params": int(params), "paper_mflops": flops / 1e6,
                     "paper_conv_depth": depth,
                     "params_ratio": round(count_params(net) / params, 3),
                     "mflops_ratio": round(forward_flops(net, shape) / flops, 3)}
    for name, relational in (("reward_nonlocal", True), ("reward_local", False)):
        net = RewardNet(shape, relational=relational, sn=False)
        out[name] = {"params": count_params(net), "mflops": round(forward_flops(net, shape) / 1e6, 2)}
    return out


def synthetic_rollout(steps: int, envs: int, spec: EnvSpec, k: int, generator: torch.Generator):
    from vmil.rl.ppo import Rollout

    c, h, w = spec.obs_shape
    zeros = torch.zeros(steps, envs, dtype=torch.bool)
    return Rollout(obs=torch.randint(0, 256, (steps + 1, envs, k * c, h, w), dtype=torch.uint8, generator=generator),
                   action=torch.randn(steps, envs, spec.action_dim, generator=generator),
                   reward=torch.zeros(steps, envs), terminal=zeros, last=zeros, valid=~zeros)


def bench_rm(algo: str = "rm-nl-nl", image_size: int = 84, *, frame_stack: int = 4, envs: int = 8, steps: int = 32,
             epochs: int = 1, minibatches: int = 4, updates: int = 1, device: str = "cpu", threads: int = 0,
             count_flops: bool = True, peak_seconds: float = 1.0, networks: bool = True) -> dict[str, Any]:
    """Table 2's counts, then ``updates`` timed iterations of ``algo`` (paper preset networks) on a
    rollout of ``envs`` x ``steps`` with ``epochs`` x ``minibatches`` PPO steps."""
    from vmil.bench.patchail import _GlobalOnly
    from vmil.bench.vmil import _sync, matmul_peak_gflops
    from vmil.config import resolve
    from vmil.nn import resolve_device
    from vmil.registry import algo_module

    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    result: dict[str, Any] = {"networks": network_table(image_size, frame_stack)} if networks else {}
    module = algo_module(algo)
    spec = EnvSpec("bench:synthetic", (1, image_size, image_size), 3)
    cfg = resolve(algo, module.Config, "gym:Hopper-v5", "paper").agent
    cfg = dataclasses.replace(cfg, frame_stack=frame_stack, num_envs=envs, num_workers=0, rollout_steps=steps, epochs=epochs,
                              minibatches=minibatches)
    demos = types.SimpleNamespace(directory="synthetic", obs_shape=spec.obs_shape, has_actions=True, action_dim=3)
    torch.manual_seed(0)
    agent = module.build(cfg, spec, dev, demos)
    gen = torch.Generator().manual_seed(0)
    rollout = synthetic_rollout(steps, envs, spec, frame_stack, gen)
    expert = None
    if agent.request.expert_batch_size:
        from vmil.bench.patchail import synthetic_transitions

        expert = synthetic_transitions(agent.request.expert_batch_size, spec, frame_stack, dev, True, gen)
    agent.update(rollout, expert, 0)  # warm-up
    gflop = float("nan")
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _GlobalOnly()  # its module hooks break autograd.grad(create_graph=True)
        with counter:
            agent.update(rollout, expert, 1)
        gflop = counter.get_total_flops() / 1e9
    agent.timings = {}
    _sync(dev)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(updates):
        agent.update(rollout, expert, 2 + i)
    _sync(dev)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    parts = {name: round(ms / updates, 1) for name, ms in agent.timings.items()}
    peak = matmul_peak_gflops(dev, torch.float32, seconds=peak_seconds)
    ms = wall / updates * 1000
    achieved = gflop / (ms / 1000)
    result["update"] = {
        "algo": algo, "ms_per_update": round(ms, 1), "gflop_per_update": round(gflop, 2),
        "achieved_gflops": round(achieved, 1), "peak_gflops": round(peak, 1), "peak_fraction": round(achieved / peak, 3),
        "parts": parts, "rollout": f"{envs}x{steps}", "epochs": epochs, "minibatches": minibatches,
        "expert_batch": agent.request.expert_batch_size, "image_size": image_size, "frame_stack": frame_stack,
        "device": str(dev), "threads": torch.get_num_threads(), "updates": updates,
        "cpu_wall_ratio": round(cpu / wall, 2) if dev.type == "cpu" else None, "torch": torch.__version__}
    return result
