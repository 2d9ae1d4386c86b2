"""sawyer:peg_insert, baoding:ccw/cw and the MPPI expert (needs `pip install -e .[robotics]`)."""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

import vmil.envs as envs
from vmil.envs import EnvError, FamilyUnavailable

_MISSING = [name for name in ("metaworld", "gymnasium_robotics", "mujoco") if importlib.util.find_spec(name) is None]
robotics = pytest.mark.skipif(bool(_MISSING), reason=f"robotics extra not installed (missing {', '.join(_MISSING)}); "
                                                      "pip install -e .[robotics]")


def _rollout(env, actions):
    steps = [env.reset()]
    for a in actions:
        steps.append(env.step(a))
    return steps


# ---------------------------------------------------------------------------------------------
# Missing extra: a clear message naming the extra (runs with or without the extra installed).


def test_sawyer_without_metaworld_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld.envs.sawyer_peg_insertion_side_v3", None)
    with pytest.raises(FamilyUnavailable, match=r"pip install -e \.\[robotics\]"):
        envs.make("sawyer:peg_insert")


def test_baoding_without_gymnasium_robotics_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gymnasium_robotics" else real(name, *a))
    with pytest.raises(FamilyUnavailable, match=r"pip install -e \.\[robotics\]"):
        envs.make("baoding:ccw")


# ---------------------------------------------------------------------------------------------
# Sawyer


@pytest.fixture(scope="module")
def sawyer_env():
    env = envs.make("sawyer:peg_insert", image_size=64, action_repeat=2, seed=0, proprio=True)
    yield env
    env.close()


@robotics
def test_sawyer_spec_shapes_and_dtypes(sawyer_env):
    spec = sawyer_env.spec
    assert (spec.obs_shape, spec.action_dim, spec.state_dim) == ((3, 64, 64), 4, 4)
    assert spec.max_episode_steps == 250 and spec.action_repeat == 2 and spec.camera == "corner"
    ts = sawyer_env.reset()
    assert ts.first and not ts.last and ts.reward == 0.0
    assert ts.obs.shape == (3, 64, 64) and ts.obs.dtype == np.uint8 and ts.obs.std() > 5  # a real picture
    assert ts.state.shape == (4,) and ts.state.dtype == np.float32
    np.testing.assert_allclose(ts.state[:3], sawyer_env.expert_observation()[:3])
    assert sawyer_env.expert_observation().shape == (39,)
    ts = sawyer_env.step(np.array([1.0, 0.0, 0.0, -1.0]))
    assert ts.obs.shape == (3, 64, 64) and not ts.first and isinstance(ts.reward, float)
    assert ts.info["success"] is False and ts.state[0] > sawyer_env.hand_start[0]  # moved along +x


@robotics
def test_sawyer_arm_start_is_randomised_and_reached():
    starts = []
    for seed in (0, 1):
        env = envs.make("sawyer:peg_insert", seed=seed, render=False, proprio=True)
        ts = env.reset()
        # The mocap weld leaves the hand ~7 mm from its target; Meta-World's fixed start does the same.
        assert np.linalg.norm(ts.state[:3] - env.hand_start) < 0.015
        from vmil.envs.sawyer import HAND_START_HIGH, HAND_START_LOW

        assert np.all(env.hand_start >= HAND_START_LOW) and np.all(env.hand_start <= HAND_START_HIGH)
        starts.append(ts.state[:3])
        second = env.reset().state[:3]  # resets draw new starts too
        assert np.linalg.norm(second - starts[-1]) > 0.01
        env.close()
    pairwise = [np.linalg.norm(a - b) for i, a in enumerate(starts) for b in starts[i + 1:]]
    assert min(pairwise) > 0.02, pairwise


@robotics
def test_sawyer_is_deterministic_for_a_seed():
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 4))
    a = _rollout(envs.make("sawyer:peg_insert", image_size=32, seed=3, proprio=True), actions)
    b = _rollout(envs.make("sawyer:peg_insert", image_size=32, seed=3, proprio=True), actions)
    c = envs.make("sawyer:peg_insert", render=False, seed=4, proprio=True).reset()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.state, y.state)
        assert x.reward == y.reward
    assert not np.array_equal(a[0].state, c.state)


@robotics
def test_sawyer_episode_ends_at_the_time_limit_and_grayscale():
    env = envs.make("sawyer:peg_insert", image_size=32, grayscale=True, max_episode_steps=3, seed=0)
    steps = _rollout(env, np.zeros((3, 4)))
    assert env.spec.state_dim == 0 and steps[-1].state is None  # pixels only unless proprio=True
    assert [s.last for s in steps] == [False, False, False, True]
    assert not any(s.terminal for s in steps) and steps[-1].info["time_limit"]
    assert steps[-1].obs.shape == (1, 32, 32) and steps[-1].obs.dtype == np.uint8
    with pytest.raises(EnvError, match="reset"):
        env.step(np.zeros(4))
    env.close()


@robotics
def test_sawyer_corner_camera_is_upright(sawyer_env):
    # Upright, the featureless backdrop fills the top-left corner and the table stand/floor the
    # bottom-left one; Meta-World's raw corner render has them the other way round.
    frame = sawyer_env.reset().obs.astype(np.float32).mean(0)
    assert frame[:8, :16].std() < 1.0 and frame[-8:, :16].std() > 5.0


@robotics
def test_sawyer_scripted_expert_inserts_the_peg():
    from vmil.envs.sawyer import scripted_expert

    env = envs.make("sawyer:peg_insert", seed=0, render=False, max_episode_steps=150)
    expert = scripted_expert(env)
    ts = env.reset()
    expert.reset()
    while not ts.last:
        action = expert.act(ts)
        assert action.shape == (4,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
        ts = env.step(action)
        if ts.info["episode_success"]:
            break
    assert ts.info["episode_success"], "scripted expert did not insert the peg within 150 agent steps"
    env.close()


@robotics
@pytest.mark.parametrize("kwargs, match", [
    ({"camera": "nope"}, "unknown camera 'nope'; valid cameras: corner"),
    ({"camera": 99}, "camera index 99 is out of range"),
    ({"image_size": 4}, "image_size must be an integer"),
])
def test_sawyer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        envs.make("sawyer:peg_insert", **kwargs)


def test_unknown_robotics_tasks():
    with pytest.raises(ValueError, match="valid: sawyer:peg_insert"):
        envs.make("sawyer:peg_insrt")
    with pytest.raises(ValueError, match="valid: baoding:ccw, baoding:cw"):
        envs.make("baoding:clockwise")


# ---------------------------------------------------------------------------------------------
# Baoding


@pytest.fixture(scope="module")
def bao():
    env = envs.make("baoding:ccw", image_size=64, action_repeat=1, seed=0)
    yield env
    env.close()


def test_baoding_reward_formula_by_hand():
    from vmil.envs.baoding import baoding_reward

    balls = np.array([[0.01, 0.02, 0.15], [0.03, -0.01, 0.05]])  # ball 2 below 0.06: dropped
    targets = np.zeros((2, 2))
    reward, dropped, dist = baoding_reward(balls, targets, 0.2)  # wrist past 0.15
    np.testing.assert_allclose(dist, [math.hypot(0.01, 0.02), math.hypot(0.03, 0.01)])
    assert dropped
    assert reward == pytest.approx(-5 * (math.hypot(0.01, 0.02) + math.hypot(0.03, 0.01)) - 500 - 10)
    balls[1, 2] = 0.15
    reward, dropped, _ = baoding_reward(balls, targets, 0.1)
    assert not dropped and reward == pytest.approx(-5 * (math.hypot(0.01, 0.02) + math.hypot(0.03, 0.01)))


def test_baoding_success_definition():
    from vmil.envs.baoding import episode_success

    good = np.full((100, 2), 0.03)
    good[75:] = 0.015  # the last 25 steps track within 2 cm
    assert episode_success(good, dropped=False)
    assert not episode_success(good, dropped=True)
    bad = good.copy()
    bad[75:, 1] = 0.025  # ball 2 too far on average
    assert not episode_success(bad, dropped=False)


@robotics
def test_baoding_spec_shapes_and_dtypes(bao):
    spec = bao.spec
    assert (spec.obs_shape, spec.action_dim, spec.state_dim, spec.max_episode_steps) == ((3, 64, 64), 20, 48, 100)
    ts = bao.reset()
    assert ts.obs.shape == (3, 64, 64) and ts.obs.dtype == np.uint8 and ts.obs.std() > 5
    assert ts.state.shape == (48,) and ts.state.dtype == np.float32
    assert bao.expert_observation().shape == (66,)
    ts = bao.step(np.zeros(20))
    assert not ts.terminal and not ts.last and bao.t == 1
    assert np.all(bao.balls()[:, 2] > 0.12)  # resting on the palm, not dropped


@robotics
@pytest.mark.parametrize("task, sign", [("ccw", 1), ("cw", -1)])
def test_baoding_targets_circle_the_palm(task, sign):
    from vmil.envs.baoding import PERIOD, RADIUS

    env = envs.make(f"baoding:{task}", render=False, action_repeat=1, seed=0)
    env.reset()
    m, d = env.model, env.data
    site = m.site("baoding:centre").id
    centre, axes = d.site_xpos[site], d.site_xmat[site].reshape(3, 3)
    x_axis, z_axis = axes[:, 0], axes[:, 2]
    np.testing.assert_allclose(env.targets(0), [centre - RADIUS * x_axis, centre + RADIUS * x_axis], atol=1e-9)
    quarter = env.targets(PERIOD // 4)  # a quarter turn later
    np.testing.assert_allclose(quarter, [centre - sign * RADIUS * z_axis, centre + sign * RADIUS * z_axis], atol=1e-9)
    np.testing.assert_allclose(env.targets(PERIOD), env.targets(0), atol=1e-9)
    # ccw seen from above: the turn from t=0 to a quarter has a positive world-z component.
    turn = np.cross(env.targets(0)[1] - centre, quarter[1] - centre)
    assert np.sign(turn[2]) == sign
    env.close()


@robotics
def test_baoding_step_reward_matches_hand_computation(bao):
    bao.reset()
    start = bao.targets(0)
    bao.set_ball_positions(start[0] + [0.01, 0.0, 0.0], start[1] + [0.0, -0.01, 0.0])
    ts = bao.step(np.zeros(20))
    balls, goal = bao.balls(), bao.targets(0)  # targets of step 0 in the palm frame after the step
    expected = -5.0 * (np.linalg.norm(balls[0, :2] - goal[0, :2]) + np.linalg.norm(balls[1, :2] - goal[1, :2]))
    assert ts.reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert -0.5 < ts.reward < 0.0


@robotics
def test_baoding_drop_gives_minus_500_and_ends(bao):
    bao.reset()
    bao.step(np.zeros(20))
    bao.set_ball_positions(np.array([0.3, 0.3, 0.028]), bao.balls()[1])  # ball 1 on the floor
    ts = bao.step(np.zeros(20))
    ball1, goal = bao.balls()[0], bao.targets(1)[0]
    assert ts.terminal and ts.last and ts.info["dropped"] and ts.info["success"] is False
    assert ts.reward < -500.0
    expected = -500.0 - 5.0 * (np.linalg.norm(ball1[:2] - goal[:2]) + np.linalg.norm(bao.balls()[1, :2] - bao.targets(1)[1, :2]))
    assert ts.reward == pytest.approx(expected, rel=1e-9)
    with pytest.raises(EnvError, match="reset"):
        bao.step(np.zeros(20))


@robotics
def test_baoding_time_limit_and_action_repeat():
    env = envs.make("baoding:cw", render=False, action_repeat=2, max_episode_steps=3)
    assert env.spec.max_episode_steps == 3
    steps = _rollout(env, np.zeros((3, 20)))
    assert [s.last for s in steps] == [False, False, False, True] and env.t == 6
    assert not steps[-1].terminal and isinstance(steps[-1].info["success"], bool)
    assert envs.make("baoding:cw", render=False, action_repeat=2).spec.max_episode_steps == 50
    no_proprio = envs.make("baoding:cw", render=False, proprio=False)
    assert no_proprio.spec.state_dim == 0 and no_proprio.reset().state is None
    env.close()


@robotics
def test_baoding_is_deterministic_for_a_seed():
    actions = np.random.default_rng(1).uniform(-0.5, 0.5, (3, 20))
    a = _rollout(envs.make("baoding:ccw", image_size=32, seed=5), actions)
    b = _rollout(envs.make("baoding:ccw", image_size=32, seed=5), actions)
    c = envs.make("baoding:ccw", image_size=32, seed=6).reset()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.state, y.state)
        assert x.reward == y.reward
    assert not np.array_equal(a[0].state, c.state)


@robotics
@pytest.mark.parametrize("kwargs, match", [
    ({"camera": "overhead"}, "unknown camera 'overhead'; valid cameras: top, front, side"),
    ({"image_size": 2048}, r"image_size must be an integer in \[8, 1024\]"),
])
def test_baoding_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        envs.make("baoding:ccw", **kwargs)


@robotics
def test_planned_returns_match_the_env():
    """evaluate_sequences (rollouts on state copies) reproduces what the env itself collects."""
    a, b = (envs.make("baoding:ccw", render=False, action_repeat=1, seed=7) for _ in range(2))
    for env in (a, b):
        env.reset()
        env.step(np.zeros(20))
    before = a.snapshot()
    seqs = np.random.default_rng(2).uniform(-0.3, 0.3, (2, 3, 20))
    planned = a.evaluate_sequences(seqs, timestep=None)
    np.testing.assert_array_equal(a.snapshot(), before)  # planning left the env untouched
    for env, seq, value in zip((a, b), seqs, planned):
        total = sum(env.step(act).reward for act in seq)
        # Rollouts start without the solver's warm start, so agreement is close, not bitwise.
        assert value == pytest.approx(total, rel=1e-3, abs=1e-4)
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------------
# MPPI


def test_mppi_weights_by_hand():
    from vmil.experts.mpc import mppi_weights

    w = mppi_weights(np.array([0.0, -0.1, -1.0]), kappa=20.0)
    raw = np.array([1.0, math.exp(-2.0), math.exp(-20.0)])
    np.testing.assert_allclose(w, raw / raw.sum())


def test_mppi_finds_the_optimum_of_a_known_objective():
    from vmil.experts.mpc import MPPI

    goal = np.array([0.5, -0.3])
    planner = MPPI(2, horizon=4, samples=64, kappa=50.0, sigma=0.3, beta=0.7, seed=0)
    for _ in range(40):
        action = planner.plan(lambda u: -((u - goal) ** 2).sum(axis=(1, 2)))
    np.testing.assert_allclose(action, goal, atol=0.05)
    cands = planner.candidates()
    assert cands.shape == (64, 4, 2) and np.all(np.abs(cands) <= 1.0)


@robotics
def test_mpc_expert_protocol(bao):
    from vmil.envs.baoding import mpc_expert

    expert = mpc_expert(bao, horizon=2, samples=4)
    ts = bao.reset()
    expert.reset()
    action = expert.act(ts)
    assert action.shape == (20,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
    assert len(expert.seconds_per_step) == 1 and expert.seconds_per_step[0] > 0
    with pytest.raises(TypeError, match="evaluate_sequences"):
        from vmil.experts.mpc import MPPIExpert

        MPPIExpert(envs.make("toy:reach"))


@robotics
@pytest.mark.slow
def test_mpc_expert_rotates_the_balls():
    """30 control steps (half a turn) of the default MPPI expert: no drop, both balls track (~50 CPU-s)."""
    from vmil.envs.baoding import SUCCESS_DIST
    from vmil.experts import make_expert

    env = envs.make("baoding:ccw", render=False, action_repeat=1, max_episode_steps=30, seed=0)
    expert = make_expert("mpc", env)
    ts = env.reset()
    expert.reset()
    distances = []
    while not ts.last:
        ts = env.step(expert.act(ts))
        distances.append(ts.info["ball_distance"])
    assert not ts.info["dropped"] and ts.info["success"]
    assert np.mean(distances[-10:]) < SUCCESS_DIST


@robotics
def test_mpc_options_reach_the_planner(bao):
    """`vmil demos record --expert mpc samples=7 horizon=3` passes its options through make_expert."""
    from vmil.experts import make_expert

    expert = make_expert("mpc", bao, samples=7, horizon=3, kappa=5)
    assert expert.planner.samples == 7 and expert.planner.horizon == 3 and expert.planner.kappa == 5.0
    with pytest.raises(ValueError, match="unknown mpc expert option 'horizn'; did you mean horizon"):
        make_expert("mpc", bao, horizn=3)


# ---------------------------------------------------------------------------------------------
# VMIL trains on both robotics envs through the CLI (smoke preset; Baoding with image + proprio)


@robotics
@pytest.mark.parametrize("env_id,expert,extra", [
    ("sawyer:peg_insert", "scripted", []),
    # a tiny planner keeps the MPC demos cheap; VMIL encodes and reconstructs the hand's proprioception
    ("baoding:ccw", "mpc", ["samples=8", "horizon=2"]),
])
def test_vmil_smoke_trains_on_the_robotics_envs(env_id, expert, extra, tmp_path, capsys):
    import json

    from vmil.cli import main

    demos = tmp_path / "demos"
    assert main(["demos", "record", "--env", env_id, "--expert", expert, "--episodes", "1", "--out", str(demos),
                 "--algo", "vmil", "--preset", "smoke", "--max-episode-steps", "16", *extra]) == 0
    proprio = ["agent.model.proprio=true"] if env_id.startswith("baoding") else []
    run = tmp_path / "run"
    assert main(["train", "--algo", "vmil", "--env", env_id, "--demos", str(demos), "--preset", "smoke",
                 "--run-dir", str(run), "--tracking-uri", "none", "train.env_steps=24", "train.prefill_steps=12",
                 "train.eval_every=24", "train.eval_episodes=1", "train.video=false", "env.max_episode_steps=16",
                 *proprio]) == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env"] == env_id and summary["updates"] >= 1 and math.isfinite(summary["eval_return_mean"])
