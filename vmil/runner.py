"""The training loop, built from injected parts (env, agent, replays, tracker) so tests can pass fakes.

Online algorithms collect data with ``agent.act(..., explore=True)`` and update on schedule;
offline ones (``request.kind == "none"``, e.g. BC) only update on expert data. Either way the
runner evaluates, logs, checkpoints, and writes ``summary.json``. :func:`build_run` does the wiring
for ``vmil train``; :func:`resume_run` continues a killed run from its directory.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmil.base import BatchRequest, Env
from vmil.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vmil.config import ConfigError, RunConfig, flatten, save_yaml, to_dict
from vmil.evaluate import FrameStack, normalized_score, observe, run_episodes, write_video
from vmil.rundir import (CHECKPOINT_FILE, CONFIG_FILE, EPISODE_DIR, EVAL_SEED_OFFSET, RUN_FILE, SUMMARY_FILE,  # noqa: F401
                         checkpoint_path, demo_info_from_meta)
from vmil.tracking import DEFAULT_URI, Tracker, make_tracker

class RunError(ValueError):
    """A run directory is missing, holds no run, or already holds one."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates had non-finite losses or gradients."""


class Runner:
    """``replay`` may be None for offline algorithms; ``eval_env`` defaults to ``env`` for them
    (online runs need their own, so evaluation never cuts a training episode)."""

    def __init__(self, cfg: RunConfig, env: Env, agent: Any, replay: Any, expert_replay: Any, tracker: Tracker,
                 run_dir: str | Path, eval_env: Env | None = None, *, expert_return: float | None = None,
                 demo_info: Any = None, quiet: bool | None = None, tags: dict[str, str] | None = None):
        self.cfg = cfg
        self.tags = dict(tags or {})  # extra MLflow tags (preset, sweep), set when the run starts
        self.env = env
        self.agent = agent
        self.replay = replay
        self.expert_replay = expert_replay
        self.tracker = tracker
        self.run_dir = Path(run_dir)
        self.request: BatchRequest = agent.request
        self.offline = self.request.kind == "none"
        if self.request.kind not in ("sequence", "transition", "none", "rollout"):
            raise ValueError(f"{cfg.algo}: request.kind must be sequence, transition, rollout or none, got {self.request.kind!r}")
        if self.request.kind in ("sequence", "transition") and replay is None:
            raise ValueError(f"{cfg.algo} collects data (request.kind={self.request.kind!r}) and needs a replay")
        if not self.offline and eval_env is None:
            raise ValueError("online runs need a separate eval_env so evaluation does not cut a training episode")
        if (self.offline or self.request.expert_batch_size > 0) and expert_replay is None:
            raise ValueError(f"{cfg.algo} samples expert data and needs an expert replay")
        self.eval_env = eval_env if eval_env is not None else env
        self.expert_return = expert_return
        self.demo_info = demo_info
        self.spec = env.spec
        # quiet=None: a progress bar on a terminal, else one line per log interval; True: neither.
        self.show_bar = sys.stdout.isatty() if quiet is None else not quiet
        self.log_lines = quiet is None and not self.show_bar
        # Batches are drawn on the replay's device; random prefill actions on the CPU.
        sample_device = getattr(replay if replay is not None else expert_replay, "device", torch.device("cpu"))
        self.generator = torch.Generator(device=sample_device).manual_seed(cfg.seed)
        self.action_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0  # agent episodes stored (also the next episode file index)
        self.replay_episodes = 0  # agent episodes in the replay: updates wait for the first
        self.wall_offset = 0.0  # wall time of earlier sessions of a resumed run
        self.bad_updates = 0
        self.last_eval: dict[str, Any] | None = None
        self.last_checkpoint_step: int | None = None
        self._window: dict[str, list[float]] = defaultdict(list)
        self._window_start = (time.perf_counter(), 0, 0)
        self._start_time = time.perf_counter()
        self._resumed = False
        self._bar: Any = None

    # ------------------------------------------------------------------ persistence

    def counters(self) -> dict[str, int]:
        return {"env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes,
                "wall_ms": int(1000 * self.wall_seconds())}

    def wall_seconds(self) -> float:
        return self.wall_offset + time.perf_counter() - self._start_time

    def save_checkpoint(self) -> Path:
        meta: dict[str, Any] = {}
        if self.expert_return is not None:
            meta["expert_return"] = float(self.expert_return)
        if self.demo_info is not None:
            meta["demo_info"] = json.dumps(dataclasses.asdict(self.demo_info))
        path = save_checkpoint(self.run_dir / CHECKPOINT_FILE, algo=self.cfg.algo, agent_state=self.agent.state_dict(),
                               counters=self.counters(), config=to_dict(self.cfg), rng=rng_state(self._generators()),
                               meta=meta)
        self.last_checkpoint_step = self._step()
        return path

    def _generators(self) -> dict[str, torch.Generator]:
        return {"sampler": self.generator, "actions": self.action_rng}

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint payload (see :func:`vmil.checkpoint.load_checkpoint`)."""
        if payload["algo"] != self.cfg.algo:
            raise CheckpointError(f"checkpoint of '{payload['algo']}' cannot resume a '{self.cfg.algo}' run")
        self.agent.load_state_dict(payload["agent"])
        counters = payload["counters"]
        self.env_steps = counters["env_steps"]
        self.updates = counters["updates"]
        self.episodes = max(self.episodes, counters["episodes"])
        self.wall_offset = counters.get("wall_ms", 0) / 1000.0
        if payload.get("rng") is not None:
            set_rng_state(payload["rng"], self._generators())
        self.last_checkpoint_step = self._step()
        self._resumed = True

    def reload_episodes(self) -> int:
        """Episodes an earlier session of this run saved go back into the replay (resume)."""
        count = self.replay.load_directory()
        self.replay_episodes += count
        self.episodes = max(self.episodes, count)
        return count

    # ------------------------------------------------------------------ loop

    def _step(self) -> int:
        """The x-axis of a run: env steps when collecting, updates when offline."""
        return self.updates if self.offline else self.env_steps

    def _say(self, text: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.run_dir / CONFIG_FILE)
        total = cfg.train.offline_updates if self.offline else cfg.train.env_steps
        if not self._resumed:
            self.tracker.log_params(flatten(to_dict(cfg)))
            self.tracker.set_tags({"algo": cfg.algo, "env": cfg.env.id, "seed": str(cfg.seed),
                                   "run_dir": str(self.run_dir.resolve()), **self.tags})
            self.tracker.log_artifact(self.run_dir / CONFIG_FILE)
        # The step budget (`vmil compare` never pools runs of different budgets); set again on a
        # resume, whose train.* overrides may change it.
        self.tracker.set_tags({"budget": str(total), "budget_unit": "updates" if self.offline else "env_steps"})
        self._start_time = time.perf_counter()
        self._window_start = (time.perf_counter(), self.env_steps, self.updates)
        self._bar = tqdm(total=total, initial=self._step(), disable=not self.show_bar, dynamic_ncols=True,
                         unit="upd" if self.offline else "step", desc=f"{cfg.algo} {cfg.env.id}")
        status = "FINISHED"
        try:
            if self.offline:
                self._train_offline(total)
            else:
                self._train_online(total)
            if self.last_eval is None or self.last_eval["step"] != self._step():
                self._evaluate()
            self.save_checkpoint()
            self.tracker.log_artifact(self.run_dir / CHECKPOINT_FILE, "checkpoints")
            summary = self._write_summary()
            self.tracker.log_artifact(self.run_dir / SUMMARY_FILE)
            return summary
        except TrainingDiverged:
            status = "FAILED"
            self.tracker.set_tags({"status": "diverged"})
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self._bar.close()
            if status == "FINISHED":
                self.tracker.close(status)
            else:
                self._close_quietly(status)

    def _close_quietly(self, status: str) -> None:
        """Close the tracker without hiding the error that stopped the run."""
        try:
            self.tracker.close(status)
        except Exception as err:  # the run's own error is the one to report
            print(f"vmil: warning: closing the tracker failed: {err}", file=sys.stderr)

    def _train_offline(self, total: int) -> None:
        while self.updates < total:
            self._update()
            self._bar.update(1)
            self._periodic()

    def _train_online(self, total: int) -> None:
        from vmil.data.episode import EpisodeBuilder

        cfg = self.cfg.train
        stack = FrameStack(self.request.frame_stack)
        builder = EpisodeBuilder(self.spec, meta={"source": f"agent:{self.cfg.algo}"})
        ts = self.env.reset()
        builder.start(ts)
        obs = observe(stack, ts)
        agent_state = None
        while self.env_steps < total:
            if self.env_steps < cfg.prefill_steps:
                action = self._random_action()
            else:
                with torch.no_grad():
                    action, agent_state = self.agent.act(obs, agent_state, True)
            ts = self.env.step(action)
            builder.add(action, ts)
            self.env_steps += 1
            self._bar.update(1)
            if ts.last:
                self._store_episode(builder.finish())
                ts = self.env.reset()
                builder.start(ts)
                agent_state = None
            obs = observe(stack, ts)
            if (self.env_steps >= cfg.prefill_steps and self.replay_episodes > 0
                    and self.env_steps % cfg.update_every == 0):
                # Counted against the updates done so far, so a resumed run does not repeat the burst.
                for _ in range(max(cfg.pretrain_updates - self.updates, 0) + cfg.updates_per_round):
                    self._update()
            self._periodic()

    def _random_action(self) -> np.ndarray | int:
        if self.spec.discrete:
            return int(torch.randint(self.spec.action_dim, (), generator=self.action_rng))
        u = torch.rand(self.spec.action_dim, generator=self.action_rng, dtype=torch.float64).numpy()
        return (self.spec.action_low + u * (self.spec.action_high - self.spec.action_low)).astype(np.float32)

    def _store_episode(self, ep: Any) -> None:
        # A replay made with a directory writes the episode as soon as it ends, so a killed run
        # loses at most the episode in progress.
        self.replay.add_episode(ep)
        self.episodes += 1
        self.replay_episodes += 1
        self._window["episode_return"].append(ep.ret)

    def _sample(self, replay: Any, batch_size: int, generator: torch.Generator | None = None) -> Any:
        req, generator = self.request, generator or self.generator
        if req.kind == "none":  # offline learners train on expert transitions
            return replay.sample_transitions(batch_size, req.frame_stack, req.nstep, req.discount, generator)
        return replay.sample(req, generator, batch_size=batch_size)

    def _batches(self) -> tuple[Any, Any]:
        batch = None if self.offline else self._sample(self.replay, self.request.batch_size)
        expert_size = self.request.expert_batch_size or (self.request.batch_size if self.offline else 0)
        expert = self._sample(self.expert_replay, expert_size) if expert_size > 0 else None
        return batch, expert

    def _update(self) -> None:
        batch, expert = self._batches()
        metrics = self.agent.update(batch, expert, self._step() if self.offline else self.env_steps)
        self.updates += 1
        skipped = float(metrics.get("skipped", 0.0)) > 0
        for key, value in metrics.items():
            self._window[key].append(float(value))
        if skipped:
            self.bad_updates += 1
            limit = self.cfg.train.max_bad_updates
            if self.bad_updates >= limit:
                where = (f"the last good checkpoint is {self.run_dir / CHECKPOINT_FILE} (step {self.last_checkpoint_step})"
                         if self.last_checkpoint_step is not None else "no checkpoint was written before it")
                self._log()
                raise TrainingDiverged(
                    f"training diverged: {limit} consecutive updates had a non-finite loss or gradient "
                    f"(update {self.updates}, step {self._step()}); {where}. Lower agent.lr or set a gradient "
                    f"clip, then start again or `vmil train --resume {self.run_dir}`")
        else:
            self.bad_updates = 0

    def _periodic(self) -> None:
        cfg = self.cfg.train
        step = self._step()
        if step == 0:
            return
        if step % cfg.log_every == 0:
            self._log()
        if step % cfg.eval_every == 0:
            self._evaluate()
        # Never overwrite the last good checkpoint while updates are being skipped.
        if step % cfg.checkpoint_every == 0 and self.bad_updates == 0:
            self.save_checkpoint()

    def _log(self) -> None:
        now = time.perf_counter()
        t0, steps0, updates0 = self._window_start
        dt = max(now - t0, 1e-9)
        metrics: dict[str, float] = {}
        for key, values in self._window.items():
            if key == "skipped":
                metrics["train/skipped"] = float(np.sum(values))
            elif key == "episode_return":
                metrics["train/episode_return"] = float(np.mean(values))
            else:
                finite = [v for v in values if math.isfinite(v)]
                if finite:
                    metrics[f"train/{key}"] = float(np.mean(finite))
        metrics.update({"env_steps": float(self.env_steps), "updates": float(self.updates),
                        "episodes": float(self.episodes), "wall_seconds": self.wall_seconds(),
                        "updates_per_second": (self.updates - updates0) / dt,
                        "env_steps_per_second": (self.env_steps - steps0) / dt})
        self.tracker.log_metrics(metrics, self._step())
        if self.log_lines:
            # No progress bar (not a terminal): one line per log interval instead.
            total = self.cfg.train.offline_updates if self.offline else self.cfg.train.env_steps
            loss = "  ".join(f"{k[6:]} {v:.4g}" for k, v in metrics.items()
                             if k.startswith("train/") and "loss" in k)
            self._say(f"{'update' if self.offline else 'step'} {self._step()}/{total}  {loss}  "
                      f"({metrics['updates_per_second']:.1f} updates/s, {self.wall_seconds():.0f} s)")
        self._window.clear()
        self._window_start = (now, self.env_steps, self.updates)

    def _evaluate(self) -> None:
        cfg = self.cfg.train
        step = self._step()
        video = cfg.video
        health = getattr(self.agent, "health", None)
        with torch.no_grad():
            result = run_episodes(self.eval_env, self.agent, self.request.frame_stack, cfg.eval_episodes,
                                  video_episodes=1 if video else 0, keep_episodes=health is not None)
        summary = result.summary(self.expert_return)
        if health is not None:
            summary["health"] = self._health(health, result.episodes)
        metrics = {"eval/return_mean": summary["return_mean"], "eval/return_std": summary["return_std"],
                   "eval/length_mean": summary["length_mean"]}
        if summary["normalized_score"] is not None:
            metrics["eval/normalized_score"] = summary["normalized_score"]
        for key in ("success_rate", "plan_replaced_fraction"):
            if key in summary:
                metrics[f"eval/{key}"] = summary[key]
        metrics.update({f"health/{k}": v for k, v in summary.get("health", {}).items() if math.isfinite(v)})
        self.tracker.log_metrics(metrics, step)
        self.last_eval = {"step": step, **summary}
        score = f"  score {summary['normalized_score']:.2f}" if summary["normalized_score"] is not None else ""
        if "plan_replaced_fraction" in summary:
            score += f"  (planner replaced {summary['plan_replaced_fraction']:.0%} of the actions)"
        self._say(f"eval  {'update' if self.offline else 'step'} {step}  return {summary['return_mean']:.1f} "
                  f"± {summary['return_std']:.1f}{score}")
        self._bar.set_postfix(ret=f"{summary['return_mean']:.1f}")
        if summary.get("health"):
            h = summary["health"]
            self._say("      health  " + "  ".join(f"{k} {v:.2f}" for k, v in h.items()))
        if video and result.frames:
            path = write_video(result.frames, self.run_dir / "videos" / f"eval_{step:08d}.mp4")
            self.tracker.log_artifact(path, "videos")
        self._visualize(step)

    def _health(self, health: Any, episodes: list[Any]) -> dict[str, float]:
        """An adversarial agent's health signals (:mod:`imitation.health`) on the evaluation's episodes
        and fresh expert and agent-replay batches."""
        # Their own random streams: the signals must not change what training samples and draws next.
        gen = torch.Generator(device=self.generator.device).manual_seed(self.cfg.seed + self.env_steps)
        batch = expert = None
        if not self.offline and self.replay_episodes > 0:
            batch = self._sample(self.replay, self.request.batch_size, gen)
        if self.expert_replay is not None:
            expert = self._sample(self.expert_replay, self.request.expert_batch_size or self.request.batch_size, gen)
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            return {k: float(v) for k, v in health(episodes, expert, batch).items()}

    def _visualize(self, step: int) -> None:
        visualize = getattr(self.agent, "visualize", None)
        if visualize is None:
            return
        batch, expert = None, None
        if not self.offline and self.replay_episodes > 0:
            batch = self._sample(self.replay, min(self.request.batch_size, 8))
        expert_size = min(self.request.expert_batch_size or self.request.batch_size, 8)
        if self.expert_replay is not None:
            expert = self._sample(self.expert_replay, expert_size)
        with torch.no_grad():
            images = visualize(expert, batch)
        for name, image in images.items():
            self.tracker.log_image(image, f"{name}/step_{step:08d}")

    def _write_summary(self) -> dict[str, Any]:
        ev = self.last_eval or {}
        summary = {
            "algo": self.cfg.algo, "env": self.cfg.env.id, "seed": self.cfg.seed,
            "env_steps": self.env_steps, "updates": self.updates, "wall_seconds": round(self.wall_seconds(), 3),
            "eval_return_mean": ev.get("return_mean"), "eval_return_std": ev.get("return_std"),
            "expert_return": self.expert_return,
            "normalized_score": normalized_score(ev["return_mean"], self.expert_return) if ev else None,
            "mlflow_run_id": self.tracker.run_id,
        }
        if "success_rate" in ev:
            summary["eval_success_rate"] = ev["success_rate"]
        if "health" in ev:  # JSON has no NaN: an undefined correlation is null
            summary.update({k: (v if math.isfinite(v) else None) for k, v in ev["health"].items()})
        tmp = self.run_dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(self.run_dir / SUMMARY_FILE)
        return summary

    def close(self) -> None:
        self.env.close()
        if self.eval_env is not self.env:
            self.eval_env.close()


# ---------------------------------------------------------------------- wiring for `vmil train`


def _absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, so a resumed run finds the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env.id)
    return Path(root) / f"{cfg.algo}-{env}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _make_env(cfg: RunConfig, seed: int) -> Env:
    from vmil import envs

    return envs.from_config(cfg.env, seed)


def _device(name: str) -> torch.device:
    from vmil.nn import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as err:
        raise ConfigError(str(err)) from err


# Loops other than Runner's, by the kind of batch an agent requests, named as ALGOS names algorithms:
# they subclass Runner, so the runner loads them by name and never imports them.
RUNNERS: dict[str, str] = {"rollout": "vmil.rl.onpolicy:OnPolicyRunner"}  # PPO and the adversarial agents on it


def _runner_class(kind: str) -> type[Runner]:
    if kind not in RUNNERS:
        return Runner
    module, name = RUNNERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_run(cfg: RunConfig, demos_dir: str | Path | None, run_dir: str | Path | None = None,
              tracking_uri: str | None = DEFAULT_URI, *, experiment: str = "vmil", quiet: bool | None = None,
              tags: dict[str, str] | None = None, _resume: bool = False) -> Runner:
    """Wire a run: envs, demos (validated against the env before anything trains), replays, agent,
    tracker. ``tracking_uri`` None or "none" keeps metrics in memory. ``demos_dir`` may be None for
    algorithms that learn from the true reward (``NEEDS_DEMOS = False``)."""
    from vmil.data.episode import demo_info, load_episodes
    from vmil.data.replay import Replay
    from vmil.dense import set_dense_backend
    from vmil.nn import retain_freed_host_memory, seed_everything
    from vmil.registry import algo_module

    module = algo_module(cfg.algo)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if not _resume and (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} already holds a run; continue it with `vmil train --resume {run_dir}` "
                       "or choose another --run-dir")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.retain_host_memory and not retain_freed_host_memory():
        print("vmil: note: retain_host_memory needs Linux with glibc; freed memory goes back to the OS here",
              file=sys.stderr)
    set_dense_backend(cfg.dense_backend)
    seed_everything(cfg.seed)
    device = _device(cfg.device)
    replay_device = device if cfg.replay.device == "auto" else _device(cfg.replay.device)

    if demos_dir is None and getattr(module, "NEEDS_DEMOS", True):
        raise ConfigError(f"{cfg.algo} learns from demonstrations: pass --demos DIR (record some with "
                          "`vmil demos record`)")
    demos_dir = Path(demos_dir) if demos_dir is not None else None
    env = _make_env(cfg, cfg.seed)
    eval_env = None
    try:
        spec = env.spec
        info, expert_replay = None, None
        if demos_dir is not None:
            expert_episodes = load_episodes(demos_dir, spec)
            info = demo_info(expert_episodes, demos_dir)
            expert_replay = Replay(spec, info.num_frames, replay_device)
            for ep in expert_episodes:
                expert_replay.add_episode(ep)
            del expert_episodes
        agent = module.build(cfg.agent, spec, device, info)
        request: BatchRequest = agent.request
        replay = None
        # Evaluation starts from states neither the agent's data nor (with the default seeds) the
        # demos started from; offline runs need no other env.
        eval_env = _make_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
        if request.kind == "none":
            env.close()
            env = eval_env
        elif request.kind != "rollout":  # on-policy learners keep their rollouts, not a replay
            episodes_dir = run_dir / EPISODE_DIR if cfg.replay.save_episodes else None
            replay = Replay(spec, cfg.replay.capacity, replay_device, directory=episodes_dir)
        run_info = _read_run_info(run_dir) if _resume else {}
        if _resume:
            tracking_uri = run_info.get("tracking_uri", tracking_uri)
        tracker = make_tracker(tracking_uri, experiment, run_name=run_dir.name,
                               run_id=run_info.get("mlflow_run_id"))
    except BaseException:
        env.close()
        if eval_env is not None and eval_env is not env:
            eval_env.close()
        raise
    runner_cls = _runner_class(request.kind)
    runner = runner_cls(cfg, env, agent, replay, expert_replay, tracker, run_dir, eval_env,
                    expert_return=info.return_mean if info is not None else None, demo_info=info, quiet=quiet, tags=tags)
    if not _resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_FILE, {
            "algo": cfg.algo, "env": cfg.env.id, "seed": cfg.seed, "demos": str(demos_dir.resolve()) if demos_dir is not None else None,
            "tracking_uri": _absolute_uri(tracking_uri) if tracking_uri else "none",
            "experiment": experiment, "mlflow_run_id": tracker.run_id})
        save_yaml(cfg, run_dir / CONFIG_FILE)
    else:
        if replay is not None and replay.directory is not None and any(replay.directory.glob("*.npz")):
            runner.reload_episodes()
        ckpt = run_dir / CHECKPOINT_FILE
        if ckpt.is_file():
            runner.restore(load_checkpoint(ckpt, algo=cfg.algo, map_location=device))
    return runner


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    if not path.is_file() or not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir} holds no vmil run (no {RUN_FILE} / {CONFIG_FILE}); start one with "
                       f"`vmil train --algo ... --env ... --demos ... --run-dir {run_dir}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from err


def load_run_config(run_dir: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """The saved config of a run; overrides may only change the schedule (``train.*``)."""
    import yaml

    from vmil.config import from_dict, merge, parse_override
    from vmil.registry import algo_module

    run_dir = Path(run_dir)
    info = _read_run_info(run_dir)
    algo = info["algo"]
    data = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    for text in overrides:
        override = parse_override(text)
        if set(override) != {"train"}:
            raise ConfigError(f"override '{text}': a resumed run keeps its config; only train.* keys "
                              "(e.g. train.env_steps=200000) may change")
        data = merge(data, override)
    return from_dict(RunConfig, data, agent_cls=algo_module(algo).Config)


def resume_run(run_dir: str | Path, overrides: tuple[str, ...] | list[str] = (), *,
               quiet: bool | None = None) -> Runner:
    """Continue a killed run: config from the run directory, agent + optimiser + counters + RNG from
    its last checkpoint, the agent replay from its saved episodes."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    info = _read_run_info(run_dir)
    return build_run(cfg, info["demos"], run_dir, info.get("tracking_uri"), experiment=info.get("experiment", "vmil"),
                     quiet=quiet, _resume=True)
