"""Scripted experts and the expert factory."""
from __future__ import annotations

import numpy as np
import pytest

import vmil.envs as envs
from vmil.experts import Expert, make_expert, rollout_returns
from vmil.experts.scripted import CartpoleExpert, ReacherExpert, ToyReachExpert


class RandomPolicy:
    def __init__(self, spec, seed: int = 0):
        self.spec, self.rng = spec, np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, timestep):
        if self.spec.discrete:
            return int(self.rng.integers(self.spec.action_dim))
        return self.rng.uniform(-1, 1, self.spec.action_dim)


@pytest.mark.parametrize("task", ["reach", "reach_discrete"])
def test_toy_scripted_expert_near_max(task):
    env = envs.make(f"toy:{task}", action_repeat=1, render=False, seed=1)
    expert = make_expert("scripted", env)
    assert isinstance(expert, ToyReachExpert) and isinstance(expert, Expert)
    returns = rollout_returns(env, expert, 10)
    random = rollout_returns(env, RandomPolicy(env.spec), 10)
    # 50 steps, at most 1 per step; the start is >= 0.3 away, so reaching costs a few steps
    assert np.mean(returns) > (45 if task == "reach" else 40)
    assert np.mean(random) < 15
    ts = env.reset()  # the expert ends every episode inside the goal
    expert.reset()
    while not ts.last:
        ts = env.step(expert.act(ts))
    assert ts.info["success"] and ts.info["distance"] < 0.05


def test_cartpole_swingup_expert_beats_random():
    # 100 agent steps = 2 s: enough to swing up and start collecting reward near the top
    env = envs.make("dmc:cartpole_swingup", max_episode_steps=100, render=False, seed=0)
    expert = make_expert("scripted", env)
    assert isinstance(expert, CartpoleExpert)
    ret = rollout_returns(env, expert, 1)[0]
    assert np.cos(env.physics.data.qpos[1]) > 0.7  # swung up, still settling onto the LQR
    rand = rollout_returns(env, RandomPolicy(env.spec), 1)[0]
    assert ret > 40 and rand < 10, (ret, rand)


def test_short_dmc_expert_checks():
    env = envs.make("dmc:cartpole_balance", max_episode_steps=100, render=False)
    assert rollout_returns(env, make_expert("scripted", env), 1)[0] > 195
    env = envs.make("dmc:reacher_easy", max_episode_steps=100, render=False, seed=2)
    expert = make_expert("scripted", env)
    assert isinstance(expert, ReacherExpert)
    assert rollout_returns(env, expert, 1)[0] > 150  # of 200: in the target within 50 control steps
    env = envs.make("dmc:point_mass_easy", max_episode_steps=150, render=False, seed=0)
    assert rollout_returns(env, make_expert("scripted", env), 1)[0] > 150


def test_make_expert_errors(tmp_path):
    toy = envs.make("toy:reach", render=False)
    with pytest.raises(FileNotFoundError, match="nor an existing SAC checkpoint"):
        make_expert(str(tmp_path / "missing.pt"), toy)
    with pytest.raises(ValueError, match="has no mpc expert"):
        make_expert("mpc", toy)
    cheetah = envs.make("dmc:cheetah_run", render=False)
    with pytest.raises(ValueError, match="no scripted expert for dmc:cheetah_run.*dmc:cartpole_swingup"):
        make_expert("scripted", cheetah)


@pytest.mark.slow
@pytest.mark.parametrize("task,target", [("cartpole_swingup", 750), ("cartpole_balance", 950),
                                         ("reacher_easy", 900), ("point_mass_easy", 800)])
def test_dmc_scripted_experts_full_episodes(task, target):
    returns = []
    for seed in range(10):
        env = envs.make(f"dmc:{task}", action_repeat=2, render=False, seed=seed)
        returns.extend(rollout_returns(env, make_expert("scripted", env), 1))
    assert np.mean(returns) > target, returns
