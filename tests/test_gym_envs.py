"""gym:<EnvId>: Gymnasium MuJoCo and classic control from pixels, discrete actions, scripted experts."""
from __future__ import annotations

import numpy as np
import pytest

from vmil import envs
from vmil.envs import EnvError
from vmil.envs import gym as gym_family


def _run(env, actions):
    out = [env.reset()]
    for a in actions:
        out.append(env.step(a))
    return out


@pytest.mark.parametrize("task, discrete, action_dim, state_dim", [
    ("CartPole-v1", True, 2, 4), ("Acrobot-v1", True, 3, 6), ("MountainCar-v0", True, 3, 2),
    ("Pendulum-v1", False, 1, 3), ("Hopper-v5", False, 3, 11), ("Walker2d-v5", False, 6, 17)])
def test_spec_reset_step_render(task, discrete, action_dim, state_dim):
    env = envs.make(f"gym:{task}", image_size=48, action_repeat=1, seed=0)
    try:
        spec = env.spec
        assert (spec.env_id, spec.obs_shape, spec.discrete, spec.action_dim) == (f"gym:{task}", (3, 48, 48), discrete, action_dim)
        assert spec.extra["expert_obs_dim"] == state_dim and spec.state_dim == 0
        ts = env.reset()
        assert ts.first and not ts.last and ts.state is None and ts.reward == 0.0
        assert ts.obs.dtype == np.uint8 and ts.obs.shape == (3, 48, 48)
        assert ts.obs.std() > 5, "the frame should show something"
        assert env.expert_observation().dtype == np.float32 and env.expert_observation().shape == (state_dim,)
        ts = env.step(1 if discrete else np.full(action_dim, 0.5, np.float32))
        assert ts.obs.dtype == np.uint8 and ts.obs.shape == (3, 48, 48) and not ts.first
        assert isinstance(ts.reward, float)
    finally:
        env.close()


@pytest.mark.parametrize("task", ["Pendulum-v1", "Hopper-v5"])
def test_grayscale_is_luma_of_rgb(task):
    rgb = envs.make(f"gym:{task}", image_size=40, action_repeat=1, seed=3)
    gray = envs.make(f"gym:{task}", image_size=40, action_repeat=1, seed=3, grayscale=True)
    try:
        assert gray.spec.obs_shape == (1, 40, 40)
        a = np.full(rgb.spec.action_dim, 0.3, np.float32)
        for t_rgb, t_gray in zip(_run(rgb, [a] * 3), _run(gray, [a] * 3)):
            r, g, b = t_rgb.obs.astype(np.float64)
            expected = np.round(0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8)
            assert t_gray.obs.shape == (1, 40, 40) and t_gray.obs.dtype == np.uint8
            np.testing.assert_array_equal(t_gray.obs[0], expected)
    finally:
        rgb.close()
        gray.close()


@pytest.mark.parametrize("task", ["CartPole-v1", "Hopper-v5"])
def test_deterministic_for_a_seed(task):
    def rollout(seed):
        env = envs.make(f"gym:{task}", image_size=32, action_repeat=2, seed=seed)
        rng = np.random.default_rng(0)
        frames, rewards, states, starts = [], [], [], []
        for _ in range(2):  # the second episode checks that later resets continue the seeded RNG
            ts = env.reset()
            frames.append(ts.obs)
            states.append(env.expert_observation())
            starts.append(env.expert_observation())
            for _ in range(5):
                a = int(rng.integers(2)) if env.spec.discrete else rng.uniform(-1, 1, env.spec.action_dim)
                ts = env.step(a)
                frames.append(ts.obs)
                rewards.append(ts.reward)
                states.append(env.expert_observation())
                if ts.last:
                    break
        env.close()
        return np.stack(frames), np.array(rewards), np.stack(states), np.stack(starts)

    a, b, c = rollout(7), rollout(7), rollout(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[3][0], c[3][0]), "another seed should start elsewhere"
    assert not np.array_equal(a[3][0], a[3][1]), "a second reset should not repeat the first episode"


def test_action_repeat_sums_rewards_and_repeats_the_action():
    single = envs.make("gym:Pendulum-v1", action_repeat=1, seed=5, render=False)
    triple = envs.make("gym:Pendulum-v1", action_repeat=3, seed=5, render=False)
    single.reset()
    triple.reset()
    a = np.array([0.7], np.float32)
    expected = sum(single.step(a).reward for _ in range(3))
    ts = triple.step(a)
    assert ts.reward == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(triple.expert_observation(), single.expert_observation(), rtol=1e-6)


def test_continuous_actions_map_to_the_env_bounds():
    env = envs.make("gym:Pendulum-v1", action_repeat=1, seed=0, render=False)
    env.reset()
    env.step(np.array([1.0]))
    assert env._env.last_u == pytest.approx(2.0)  # Pendulum's torque range is [-2, 2]
    env.step(np.array([-0.25]))
    assert env._env.last_u == pytest.approx(-0.5)
    env.step(np.array([3.0]))  # out of range: clipped
    assert env._env.last_u == pytest.approx(2.0)


def test_time_limit_is_last_but_not_terminal():
    env = envs.make("gym:Pendulum-v1", action_repeat=3, seed=0, render=False, max_episode_steps=7)
    assert env.spec.max_episode_steps == 7
    ts = env.reset()
    assert ts.obs.shape == (0,) and ts.obs.dtype == np.uint8  # render=False draws nothing
    n = 0
    while not ts.last:
        ts = env.step(np.zeros(1))
        n += 1
    assert n == 7 and not ts.terminal and ts.info["time_limit"]
    with pytest.raises(EnvError, match="reset"):
        env.step(np.zeros(1))
    # The default length is the env's own (Pendulum: 200 env steps), whatever the action repeat.
    assert envs.make("gym:Pendulum-v1", action_repeat=3, render=False).spec.max_episode_steps == 67
    assert envs.make("gym:Hopper-v5", action_repeat=2, render=False).spec.max_episode_steps == 500


@pytest.mark.parametrize("task, action", [("CartPole-v1", 1), ("Hopper-v5", np.array([1.0, -1.0, 1.0]))])
def test_falling_is_terminal(task, action):
    env = envs.make(f"gym:{task}", action_repeat=1, seed=0, render=False)
    ts, n = env.reset(), 0
    while not ts.last:
        ts = env.step(action)
        n += 1
    assert ts.terminal and not ts.info["time_limit"] and n < 200, f"{task} should fall over, ran {n} steps"


def test_bad_actions_and_ids_fail_clearly():
    cart = envs.make("gym:CartPole-v1", render=False)
    cart.reset()
    with pytest.raises(EnvError, match=r"\[0, 2\)"):
        cart.step(2)
    with pytest.raises(EnvError, match="integer"):
        cart.step(0.5)
    hopper = envs.make("gym:Hopper-v5", render=False)
    hopper.reset()
    with pytest.raises(EnvError, match=r"shape \(3,\)"):
        hopper.step(np.zeros(2))
    with pytest.raises(ValueError, match="gym:Hopper-v5"):
        envs.make("gym:Hoper-v5")
    with pytest.raises(ValueError, match="not a MuJoCo"):
        gym_family.make("FrozenLake-v1")
    with pytest.raises(ValueError, match="did you mean 'track'"):
        envs.make("gym:Hopper-v5", camera="trak")
    with pytest.raises(ValueError, match="single fixed view"):
        envs.make("gym:CartPole-v1", camera="side")
    assert "gym:Hopper-v5" in envs.list_ids("gym") and "gym:CartPole-v1" in envs.list_ids("gym")


def test_proprio_option_puts_the_state_in_timesteps():
    env = envs.make("gym:Acrobot-v1", render=False, proprio=True)
    ts = env.reset()
    assert env.spec.state_dim == 6 and ts.state.dtype == np.float32
    np.testing.assert_array_equal(ts.state, env.expert_observation())


@pytest.mark.parametrize("task, random_max, expert_min", [
    ("CartPole-v1", 60.0, 475.0), ("MountainCar-v0", -199.0, -130.0),
    ("Acrobot-v1", -450.0, -150.0), ("Pendulum-v1", -700.0, -300.0)])
def test_scripted_experts_beat_random(task, random_max, expert_min):
    from vmil.experts import make_expert, rollout_returns

    env = envs.make(f"gym:{task}", action_repeat=1, seed=1, render=False)
    rng = np.random.default_rng(0)

    class Random:
        def reset(self):
            pass

        def act(self, ts):
            return int(rng.integers(env.spec.action_dim)) if env.spec.discrete else rng.uniform(-1, 1, 1)

    random_mean = np.mean(rollout_returns(env, Random(), 3))
    expert_mean = np.mean(rollout_returns(env, make_expert("scripted", env), 3))
    assert random_mean < random_max, random_mean
    assert expert_mean > expert_min, expert_mean


def test_no_scripted_expert_for_mujoco_points_to_sac():
    env = envs.make("gym:Hopper-v5", render=False)
    with pytest.raises(ValueError, match="vmil expert train --env gym:Hopper-v5"):
        gym_family.scripted_expert(env)


def test_discrete_demos_end_to_end(tmp_path):
    """CartPole pixels + scripted expert -> episode files with int64 actions -> validated load."""
    from vmil.data.episode import load_episodes
    from vmil.demos import record

    info = record("gym:CartPole-v1", "scripted", 2, tmp_path, keep_actions=True, image_size=32,
                  action_repeat=1, max_episode_steps=25, quiet=True)
    env = envs.make("gym:CartPole-v1", image_size=32, action_repeat=1, max_episode_steps=25, render=False)
    episodes = load_episodes(tmp_path, env.spec)
    assert len(episodes) == 2 and info.has_actions
    for ep in episodes:
        assert ep.action.dtype == np.int64 and ep.action.shape == (25,)
        assert set(np.unique(ep.action)) <= {0, 1} and len(set(ep.action.tolist())) == 2
        assert ep.obs.shape == (26, 3, 32, 32) and ep.obs.dtype == np.uint8
        assert ep.reward.sum() == pytest.approx(25.0)
