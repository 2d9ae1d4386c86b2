"""Relational Mimic's networks and the adversarial PPO agents (GAIL, GAIfO, RM): the relational block
against a direct loop over positions, spectral norm's largest singular value, the discriminator
learning to separate expert from agent transitions, smoke runs of every variant, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmil.base import EnvSpec, TransitionBatch
from vmil.rl.networks import FeaturePool, RelationalAgent, RelationalBlock, RewardNet, make_encoder

SPEC = EnvSpec("toy:reach", (1, 16, 16), 2)


def test_relational_block_matches_a_loop_over_positions():
    torch.manual_seed(0)
    block = RelationalBlock(8)
    x = torch.randn(2, 8, 3, 4)
    with torch.no_grad():
        out = block(x)
        theta, phi, g = block.theta(x).flatten(2), block.phi(x).flatten(2), block.g(x).flatten(2)
        n = 12
        expected = torch.zeros_like(g)
        for b in range(2):
            for i in range(n):  # y_i = sum_j exp(theta_i . phi_j) g_j / sum_j exp(theta_i . phi_j)
                scores = torch.stack([theta[b, :, i] @ phi[b, :, j] for j in range(n)])
                weights = scores.exp() / scores.exp().sum()
                expected[b, :, i] = sum(weights[j] * g[b, :, j] for j in range(n))
        y = block.out(expected.reshape(2, -1, 3, 4))
    torch.testing.assert_close(out, x + y, rtol=1e-4, atol=1e-5)
    assert block.theta.out_channels == block.g.out_channels // 2  # theta, phi at half of g's channels


def test_spectral_norm_bounds_the_largest_singular_value_by_one():
    torch.manual_seed(0)
    net = RewardNet((2, 16, 16), width=4, hidden=8, relational=True, sn=True)
    x = torch.randn(4, 2, 16, 16)
    first = net.convs[0]
    raw = first.parametrizations.weight.original
    with torch.no_grad():
        raw.mul_(10.0)  # far from norm 1, so the check cannot pass by accident
    for _ in range(30):  # each training-mode forward runs one power iteration
        net(x)
    with torch.no_grad():
        sigma = torch.linalg.matrix_norm(first.weight.reshape(first.weight.shape[0], -1), ord=2)
        assert float(torch.linalg.matrix_norm(raw.reshape(raw.shape[0], -1), ord=2)) > 2.0
    assert float(sigma) == pytest.approx(1.0, abs=0.02)
    plain = RewardNet((2, 16, 16), width=4, hidden=8, sn=False)
    assert not hasattr(plain.convs[0], "parametrizations")


def test_feature_pool_pools_channels_and_space():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    out = FeaturePool(2, 2)(x)
    assert out.shape == (2, 2, 2, 2)
    assert out[0, 0, 0, 0] == x[0, :2, :2, :2].max()


def test_local_and_nonlocal_agents_differ_only_by_the_relational_block():
    local = RelationalAgent((4, 84, 84), relational=False)
    nonlocal_ = RelationalAgent((4, 84, 84), relational=True)
    block = [m for m in nonlocal_.modules() if isinstance(m, RelationalBlock)]
    assert len(block) == 1
    extra = sum(p.numel() for p in block[0].parameters())
    assert sum(p.numel() for p in nonlocal_.parameters()) - sum(p.numel() for p in local.parameters()) == extra
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    assert convs(local) == 13  # Table 2: the Local Agent's 13 convolutional layers
    with pytest.raises(ValueError, match="unknown encoder 'resnet'"):
        make_encoder("resnet", (4, 84, 84))


def _agent(variant: str, discrete: bool = False, **kw):
    from imitation.rm import Config, build

    spec = EnvSpec("toy:reach", (1, 16, 16), 5 if discrete else 2, discrete=discrete)
    cfg = Config(variant=variant, num_envs=2, rollout_steps=6, frame_stack=2, epochs=1, minibatches=1,
                 policy_net="small", value_net="small", net_width=4, hidden_dim=8, disc_width=4, disc_hidden=8,
                 expert_batch_size=4, **kw)
    return build(cfg, spec, torch.device("cpu")), spec


def _expert(spec: EnvSpec, b: int = 4, value: int = 200, seed: int = 0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.full((b, 2, 16, 16), value, dtype=torch.uint8)  # noqa: E731
    action = (torch.randint(spec.action_dim, (b,), generator=g) if spec.discrete
              else torch.rand(b, spec.action_dim, generator=g) * 2 - 1)
    return TransitionBatch(obs=frames(), action=action, reward=torch.zeros(b), discount=torch.ones(b),
                           next_obs=frames(), step_obs=frames())


@pytest.mark.parametrize("variant,discrete", [("gail", False), ("gail", True), ("gaifo", False), ("rm", False)])
def test_the_discriminator_learns_to_tell_expert_from_agent(variant, discrete):
    from tests.test_ppo import make_rollout

    torch.manual_seed(0)
    agent, spec = _agent(variant, discrete, reward_net="local", disc_lr=3e-3, gp_weight=1.0)
    rollout = make_rollout(spec=spec)
    rollout = rollout._replace(obs=torch.zeros_like(rollout.obs))  # agent frames black, expert frames bright
    for _ in range(15):
        metrics = agent.update(rollout, _expert(spec), 0)
    assert metrics["disc_accuracy"] == 1.0 and math.isfinite(metrics["policy_loss"])
    expert_r = agent.reward_of(agent.expert_inputs(_expert(spec)))
    agent_r, _ = agent.rewards(rollout, _expert(spec))
    assert float(expert_r.min()) > float(agent_r[rollout.valid].max())  # the expert earns more
    assert float(agent_r[~rollout.valid].abs().max()) == 0.0  # reset steps earn nothing


def test_state_dict_round_trip_keeps_the_discriminator():
    from tests.test_ppo import make_rollout

    torch.manual_seed(0)
    agent, spec = _agent("rm")
    agent.update(make_rollout(spec=spec), _expert(spec), 0)
    other, _ = _agent("rm")
    other.load_state_dict(agent.state_dict())
    x = agent.expert_inputs(_expert(spec))
    assert torch.equal(agent.reward_of(x), other.reward_of(x)) and other.disc_updates == 1


def test_gail_without_demo_actions_fails_in_one_line(tmp_path):
    from imitation.rm import NeedsActions
    from vmil.cli import main
    from vmil.demos import record

    record("toy:reach", "scripted", 1, tmp_path / "d", image_size=32, grayscale=True, quiet=True)
    with pytest.raises(NeedsActions, match="gail needs demos with actions"):
        from imitation.rm import Config, build
        from vmil.data.episode import demo_info, load_episodes
        build(Config(variant="gail"), EnvSpec("toy:reach", (1, 32, 32), 2), torch.device("cpu"),
              demo_info(load_episodes(tmp_path / "d"), tmp_path / "d"))
    from vmil.config import ConfigError
    with pytest.raises(ConfigError, match="frame_stack must be >= 2"):
        from imitation.rm import Config
        Config(variant="gaifo", frame_stack=1)


@pytest.mark.parametrize("algo", ["gail", "gaifo", "rm-l-l", "rm-l-nl", "rm-nl-nl"])
def test_smoke_run(tmp_path, algo):
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    cfg = resolve(algo, algo_module(algo).Config, "toy:reach", "smoke", ["train.video=false"])
    demos = record("toy:reach", "scripted", 2, tmp_path / "demos", keep_actions=algo == "gail",
                   image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat, grayscale=True, quiet=True)
    runner = build_run(cfg, demos.directory, tmp_path / "run", "none", quiet=True)
    try:
        summary = runner.run()
    finally:
        runner.close()
    assert summary["updates"] == 4 and summary["eval_return_mean"] is not None
    assert np.isfinite(runner.tracker.history("train/disc_loss")[-1][1])


def test_ppo_learns_from_hopper_pixels_in_grayscale_stacks():
    """Relational Mimic's env: gym:Hopper-v5 from pixels (default camera), grayscale, frame stacks."""
    pytest.importorskip("gymnasium")
    from vmil.envs.vector import VectorEnv
    from vmil.evaluate import FrameStack
    from vmil.rl.ppo import Config, Rollout, build

    vec = VectorEnv.from_id("gym:Hopper-v5", 2, num_workers=0, image_size=32, grayscale=True, action_repeat=1)
    try:
        assert vec.spec.obs_shape == (1, 32, 32) and vec.spec.action_dim == 3
        agent = build(Config(num_envs=2, rollout_steps=4, frame_stack=4, epochs=1, minibatches=1, policy_net="local",
                             value_net="nonlocal", net_width=8, hidden_dim=16), vec.spec, torch.device("cpu"))
        stacks = [FrameStack(4) for _ in range(2)]
        vs = vec.reset()
        obs = np.stack([s.reset(vs.obs[i]) for i, s in enumerate(stacks)])
        frames, actions, rewards = [obs.copy()], [], []
        for _ in range(4):
            raw = agent.act_batch(torch.from_numpy(obs))
            vs = vec.step(list(agent.to_env_action(raw)))
            obs = np.stack([s.push(vs.obs[i]) for i, s in enumerate(stacks)])
            frames.append(obs.copy()), actions.append(raw), rewards.append(torch.from_numpy(vs.reward))
        assert len({frames[-1][0, j].tobytes() for j in range(4)}) > 1  # the stack holds distinct frames
        done = torch.zeros(4, 2, dtype=torch.bool)
        rollout = Rollout(obs=torch.from_numpy(np.stack(frames)), action=torch.stack(actions),
                          reward=torch.stack(rewards), terminal=done, last=done, valid=~done)
        assert math.isfinite(agent.update(rollout, None, 8)["policy_loss"])
    finally:
        vec.close()
