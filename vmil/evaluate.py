"""Evaluation with the deterministic policy: true return mean/std and the expert-normalised score."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmil.base import Env, Obs, TimeStep


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    successes: list[bool] = field(default_factory=list)  # empty when the env reports no success flag
    frames: list[np.ndarray] = field(default_factory=list)  # HWC uint8 frames of the first episode(s)
    # Of the deterministic steps, where a planning agent (VMIL's behavior.plan_*) replaced the actor's action.
    plan_replaced_fraction: float | None = None
    episodes: list[Any] = field(default_factory=list)  # whole episodes (vmil.data.episode.Episode), if asked

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))

    def summary(self, expert_return: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "episodes": len(self.returns),
            "return_mean": self.return_mean,
            "return_std": self.return_std,
            "length_mean": float(np.mean(self.lengths)),
            "expert_return": expert_return,
            "normalized_score": normalized_score(self.return_mean, expert_return),
        }
        if self.successes:
            out["success_rate"] = float(np.mean(self.successes))
        if self.plan_replaced_fraction is not None:
            out["plan_replaced_fraction"] = self.plan_replaced_fraction
        return out


def normalized_score(value: float, expert_return: float | None) -> float | None:
    """Return divided by the demos' mean return; None when the expert's return is not positive
    (the ratio means nothing for tasks with negative rewards)."""
    if expert_return is None or not math.isfinite(expert_return) or expert_return <= 0:
        return None
    return float(value / expert_return)


class FrameStack:
    """The last k frames, channels concatenated; an episode starts with k copies of its first frame
    (the replay samplers stack the same way)."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"frame_stack must be >= 1, got {k}")
        self.k = k
        self.frames: deque[np.ndarray] = deque(maxlen=k)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        self.frames.clear()
        self.frames.extend([frame] * self.k)
        return self.stacked()

    def push(self, frame: np.ndarray) -> np.ndarray:
        self.frames.append(frame)
        return self.stacked()

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.frames, axis=0) if self.k > 1 else self.frames[0]


def observe(stack: FrameStack, ts: TimeStep) -> Obs:
    """Push the new frame and build what the agent sees."""
    image = stack.reset(ts.obs) if ts.first else stack.push(ts.obs)
    return Obs(image=image, proprio=ts.state, first=bool(ts.first))


def to_video_frame(obs: np.ndarray, min_size: int = 256) -> np.ndarray:
    """CHW uint8 (1 or 3 channels) -> HWC RGB, upscaled by an integer factor for viewing."""
    frame = obs.transpose(1, 2, 0)
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    factor = max(1, min_size // max(frame.shape[0], 1))
    if factor > 1:
        frame = frame.repeat(factor, axis=0).repeat(factor, axis=1)
    return np.ascontiguousarray(frame)


def run_episodes(env: Env, agent: Any, frame_stack: int, episodes: int, explore: bool = False,
                 video_episodes: int = 0, keep_episodes: bool = False) -> EvalResult:
    """Roll out ``episodes`` full episodes; frames of the first ``video_episodes`` are kept, and with
    ``keep_episodes`` every episode whole (observations, actions, true rewards)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    builder = None
    if keep_episodes:
        from vmil.data.episode import EpisodeBuilder

        builder = EpisodeBuilder(env.spec, meta={"source": "evaluation"})
    stack = FrameStack(frame_stack)
    result = EvalResult(returns=[], lengths=[])
    planned = dict(getattr(agent, "plan_counts", {}))
    for i in range(episodes):
        ts = env.reset()
        if builder is not None:
            builder.start(ts)
        state = None
        total, length, success = 0.0, 0, None
        while True:
            if i < video_episodes:
                result.frames.append(to_video_frame(ts.obs))
            action, state = agent.act(observe(stack, ts), state, explore)
            ts = env.step(action)
            if builder is not None:
                builder.add(action, ts)
            total += ts.reward
            length += 1
            if "success" in ts.info:
                success = bool(success) or bool(ts.info["success"])
            if ts.last:
                break
        if i < video_episodes:
            result.frames.append(to_video_frame(ts.obs))
        result.returns.append(total)
        result.lengths.append(length)
        if builder is not None:
            result.episodes.append(builder.finish())
        if success is not None:
            result.successes.append(success)
    if planned:
        steps = agent.plan_counts["steps"] - planned["steps"]
        if steps:
            result.plan_replaced_fraction = (agent.plan_counts["replaced"] - planned["replaced"]) / steps
    return result


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """mp4 (H.264 via imageio-ffmpeg); macro_block_size=1 keeps odd frame sizes as they are."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    return path


# Settings ``vmil eval`` may change: they choose how the deterministic policy acts, not what was trained.
EVAL_OVERRIDE_PREFIXES = ("agent.behavior.plan_",)


def evaluate_checkpoint(path: str | Path, episodes: int, video: str | Path | None = None,
                        device: str = "cpu", seed: int | None = None,
                        overrides: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """``vmil eval``: load a run directory's last checkpoint (or a checkpoint file), roll out the
    deterministic policy on a fresh env and report returns. ``overrides`` (``key=value``) may change
    the acting settings in :data:`EVAL_OVERRIDE_PREFIXES`, e.g. turn on decision-time planning."""
    import torch

    from vmil import envs
    from vmil.checkpoint import load_checkpoint
    from vmil.config import ConfigError, RunConfig, flatten, from_dict, merge, parse_override
    from vmil.nn import resolve_device, seed_everything
    from vmil.registry import algo_module
    from vmil.rundir import EVAL_SEED_OFFSET, checkpoint_path, demo_info_from_meta

    file = checkpoint_path(Path(path))
    payload = load_checkpoint(file)
    module = algo_module(payload["algo"])
    data = payload["config"]
    for text in overrides:
        change = parse_override(text)
        keys = [key for key in flatten(change) if not key.startswith(EVAL_OVERRIDE_PREFIXES)]
        if keys:
            raise ConfigError(f"vmil eval cannot change {', '.join(keys)}: the checkpoint was trained with it; only "
                              f"the acting settings {', '.join(p + '*' for p in EVAL_OVERRIDE_PREFIXES)} may change")
        data = merge(data, change)
    cfg: RunConfig = from_dict(RunConfig, data, agent_cls=module.Config)
    seed = cfg.seed + EVAL_SEED_OFFSET if seed is None else seed  # the training evaluations' env seed
    seed_everything(seed)
    dev = resolve_device(device)
    env = envs.from_config(cfg.env, seed)
    try:
        info = demo_info_from_meta(payload["meta"])
        agent = module.build(cfg.agent, env.spec, dev, info)
        agent.load_state_dict(payload["agent"])
        with torch.no_grad():
            result = run_episodes(env, agent, agent.request.frame_stack, episodes,
                                  video_episodes=1 if video else 0)
    finally:
        env.close()
    out = {"checkpoint": str(file), "algo": payload["algo"], "env": cfg.env.id, "seed": seed,
           "env_steps": payload["counters"].get("env_steps", 0), "updates": payload["counters"].get("updates", 0),
           **result.summary(payload["meta"].get("expert_return"))}
    if video:
        out["video"] = str(write_video(result.frames, video))
    return out
