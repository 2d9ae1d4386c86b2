"""The on-policy training loop (PPO, GAIL, GAIfO, Relational Mimic): rollouts of ``agent.cfg.num_envs``
envs stepped by :class:`vmil.envs.vector.VectorEnv` workers, one update per rollout, expert
transitions sampled from the demos for the adversarial agents.

It is :class:`vmil.runner.Runner` with another collection loop: evaluation, logging, checkpoints,
resume and MLflow are the runner's. Log, evaluation and checkpoint periods fire when a rollout
crosses a multiple of them (a rollout adds num_envs x rollout_steps env steps at once). With
several learners (:mod:`vmil.rl.distributed`) only learner 0 writes checkpoints and summaries.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np
import torch

from vmil.evaluate import FrameStack
from vmil.rl import distributed
from vmil.runner import CHECKPOINT_FILE, RUN_FILE, Runner
from vmil.tracking import MemoryTracker

LEARNER_SEED_STRIDE = 1  # learner r collects with seed + r (the paper's learners differ only by seed)
ENV_SEED_STRIDE = 10_007  # env i of a learner: its seed + i * this


class LearnerTracker(MemoryTracker):
    """What learners other than 0 log to: kept in memory, artifacts (written by learner 0) ignored."""

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        pass


class OnPolicyRunner(Runner):
    """``env`` may be a :class:`~vmil.envs.vector.VectorEnv` (tests pass one of fakes) or a single env,
    in which case the vectorised envs are built from ``cfg.env`` when training starts (and the single
    env is closed)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rank = distributed.rank()
        self.vec: Any = self.env if hasattr(self.env, "num_envs") else None
        self._rollout: Any = None

    # -- persistence: learner 0 only ----------------------------------------------------------------
    def save_checkpoint(self):
        if self.rank != 0:  # the learners' weights are equal: learner 0's checkpoint is everyone's
            return self.run_dir / CHECKPOINT_FILE
        return super().save_checkpoint()

    def _write_summary(self) -> dict[str, Any]:
        if self.rank != 0:
            return {}
        return super()._write_summary()

    # -- collection ---------------------------------------------------------------------------------
    def _vector_env(self) -> Any:
        if self.vec is not None:
            return self.vec
        from vmil import envs
        from vmil.envs.vector import VectorEnv

        acfg = self.agent.cfg
        seed = self.cfg.seed
        fns = [functools.partial(envs.from_config, self.cfg.env, seed + i * ENV_SEED_STRIDE)
               for i in range(acfg.num_envs)]
        self.vec = VectorEnv(fns, acfg.num_workers)
        if self.env is not self.eval_env:
            self.env.close()
        self.env = self.vec
        return self.vec

    def _expert_batch(self) -> Any:
        size = self.request.expert_batch_size
        if size <= 0:
            return None
        return self.expert_replay.sample_transitions(size, self.request.frame_stack, 1, self.request.discount,
                                                     self.generator)

    def _train_online(self, total: int) -> None:
        from vmil.rl.ppo import Rollout

        agent, cfg = self.agent, self.agent.cfg
        vec = self._vector_env()
        n, t_len, k = vec.num_envs, cfg.rollout_steps, self.request.frame_stack
        stacks = [FrameStack(k) for _ in range(n)]
        vs = vec.reset()
        obs = np.stack([stacks[i].reset(vs.obs[i]) for i in range(n)])
        ended = vs.last.copy()  # an env whose episode just ended resets on its next step
        returns = np.zeros(n)
        device = agent.device
        while self.env_steps < total:
            buf_obs = np.empty((t_len + 1, *obs.shape), dtype=np.uint8)
            actions, reward = [], np.zeros((t_len, n), np.float32)
            terminal, last, valid = (np.zeros((t_len, n), bool) for _ in range(3))
            before = self.env_steps
            for t in range(t_len):
                buf_obs[t] = obs
                raw = agent.act_batch(torch.from_numpy(obs), explore=True)
                actions.append(raw.cpu())
                vs = vec.step(list(agent.to_env_action(raw)))
                valid[t] = ~ended
                reward[t] = np.where(valid[t], vs.reward, 0.0)
                terminal[t], last[t] = vs.terminal & valid[t], vs.last & valid[t]
                for i in range(n):
                    obs[i] = stacks[i].reset(vs.obs[i]) if vs.first[i] else stacks[i].push(vs.obs[i])
                returns += reward[t]
                for i in np.flatnonzero(last[t]):
                    self.episodes += 1
                    self._window["episode_return"].append(float(returns[i]))
                    returns[i] = 0.0
                ended = vs.last.copy()
                self.env_steps += int(valid[t].sum())
            buf_obs[t_len] = obs
            rollout = Rollout(obs=torch.from_numpy(buf_obs).to(device), action=torch.stack(actions),
                              reward=torch.from_numpy(reward), terminal=torch.from_numpy(terminal),
                              last=torch.from_numpy(last), valid=torch.from_numpy(valid))
            self._bar.update(self.env_steps - before)
            self._on_policy_update(rollout)
            self._crossed(before, self.env_steps)

    def _on_policy_update(self, rollout: Any) -> None:
        """One update through the runner's own bookkeeping (metrics window, divergence counting)."""
        self._rollout = rollout
        try:
            self._update()
        finally:
            self._rollout = None

    def _batches(self) -> tuple[Any, Any]:
        return self._rollout, self._expert_batch()

    def _crossed(self, before: int, now: int) -> None:
        """Log / evaluate / checkpoint when a rollout crossed a multiple of the period."""
        cfg = self.cfg.train
        hit = lambda every: now // every > before // every  # noqa: E731
        if hit(cfg.log_every):
            self._log()
        if hit(cfg.eval_every):
            self._evaluate()
        if hit(cfg.checkpoint_every) and self.bad_updates == 0:
            self.save_checkpoint()

    def _evaluate(self) -> None:
        if self.rank != 0:  # learner 0 evaluates and logs; the others only train
            return
        super()._evaluate()

    def _log(self) -> None:
        if self.rank != 0:
            self._window.clear()
            return
        super()._log()


# ---------------------------------------------------------------------------------------------
# Several learners: `vmil train --learners N` (or torchrun)


def run_learner(rank: int, cfg: Any, demos_dir: Any, run_dir: Any, tracking_uri: str | None,
                resume: bool = False, quiet: bool | None = None, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Learner ``rank``'s part of a run whose process group is already joined. Learner 0 is the run
    (its directory, MLflow run and checkpoints); learner r > 0 collects with seed ``seed + r`` in a
    scratch directory and logs nothing. On resume every learner loads learner 0's checkpoint and
    applies the same ``train.*`` overrides."""
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from vmil.checkpoint import load_checkpoint
    from vmil.nn import seed_everything
    from vmil.runner import build_run, resume_run

    run_dir = Path(run_dir)
    scratch = None
    if rank == 0:
        runner = (resume_run(run_dir, overrides, quiet=quiet) if resume
                  else build_run(cfg, demos_dir, run_dir, tracking_uri, quiet=quiet))
    else:
        if resume:
            from vmil.runner import load_run_config
            cfg = load_run_config(run_dir, overrides)
            demos_dir = json.loads((run_dir / RUN_FILE).read_text())["demos"]
        seed = cfg.seed + rank * LEARNER_SEED_STRIDE
        scratch = Path(tempfile.mkdtemp(prefix=f"vmil-learner{rank}-"))
        runner = build_run(dataclasses.replace(cfg, seed=seed), demos_dir, scratch / "run", "none", quiet=True)
        runner.tracker = LearnerTracker()
        if resume and (run_dir / CHECKPOINT_FILE).is_file():
            runner.restore(load_checkpoint(run_dir / CHECKPOINT_FILE, algo=cfg.algo, map_location=runner.agent.device))
            seed_everything(seed + 7919 * runner.updates)  # learner 0's random state was restored: own it again
            runner.generator.manual_seed(seed + 7919 * runner.updates)
    try:
        return runner.run()
    finally:
        runner.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _learner_entry(rank: int, cfg: Any, demos_dir: Any, run_dir: str, tracking_uri: str | None, resume: bool,
                   out: str, overrides: tuple[str, ...]) -> None:
    summary = run_learner(rank, cfg, demos_dir, run_dir, tracking_uri, resume, quiet=None if rank == 0 else True,
                          overrides=overrides)
    if rank == 0:
        from pathlib import Path

        Path(out).write_text(json.dumps(summary))


def train_learners(learners: int, cfg: Any, demos_dir: Any, run_dir: Any, tracking_uri: str | None,
                   resume: bool = False, overrides: tuple[str, ...] = ()) -> tuple[dict[str, Any], Any]:
    """``learners`` processes on this machine averaging their gradients at every update (gloo on the
    CPU, nccl on GPUs); returns learner 0's summary and the run directory."""
    import tempfile
    from pathlib import Path

    from vmil.registry import algo_module
    from vmil.runner import default_run_dir

    if learners < 1:
        raise ValueError(f"--learners must be >= 1, got {learners}")
    if not getattr(algo_module(cfg.algo), "ON_POLICY", False):
        raise ValueError(f"--learners averages the gradients of the on-policy learners (ppo, gail, gaifo, rm, "
                         f"rm-l-l, rm-l-nl, rm-nl-nl); {cfg.algo} runs as one learner")
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, out = tempfile.mkstemp(prefix="vmil-summary-", suffix=".json")
    os.close(fd)
    backend = distributed.backend_for(cfg.device)
    try:
        distributed.launch(learners, _learner_entry, (cfg, str(demos_dir) if demos_dir else None, str(run_dir),
                                                      tracking_uri, resume, out, tuple(overrides)),
                           backend=backend, run_dir=run_dir)
        return json.loads(Path(out).read_text()), run_dir
    finally:
        Path(out).unlink(missing_ok=True)


def cli_train_learners(args: Any, print_json: Any) -> int:
    """`vmil train --learners N ...` (spawns N learners here) or `torchrun ... vmil train ...` (this
    process is one learner of torchrun's group)."""
    from pathlib import Path

    from vmil.config import resolve
    from vmil.registry import algo_module
    from vmil.runner import default_run_dir, load_run_config

    uri = args.tracking_uri or "sqlite:///mlflow.db"
    if args.resume:
        cfg = load_run_config(args.resume, args.overrides)  # only train.* may change
        run_dir, demos = Path(args.resume), None
    else:
        missing = [f"--{k}" for k in ("algo", "env") if getattr(args, k) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required (or --resume RUN_DIR)")
        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = resolve(args.algo, algo_module(args.algo).Config, args.env, args.preset or "cpu", overrides)
        run_dir, demos = (Path(args.run_dir) if args.run_dir else None), args.demos
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join its group
        import torch.distributed as dist

        if not getattr(algo_module(cfg.algo), "ON_POLICY", False):
            raise ValueError(f"torchrun learners average the gradients of the on-policy learners; {cfg.algo} "
                             "runs as one learner")
        distributed.init_from_env(distributed.backend_for(cfg.device))
        try:
            names = [str(run_dir or default_run_dir(cfg))]
            dist.broadcast_object_list(names, src=0)  # one run directory for every learner
            summary = run_learner(dist.get_rank(), cfg, demos, names[0], uri, bool(args.resume),
                                  quiet=None if dist.get_rank() == 0 else True,
                                  overrides=tuple(args.overrides) if args.resume else ())
            run_dir = Path(names[0])
        finally:
            distributed.shutdown()
        if distributed.rank() != 0 and not summary:
            return 0
    else:
        summary, run_dir = train_learners(args.learners, cfg, demos, run_dir, uri, bool(args.resume),
                                          tuple(args.overrides) if args.resume else ())
    print_json(summary)
    print(f"run directory: {run_dir}  ({args.learners if args.learners > 1 else 'torchrun'} learners; resume: "
          f"vmil train --resume {run_dir} --learners N; evaluate: vmil eval {run_dir})")
    return 0
