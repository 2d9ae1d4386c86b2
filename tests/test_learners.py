"""Gradient averaging over learners (torch.distributed, gloo on the CPU): parameters stay equal on
every learner, a failing learner stops the others with a clear message, `vmil train --learners 2`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _updates(rank: int, out: str) -> None:
    """Three PPO updates on this learner's own rollouts (seeded by rank); parameters to a file."""
    from tests.test_ppo import TINY, SPEC, make_rollout
    from vmil.rl.ppo import build

    torch.manual_seed(100 + rank)  # different initial weights: learner 0's are broadcast
    agent = build(TINY, SPEC, torch.device("cpu"))
    for i in range(3):
        agent.update(make_rollout(seed=10 * rank + i), None, i)
    flat = torch.cat([p.detach().reshape(-1) for p in list(agent.policy.parameters()) + list(agent.value.parameters())]
                     + [agent.obs_norm.mean.reshape(-1)])
    torch.save(flat, Path(out) / f"rank{rank}.pt")


def _fails_on_rank_one(rank: int) -> None:
    import torch.distributed as dist

    if rank == 1:
        raise RuntimeError("learner one broke")
    dist.barrier()  # learner 0 waits for a learner that never comes: it must be stopped


def test_two_learners_keep_identical_parameters(tmp_path):
    from vmil.rl.distributed import launch

    launch(2, _updates, (str(tmp_path),))
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(a, b)
    # One learner alone on learner 1's data ends elsewhere: the equality above came from the averaging.
    _updates(1, str(tmp_path))
    assert not torch.equal(a, torch.load(tmp_path / "rank1.pt", weights_only=True))


def test_a_failing_learner_stops_the_others_with_a_message():
    from vmil.rl.distributed import LearnerFailed, launch

    with pytest.raises(LearnerFailed, match="learner 1 failed .*learner one broke.*the others were stopped"):
        launch(2, _fails_on_rank_one)


def test_train_with_two_learners_through_the_cli(tmp_path, capsys):
    from vmil.cli import main
    from vmil.demos import record

    record("toy:reach", "scripted", 2, tmp_path / "demos", image_size=32, grayscale=True, quiet=True)
    run = tmp_path / "run"
    code = main(["train", "--algo", "gaifo", "--env", "toy:reach", "--demos", str(tmp_path / "demos"), "--preset",
                 "smoke", "--learners", "2", "--run-dir", str(run), "--tracking-uri", "none", "train.video=false"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out[:out.index("\n}") + 2])
    assert summary["updates"] == 4 and (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "learners").exists()  # learner 1 wrote nothing into the run
    # Resume with more steps: both learners load learner 0's checkpoint and train on together.
    assert main(["train", "--resume", str(run), "--learners", "2", "train.env_steps=180"]) == 0
    out = capsys.readouterr().out
    resumed = json.loads(out[:out.index("\n}") + 2])
    assert resumed["updates"] > 4 and resumed["env_steps"] >= 180
    assert main(["train", "--algo", "bc", "--env", "toy:reach", "--demos", str(tmp_path / "demos"), "--preset",
                 "smoke", "--learners", "2", "--tracking-uri", "none"]) == 1
    assert "on-policy" in capsys.readouterr().err


def test_more_cpu_learners_than_cores_warns(monkeypatch, capsys):
    from vmil.rl import distributed

    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 2)
    assert distributed.warn_oversubscribed(3, "gloo") and "3 learners on 2 CPU cores" in capsys.readouterr().err
    assert not distributed.warn_oversubscribed(2, "gloo") and not distributed.warn_oversubscribed(8, "nccl")


def test_the_earliest_reported_failure_is_named_not_the_first_exit_seen(tmp_path):
    from vmil.rl.distributed import _first_failure

    assert _first_failure(str(tmp_path)) is None
    # Learner 0 lost its peer after learner 1 broke: its report is later, whatever order they exit in.
    (tmp_path / "failure_0.txt").write_text("1700000000.5\nRuntimeError: Connection reset by peer")
    (tmp_path / "failure_1.txt").write_text("1700000000.25\nRuntimeError: learner one broke")
    assert _first_failure(str(tmp_path)) == (1, "RuntimeError: learner one broke")
