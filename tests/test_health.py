"""Health signals of adversarial imitation: the pure pieces against hand-written references, and
every adversarial algorithm's summary.json carrying them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from imitation.health import episode_sequence, pearson, stacked_pairs
from vmil.data.episode import Episode


def test_pearson_matches_numpy_and_is_undefined_for_a_constant():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y = 0.3 * x + y
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, np.ones(50)))
    with pytest.raises(ValueError, match="different lengths"):
        pearson(x, y[:10])


def _episode(T: int = 4, C: int = 1) -> Episode:
    obs = np.arange(T + 1, dtype=np.uint8)[:, None, None, None].repeat(C, 1).repeat(2, 2).repeat(2, 3)
    return Episode(obs=obs, action=np.arange(T, dtype=np.float32)[:, None] / 10,
                   reward=np.arange(T, dtype=np.float32) + 1, terminal=np.zeros(T, bool), state=None,
                   meta={"env_id": "test"})


def test_stacked_pairs_repeat_the_first_frame_and_shift_by_one():
    ep = _episode(T=4)
    s, s_next = stacked_pairs(ep.obs, 3)
    assert s.shape == (4, 3, 2, 2) and s_next.shape == (4, 3, 2, 2)
    # The newest frame is last; before the first frame the stack repeats it.
    expect = [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    for t in range(4):
        assert s[t, :, 0, 0].tolist() == expect[t]
        assert s_next[t, :, 0, 0].tolist() == expect[t + 1]


def test_episode_sequence_aligns_actions_and_rewards_with_the_frame_they_led_to():
    ep = _episode(T=4)
    b = episode_sequence(ep, torch.device("cpu"))
    assert b.obs.shape == (1, 5, 1, 2, 2)
    assert b.action[0, :, 0].tolist() == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])
    assert b.reward[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert b.is_first[0].tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("algo", ["vmil", "patchail-w", "shared-enc-ail"])
def test_adversarial_runs_write_health_signals_to_the_summary(tmp_path, algo):
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    cfg = resolve(algo, algo_module(algo).Config, "toy:reach", "smoke", ["train.video=false"])
    demos = tmp_path / "demos"
    record("toy:reach", "scripted", 2, demos, image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat,
           max_episode_steps=cfg.env.max_episode_steps, quiet=True)
    runner = build_run(cfg, demos, tmp_path / "run", tracking_uri=None, quiet=True)
    try:
        runner.run()
    finally:
        runner.close()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    keys = {"reward_true_corr", "disc_expert_acc", "disc_replay_acc"} | (
        {"disc_imagined_acc", "reward_imagined_mean", "reward_real_mean"} if algo == "vmil" else set())
    assert keys <= set(summary), sorted(keys - set(summary))
    assert summary["reward_true_corr"] is None or -1.0 <= summary["reward_true_corr"] <= 1.0
    for key in keys - {"reward_true_corr", "reward_real_mean", "reward_imagined_mean"}:
        assert 0.0 <= summary[key] <= 1.0


def test_health_signals_leave_the_training_random_streams_alone(tmp_path, toy_demos_obs):
    from vmil.config import resolve
    from vmil.registry import algo_module
    from vmil.runner import build_run

    cfg = resolve("vmil", algo_module("vmil").Config, "toy:reach", "smoke", ["train.video=false"])
    runner = build_run(cfg, toy_demos_obs, tmp_path / "run", tracking_uri=None, quiet=True)
    try:
        runner.run()
        sampler, torch_state = runner.generator.get_state(), torch.get_rng_state()
        from vmil.evaluate import run_episodes

        result = run_episodes(runner.eval_env, runner.agent, 1, 1, keep_episodes=True)
        health = runner._health(runner.agent.health, result.episodes)
        assert "reward_true_corr" in health
        assert torch.equal(runner.generator.get_state(), sampler)
        # run_episodes' deterministic policy draws nothing either
        assert torch.equal(torch.get_rng_state(), torch_state)
    finally:
        runner.close()
