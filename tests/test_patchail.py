"""PatchAIL family on DrQ-v2: n-step reward plumbing, every variant's update, the shared encoder
staying untouched by the discriminator, checkpoints, bad demos; `slow`: learning on toy:reach."""
from __future__ import annotations

import io
import json
import math
import types

import numpy as np
import pytest
import torch

from imitation import patchail
from imitation.patchail import Config, NeedsActions, build, effective_steps, frame_stacks
from vmil.base import EnvSpec, Obs, TransitionBatch
from vmil.data.episode import Episode
from vmil.data.replay import Replay

SPEC = EnvSpec("toy:reach", (3, 16, 16), 2)
TINY = dict(batch_size=4, expert_batch_size=2, feature_dim=8, hidden_dim=16, encoder_channels=4,
            disc_channels=(4, 4, 4), augment_pad=2, disc_precision="fp32")  # exact comparisons; bf16 is tested apart


def tiny(variant: str, **kw) -> Config:
    return Config(variant=variant, **{**TINY, **kw})


def demos(has_actions: bool = True, obs_shape=(3, 16, 16)):
    return types.SimpleNamespace(directory="demos/x", obs_shape=obs_shape, has_actions=has_actions,
                                 action_dim=2 if has_actions else 0)


def make_batch(b: int, spec: EnvSpec = SPEC, k: int = 3, actions: bool = True, seed: int = 0,
               discount: float = 0.99 ** 3) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    c, h, w = spec.obs_shape
    frames = lambda: torch.randint(0, 256, (b, k * c, h, w), dtype=torch.uint8, generator=g)  # noqa: E731
    return TransitionBatch(obs=frames(), action=torch.rand(b, spec.action_dim, generator=g) * 2 - 1 if actions else None,
                           reward=torch.rand(b, generator=g), discount=torch.full((b,), discount),
                           next_obs=frames(), step_obs=frames())


# ---------------------------------------------------------------------------------------------
# n-step plumbing against the real sampler


def test_effective_steps_read_off_the_discount():
    d = torch.tensor([0.99 ** 3, 0.99 ** 2, 0.99, 0.0])
    assert effective_steps(d, 0.99, 3).tolist() == [3, 2, 1, 1]


@pytest.mark.parametrize("frames,nstep", [(3, 3), (3, 2), (3, 1), (4, 3)])
def test_frame_stacks_rebuild_every_intermediate_stack(frames, nstep):
    """Frames are tagged with their time step; the sampler cuts n-step horizons at episode ends."""
    spec = EnvSpec("toy:reach", (1, 4, 4), 2)
    replay = Replay(spec, 1000, "cpu")
    for ep_id, steps in enumerate((2, 7, 11)):
        obs = np.zeros((steps + 1, 1, 4, 4), np.uint8)
        obs[:, 0, 0, 0] = np.arange(steps + 1)
        obs[:, 0, 0, 1] = ep_id
        replay.add_episode(Episode(obs=obs, action=np.zeros((steps, 2), np.float32), reward=np.zeros(steps, np.float32),
                                   terminal=np.zeros(steps, bool), meta=spec.metadata()))
    batch = replay.sample_transitions(300, frames, nstep, 0.99, torch.Generator().manual_seed(0))
    steps = effective_steps(batch.discount, 0.99, nstep)
    stacks = frame_stacks(batch.obs, batch.next_obs, steps, nstep, frames)
    torch.testing.assert_close(stacks[1], batch.step_obs)
    t = batch.obs[:, -1, 0, 0].long()
    for b in range(300):
        for i in range(int(steps[b]) + 1):
            expected = (t[b] + i + torch.arange(frames) - (frames - 1)).clamp(min=0)
            assert stacks[i][b, :, 0, 0].tolist() == expected.tolist(), (b, i)
        torch.testing.assert_close(stacks[int(steps[b])][b], batch.next_obs[b])
    assert (steps < nstep).any() or nstep == 1  # horizons cut at episode ends were exercised


# ---------------------------------------------------------------------------------------------
# Every variant's update


@pytest.mark.parametrize("variant", patchail.VARIANTS)
def test_each_variant_updates_with_finite_named_metrics(variant):
    torch.manual_seed(0)
    agent = build(tiny(variant), SPEC, torch.device("cpu"), demos(True))
    assert agent.request.expert_batch_size == 2 and agent.request.batch_size == (2 if variant == "sqil" else 4)
    metrics = agent.update(make_batch(agent.request.batch_size), make_batch(2, seed=1), step=100)
    required = {"critic_loss", "actor_loss", "reward_mean", "skipped"}
    if variant != "sqil":
        required |= {"disc_loss", "disc_accuracy", "disc_skipped"}
    if variant in ("patchail-w", "patchail-b"):
        required |= {"sim_mean", "sim_lambda"}
    if variant == "patchail-bc":
        required |= {"bc_loss", "bc_weight"}
    assert required <= set(metrics), required - set(metrics)
    for key, value in metrics.items():
        assert math.isfinite(value), (variant, key, value)
    assert metrics["skipped"] == 0.0
    a, _ = agent.act(Obs(np.zeros((9, 16, 16), np.uint8), None, True), None, explore=True)
    assert a.shape == (2,) and np.all(np.abs(a) <= 1)


def test_patch_discriminator_at_paper_size_gives_39x39_rewards():
    torch.manual_seed(0)
    spec = EnvSpec("toy:reach", (3, 84, 84), 2)
    agent = build(Config(variant="patchail", batch_size=2, expert_batch_size=2, feature_dim=8, hidden_dim=16,
                         encoder_channels=4), spec, torch.device("cpu"), demos(True, (3, 84, 84)))
    x = agent.disc_image(agent.pair(make_batch(2, spec).obs, make_batch(2, spec, seed=1).obs), augment=False)
    assert tuple(agent.disc(x).shape) == (2, 1, 39, 39)
    metrics = agent.update(make_batch(2, spec), make_batch(2, spec, seed=2), step=0)
    assert math.isfinite(metrics["reward_mean"])


def test_weighted_lambda_is_set_once_from_its_initial_value():
    torch.manual_seed(0)
    agent = build(tiny("patchail-w", sim_lambda=1.3), SPEC, torch.device("cpu"), demos(False))
    metrics = agent.update(make_batch(4), make_batch(2, seed=1), step=0)
    # lambda * mean Sim of the first batch's first step equals the initial value.
    assert metrics["sim_lambda"] > 0 and agent.sim_scale == metrics["sim_lambda"]
    first = agent.sim_scale
    agent.update(make_batch(4, seed=3), make_batch(2, seed=4), step=2)
    assert agent.sim_scale == first


def test_plain_reward_is_the_discounted_sum_of_aggregated_patch_logits():
    torch.manual_seed(0)
    agent = build(tiny("patchail", nstep=2), SPEC, torch.device("cpu"), demos(False))
    batch = make_batch(4, discount=0.99 ** 2)
    reward, _ = agent.reward(batch, make_batch(2, seed=1))
    steps = torch.full((4,), 2)
    stacks = frame_stacks(batch.obs, batch.next_obs, steps, 2, 3)
    stacks[1] = batch.step_obs
    with torch.no_grad():
        expected = sum(0.99 ** i * agent.disc(agent.disc_image(agent.pair(stacks[i], stacks[i + 1]), False))
                       .flatten(1).mean(1) for i in range(2))
    torch.testing.assert_close(reward, expected, rtol=1e-4, atol=1e-5)


def test_bf16_discriminator_rewards_match_fp32_and_auto_follows_the_device():
    torch.manual_seed(0)
    fp32 = build(tiny("patchail", nstep=2), SPEC, torch.device("cpu"), demos(False))
    bf16 = build(tiny("patchail", nstep=2, disc_precision="bf16"), SPEC, torch.device("cpu"), demos(False))
    bf16.disc.load_state_dict(fp32.disc.state_dict())
    batch, expert = make_batch(8, discount=0.99 ** 2), make_batch(2, seed=1)
    exact, _ = fp32.reward(batch, expert)
    fast, _ = bf16.reward(batch, expert)
    assert bf16.disc_bf16 and not fp32.disc_bf16
    torch.testing.assert_close(fast, exact, rtol=0.02, atol=0.02 * float(exact.abs().max()))
    assert not torch.equal(fast, exact)  # it did run in bf16
    metrics = bf16.update(make_batch(4), make_batch(2, seed=1), step=0)
    assert math.isfinite(metrics["disc_loss"]) and metrics["disc_skipped"] == 0.0
    auto = build(tiny("patchail", disc_precision="auto"), SPEC, torch.device("cpu"), demos(False))
    assert auto.disc_bf16 == patchail.native_bf16(torch.device("cpu"))


def test_shared_encoder_discriminator_leaves_encoder_gradients_at_zero():
    torch.manual_seed(0)
    agent = build(tiny("shared-enc-ail"), SPEC, torch.device("cpu"), demos(False))
    rl = agent.rl
    enc_before = [p.clone() for p in rl.encoder.parameters()]
    trunk_before = [p.clone() for p in rl.critic.trunk.parameters()]
    batch, expert = make_batch(4), make_batch(2, seed=1)
    h = rl.encode(rl.augment(batch.obs))
    agent.update_discriminator(batch, expert, h)
    for p in list(rl.encoder.parameters()) + list(rl.critic.trunk.parameters()):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    for a, b in zip(enc_before + trunk_before, list(rl.encoder.parameters()) + list(rl.critic.trunk.parameters())):
        assert torch.equal(a, b)
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in agent.disc.parameters())


def test_disc_warmup_trains_only_the_discriminator_first():
    torch.manual_seed(0)
    agent = build(tiny("patchail", disc_warmup=2), SPEC, torch.device("cpu"), demos(False))
    rl = agent.rl
    frozen = [p.clone() for p in list(rl.actor.parameters()) + list(rl.critic.parameters())
              + list(rl.encoder.parameters())]
    disc_before = [p.clone() for p in agent.disc.parameters()]
    for i in range(2):
        metrics = agent.update(make_batch(4, seed=i), make_batch(2, seed=10 + i), step=i)
        assert metrics["disc_warmup"] == 1.0 and "critic_loss" not in metrics and metrics["skipped"] == 0.0
    after = list(rl.actor.parameters()) + list(rl.critic.parameters()) + list(rl.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen, after))
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, agent.disc.parameters()))
    metrics = agent.update(make_batch(4, seed=5), make_batch(2, seed=6), step=2)
    assert "disc_warmup" not in metrics and math.isfinite(metrics["critic_loss"])
    assert not all(torch.equal(a, b) for a, b in zip(frozen, rl.actor.parameters()))
    other = build(tiny("patchail", disc_warmup=2), SPEC, torch.device("cpu"), demos(False))
    other.load_state_dict(agent.state_dict())
    assert other.disc_updates == 3  # a resumed run does not warm up again


def test_sqil_rewards_expert_one_agent_zero():
    torch.manual_seed(0)
    agent = build(tiny("sqil"), SPEC, torch.device("cpu"), demos(True))
    assert (agent.request.batch_size, agent.request.expert_batch_size) == (2, 2)  # balanced halves of 4
    expert = make_batch(2, seed=1)._replace(discount=torch.tensor([0.99 ** 3, 0.99]))
    metrics = agent.update(make_batch(2), expert, step=0)
    expert_rewards = [1 + 0.99 + 0.99 ** 2, 1.0]
    assert metrics["reward_mean"] == pytest.approx(sum(expert_rewards) / 4, rel=1e-5)


def test_bc_weight_anneals():
    torch.manual_seed(0)
    agent = build(tiny("patchail-bc", bc_schedule=(1.0, 0.0, 100)), SPEC, torch.device("cpu"), demos(True))
    early = agent.update(make_batch(4), make_batch(2, seed=1), step=0)
    late = agent.update(make_batch(4), make_batch(2, seed=1), step=50)
    assert early["bc_weight"] == pytest.approx(1.0) and late["bc_weight"] == pytest.approx(0.5)


def test_state_dict_round_trip_keeps_discriminator_and_lambda():
    torch.manual_seed(0)
    agent = build(tiny("patchail-b"), SPEC, torch.device("cpu"), demos(False))
    agent.update(make_batch(4), make_batch(2, seed=1), step=0)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    other = build(tiny("patchail-b"), SPEC, torch.device("cpu"), demos(False))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.sim_scale == agent.sim_scale
    for a, b in zip(agent.disc.parameters(), other.disc.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(KeyError, match="no discriminator"):
        other.load_state_dict({k: v for k, v in agent.state_dict().items() if k not in ("disc", "disc_opt")})
    with pytest.raises(KeyError, match=r"lacks \['disc_updates'\]"):
        other.load_state_dict({k: v for k, v in agent.state_dict().items() if k != "disc_updates"})


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_demos_are_named():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"demos/x: demo frames are C,H,W=\(3, 32, 32\)"):
        build(tiny("patchail"), SPEC, cpu, demos(False, (3, 32, 32)))
    with pytest.raises(ValueError, match="demos/x: .*C,H,W=\\(1, 16, 16\\)"):
        build(tiny("patchail"), SPEC, cpu, demos(False, (1, 16, 16)))
    with pytest.raises(ValueError, match="look like stacks of 3 frames"):
        build(tiny("patchail"), SPEC, cpu, demos(False, (9, 16, 16)))
    with pytest.raises(ValueError, match="12 channels = 4 stacked frames, which does not match frame_stack=3"):
        build(tiny("patchail"), SPEC, cpu, demos(False, (12, 16, 16)))
    for variant in ("patchail-bc", "sqil"):
        with pytest.raises(NeedsActions, match=f"{variant} needs demos with actions"):
            build(tiny(variant), SPEC, cpu, demos(False))
    with pytest.raises(ValueError, match="nstep=3 > frame_stack=2"):
        build(tiny("patchail", frame_stack=2), SPEC, cpu, demos(False))


def test_bad_batches_are_named():
    agent = build(tiny("patchail"), SPEC, torch.device("cpu"), demos(False))
    with pytest.raises(ValueError, match="expert batch: .*frame_stack=3"):
        agent.update(make_batch(4), make_batch(2, k=2), step=0)
    with pytest.raises(ValueError, match="needs an expert batch"):
        agent.update(make_batch(4), None, step=0)
    bc = build(tiny("patchail-bc"), SPEC, torch.device("cpu"), None)
    with pytest.raises(NeedsActions, match="needs expert actions"):
        bc.update(make_batch(4), make_batch(2, actions=False), step=0)


def test_every_algo_yaml_selects_its_variant():
    from vmil.config import resolve
    from vmil.registry import algo_module

    for name in patchail.VARIANTS:
        assert algo_module(name) is patchail
        for preset in ("smoke", "cpu", "paper"):
            cfg = resolve(name, Config, "toy:reach", preset)
            assert cfg.agent.variant == name, (name, preset)
        paper = resolve(name, Config, "dmc:cheetah_run", "paper")
        assert paper.env.image_size == 84 and paper.agent.batch_size == 256 and paper.agent.frame_stack == 3
    b = resolve("patchail-b", Config, "toy:reach", "paper").agent
    assert (b.sim_lambda, b.reward_scale) == (0.5, 0.5)
    assert resolve("patchail-w", Config, "toy:reach", "paper").agent.sim_lambda == 1.3


def test_visualize_returns_patch_reward_maps_for_patch_variants_only():
    torch.manual_seed(0)
    agent = build(tiny("patchail"), SPEC, torch.device("cpu"), demos(False))
    images = agent.visualize(make_batch(3, seed=1), make_batch(4))
    image = images["patch_rewards"]
    scale = 128 // 16
    # Two rows of 16x16 maps upsampled 8x with 2-pixel gaps: 3 expert maps, 4 agent maps (the most).
    assert image.dtype == np.uint8 and image.shape == (2 * 16 * scale + 2, 4 * 16 * scale + 3 * 2, 3)
    assert agent.visualize(make_batch(2, seed=1), None)["patch_rewards"].shape[0] == 2 * 16 * scale + 2
    assert build(tiny("shared-enc-ail"), SPEC, torch.device("cpu"), demos(False)).visualize(make_batch(2), make_batch(2)) == {}


# ---------------------------------------------------------------------------------------------
# Whole runs through the runner (smoke: the path works; slow: learning)


def _record(out, env_id: str, algo: str, preset: str, episodes: int, keep_actions: bool):
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module

    env = resolve(algo, algo_module(algo).Config, env_id, preset).env
    return record(env_id, "scripted", episodes, out, keep_actions=keep_actions, image_size=env.image_size,
                  action_repeat=env.action_repeat, seed=123, max_episode_steps=env.max_episode_steps, quiet=True)


def _train(algo: str, env_id: str, demos_dir, run_dir, preset: str, overrides=()):
    from vmil.config import resolve
    from vmil.registry import algo_module
    from vmil.runner import build_run

    cfg = resolve(algo, algo_module(algo).Config, env_id, preset, list(overrides))
    runner = build_run(cfg, demos_dir, run_dir, tracking_uri=None, quiet=True)
    try:
        return runner.run()
    finally:
        runner.close()


ALGOS = ("drqv2",) + patchail.VARIANTS + ("bc",)  # issue 4's algorithms; bc is imitation.bc's


@pytest.fixture(scope="module")
def smoke_demos(tmp_path_factory):
    """Demos with actions recorded at the image size each algorithm's smoke preset resolves to
    (one directory per env and size, shared by the algorithms that use it)."""
    from vmil.config import resolve
    from vmil.registry import algo_module

    made = {}

    def get(env_id: str, algo: str):
        size = resolve(algo, algo_module(algo).Config, env_id, "smoke").env.image_size
        if (env_id, size) not in made:
            path = tmp_path_factory.mktemp("demos") / f"{env_id.replace(':', '_')}_{size}"
            _record(path, env_id, algo, "smoke", 1, keep_actions=True)
            made[env_id, size] = path
        return made[env_id, size]

    return get


@pytest.mark.parametrize("env_id", ["toy:reach", "dmc:cartpole_swingup"])
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_trains_through_the_runner_with_the_smoke_preset(algo, env_id, smoke_demos, tmp_path):
    summary = _train(algo, env_id, smoke_demos(env_id, algo), tmp_path / algo, "smoke", ["train.env_steps=60"])
    assert summary["updates"] >= 1 and math.isfinite(summary["eval_return_mean"]), (algo, summary)
    assert (tmp_path / algo / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("algo,demos_kw,fragments", [
    ("patchail-bc", dict(keep_actions=False), ("patchail-bc needs demos with actions", "--keep-actions")),
    ("sqil", dict(keep_actions=False), ("sqil needs demos with actions",)),
    ("patchail", dict(keep_actions=False, image_size=16), ("frames are C,H,W=(3, 16, 16)", "(3, 32, 32)")),
    ("patchail", dict(keep_actions=False, grayscale=True), ("frames are C,H,W=(1, 32, 32)", "(3, 32, 32)")),
])
def test_bad_demos_fail_with_one_error_line_through_the_cli(algo, demos_kw, fragments, capsys, tmp_path):
    from vmil.cli import main
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module

    env = resolve(algo, algo_module(algo).Config, "toy:reach", "smoke").env
    kw = {"image_size": env.image_size, **demos_kw}
    record("toy:reach", "scripted", 1, tmp_path / "demos", action_repeat=env.action_repeat,
           max_episode_steps=env.max_episode_steps, seed=0, quiet=True, **kw)
    code = main(["train", "--algo", algo, "--env", "toy:reach", "--demos", str(tmp_path / "demos"), "--preset",
                 "smoke", "--run-dir", str(tmp_path / "run"), "--tracking-uri", "none"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("vmil: error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("algo,keep_actions", [("drqv2", False), ("patchail", False)])
def test_learns_toy_reach_to_80_percent_of_the_expert_within_the_cpu_preset(algo, keep_actions, tmp_path):
    """DrQ-v2 on the true reward, and PatchAIL from observation-only demos (it never sees a reward)."""
    info = _record(tmp_path / "demos", "toy:reach", algo, "cpu", 10, keep_actions=keep_actions)
    assert not info.has_actions
    summary = _train(algo, "toy:reach", tmp_path / "demos", tmp_path / "run", "cpu")
    print(json.dumps(summary))
    assert summary["eval_return_mean"] >= 0.8 * summary["expert_return"], summary


# ---------------------------------------------------------------------------------------------
# Benchmark


@pytest.mark.parametrize("algo", ["patchail", "shared-enc-ail", "drqv2"])
def test_bench_prints_the_shared_keys_and_the_same_run_reference(algo):
    from vmil.bench.patchail import bench_patchail

    out = bench_patchail(algo, batch=4, image_size=32, updates=1, threads=1, peak_seconds=0.05)
    json.dumps(out)  # what the CLI prints
    for key in ("ms_per_update", "gflop_per_update", "achieved_gflops", "peak_gflops", "peak_fraction"):
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    expected_parts = {"critic", "actor"} | ({"discriminator", "reward"} if algo != "drqv2" else set())
    assert set(out["parts"]) == expected_parts
    if algo == "shared-enc-ail":
        assert "public_style" not in out  # the public code has no such agent to compare with
    else:
        assert out["speedup_vs_public_style"] > 0 and out["public_style"]["ms_per_update"] > 0
        assert ("discriminator" in out["public_style"]["parts"]) == (algo != "drqv2")
