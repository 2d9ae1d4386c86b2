"""Learning checks on a real MuJoCo task (slow: tens of minutes on one core each): the model-based
control on the true reward, and VMIL from observation-only demos, with their `cpu` presets on
dmc:cartpole_balance (issue targets: dreamer return >= 900 at 20k agent steps; VMIL >= 0.8 of the
demos' return at its budget)."""
from __future__ import annotations

import dataclasses

import pytest

from vmil.config import resolve
from vmil.registry import algo_module


def _run(tmp_path, algo: str, demos):
    from vmil.runner import build_run

    cfg = resolve(algo, algo_module(algo).Config, "dmc:cartpole_balance", "cpu", ["threads=1"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, video=False))
    runner = build_run(cfg, demos, tmp_path / "run", tracking_uri=None, quiet=True)
    try:
        return runner.run()
    finally:
        runner.close()


@pytest.mark.slow
def test_dreamer_balances_the_cartpole_from_pixels(tmp_path):
    summary = _run(tmp_path, "dreamer", None)
    assert summary["eval_return_mean"] >= 900, summary


@pytest.mark.slow
def test_vmil_balances_the_cartpole_from_observation_only_demos(tmp_path):
    from vmil.demos import record

    env = resolve("vmil", algo_module("vmil").Config, "dmc:cartpole_balance", "cpu").env
    demos = tmp_path / "demos"
    record("dmc:cartpole_balance", "scripted", 5, demos, image_size=env.image_size, action_repeat=env.action_repeat,
           quiet=True)
    summary = _run(tmp_path, "vmil", demos)
    assert summary["normalized_score"] >= 0.8, summary
    assert summary["reward_true_corr"] is not None and summary["reward_true_corr"] > 0, summary
