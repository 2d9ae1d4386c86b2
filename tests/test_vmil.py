"""VMIL: discriminator pieces against hand computations, the agent's update/act/checkpoint contract,
bad input, and (slow) learning toy:reach from observation-only demos."""
from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from imitation import vmil
from imitation.latent_discriminator import (DiscriminatorConfig, LatentDiscriminator, bce_losses, disc_input,
                                            imagined_transitions, input_gradient_penalty,
                                            param_gradient_penalty, reward_from_logit, sequence_transitions)
from vmil.base import EnvSpec, Obs, SequenceBatch
from vmil.config import ConfigError, resolve
from vmil.nn import linear_schedule, weighted_sum
from world_model import analysis
from world_model.behavior import BehaviorConfig, plan_action
from world_model.model import ModelConfig

SPEC = EnvSpec("toy:reach", (3, 64, 64), 2)


# ------------------------------------------------------------------------------ discriminator pieces

def test_input_gradient_penalty_linear_network():
    """D(x) = w.x + b has input gradient w everywhere: penalty = (|w| - 1)^2."""
    disc = nn.Linear(3, 1)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))  # |w| = 3
    e, a = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(input_gradient_penalty(disc, e, a), torch.tensor(4.0))


def test_input_gradient_penalty_tiny_tanh_network_by_hand():
    """D(x) = v tanh(u.x + c) + b0: grad_x = v (1 - tanh^2(u.x + c)) u, at x = alpha e + (1 - alpha) a."""
    disc = nn.Sequential(nn.Linear(2, 1), nn.Tanh(), nn.Linear(1, 1))
    u, c, v = np.array([0.5, -1.0]), 0.2, 1.5
    with torch.no_grad():
        disc[0].weight.copy_(torch.tensor(u[None], dtype=torch.float32))
        disc[0].bias.fill_(c)
        disc[2].weight.fill_(v)
    e = np.array([[1.0, 2.0], [0.0, -1.0]])
    a = np.array([[-1.0, 0.5], [2.0, 1.0]])
    alpha = np.array([[0.25], [0.5]])
    x = alpha * e + (1 - alpha) * a
    norms = np.abs(v * (1 - np.tanh(x @ u + c) ** 2)) * np.linalg.norm(u)
    expected = np.mean((norms - 1) ** 2)
    got = input_gradient_penalty(disc, torch.tensor(e, dtype=torch.float32), torch.tensor(a, dtype=torch.float32),
                                 alpha=torch.tensor(alpha, dtype=torch.float32))
    assert math.isclose(got.item(), expected, rel_tol=1e-5)
    got.backward()  # the penalty trains the network (double backward)
    assert disc[0].weight.grad is not None and disc[0].weight.grad.abs().sum() > 0


def test_param_gradient_penalty_linear_network():
    """d mean(w.x + b) / d(w, b) = (mean x, 1): penalty = (sqrt(|mean x|^2 + 1) - 1)^2."""
    disc = nn.Linear(2, 1)
    e = torch.tensor([[1.0, 3.0], [3.0, 1.0]])
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    alpha = torch.tensor([[0.5], [0.5]])
    mean_x = (0.5 * e + 0.5 * a).mean(0)  # (1.5, 1.5)
    expected = (math.sqrt(float(mean_x.pow(2).sum()) + 1) - 1) ** 2
    assert math.isclose(param_gradient_penalty(disc, e, a, alpha).item(), expected, rel_tol=1e-6)


def test_gradient_penalty_needs_matching_samples():
    with pytest.raises(ValueError, match="as many expert as agent"):
        input_gradient_penalty(nn.Linear(2, 1), torch.zeros(3, 2), torch.zeros(4, 2))


def test_reward_forms_and_bce_by_hand():
    logit = torch.tensor([-2.0, 0.0, 3.0])
    p = 1 / (1 + np.exp(-logit.numpy()))
    assert np.allclose(reward_from_logit(logit, "prob").numpy(), p)
    assert np.allclose(reward_from_logit(logit, "log").numpy(), np.log(p), atol=1e-6)
    assert np.allclose(reward_from_logit(logit, "logit", scale=2.0).numpy(), 2 * logit.numpy())
    assert np.allclose(reward_from_logit(logit, "neg_log_one_minus").numpy(), -np.log(1 - p), atol=1e-6)
    with pytest.raises(ValueError, match="reward form"):
        reward_from_logit(logit, "exp")
    losses = bce_losses(torch.tensor([0.0, 2.0]), torch.tensor([-1.0]))
    assert math.isclose(losses["expert"].item(), np.mean([-np.log(0.5), -np.log(1 / (1 + np.exp(-2)))]), rel_tol=1e-6)
    assert math.isclose(losses["agent"].item(), -np.log(1 - 1 / (1 + np.exp(1))), rel_tol=1e-6)
    weighted = bce_losses(torch.tensor([0.0, 2.0]), torch.tensor([-1.0]), torch.tensor([1.0, 0.0]))
    assert math.isclose(weighted["expert"].item(), -np.log(0.5), rel_tol=1e-6)


def test_disc_inputs_and_schedule():
    z, a, z2 = torch.zeros(4, 5), torch.ones(4, 2), torch.zeros(4, 5)
    assert disc_input(z, a, z2, "zaz").shape == (4, 12)
    assert disc_input(z, a, None, "za").shape == (4, 7)
    assert disc_input(z, None, z2, "zz").shape == (4, 10)
    assert torch.equal(disc_input(z, a, z2 + 3, "z"), z2 + 3)  # the next state alone
    with pytest.raises(ValueError, match="need z, a"):
        disc_input(z, None, z2, "zaz")
    d = LatentDiscriminator(5, 2, "zz", units=8, layers=1)
    assert d.transition_logit(z, None, z2).shape == (4,)
    assert linear_schedule(0, 1.0, 0.0, 10) == 1.0 and linear_schedule(5, 1.0, 0.0, 10) == 0.5
    assert linear_schedule(50, 1.0, 0.0, 10) == 0.0 and linear_schedule(50, 1.0, 0.0, 0) == 1.0


def test_weighted_sum_matches_hand_total_and_refuses_mismatched_names():
    losses = {"image": torch.tensor(2.0), "kl": torch.tensor(3.0)}
    assert weighted_sum(losses, {"image": 1.0, "kl": 0.5}).item() == 3.5
    with pytest.raises(KeyError, match="differ"):
        weighted_sum(losses, {"image": 1.0})


def test_transition_inputs_follow_the_action_convention():
    """action[:, t+1] led from frame t to t+1: sequence transitions pair (z_t, a_t+1, z_t+1)."""
    feat = torch.arange(6.0).reshape(1, 3, 2)  # z_0 = (0, 1), z_1 = (2, 3), z_2 = (4, 5)
    action = torch.tensor([[[0.0], [10.0], [20.0]]])
    first = torch.tensor([[True, False, True]])  # frame 2 starts a new episode: no transition into it
    x, w = sequence_transitions(feat, action, first, "zaz")
    assert torch.equal(x, torch.tensor([[0.0, 1.0, 10.0, 2.0, 3.0], [2.0, 3.0, 20.0, 4.0, 5.0]]))
    assert torch.equal(w, torch.tensor([1.0, 0.0]))
    feats = torch.arange(6.0).reshape(3, 1, 2)  # imagined: [H+1=3, N=1, F=2]
    actions = torch.tensor([[[7.0]], [[8.0]]])
    assert torch.equal(imagined_transitions(feats, actions, "zaz"),
                       torch.tensor([[0.0, 1.0, 7.0, 2.0, 3.0], [2.0, 3.0, 8.0, 4.0, 5.0]]))
    assert torch.equal(imagined_transitions(feats, actions, "zz", torch.tensor([1])), torch.tensor([[2.0, 3.0, 4.0, 5.0]]))
    assert torch.equal(imagined_transitions(feats, actions, "z"), torch.tensor([[2.0, 3.0], [4.0, 5.0]]))


# ------------------------------------------------------------------------------ agent

def tiny_config(**kw) -> vmil.Config:
    base = dict(model=ModelConfig(deter=16, stoch=4, hidden=16, depth=4),
                behavior=BehaviorConfig(horizon=3, units=16, actor_layers=1, critic_layers=1),
                disc=DiscriminatorConfig(units=16, layers=1), batch_size=3, seq_len=6, expert_batch_size=2,
                idm_units=16, openloop_context=2, openloop_steps=5)
    base.update(kw)
    return vmil.Config(**base)


def demo_info(has_actions: bool, obs_shape=(3, 64, 64), action_dim=2):
    return types.SimpleNamespace(directory="demos", obs_shape=obs_shape, has_actions=has_actions,
                                 action_dim=action_dim if has_actions else 0)


def make_batch(B: int, T: int, actions: bool, seed: int = 0, state_dim: int = 0) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    action = torch.rand(B, T, 2, generator=g) * 2 - 1 if actions else None
    if action is not None:
        action[:, 0] = 0
    state = torch.randn(B, T, state_dim, generator=g) if state_dim else None
    return SequenceBatch(torch.randint(0, 256, (B, T, 3, 64, 64), dtype=torch.uint8, generator=g), action,
                         torch.zeros(B, T), first, torch.zeros(B, T, dtype=torch.bool), state)


def build(has_actions=False, **kw) -> vmil.VMILAgent:
    torch.manual_seed(0)
    return vmil.build(tiny_config(**kw), SPEC, torch.device("cpu"), demo_info(has_actions))


@pytest.mark.parametrize("has_actions", [False, True])
def test_update_trains_every_part(has_actions):
    agent = build(has_actions)
    assert agent.disc.inputs == ("zaz" if has_actions else "zz")
    assert agent.disc.in_dim == (2 * 20 + 2 if has_actions else 2 * 4)  # full (stoch 4 + deter 16) / stoch
    assert (agent.idm is not None) == (not has_actions)
    assert agent.request.kind == "sequence" and agent.request.expert_batch_size == 2
    before = {name: [p.clone() for p in m.parameters()] for name, m in
              (("wm", agent.wm), ("actor", agent.ac.actor), ("critic", agent.ac.critic), ("disc", agent.disc))}
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, has_actions, seed=1), step=0)
    for key in ("model/image", "model/kl", "disc/loss", "disc/expert_acc", "disc/agent_acc", "reward/imagined_mean",
                "actor/loss", "critic/loss", "model/grad_norm", "actor/grad_norm", "skipped"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert ("model/idm" in metrics) == (not has_actions)
    assert metrics["skipped"] == 0.0 and 0.0 <= metrics["disc/expert_acc"] <= 1.0
    for name, m in (("wm", agent.wm), ("actor", agent.ac.actor), ("critic", agent.ac.critic), ("disc", agent.disc)):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], m.parameters())), f"{name} did not change"
    assert all(p.requires_grad for p in agent.wm.parameters())


@pytest.mark.parametrize("dist, actor_grad", [("normal", "dynamics"), ("tanh_normal", "both"), ("normal", "reinforce")])
def test_update_with_other_actor_distributions_and_gradients(dist, actor_grad):
    behavior = BehaviorConfig(horizon=3, units=16, actor_layers=1, critic_layers=1, dist=dist, min_std=0.1,
                              actor_grad=actor_grad)
    agent = build(False, behavior=behavior)
    before = [p.clone() for p in agent.ac.actor.parameters()]
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    assert metrics["skipped"] == 0.0 and math.isfinite(metrics["actor/loss"])
    assert ("actor/advantage_abs" in metrics) == (actor_grad != "dynamics")
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.ac.actor.parameters()))
    action, _ = agent.act(Obs(np.zeros((3, 64, 64), np.uint8), None, True), None, True)
    assert np.abs(action).max() <= 1.0


@pytest.mark.parametrize("imagine_from, starts", [("agent", 3 * 6), ("both", (3 + 2) * 6)])
def test_imagination_starts_from_agent_or_all_posteriors(imagine_from, starts):
    agent = build(False, imagine_from=imagine_from)
    seen = []
    behavior_fn = agent._behavior_fn

    def recording(start):
        seen.append(start.deter.shape[0])
        return behavior_fn(start)

    agent._behavior_fn = recording
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    assert seen == [starts] and metrics["skipped"] == 0.0


def test_zero_expert_actions_option_and_param_penalty():
    agent = build(False, expert_actions="zeros", disc=DiscriminatorConfig(units=16, layers=1, penalty="params",
                                                                         reward="logit"))
    assert agent.idm is None
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    assert metrics["skipped"] == 0.0 and "model/idm" not in metrics and math.isfinite(metrics["disc/penalty"])



def test_model_warmup_trains_only_the_world_model_first():
    agent = build(False, model_warmup=1)
    parts = {"wm": agent.wm, "actor": agent.ac.actor, "critic": agent.ac.critic, "disc": agent.disc}
    snap = lambda: {k: [p.clone() for p in m.parameters()] for k, m in parts.items()}  # noqa: E731
    changed = lambda a, b: {k for k in a if any(not torch.equal(x, y) for x, y in zip(a[k], b[k]))}  # noqa: E731
    s0 = snap()
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    s1 = snap()
    assert changed(s0, s1) == {"wm"} and "actor/loss" not in metrics and "model/image" in metrics
    agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=1)
    assert changed(s1, snap()) == {"wm", "actor", "critic", "disc"} and agent.updates == 2


@pytest.mark.parametrize("has_actions", [False, True])
def test_latent_action_loss_reads_only_recorded_actions(has_actions):
    """Inferred expert actions must not shape the latents: with observation-only demos the loss
    covers the agent sequences only; with recorded expert actions, both."""
    agent = build(has_actions, model=ModelConfig(deter=16, stoch=4, hidden=16, depth=4, latent_action_scale=10.0))
    batch, expert = make_batch(3, 6, True), make_batch(2, 6, has_actions, seed=1)
    image = agent.wm.images(torch.cat([batch.obs, expert.obs]))
    is_first = torch.cat([batch.is_first, expert.is_first])
    given = agent._norm_action(expert.action) if has_actions else None
    losses, post, expert_action, _ = agent._model_losses(image, is_first, None, agent._norm_action(batch.action),
                                                         given)
    action = torch.cat([agent._norm_action(batch.action), expert_action])
    rows = 5 if has_actions else 3
    cut = lambda x: x[:rows]  # noqa: E731
    expected = agent.wm.latent_action_loss(post.map(cut), action[:rows], is_first[:rows])
    assert torch.isclose(losses["latent_action"], expected)
    if not has_actions:  # the expert rows would change the value if they were read
        assert not torch.isclose(agent.wm.latent_action_loss(post, action, is_first), expected)
    metrics = agent.update(batch, expert, step=0)
    assert {"model/latent_action", "model/prior_err", "model/prior_err_zero_action"} <= set(metrics)


@pytest.mark.parametrize("encoder_grad", [False, True])
def test_idm_loss_trains_the_encoder_only_when_asked(encoder_grad):
    agent = build(False, idm_encoder_grad=encoder_grad, idm_scale=3.0)
    batch, expert = make_batch(3, 6, True), make_batch(2, 6, False, seed=1)
    image = agent.wm.images(torch.cat([batch.obs, expert.obs]))
    losses, _, _, _ = agent._model_losses(image, torch.cat([batch.is_first, expert.is_first]), None,
                                          agent._norm_action(batch.action), None)
    losses["idm"].backward()
    grads = [p.grad for p in agent.wm.encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads) == encoder_grad
    assert all(p.grad is not None for p in agent.idm.parameters())


def test_disc_latent_mean_and_replay_agent_source():
    agent = build(False, disc=DiscriminatorConfig(units=16, layers=1, latent="mean", agent_source="replay"))
    state = agent.wm.rssm.initial(2)
    state = state._replace(mean=torch.full_like(state.mean, 0.5), stoch=torch.full_like(state.stoch, -3.0))
    assert torch.equal(agent.disc_features(state), state.mean)  # stoch-only features, the mean not the sample
    # With agent_source=replay the discriminator's fake side are the agent batch's posterior
    # transitions: a batch whose only transitions cross episode starts leaves nothing to sample.
    batch = make_batch(3, 6, True)
    metrics = agent.update(batch, make_batch(2, 6, False, seed=1), step=0)
    assert metrics["skipped"] == 0.0 and math.isfinite(metrics["disc/loss"])
    all_first = batch._replace(is_first=torch.ones_like(batch.is_first))
    with pytest.raises(ValueError, match="no transitions"):
        agent.update(all_first, make_batch(2, 6, False, seed=1), step=1)


@pytest.mark.parametrize("source, n_imagined", [("imagined", 10), ("replay", 0), ("both", 5)])
def test_disc_agent_source_mixes_imagined_and_replay_transitions(monkeypatch, source, n_imagined):
    """The discriminator's fake batch: agent_samples rows, the imagined share from imagined_transitions."""
    import imitation.vmil as vmil_module

    real = vmil_module.imagined_transitions
    monkeypatch.setattr(vmil_module, "imagined_transitions",
                        lambda *args: torch.full_like(real(*args), 7.0))  # marks the imagined rows
    agent = build(False, disc=DiscriminatorConfig(units=16, layers=1, agent_source=source, agent_samples=10))
    seen = {}
    inner = agent._disc_update

    def spy(z_e, action_e, first_e, x_a, step, n_replay):
        seen["x_a"], seen["n_replay"] = x_a, n_replay
        return inner(z_e, action_e, first_e, x_a, step, n_replay)

    monkeypatch.setattr(agent, "_disc_update", spy)
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    marked = (seen["x_a"] == 7.0).all(-1)
    assert seen["x_a"].shape[0] == 10 and int(marked.sum()) == n_imagined and seen["n_replay"] == 10 - n_imagined
    assert not (seen["x_a"][~marked] == 7.0).any()
    assert not marked[:seen["n_replay"]].any()  # replayed rows first, as the per-source accuracies assume
    assert ("disc/replay_acc" in metrics) == (n_imagined < 10)
    assert ("disc/imagined_acc" in metrics) == (n_imagined > 0)


def test_disc_accuracy_per_source_matches_the_logits(monkeypatch):
    import imitation.vmil as vmil_module

    logits = torch.tensor([-1.0, 2.0, -3.0, -0.5, 4.0, 5.0, -2.0])  # 3 replayed, 4 imagined
    real = vmil_module.discriminator_losses

    def fixed_logits(*args):
        losses, weights, logit_e, _ = real(*args)
        return losses, weights, logit_e, logits

    monkeypatch.setattr(vmil_module, "discriminator_losses", fixed_logits)
    agent = build(False)
    z_e = torch.zeros(2, 6, 4)
    metrics, _ = agent._disc_update(z_e, torch.zeros(2, 6, 2), make_batch(2, 6, False).is_first,
                                    torch.zeros(7, agent.disc.in_dim), step=0, n_replay=3)
    assert metrics["disc/agent_acc"] == pytest.approx(4 / 7)
    assert metrics["disc/replay_acc"] == pytest.approx(2 / 3) and metrics["disc/imagined_acc"] == pytest.approx(2 / 4)


def test_actor_learning_rate_anneals_linearly_with_env_steps():
    behavior = BehaviorConfig(horizon=3, units=16, actor_layers=1, critic_layers=1, actor_lr=1e-3,
                              actor_lr_final=1e-4, actor_lr_anneal_steps=100)
    agent = build(False, behavior=behavior)
    batch, expert = make_batch(3, 6, True), make_batch(2, 6, False, seed=1)
    for step, lr in ((0, 1e-3), (50, 5.5e-4), (100, 1e-4), (300, 1e-4)):
        metrics = agent.update(batch, expert, step=step)
        assert metrics["actor/lr"] == pytest.approx(lr)
        assert all(g["lr"] == pytest.approx(lr) for g in agent.opt_actor.param_groups)
    assert agent.opt_critic.param_groups[0]["lr"] == behavior.critic_lr  # only the actor's rate anneals


def test_non_finite_update_is_skipped_without_touching_weights():
    agent = build(False)
    with torch.no_grad():
        next(agent.wm.decoder.parameters()).fill_(float("nan"))
    snapshot = [p.clone() for p in agent.wm.encoder.parameters()]
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    assert metrics["skipped"] >= 1.0
    assert all(torch.equal(a, b) for a, b in zip(snapshot, agent.wm.encoder.parameters()))


def test_act_resets_and_respects_bounds():
    agent = build(False)
    frame = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    action, state = agent.act(Obs(frame, None, True), None, explore=True)
    assert action.shape == (2,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    a1, s1 = agent.act(Obs(frame, None, False), state, explore=False)
    a2, _ = agent.act(Obs(frame, None, False), state, explore=False)
    assert np.allclose(a1, a2)  # deterministic mode
    # obs.first resets the recurrent state: same as starting from None.
    r1, _ = agent.act(Obs(frame, None, True), s1, explore=False)
    r2, _ = agent.act(Obs(frame, None, True), None, explore=False)
    assert np.allclose(r1, r2)
    with pytest.raises(ValueError, match="uint8 images"):
        agent.act(Obs(frame[:, :32], None, True), None, explore=False)


def test_visualize_reward_and_imagination_outputs():
    agent = build(False)
    images = agent.visualize(make_batch(2, 6, False), make_batch(3, 6, True))
    assert set(images) == {"openloop_expert", "openloop_agent"}
    steps = agent.cfg.openloop_steps
    assert images["openloop_expert"].shape == (2 * 3 * 65 - 1, steps * 65 - 1, 3)
    assert images["openloop_agent"].dtype == np.uint8
    assert agent.visualize(make_batch(2, 6, False), None).keys() == {"openloop_expert"}
    r = analysis.reward_along(agent, make_batch(2, 6, False))
    assert r.shape == (2, 5) and np.all((r >= 0) & (r <= 1))
    frames = analysis.imagine_frames(agent, make_batch(2, 6, True), start=2, horizon=4)
    assert frames.shape == (2, 5, 3, 64, 64) and frames.dtype == np.uint8
    assert analysis.imagine_strip(agent, make_batch(2, 6, True), start=1, horizon=2).shape == (2 * 65 - 1, 3 * 65 - 1, 3)


def test_prior_steps_fit_only_the_dynamics_on_agent_sequences(monkeypatch):
    """model.prior_steps extra steps move only the dynamics parameters, with their own optimiser, and
    read only the agent sequences (the expert's actions are inferred)."""
    agent = build(False, model=ModelConfig(deter=16, stoch=4, hidden=16, depth=4, prior_steps=3),
                  model_warmup=10)
    seen = []
    fit = agent.wm.prior_fit_loss
    monkeypatch.setattr(agent.wm, "prior_fit_loss", lambda post, a, f, h=1: seen.append(post.mean.shape[0]) or fit(post, a, f, h))
    plain = build(False, model_warmup=10)
    plain.wm.load_state_dict(agent.wm.state_dict())
    batch, expert = make_batch(3, 6, True), make_batch(2, 6, False, seed=1)
    torch.manual_seed(1)
    metrics = agent.update(batch, expert, step=0)
    torch.manual_seed(1)
    plain.update(batch, expert, step=0)
    assert seen == [3, 3, 3] and math.isfinite(metrics["model/prior_fit"]) and metrics["skipped"] == 0.0
    dynamics = {id(p) for p in agent.wm.dynamics_parameters()}
    for (name, p), q in zip(agent.wm.named_parameters(), plain.wm.parameters()):
        assert torch.equal(p, q) != (id(p) in dynamics), name  # the same main step; then only dynamics moved
    assert len(agent.opt_prior.state_dict()["state"]) == len(dynamics)
    other = build(False, model=ModelConfig(deter=16, stoch=4, hidden=16, depth=4, prior_steps=3), model_warmup=10)
    other.load_state_dict(agent.state_dict())
    assert other.opt_prior.state_dict()["state"]
    with pytest.raises(ValueError, match="unexpected keys \\['opt_prior'\\]"):
        plain.load_state_dict(agent.state_dict())


def test_update_takes_bf16_states_from_the_model_pass(monkeypatch):
    """CUDA autocast returns the posterior in bf16; the fp32 steps after the model pass (prior fit,
    action check, imagination starts) must still run. Emulated on CPU by casting the pass's states."""
    agent = build(False, model=ModelConfig(deter=16, stoch=4, hidden=16, depth=4, prior_steps=1))
    model_fn = agent._model_fn

    def bf16_states(*args):
        losses, post, expert_action, metrics = model_fn(*args)
        return losses, post.map(lambda x: x.to(torch.bfloat16)), expert_action, metrics

    monkeypatch.setattr(agent, "_model_fn", bf16_states)
    metrics = agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    assert metrics["skipped"] == 0.0 and math.isfinite(metrics["model/prior_fit"])
    assert math.isfinite(metrics["actor/loss"])


def test_state_dict_roundtrip_and_rejections():
    agent = build(False)
    agent.update(make_batch(3, 6, True), make_batch(2, 6, False, seed=1), step=0)
    state = agent.state_dict()
    other = build(False)
    other.load_state_dict(state)
    assert other.updates == 1
    frame = np.full((3, 64, 64), 77, np.uint8)
    assert np.allclose(agent.act(Obs(frame, None, True), None, False)[0],
                       other.act(Obs(frame, None, True), None, False)[0])
    assert other.opt_model.state_dict()["state"]  # optimiser moments came along
    with pytest.raises(ValueError, match="missing keys \\['disc'\\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "disc"})
    with pytest.raises(ValueError, match="unexpected keys \\['encoder'"):
        other.load_state_dict({"encoder": {}, "policy": {}})  # e.g. another algorithm's checkpoint
    bigger = vmil.build(tiny_config(model=ModelConfig(deter=32, stoch=4, hidden=16, depth=4)), SPEC,
                        torch.device("cpu"), demo_info(False))
    with pytest.raises(ValueError, match="does not fit this config"):
        bigger.load_state_dict(state)


def test_deterministic_policy_acts_with_the_actor_average():
    """With behavior.actor_average the evaluation policy is the weight average, exploration the actor."""
    cfg = tiny_config(behavior=BehaviorConfig(horizon=3, units=16, actor_layers=1, critic_layers=1,
                                              actor_average=0.99))
    agent = vmil.build(cfg, SPEC, torch.device("cpu"), demo_info(False))
    frame = np.full((3, 64, 64), 77, np.uint8)
    act = lambda: agent.act(Obs(frame, None, True), None, False)[0]  # noqa: E731
    first = act()
    with torch.no_grad():
        for p in agent.ac.actor.parameters():
            p.add_(torch.randn_like(p))
    assert np.allclose(act(), first)  # the actor moved, the average did not
    agent.ac.update_actor_average()
    assert not np.allclose(act(), first)
    assert "actor_critic" in agent.state_dict() and any(
        k.startswith("actor_avg.") for k in agent.state_dict()["actor_critic"])


def test_deterministic_policy_plans_with_its_own_candidates_and_leaves_the_random_stream_alone():
    """behavior.plan_candidates: the evaluation action is plan_action's over the fixed candidate set,
    exploration is the actor's, and planning draws nothing from torch's global generator (so that
    evaluations during training leave the training's draws as they were)."""
    cfg = tiny_config(behavior=BehaviorConfig(horizon=3, units=16, actor_layers=1, critic_layers=1,
                                              plan_candidates=8, plan_steps=2))
    torch.manual_seed(0)
    agent = vmil.build(cfg, SPEC, torch.device("cpu"), demo_info(False))
    torch.manual_seed(0)
    plain = vmil.build(tiny_config(), SPEC, torch.device("cpu"), demo_info(False))
    assert agent._plan_set.shape == (8, 2) and agent._plan_set.abs().max() <= 1
    frame = np.random.default_rng(1).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    rng = torch.get_rng_state()
    action, (post, _) = agent.act(Obs(frame, None, True), None, explore=False)
    assert torch.equal(torch.get_rng_state(), rng)
    b = cfg.behavior
    plan = plan_action(agent.wm.rssm, agent.ac.eval_actor(), agent.ac.bootstrap_critic(), agent._transition_reward,
                       post, agent._plan_set, b.gamma, b.plan_steps)
    assert np.allclose(action, plan.action[0].numpy()) and agent.plan_counts == {"steps": 1,
                                                                                   "replaced": int(plan.replaced[0])}
    torch.manual_seed(3)
    explored = agent.act(Obs(frame, None, True), None, explore=True)[0]
    torch.manual_seed(3)
    assert np.allclose(explored, plain.act(Obs(frame, None, True), None, explore=True)[0])
    assert agent.plan_counts["steps"] == 1


def test_exploration_noise_halves_every_expl_decay_steps_down_to_expl_min():
    agent = vmil.build(tiny_config(expl_noise=0.4, expl_decay=1000, expl_min=0.15), SPEC, torch.device("cpu"),
                       demo_info(False))
    for step, amount in ((0, 0.4), (1000, 0.2), (500, 0.4 * 0.5 ** 0.5), (3000, 0.15)):
        agent._last_step = step
        assert agent._expl_amount() == pytest.approx(amount)
    constant = vmil.build(tiny_config(expl_noise=0.3), SPEC, torch.device("cpu"), demo_info(False))
    constant._last_step = 10 ** 6
    assert constant._expl_amount() == pytest.approx(0.3)


def test_build_rejects_bad_input():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="continuous actions"):
        vmil.build(cfg, EnvSpec("toy:reach_discrete", (3, 64, 64), 5, discrete=True), torch.device("cpu"),
                   demo_info(False))
    with pytest.raises(ValueError, match="same image size"):
        vmil.build(cfg, SPEC, torch.device("cpu"), demo_info(False, obs_shape=(3, 84, 84)))
    with pytest.raises(ValueError, match="--demos"):
        vmil.build(cfg, SPEC, torch.device("cpu"), None)
    with pytest.raises(ValueError, match="3-d actions"):
        vmil.build(cfg, SPEC, torch.device("cpu"), demo_info(True, action_dim=3))
    with pytest.raises(ValueError, match="64"):
        vmil.build(cfg, EnvSpec("x", (3, 84, 84), 2), torch.device("cpu"), demo_info(False, obs_shape=(3, 84, 84)))
    agent = build(False)
    with pytest.raises(ValueError, match="expected uint8 obs"):
        agent.update(make_batch(3, 6, True), SequenceBatch(*((torch.zeros(2, 6, 3, 32, 32, dtype=torch.uint8),)
                                                              + tuple(make_batch(2, 6, False))[1:])), 0)
    with pytest.raises(ValueError, match="expert batch"):
        agent.update(make_batch(3, 6, True), None, 0)


@pytest.mark.parametrize("override, match", [
    ("agent.behavior.horizon=0", "horizon"),
    ("agent.batch_size=0", "batch_size"),
    ("agent.expert_batch_size=-1", "expert_batch_size"),
    ("agent.seq_len=1", "seq_len"),
    ("agent.disc.reward=exp", "reward"),
])
def test_bad_config_values_fail_at_resolution(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve("vmil", vmil.Config, "toy:reach", "smoke", [override])


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_presets_resolve(preset):
    cfg = resolve("vmil", vmil.Config, "toy:reach", preset).agent
    assert isinstance(cfg, vmil.Config) and cfg.batch_size > 0
    if preset == "paper":
        m, b = cfg.model, cfg.behavior
        assert (m.deter, m.stoch, m.hidden, m.depth, b.units, b.horizon) == (200, 30, 200, 32, 400, 15)
        assert (b.gamma, b.lam, m.lr, b.actor_lr, b.critic_lr, cfg.disc.lr) == (0.99, 0.95, 6e-4, 8e-5, 8e-5, 8e-5)
        # The paper's batch 50x50 is the world model's: agent and expert sequences together, and
        # imagination from all of them (the public code trains its model on the demos too).
        assert (cfg.grad_clip, m.free_nats, cfg.batch_size + cfg.expert_batch_size, cfg.seq_len) == (100.0, 3.0, 50, 50)
        assert cfg.imagine_from == "both"


def test_proprio_agent_runs():
    spec = EnvSpec("toy:reach", (3, 64, 64), 2, state_dim=2)
    cfg = tiny_config(model=ModelConfig(deter=16, stoch=4, hidden=16, depth=4, proprio=True, proprio_units=8,
                                        proprio_embed=8))
    torch.manual_seed(0)
    agent = vmil.build(cfg, spec, torch.device("cpu"), demo_info(False))
    metrics = agent.update(make_batch(3, 6, True, state_dim=2), make_batch(2, 6, False, seed=1, state_dim=2), 0)
    assert "model/proprio" in metrics and metrics["skipped"] == 0.0
    frame = np.zeros((3, 64, 64), np.uint8)
    action, _ = agent.act(Obs(frame, np.zeros(2, np.float32), True), None, False)
    assert action.shape == (2,)
    with pytest.raises(ValueError, match="no proprioceptive state"):
        agent.act(Obs(frame, None, True), None, False)
    with pytest.raises(ValueError, match="proprio"):
        vmil.build(cfg, SPEC, torch.device("cpu"), demo_info(False))


# ------------------------------------------------------------------------------ learning

@pytest.mark.slow
def test_vmil_learns_toy_reach_from_observation_only_demos(tmp_path):
    """The cpu preset's budget, observation-only demos: >= 80% of the expert's return. 100 demos:
    every episode draws a new goal, and a latent discriminator trained on 10 demos memorises their
    10 goals (it calls 73% of held-out expert transitions fake) instead of learning "on the goal"."""
    from conftest import record_toy_demos
    from vmil.runner import build_run

    demos = record_toy_demos(tmp_path / "demos", 100, keep_actions=False)
    cfg = resolve("vmil", vmil.Config, "toy:reach", "cpu")
    # 20 final episodes, as the BC test: a 10-episode score moves by about +-0.13 between evaluations.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, video=False, eval_episodes=20))
    runner = build_run(cfg, demos, tmp_path / "run", tracking_uri=None, quiet=True)
    summary = runner.run()
    assert summary["normalized_score"] >= 0.8, summary
