"""Learning checks (slow): PPO on the true reward and RM-L-L from 10 observation-only demos on
toy:reach within their `cpu` budgets; GAIfO's score reported beside them (no threshold)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _train(tmp_path, algo: str, demos: int = 10):
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    cfg = resolve(algo, algo_module(algo).Config, "toy:reach", "cpu", ["train.video=false", "seed=0"])
    info = record("toy:reach", "scripted", demos, tmp_path / "demos", image_size=cfg.env.image_size,
                  action_repeat=cfg.env.action_repeat, grayscale=cfg.env.grayscale, quiet=True)
    runner = build_run(cfg, info.directory, tmp_path / "run", "none", quiet=True)
    try:
        return runner.run()
    finally:
        runner.close()


def test_ppo_reaches_most_of_the_expert_on_the_true_reward(tmp_path):
    summary = _train(tmp_path, "ppo")
    assert summary["normalized_score"] >= 0.8, summary


def test_rm_l_l_imitates_ten_observation_only_demos(tmp_path):
    summary = _train(tmp_path, "rm-l-l")
    assert summary["normalized_score"] >= 0.8, summary


def test_gaifo_beside_them(tmp_path, capsys):
    summary = _train(tmp_path, "gaifo")
    with capsys.disabled():
        print(f"\ngaifo on toy:reach (cpu preset, 10 demos): normalised score {summary['normalized_score']:.2f}")
    assert summary["normalized_score"] is not None
