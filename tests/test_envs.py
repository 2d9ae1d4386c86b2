"""Env layer: ids and errors, toy and dmc families, determinism, episode ends, fast rendering,
the vector env against sequential envs, and the env benchmark."""
from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest

import vmil.envs as envs
from vmil.base import TimeStep
from vmil.envs import EnvError, FamilyUnavailable, toy
from vmil.envs.vector import VectorEnv


def run_episode(env, actions_seed: int = 0, limit: int = 10_000) -> list[TimeStep]:
    rng = np.random.default_rng(actions_seed)
    steps = [env.reset()]
    while not steps[-1].last and len(steps) <= limit:
        if env.spec.discrete:
            steps.append(env.step(int(rng.integers(env.spec.action_dim))))
        else:
            steps.append(env.step(rng.uniform(-1, 1, env.spec.action_dim)))
    return steps


# ---------------------------------------------------------------------------------------------
# ids, families, errors


def test_list_ids_and_families():
    ids = envs.list_ids()
    for env_id in ("toy:reach", "toy:reach_discrete", "dmc:cheetah_run", "dmc:ball_in_cup_catch",
                   "dmc:point_mass_easy", "dmc:humanoid_CMU_run", "dmc:quadruped_run"):
        assert env_id in ids
    families = envs.list_families()
    assert list(families)[:2] == ["toy", "dmc"]
    assert families["toy"]["available"] and families["toy"]["num_tasks"] == 2
    assert families["dmc"]["num_tasks"] == 51


def test_unknown_ids_name_the_nearest():
    with pytest.raises(ValueError, match="did you mean dmc:cheetah_run"):
        envs.make("dmc:cheeta_run")
    with pytest.raises(ValueError, match="did you mean toy:reach"):
        envs.make("toy:reech")
    with pytest.raises(ValueError, match="unknown env family 'dcm'; did you mean dmc"):
        envs.make("dcm:cheetah_run")
    with pytest.raises(ValueError, match="must look like family:task.*dmc:cheetah_run"):
        envs.make("cheetah_run")
    with pytest.raises(ValueError, match="no camera 'fixd'; did you mean fixed"):
        envs.make("dmc:cartpole_swingup", camera="fixd", render=False)
    with pytest.raises(ValueError, match="image_size"):
        envs.make("toy:reach", image_size=4)


def test_missing_family_module_and_dependency(tmp_path, monkeypatch):
    (tmp_path / "fake_family_with_dep.py").write_text("import package_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(envs.FAMILIES, "fakedep", ("fake_family_with_dep", "robotics"))
    monkeypatch.setitem(envs.FAMILIES, "fakemod", ("vmil.envs.no_such_family_module", None))
    with pytest.raises(FamilyUnavailable, match=r"package_that_is_not_installed_xyz.*pip install -e \.\[robotics\]"):
        envs.make("fakedep:task")
    with pytest.raises(FamilyUnavailable, match="module vmil.envs.no_such_family_module is missing"):
        envs.make("fakemod:task")
    families = envs.list_families()
    assert not families["fakedep"]["available"] and "robotics" in families["fakedep"]["reason"]
    assert not families["fakemod"]["available"]
    assert not any(i.startswith(("fakedep:", "fakemod:")) for i in envs.list_ids())


def test_dmc_task_names_with_underscores():
    from vmil.envs.dmc import split_task

    assert split_task("ball_in_cup_catch") == ("ball_in_cup", "catch")
    assert split_task("point_mass_easy") == ("point_mass", "easy")
    assert split_task("humanoid_CMU_run") == ("humanoid_CMU", "run")
    assert split_task("cartpole_swingup_sparse") == ("cartpole", "swingup_sparse")


def test_describe():
    info = envs.describe("dmc:reacher_easy", image_size=84)
    assert info["obs_shape"] == [3, 84, 84] and info["action_dim"] == 2 and info["expert_obs_dim"] == 6
    assert info["max_episode_steps"] == 500 and info["camera"] == "fixed"
    json.dumps(info)
    toy_info = envs.describe("toy:reach_discrete")
    assert toy_info["discrete"] and toy_info["action_dim"] == 5


# ---------------------------------------------------------------------------------------------
# toy


@pytest.mark.parametrize("task", ["reach", "reach_discrete"])
@pytest.mark.parametrize("size,gray", [(64, False), (84, True)])
def test_toy_shapes(task, size, gray):
    env = envs.make(f"toy:{task}", image_size=size, grayscale=gray, action_repeat=1)
    steps = run_episode(env)
    channels = 1 if gray else 3
    assert env.spec.obs_shape == (channels, size, size)
    assert all(ts.obs.shape == (channels, size, size) and ts.obs.dtype == np.uint8 for ts in steps)
    assert steps[0].first and not steps[0].last and steps[0].reward == 0.0
    assert len(steps) == 51 and steps[-1].last and not steps[-1].terminal
    assert all(ts.state is None for ts in steps)


def test_toy_drawing_and_reward_reference():
    env = envs.make("toy:reach", image_size=64, action_repeat=2, proprio=True)
    env.reset()
    env.agent, env.goal = np.array([0.25, 0.25]), np.array([0.75, 0.5])
    frame = env.render_frame()
    assert tuple(frame[:, 16, 16]) == toy.AGENT_COLOUR  # row = y * 64, column = x * 64
    assert tuple(frame[:, 32, 48]) == toy.GOAL_COLOUR
    assert tuple(frame[:, 60, 2]) == toy.BACKGROUND
    ts = env.step(np.array([1.0, 0.0]))  # two physics steps of +0.08 in x
    np.testing.assert_allclose(ts.state, [0.41, 0.25], atol=1e-6)
    d1 = np.hypot(0.75 - 0.33, 0.25)
    d2 = np.hypot(0.75 - 0.41, 0.25)
    assert ts.reward == pytest.approx((1 - d1 / 0.5) + (1 - d2 / 0.5))
    env.agent = np.array([0.05, 0.5])
    ts = env.step(np.array([-1.0, 0.0]))  # the wall stops the point at its radius
    assert ts.state[0] == pytest.approx(toy.AGENT_RADIUS)
    np.testing.assert_allclose(env.expert_observation(), [toy.AGENT_RADIUS, 0.5, 0.75, 0.5], atol=1e-6)


def test_toy_discrete_moves_and_bad_actions():
    env = envs.make("toy:reach_discrete", action_repeat=1, proprio=True)
    env.reset()
    env.agent = np.array([0.5, 0.5])
    expected = {0: [0.5, 0.5], 1: [0.5, 0.42], 2: [0.5, 0.5], 3: [0.42, 0.5], 4: [0.5, 0.5]}
    for action, position in expected.items():
        np.testing.assert_allclose(env.step(action).state, position, atol=1e-6)
    with pytest.raises(EnvError, match="out of range"):
        env.step(5)
    with pytest.raises(EnvError, match="one integer"):
        env.step(1.5)
    cont = envs.make("toy:reach")
    cont.reset()
    with pytest.raises(EnvError, match=r"shape \(2,\)"):
        cont.step(np.zeros(3))
    with pytest.raises(EnvError, match="non-finite"):
        cont.step(np.array([np.nan, 0.0]))


def test_toy_determinism_and_episode_guard():
    a = run_episode(envs.make("toy:reach", seed=3))
    b = run_episode(envs.make("toy:reach", seed=3))
    c = run_episode(envs.make("toy:reach", seed=4))
    assert all(np.array_equal(x.obs, y.obs) and x.reward == y.reward for x, y in zip(a, b))
    assert not np.array_equal(a[0].obs, c[0].obs)
    env = envs.make("toy:reach", action_repeat=2, max_episode_steps=7)
    with pytest.raises(EnvError, match="call reset"):
        env.step(np.zeros(2))
    assert len(run_episode(env)) == 8
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step(np.zeros(2))
    assert envs.make("toy:reach", action_repeat=2).spec.max_episode_steps == 25
    assert envs.make("toy:reach", render=False).reset().obs.shape == (0,)


# ---------------------------------------------------------------------------------------------
# dmc


def test_dmc_shapes_state_and_no_render():
    env = envs.make("dmc:cartpole_swingup", image_size=32, max_episode_steps=3)
    steps = run_episode(env)
    assert [ts.obs.shape for ts in steps] == [(3, 32, 32)] * 4 and steps[0].obs.dtype == np.uint8
    assert steps[-1].obs.std() > 0 and steps[-1].state is None and env.expert_observation().shape == (5,)
    env.close()
    env = envs.make("dmc:cartpole_swingup", image_size=32, max_episode_steps=3, proprio=True, render=False,
                    grayscale=True)
    ts = env.reset()
    assert ts.obs.shape == (0,) and ts.obs.dtype == np.uint8
    assert ts.state.dtype == np.float32 and np.array_equal(ts.state, env.expert_observation())
    assert env.spec.obs_shape == (1, 32, 32) and env.spec.state_dim == 5
    assert env.render_frame().shape == (1, 32, 32)


def test_dmc_determinism_and_reward_over_repeat():
    frames = []
    for seed in (1, 1, 2):
        env = envs.make("dmc:reacher_easy", image_size=24, seed=seed, max_episode_steps=4)
        frames.append(np.stack([ts.obs for ts in run_episode(env)]))
        env.close()
    assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[2])
    # action repeat 2 sums the rewards of the two control steps action repeat 1 would give
    r2 = envs.make("dmc:point_mass_easy", action_repeat=2, seed=0, render=False)
    r1 = envs.make("dmc:point_mass_easy", action_repeat=1, seed=0, render=False)
    r2.reset(), r1.reset()
    r2.physics.named.data.qpos[:] = r1.physics.named.data.qpos[:] = [0.005, -0.004]  # near the target
    for a in ([0.3, -0.2], [-0.5, 0.1]):
        total = r1.step(np.array(a)).reward + r1.step(np.array(a)).reward
        assert r2.step(np.array(a)).reward == pytest.approx(total)
        assert total > 0


def test_dmc_episode_length_and_guard():
    env = envs.make("dmc:cartpole_balance", action_repeat=3, render=False)
    steps = run_episode(env)
    assert env.spec.max_episode_steps == 334 and len(steps) == 335  # ceil(1000 / 3) agent steps
    assert env._control_count == 1000 and steps[-1].last and not steps[-1].terminal
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step(np.zeros(1))
    assert envs.make("dmc:cheetah_run", render=False).spec.max_episode_steps == 500


def test_dmc_fast_render_settings_and_cameras():
    fast = envs.make("dmc:cartpole_swingup", image_size=32)
    slow = envs.make("dmc:cartpole_swingup", image_size=32, fast_render=False)
    assert fast.physics.model.vis.quality.shadowsize == 0 and fast.physics.model.vis.quality.offsamples == 0
    assert slow.physics.model.vis.quality.shadowsize == 2048 and slow.physics.model.vis.quality.offsamples == 4
    a, b = fast.reset().obs, slow.reset().obs
    assert a.shape == b.shape and not np.array_equal(a, b)  # no shadow on the floor in the fast frame
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 40  # but the same scene
    fast.close(), slow.close()
    quad = envs.make("dmc:quadruped_run", render=False)
    assert quad.camera_id == 2
    assert envs.make("dmc:cartpole_swingup", camera="lookatcart", render=False).camera_id == 1
    assert envs.make("dmc:cartpole_swingup", camera="1", render=False).camera_id == 1
    with pytest.raises(ValueError, match="out of range"):
        envs.make("dmc:cartpole_swingup", camera=7, render=False)


# ---------------------------------------------------------------------------------------------
# vector env


def _compare_with_sequential(venv: VectorEnv, env_id: str, seeds: list[int], steps: int, **kwargs) -> None:
    seq = [envs.make(env_id, seed=s, **kwargs) for s in seeds]
    vs = venv.reset()
    ts = [e.reset() for e in seq]
    rng = np.random.default_rng(0)
    saw_reset = False
    for _ in range(steps):
        for i, t in enumerate(ts):
            assert np.array_equal(vs.obs[i], t.obs)
            assert (vs.reward[i], vs.first[i], vs.last[i], vs.terminal[i]) == \
                (np.float32(t.reward), t.first, t.last, t.terminal)
            assert vs.timestep(i).first == t.first
        actions = rng.uniform(-1, 1, (len(seq), venv.spec.action_dim))
        vs = venv.step(actions)
        saw_reset |= bool(vs.first.any())
        ts = [e.reset() if t.last else e.step(a) for e, t, a in zip(seq, ts, actions)]
    assert saw_reset  # the auto-reset after `last` was exercised
    for e in seq:
        e.close()


def test_vector_env_toy_matches_sequential_and_shuts_down():
    kwargs = dict(image_size=16, max_episode_steps=4, action_repeat=1)
    venv = VectorEnv.from_id("toy:reach", 3, seed=10, num_workers=2, **kwargs)
    shm_name = venv._shm.name
    procs = list(venv._procs)
    with venv:
        assert venv.obs_shape == (3, 16, 16)
        _compare_with_sequential(venv, "toy:reach", [10, 11, 12], 9, **kwargs)
        assert len(venv.call("expert_observation")) == 3
    assert all(not p.is_alive() and p.exitcode == 0 for p in procs)
    assert not os.path.exists(f"/dev/shm/{shm_name}")
    with pytest.raises(EnvError, match="closed"):
        venv.step(np.zeros((3, 2)))
    with VectorEnv(("toy:reach", [dict(seed=10, **kwargs), dict(seed=11, **kwargs)]), num_workers=0) as local:
        _compare_with_sequential(local, "toy:reach", [10, 11], 6, **kwargs)


def test_vector_env_dmc_matches_sequential():
    kwargs = dict(image_size=16, max_episode_steps=3)  # one worker holding both envs (EGL in a child)
    with VectorEnv.from_id("dmc:cartpole_swingup", 2, seed=5, num_workers=1, **kwargs) as venv:
        _compare_with_sequential(venv, "dmc:cartpole_swingup", [5, 6], 5, **kwargs)


def test_vector_env_reports_worker_errors():
    with pytest.raises(EnvError, match="unknown toy task 'nope'"):
        VectorEnv([functools.partial(envs.make, "toy:nope")], num_workers=1)


# ---------------------------------------------------------------------------------------------
# benchmark


def test_bench_env_reports_every_measurement():
    from vmil.bench.env import bench_env

    out = bench_env("toy:reach", image_size=16, steps=3, warmup=1)  # toy: no MuJoCo in the workers
    for key in ("fps_default", "fps_fast", "fps_fast_2workers", "cpu_time_over_wall_default",
                "cpu_time_over_wall_fast", "cpu_time_over_wall_fast_2workers"):
        assert out[key] > 0, key
    assert out["settings"]["image_size"] == 16
    json.dumps(out)
