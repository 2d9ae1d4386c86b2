"""The runner with fakes (schedule, frame stacks, evaluation, divergence, hooks), checkpoints, determinism,
and resume after SIGKILL.

This module doubles as a tiny online "algorithm" (``Config`` + ``build`` below) so the kill test can
run the real ``vmil train`` / ``--resume`` path in a subprocess with an agent that costs nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vmil.base import BatchRequest, EnvSpec, Obs, TimeStep
from vmil.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vmil.config import ConfigError, RunConfig, TrainConfig, doc, resolve
from vmil.data.replay import Replay
from vmil.runner import Runner, RunError, TrainingDiverged, build_run, resume_run
from vmil.tracking import MemoryTracker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ---------------------------------------------------------------------------------------------
# A fake env and agent. Frames carry the step index so frame stacks can be checked exactly.


class CountingEnv:
    def __init__(self, length: int = 5, size: int = 8):
        self.spec = EnvSpec(env_id="fake:count", obs_shape=(3, size, size), action_dim=2, action_repeat=1,
                            max_episode_steps=length)
        self.length = length
        self.t = 0
        self.resets = 0
        self.closed = False

    def _frame(self) -> np.ndarray:
        return np.full(self.spec.obs_shape, (self.resets * 10 + self.t) % 256, dtype=np.uint8)

    def reset(self) -> TimeStep:
        self.resets += 1
        self.t = 0
        return TimeStep(self._frame(), None, 0.0, True, False, False, {})

    def step(self, action: Any) -> TimeStep:
        assert np.asarray(action).shape == (2,)
        self.t += 1
        last = self.t >= self.length
        return TimeStep(self._frame(), None, float(-np.abs(action).sum()), False, False, last, {})

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Config:
    """The test algorithm's config (this module is also registered as an algorithm in the kill test)."""

    frame_stack: int = doc(2, "Frames per observation.")
    batch_size: int = doc(4, "Agent transitions per update.")
    expert_batch_size: int = doc(4, "Expert transitions per update.")
    lr: float = doc(1e-2, "Adam learning rate.")
    diverge_after: int = doc(-1, "Report skipped updates from this update on (-1: never).")


class LinearAgent:
    """Acts with a linear map of the mean pixel of each stacked frame; updates fit that map to the
    expert batch with Adam. Records what it is given."""

    def __init__(self, cfg: Config, spec: EnvSpec):
        self.cfg = cfg
        self.spec = spec
        self.request = BatchRequest(kind="transition", batch_size=cfg.batch_size, frame_stack=cfg.frame_stack,
                                    expert_batch_size=cfg.expert_batch_size)
        self.net = torch.nn.Linear(cfg.frame_stack, spec.action_dim)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.acts: list[tuple[np.ndarray, bool, bool]] = []
        self.batches: list[tuple[Any, Any, int]] = []
        self.updates = 0

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        return images.float().reshape(b, self.cfg.frame_stack, -1).mean(-1) / 255.0

    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        self.acts.append((obs.image.copy(), obs.first, explore))
        with torch.no_grad():
            action = torch.tanh(self.net(self._features(torch.as_tensor(obs.image)[None])))[0]
            if explore:
                action = (action + 0.3 * torch.randn_like(action)).clamp(-1, 1)
        return action.numpy().astype(np.float32), None

    def update(self, batch: Any, expert: Any, step: int) -> dict[str, float]:
        self.batches.append((batch, expert, step))
        self.updates += 1
        if 0 <= self.cfg.diverge_after <= self.updates:
            return {"loss": float("nan"), "skipped": 1.0}
        pred = torch.tanh(self.net(self._features(batch.obs)))
        loss = ((pred - batch.action) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach()), "skipped": 0.0}

    def visualize(self, expert_batch: Any, agent_batch: Any) -> dict[str, np.ndarray]:
        assert expert_batch is not None and agent_batch is not None
        return {"strip": np.zeros((4, 6, 3), np.uint8)}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])


def build(cfg: Config, spec: EnvSpec, device: torch.device, demos: Any) -> LinearAgent:
    return LinearAgent(cfg, spec)


class PlanningAgent:
    """Acts deterministically and counts planner replacements the way VMIL's plan_counts does:
    the actor's action is replaced at every third deterministic step."""

    def __init__(self):
        self.plan_counts = {"steps": 7, "replaced": 7}  # earlier evaluations, not counted again

    def act(self, obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        if not explore:
            self.plan_counts["replaced"] += self.plan_counts["steps"] % 3 == 1
            self.plan_counts["steps"] += 1
        return np.zeros(2, np.float32), None


def test_evaluation_reports_the_planners_share_of_its_own_steps_only():
    from vmil.evaluate import run_episodes

    agent = PlanningAgent()
    result = run_episodes(CountingEnv(length=5), agent, 1, episodes=3)  # steps 7..21; 7, 10, 13, 16, 19 replaced
    assert result.plan_replaced_fraction == pytest.approx(5 / 15)
    assert result.summary(None)["plan_replaced_fraction"] == pytest.approx(5 / 15)
    assert run_episodes(CountingEnv(), agent, 1, 1, explore=True).plan_replaced_fraction is None
    assert "plan_replaced_fraction" not in run_episodes(CountingEnv(), LinearAgent(Config(), CountingEnv().spec),
                                                        2, 1).summary(None)


def _expert_replay(env: CountingEnv, episodes: int = 2) -> Replay:
    from vmil.data.episode import EpisodeBuilder

    replay = Replay(env.spec, 1000, torch.device("cpu"))
    builder = EpisodeBuilder(env.spec)
    for _ in range(episodes):
        ts = env.reset()
        builder.start(ts)
        while not ts.last:
            action = np.array([0.5, -0.5], np.float32)
            ts = env.step(action)
            builder.add(action, ts)
        replay.add_episode(builder.finish())
    return replay


def _run_config(**train: Any) -> RunConfig:
    schedule = dict(env_steps=40, prefill_steps=10, update_every=3, updates_per_round=2, eval_every=20,
                    eval_episodes=2, checkpoint_every=20, log_every=10, video=False, max_bad_updates=3)
    schedule.update(train)
    return RunConfig(algo="fake", seed=0, device="cpu", train=TrainConfig(**schedule), agent=Config())


def _fake_runner(tmp_path: Path, cfg: RunConfig, agent_cfg: Config = Config()) -> tuple[Runner, LinearAgent, MemoryTracker]:
    env, eval_env = CountingEnv(), CountingEnv()
    agent = LinearAgent(agent_cfg, env.spec)
    tracker = MemoryTracker()
    runner = Runner(cfg, env, agent, Replay(env.spec, 1000, torch.device("cpu"), directory=tmp_path / "episodes"),
                    _expert_replay(CountingEnv()), tracker, tmp_path, eval_env, expert_return=-2.0, quiet=True)
    return runner, agent, tracker


# ---------------------------------------------------------------------------------------------


def test_runner_schedule_frame_stacks_and_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = _run_config()
    runner, agent, tracker = _fake_runner(tmp_path, cfg)
    summary = runner.run()
    runner.close()
    assert runner.env.closed and runner.eval_env.closed

    # Updates: every 3rd step after the 10 prefill steps (episodes of 5 fill the replay by then), 2 each.
    rounds = [s for s in range(1, 41) if s >= 10 and s % 3 == 0]
    assert summary["updates"] == 2 * len(rounds) == len(agent.batches)
    assert [step for _, _, step in agent.batches] == [s for s in rounds for _ in range(2)]
    batch, expert, _ = agent.batches[0]
    assert batch.obs.shape == (4, 6, 8, 8) and expert.obs.shape == (4, 6, 8, 8)
    assert torch.all(expert.action == torch.tensor([0.5, -0.5]))

    # No policy actions during prefill: training acts = 40 - 10, evaluation acts = 2 evals x 2 episodes x 5.
    train_acts = [a for a in agent.acts if a[2]]
    eval_acts = [a for a in agent.acts if not a[2]]
    assert len(train_acts) == 30 and len(eval_acts) == 2 * 2 * 5
    # Frame stacks: an episode starts with two copies of its first frame, then [previous, current].
    for image, first, _ in agent.acts:
        a, b = image[:3], image[3:]
        if first:
            np.testing.assert_array_equal(a, b)
        else:
            assert int(b[0, 0, 0]) == int(a[0, 0, 0]) + 1

    # Episodes: 40 steps / 5 per episode, all written to disk as they ended.
    assert len(list((tmp_path / "episodes").glob("ep_*_T5.npz"))) == 8 == runner.episodes

    evals = tracker.history("eval/return_mean")
    assert [s for s, _ in evals] == [20, 40]
    assert [s for s, _ in tracker.history("train/loss")] == [10, 20, 30, 40][1:]  # no update before step 12
    assert tracker.history("updates_per_second")
    assert tracker.status == "FINISHED"
    assert "strip/step_00000020" in tracker.images and "strip/step_00000040" in tracker.images

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    assert set(saved) >= {"algo", "env", "seed", "env_steps", "updates", "wall_seconds", "eval_return_mean",
                          "eval_return_std", "expert_return", "normalized_score", "mlflow_run_id"}
    assert saved["env_steps"] == 40 and saved["eval_return_mean"] == evals[-1][1]
    assert saved["normalized_score"] is None  # the expert's return is negative here
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt", algo="fake")
    assert payload["counters"]["env_steps"] == 40 and payload["counters"]["updates"] == summary["updates"]
    assert (tmp_path / "config.yaml").is_file()


def test_runner_logs_the_planners_share_of_each_evaluation(tmp_path):
    runner, agent, tracker = _fake_runner(tmp_path, _run_config())
    planner = PlanningAgent()
    agent.plan_counts = planner.plan_counts

    def act(obs: Obs, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        planner.act(obs, state, explore)
        return LinearAgent.act(agent, obs, state, explore)

    agent.act = act
    runner.run()
    runner.close()
    # Two evaluations of 2 episodes x 5 steps from step 7: 7, 10, 13, 16 of 7..16, then 19, 22, 25 of 17..26.
    assert tracker.history("eval/plan_replaced_fraction") == [(20, pytest.approx(0.4)), (40, pytest.approx(0.3))]


def test_pretrain_burst_runs_once_before_the_first_round_and_not_again_on_resume(tmp_path):
    rounds = [s for s in range(1, 41) if s >= 10 and s % 3 == 0]
    runner, agent, _ = _fake_runner(tmp_path / "a", _run_config(pretrain_updates=5))
    summary = runner.run()
    runner.close()
    assert summary["updates"] == 5 + 2 * len(rounds)
    assert [step for _, _, step in agent.batches] == [rounds[0]] * 5 + [s for s in rounds for _ in range(2)]
    # A resumed run carries its update counter, which already covers the burst.
    runner, agent, _ = _fake_runner(tmp_path / "b", _run_config(pretrain_updates=5))
    runner.updates = 5
    runner.run()
    runner.close()
    assert len(agent.batches) == 2 * len(rounds)
    with pytest.raises(ConfigError, match="pretrain_updates"):
        TrainConfig(pretrain_updates=-1)
    for name in ("update_every", "eval_every", "checkpoint_every", "log_every", "eval_episodes", "max_bad_updates"):
        with pytest.raises(ConfigError, match=f"train.{name} must be >= 1"):
            TrainConfig(**{name: 0})
    for name in ("env_steps", "offline_updates"):
        with pytest.raises(ConfigError, match=f"train.{name} must be >= 0"):
            TrainConfig(**{name: -1})


def test_runner_stops_on_divergence_and_keeps_the_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = _run_config(env_steps=200, checkpoint_every=15, eval_every=1000, update_every=1, updates_per_round=1)
    runner, agent, tracker = _fake_runner(tmp_path, cfg, Config(diverge_after=21))
    with pytest.raises(TrainingDiverged, match=r"3 consecutive updates had a non-finite loss.*step 15"):
        runner.run()
    # Updates started at step 10; update 21 (step 30) was the first skipped, 23 (step 32) the third.
    assert agent.updates == 23 and runner.env_steps == 32
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert payload["counters"]["env_steps"] == 15  # step 30's checkpoint was not written while diverging
    assert tracker.status == "FAILED" and tracker.tags["status"] == "diverged"
    assert sum(v for _, v in tracker.history("train/skipped")) == 3.0  # logged at step 30 and on stopping


def test_checkpoint_rng_round_trip_and_errors(tmp_path):
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    np.random.seed(2)
    import random
    random.seed(3)
    state = rng_state({"sampler": g})
    path = save_checkpoint(tmp_path / "c.pt", algo="bc", agent_state={"w": torch.ones(2)}, counters={"env_steps": 7},
                           config={"algo": "bc"}, rng=state)
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    g.manual_seed(99)
    payload = load_checkpoint(path, algo="bc")
    set_rng_state(payload["rng"], {"sampler": g})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])
    assert payload["counters"] == {"env_steps": 7} and not list(tmp_path.glob("*.tmp"))

    with pytest.raises(CheckpointError, match=r"checkpoint of algorithm 'bc', cannot load it into 'vmil'"):
        load_checkpoint(path, algo="vmil")
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="t.pt: cannot read the checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "o.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(CheckpointError, match="not a vmil checkpoint"):
        load_checkpoint(other)


def _metrics_without_time(tracker: MemoryTracker) -> list[tuple[int, dict[str, float]]]:
    timing = {"wall_seconds", "updates_per_second", "env_steps_per_second"}
    return [(s, {k: v for k, v in m.items() if k not in timing}) for s, m in tracker.metrics]


def test_same_seed_same_metrics(tmp_path, toy_demos):
    """Two smoke runs with one seed give identical metrics (BC offline and an online agent)."""
    from imitation.bc import Config as BCConfig

    results = []
    for i in range(2):
        cfg = resolve("bc", BCConfig, "toy:reach", "smoke", ["seed=3"])
        runner = build_run(cfg, toy_demos, tmp_path / f"bc{i}", tracking_uri="none", quiet=True)
        runner.run()
        runner.close()
        results.append(_metrics_without_time(runner.tracker))
    assert results[0] == results[1]
    assert any("train/loss" in m for _, m in results[0]) and any("eval/return_mean" in m for _, m in results[0])

    online = []
    for i in range(2):
        torch.manual_seed(0)  # the fake runner is wired by hand, without build_run's seeding
        runner, agent, tracker = _fake_runner(tmp_path / f"fake{i}", _run_config(env_steps=30))
        runner.run()
        online.append((_metrics_without_time(tracker), [a[0].tobytes() for a in agent.acts]))
    assert online[0] == online[1]


def test_build_run_refuses_an_existing_run(tmp_path, toy_demos):
    from imitation.bc import Config as BCConfig

    cfg = resolve("bc", BCConfig, "toy:reach", "smoke", ["train.offline_updates=2", "train.eval_every=2"])
    runner = build_run(cfg, toy_demos, tmp_path / "run", tracking_uri="none", quiet=True)
    runner.run()
    runner.close()
    with pytest.raises(RunError, match="already holds a run; continue it with `vmil train --resume"):
        build_run(cfg, toy_demos, tmp_path / "run", tracking_uri="none")
    with pytest.raises(RunError, match="holds no vmil run"):
        resume_run(tmp_path)


def test_run_sets_the_dense_backend_and_names_the_valid_ones(tmp_path, toy_demos, monkeypatch):
    from imitation.bc import Config as BCConfig
    from vmil.dense import dense_backend, using_dense_backend

    with pytest.raises(ConfigError, match="'onedn' is not one of \\['auto', 'onednn', 'blas'\\].*onednn"):
        resolve("bc", BCConfig, "toy:reach", "smoke", ["dense_backend=onedn"])
    cfg = resolve("bc", BCConfig, "toy:reach", "smoke", ["dense_backend=blas"])
    with using_dense_backend("onednn"):
        build_run(cfg, toy_demos, tmp_path / "run", tracking_uri="none", quiet=True).close()
        assert dense_backend() == "blas"
    # The default picks by the CPU's vendor.
    import vmil.dense
    default = resolve("bc", BCConfig, "toy:reach", "smoke")
    assert default.dense_backend == "auto"
    monkeypatch.setattr(vmil.dense, "cpu_vendor", lambda: "GenuineIntel")
    with using_dense_backend("onednn"):
        build_run(default, toy_demos, tmp_path / "intel", tracking_uri="none", quiet=True).close()
        assert dense_backend() == "blas"


def test_resume_after_sigkill(tmp_path, toy_demos, monkeypatch):
    """A run killed with SIGKILL continues from its last checkpoint: the step counter goes on from
    there and every episode written before the kill is kept and reloaded."""
    run_dir = tmp_path / "run"
    script = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from vmil import registry; "
              "registry.ALGOS['fake-online'] = 'test_runner'; from vmil.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["train", "--algo", "fake-online", "--env", "toy:reach", "--demos", str(toy_demos), "--preset", "smoke",
            "--run-dir", str(run_dir), "--tracking-uri", "none", "train.env_steps=1000000", "train.prefill_steps=20",
            "train.checkpoint_every=40", "train.eval_every=1000000", "train.log_every=40", "train.update_every=2",
            "env.max_episode_steps=10", "agent.diverge_after=-1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": "egl"}
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.exists() and load_checkpoint(ckpt)["counters"]["env_steps"] >= 120:
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()}")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint past step 120 within 120 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    counters = load_checkpoint(ckpt)["counters"]
    before = {p.name: p.read_bytes() for p in (run_dir / "episodes").glob("*.npz")}
    assert len(before) >= counters["episodes"] >= 12
    target = counters["env_steps"] + 30

    monkeypatch.setitem(__import__("vmil.registry").registry.ALGOS, "fake-online", "test_runner")
    monkeypatch.syspath_prepend(str(HERE))
    with pytest.raises(ConfigError, match="only train.\\* keys"):
        resume_run(run_dir, ["agent.lr=1"])
    runner = resume_run(run_dir, [f"train.env_steps={target}"], quiet=True)
    assert (runner.env_steps, runner.updates) == (counters["env_steps"], counters["updates"])
    assert runner.replay.num_episodes == len(before)  # episodes after the last checkpoint too
    summary = runner.run()
    runner.close()
    assert summary["env_steps"] == target
    assert summary["updates"] == counters["updates"] + 15  # one update every 2 of the 30 new steps
    after = {p.name: p.read_bytes() for p in (run_dir / "episodes").glob("*.npz")}
    assert all(after[name] == data for name, data in before.items())
    assert len(after) == len(before) + 3  # 30 steps = 3 new episodes of 10, numbered after the old ones
    assert sorted(after)[-1].startswith(f"ep_{len(before) + 2:06d}")
    assert load_checkpoint(ckpt)["counters"]["env_steps"] == target
