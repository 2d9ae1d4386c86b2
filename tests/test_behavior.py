"""Behaviour learning in the world model: the actor (tanh-Gaussian, bounded Normal, REINFORCE),
imagination and its lookahead targets, the critic's slow target, the actor's weight average, and the
Gaussian densities the actors share."""
from __future__ import annotations

import pytest
import torch

from vmil.config import ConfigError
from vmil.nn import normal_log_prob, optimize, tanh_log_det
from world_model.behavior import (Actor, ActorCritic, BehaviorConfig, frozen, imagine, lookahead_targets, plan_action,
                                  sample_states)
from world_model.returns import discount_weights, lambda_return
from world_model.rssm import RSSM, State


def test_imagine_input_grad_lets_later_actions_respond_to_the_state():
    """Dreamer's default detaches the actor's inputs: a later action carries no gradient to the start
    state; input_grad=True makes it the closed-loop pathwise gradient."""
    torch.manual_seed(0)
    rssm = RSSM(2, 6, stoch=4, deter=5, hidden=6)
    actor = Actor(9, 2, units=8, layers=2)
    for input_grad in (False, True):
        start = rssm.initial(3).map(lambda x: (x + torch.randn_like(x)).requires_grad_(True))
        rollout = imagine(rssm, actor, start, 3, input_grad=input_grad)
        grad = torch.autograd.grad(rollout.actions[1].sum(), start.deter, allow_unused=True)[0]
        assert (grad is not None and grad.abs().sum() > 0) == input_grad, input_grad


def test_lookahead_targets_match_a_loop_over_candidates():
    torch.manual_seed(0)
    K, M, A = 5, 3, 2
    rssm = RSSM(A, 6, stoch=4, deter=5, hidden=6)
    value = torch.nn.Linear(9, 1)
    start = rssm.initial(M).map(lambda x: x + torch.randn_like(x))
    cands = torch.rand(K, M, A) * 2 - 1
    reward_fn = lambda s, a, s2: -(a - 0.3).pow(2).sum(-1) + s2.stoch.sum(-1)  # noqa: E731
    target, _ = lookahead_targets(rssm, lambda f: value(f).squeeze(-1), reward_fn, start, cands, 0.9, 0.5)
    q = torch.zeros(K, M)
    for k in range(K):  # reference: one candidate at a time
        nxt = rssm.img_step(start, cands[k], sample=False)
        q[k] = reward_fn(start, cands[k], nxt) + 0.9 * value(rssm.feat(nxt)).squeeze(-1)
    w = torch.softmax(q / (0.5 * q.std(0)), 0)
    assert torch.allclose(target, (w[..., None] * cands).sum(0), atol=1e-5)
    sharp, _ = lookahead_targets(rssm, lambda f: value(f).squeeze(-1), reward_fn, start, cands, 0.9, 1e-4)
    assert torch.allclose(sharp, cands[q.argmax(0), torch.arange(M)], atol=1e-5)


def test_lookahead_targets_hold_each_candidate_for_several_steps():
    torch.manual_seed(1)
    K, M, A, steps, gamma = 4, 3, 2, 3, 0.8
    rssm = RSSM(A, 6, stoch=4, deter=5, hidden=6)
    value = torch.nn.Linear(9, 1)
    start = rssm.initial(M).map(lambda x: x + torch.randn_like(x))
    cands = torch.rand(K, M, A) * 2 - 1
    reward_fn = lambda s, a, s2: s2.stoch.sum(-1) - s.deter.mean(-1) + a[..., 0]  # noqa: E731
    target, _ = lookahead_targets(rssm, lambda f: value(f).squeeze(-1), reward_fn, start, cands, gamma, 0.5, steps)
    q = torch.zeros(K, M)
    for k in range(K):  # reference: one candidate at a time, one step at a time
        s = start
        for t in range(steps):
            nxt = rssm.img_step(s, cands[k], sample=False)
            q[k] += gamma ** t * reward_fn(s, cands[k], nxt)
            s = nxt
        q[k] += gamma ** steps * value(rssm.feat(s)).squeeze(-1)
    w = torch.softmax(q / (0.5 * q.std(0)), 0)
    assert torch.allclose(target, (w[..., None] * cands).sum(0), atol=1e-5)
    one, _ = lookahead_targets(rssm, lambda f: value(f).squeeze(-1), reward_fn, start, cands, gamma, 0.5, 1)
    assert not torch.allclose(one, target), "the fixture should make holding the action change the choice"
    with pytest.raises(ValueError, match="steps must be >= 1"):
        lookahead_targets(rssm, lambda f: value(f).squeeze(-1), reward_fn, start, cands, gamma, 0.5, 0)
    with pytest.raises(ConfigError, match="lookahead_steps must be positive"):
        BehaviorConfig(lookahead_steps=0)


def test_plan_action_replaces_the_actor_only_where_a_held_candidate_scores_higher():
    torch.manual_seed(2)
    M, A, steps, gamma = 6, 2, 3, 0.9
    rssm = RSSM(A, 6, stoch=4, deter=5, hidden=6)
    actor = Actor(9, A, units=8, layers=2)
    value = torch.nn.Linear(9, 1)
    start = rssm.initial(M).map(lambda x: x + 2 * torch.randn_like(x))
    cands = torch.rand(2, A) * 2 - 1
    # The best action depends on the state, so neither the actor nor a held candidate wins everywhere.
    reward_fn = lambda s, a, s2: -(a - s.deter[:, :A].tanh()).pow(2).sum(-1)  # noqa: E731
    v = lambda f: value(f).squeeze(-1)  # noqa: E731

    def reference(policy):  # one rollout, one step at a time
        s, q = start, torch.zeros(M)
        for t in range(steps):
            a = policy(s)
            nxt = rssm.img_step(s, a, sample=False)
            q += gamma ** t * reward_fn(s, a, nxt)
            s = nxt
        return q + gamma ** steps * v(rssm.feat(s))

    own = actor.mode(rssm.feat(start))
    q_actor = reference(lambda s: actor.mode(rssm.feat(s)))
    held = [own] + [cands[k].expand(M, A) for k in range(len(cands))]
    q_held = torch.stack([reference(lambda s, a=a: a) for a in held])
    plan = plan_action(rssm, actor, v, reward_fn, start, cands, gamma, steps)
    assert torch.allclose(plan.q_actor, q_actor, atol=1e-5) and torch.allclose(plan.q_held, q_held.max(0).values,
                                                                                  atol=1e-5)
    replaced = q_held.max(0).values > q_actor
    assert 0 < int(replaced.sum()) < M, "the fixture should replace the actor at some states, not all"
    assert torch.equal(plan.replaced, replaced)
    best = torch.stack(held)[q_held.argmax(0), torch.arange(M)]
    assert torch.allclose(plan.action, torch.where(replaced[:, None], best, own))
    gap = (q_held.max(0).values - q_actor)[replaced].detach()
    assert gap.min() < gap.max(), "the fixture should replace the actor at states with different gaps"
    margin = float(gap.min() + gap.max()) / 2
    kept = plan_action(rssm, actor, v, reward_fn, start, cands, gamma, steps, margin)
    assert torch.equal(kept.replaced, q_held.max(0).values > q_actor + margin) and 0 < int(kept.replaced.sum())
    assert int(kept.replaced.sum()) < int(replaced.sum()), "a margin keeps the actor where the gap is small"
    # hold < steps: each candidate is held for `hold` steps, then the actor acts.
    hold = 1
    q_then = torch.stack([reference(lambda s, a=a, t=iter(range(steps)): a if next(t) < hold
                                    else actor.mode(rssm.feat(s))) for a in held])
    then = plan_action(rssm, actor, v, reward_fn, start, cands, gamma, steps, hold=hold)
    assert torch.allclose(then.q_actor, q_actor, atol=1e-5) and torch.allclose(then.q_held, q_then.max(0).values,
                                                                                  atol=1e-5)
    assert torch.equal(then.replaced, q_then.max(0).values > then.q_actor)
    assert not torch.allclose(q_then, q_held, atol=1e-3), "holding for one step should score differently"
    with pytest.raises(ValueError, match="plan hold must be in"):
        plan_action(rssm, actor, v, reward_fn, start, cands, gamma, steps, hold=steps + 1)
    with pytest.raises(ConfigError, match="plan_hold .* must be at most plan_steps"):
        BehaviorConfig(plan_steps=3, plan_hold=4)
    with pytest.raises(ValueError, match="plan candidates must be"):
        plan_action(rssm, actor, v, reward_fn, start, cands[:, :1], gamma, steps)
    with pytest.raises(ConfigError, match="plan_steps must be positive"):
        BehaviorConfig(plan_steps=0)
    with pytest.raises(ConfigError, match="plan_candidates must be >= 0"):
        BehaviorConfig(plan_candidates=-1)


def test_sample_states_keeps_each_state_whole():
    torch.manual_seed(0)
    T, N = 4, 5
    ident = torch.arange(T * N, dtype=torch.float32).reshape(T, N, 1)
    states = State(ident.expand(T, N, 3), ident.expand(T, N, 3) + 100, ident.expand(T, N, 3) + 200,
                   ident.expand(T, N, 2) + 300)
    pick = sample_states(states, 50)
    assert pick.deter.shape == (T * N, 2) and pick.stoch.shape == (T * N, 3)  # capped at T * N
    assert torch.equal(pick.std - 100, pick.mean) and torch.equal(pick.stoch - 200, pick.mean)
    assert torch.equal(pick.deter[:, :1] - 300, pick.mean[:, :1])
    assert sample_states(states, 7).deter.shape == (7, 2)


def test_lookahead_loss_pulls_the_actor_to_the_best_action():
    """With a reward that peaks at a = 0.3 and a zero critic, the lookahead alone moves the actor's
    mode there, also from a saturated start."""
    torch.manual_seed(0)
    rssm = RSSM(1, 6, stoch=4, deter=5, hidden=6)
    cfg = BehaviorConfig(horizon=2, units=16, actor_layers=2, critic_layers=1, lookahead=1.0, lookahead_states=64,
                         lookahead_candidates=32, lookahead_temperature=0.05)
    ac = ActorCritic(9, 1, cfg)
    torch.nn.init.zeros_(ac.critic.net[-1].weight), torch.nn.init.zeros_(ac.critic.net[-1].bias)
    with torch.no_grad():
        ac.actor.net[-1].bias[0] = 4.0  # pre-tanh mean ~4: tanh saturated at ~1
    opt = torch.optim.Adam(ac.actor.parameters(), lr=3e-3)
    start = rssm.initial(32).map(lambda x: x + torch.randn_like(x))
    reward_fn = lambda s, a, s2: -(a - 0.3).pow(2).sum(-1)  # noqa: E731
    states = State(*(torch.stack([x, x]) for x in start))
    before = ac.actor.mode(rssm.feat(start)).mean().item()
    for _ in range(300):
        loss, _ = ac.lookahead_loss(rssm, reward_fn, states)
        optimize(loss, opt, ac.actor.parameters(), 0)
    after = ac.actor.mode(rssm.feat(start))
    # the targets are the best of 32 noisy candidates, so single states scatter around 0.3
    assert before > 0.9 and abs(after.mean().item() - 0.3) < 0.05 and (after - 0.3).abs().max() < 0.2, (before, after)


def test_actor_log_prob_matches_torch_distribution():
    torch.manual_seed(0)
    actor = Actor(6, 3, units=8, layers=2)
    feat = torch.randn(5, 6)
    torch.manual_seed(1)
    action, logp = actor.sample(feat, with_log_prob=True)
    mean, std = actor(feat)
    torch.manual_seed(1)
    u = (mean + std * torch.randn_like(mean)).double()
    # Change of variables in float64: log N(u) - log(1 - tanh(u)^2).
    ref = (torch.distributions.Normal(mean.double(), std.double()).log_prob(u)
           - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
    assert torch.allclose(action.double(), torch.tanh(u), atol=1e-6)
    assert torch.allclose(logp.double(), ref, atol=1e-3)
    assert torch.allclose(actor.mode(feat), torch.tanh(mean))


def test_actor_learns_through_frozen_dynamics_only():
    """The actor loss reaches the actor's weights but none of the frozen modules' weights."""
    rssm = RSSM(2, 6, stoch=4, deter=5, hidden=6)
    ac = ActorCritic(9, 2, BehaviorConfig(horizon=3, units=8, actor_layers=1, critic_layers=1))
    start = rssm.initial(4)
    with frozen(rssm, ac.critic):
        _, feats, actions, _, _ = imagine(rssm, ac.actor, start, 3)
        reward = -(actions ** 2).sum(-1)  # reward depends on the actions
        loss, returns, weights, _ = ac.actor_loss(feats, reward)
        loss.backward()
    assert all(p.grad is None for p in rssm.parameters()) and all(p.grad is None for p in ac.critic.parameters())
    assert all(p.requires_grad for p in rssm.parameters())  # unfrozen again
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ac.actor.parameters())
    closs = ac.critic_loss(feats, returns, weights)
    closs.backward()
    assert all(p.grad is not None for p in ac.critic.parameters())


def test_pre_tanh_reg_adds_the_mean_square_of_the_pre_tanh_means():
    feats, reward = torch.randn(4, 5, 9), torch.randn(3, 5)
    torch.manual_seed(0)
    plain = ActorCritic(9, 2, BehaviorConfig(units=8, actor_layers=1, critic_layers=1))
    torch.manual_seed(0)
    reg = ActorCritic(9, 2, BehaviorConfig(units=8, actor_layers=1, critic_layers=1, pre_tanh_reg=0.5))
    loss, _, _, _ = plain.actor_loss(feats, reward)
    loss_reg, _, _, metrics = reg.actor_loss(feats, reward)
    mean = plain.actor(feats[:-1])[0]
    assert torch.allclose(loss_reg - loss, 0.5 * mean.pow(2).mean(), atol=1e-6)
    assert torch.allclose(metrics["pre_tanh_sq"], mean.pow(2).mean())
    with pytest.raises(ConfigError, match="pre_tanh_reg must be >= 0"):
        BehaviorConfig(pre_tanh_reg=-1.0)


def test_actor_log_prob_of_given_pre_tanh_actions_matches_the_sample():
    torch.manual_seed(0)
    actor = Actor(6, 3, units=8, layers=2)
    feat = torch.randn(5, 6)
    action, logp, u = actor.sample_raw(feat, with_log_prob=True)
    mean, std = actor(feat)
    ref = (torch.distributions.Normal(mean.double(), std.double()).log_prob(u.double())
           - torch.log1p(-torch.tanh(u.double()) ** 2)).sum(-1)
    assert torch.allclose(actor.log_prob_of(feat, u).double(), ref, atol=1e-3)
    assert torch.allclose(actor.log_prob_of(feat, u), logp, atol=1e-5)
    assert torch.equal(action, torch.tanh(u))


def test_normal_actor_is_bounded_with_straight_through_clip():
    torch.manual_seed(0)
    actor = Actor(6, 2, units=8, layers=2, min_std=0.1, dist="normal", max_std=1.0)
    feat = torch.randn(400, 6)
    mean, std = actor(feat)
    assert mean.abs().max() < 1 and (std >= 0.1).all() and (std <= 1.0).all()
    action, logp, raw = actor.sample_raw(feat, with_log_prob=True)
    assert torch.equal(action, raw.clamp(-1, 1)) and (raw.abs() > 1).any()
    ref = torch.distributions.Normal(mean, std).log_prob(raw).sum(-1)
    assert torch.allclose(logp, ref, atol=1e-5) and torch.allclose(actor.log_prob_of(feat, raw), ref, atol=1e-5)
    assert torch.equal(actor.mode(feat), mean)
    # The clip passes the gradient straight through, also for samples beyond the bounds.
    x = torch.tensor([-1.5, 0.3, 2.0], requires_grad=True)
    actor.squash(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    with pytest.raises(ConfigError, match="min_std < max_std"):
        BehaviorConfig(dist="normal", min_std=1.0, max_std=0.5)
    with pytest.raises(ValueError, match="unknown actor distribution"):
        Actor(6, 2, units=8, layers=2, dist="beta")


@pytest.mark.parametrize("grad,mix", [("reinforce", 0.0), ("both", 0.3)])
def test_reinforce_actor_loss_matches_the_score_function_reference(grad, mix):
    torch.manual_seed(0)
    cfg = BehaviorConfig(units=8, actor_layers=1, critic_layers=1, gamma=0.9, lam=0.8, actor_grad=grad,
                         actor_grad_mix=mix)
    ac = ActorCritic(9, 2, cfg)
    H, N = 3, 5
    feats, reward, u = torch.randn(H + 1, N, 9), torch.randn(H, N), torch.randn(H, N, 2)
    loss, returns, weights, metrics = ac.actor_loss(feats, reward, raw=u)
    with torch.no_grad():
        ref_returns = lambda_return(reward, ac.critic(feats[1:]), 0.9, 0.8)
        advantage = ref_returns - ac.critic(feats[:-1])
    w = discount_weights(0.9, H, reward)
    ref = -(w * (mix * ref_returns + (1 - mix) * ac.actor.log_prob_of(feats[:-1], u) * advantage)).mean()
    assert torch.allclose(returns, ref_returns, atol=1e-6)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(metrics["advantage_abs"], advantage.abs().mean())
    with pytest.raises(ValueError, match="needs the rollout's raw actor samples"):
        ac.actor_loss(feats, reward)


def test_reinforce_learns_where_the_reward_has_no_gradient():
    """A one-step bandit whose reward is not differentiable in the action (0/1 for landing in a
    target interval): the dynamics gradient is zero, REINFORCE moves the actor to the target."""
    torch.set_num_threads(1)
    feats = torch.zeros(2, 256, 4)

    def train(actor_grad: str) -> tuple[float, float]:
        """The final hit rate of sampled actions and the actor's mode, after training actor and critic."""
        torch.manual_seed(0)
        ac = ActorCritic(4, 1, BehaviorConfig(horizon=1, units=16, actor_layers=1, critic_layers=1, init_std=1.0,
                                              actor_grad=actor_grad))
        actor_opt = torch.optim.Adam(ac.actor.parameters(), lr=1e-2)
        critic_opt = torch.optim.Adam(ac.critic.parameters(), lr=1e-2)
        for _ in range(150):
            action, _, u = ac.actor.sample_raw(feats[0])
            hit = ((action[..., 0] - 0.6).abs() < 0.2).float()
            reward = (hit + 0 * action[..., 0])[None]  # in the graph, with zero gradient
            with frozen(ac.critic):
                loss, returns, weights, _ = ac.actor_loss(feats, reward, raw=u[None])
            optimize(loss, actor_opt, ac.actor.parameters(), 0.0)
            optimize(ac.critic_loss(feats, returns, weights), critic_opt, ac.critic.parameters(), 0.0)
        with torch.no_grad():
            return float(hit.mean()), float(ac.actor.mode(feats[0, :1])[0, 0])

    hits, mode = train("reinforce")
    assert hits > 0.8 and abs(mode - 0.6) < 0.2, (hits, mode)
    hits, mode = train("dynamics")
    assert hits < 0.3 and abs(mode - 0.6) > 0.5, (hits, mode)


def test_slow_target_refresh():
    ac = ActorCritic(4, 1, BehaviorConfig(units=4, slow_target=True, slow_target_update=2,
                                          slow_target_fraction=0.5))
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ac.target.parameters()]
    ac.update_target(1)  # not a refresh step
    assert all(torch.equal(a, b) for a, b in zip(before, ac.target.parameters()))
    ac.update_target(2)
    for b, t, s in zip(before, ac.target.parameters(), ac.critic.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)


def test_actor_average_moves_by_one_minus_decay():
    ac = ActorCritic(4, 1, BehaviorConfig(units=4, actor_layers=1, critic_layers=1, actor_average=0.9))
    assert ac.eval_actor() is ac.actor_avg and not any(p.requires_grad for p in ac.actor_avg.parameters())
    before = [p.clone() for p in ac.actor_avg.parameters()]
    with torch.no_grad():
        for p in ac.actor.parameters():
            p.add_(1.0)
    ac.update_actor_average()
    for b, avg, cur in zip(before, ac.actor_avg.parameters(), ac.actor.parameters()):
        assert torch.allclose(avg, 0.9 * b + 0.1 * cur)
    plain = ActorCritic(4, 1, BehaviorConfig(units=4, actor_layers=1, critic_layers=1))
    plain.update_actor_average()  # off: nothing to move
    assert plain.actor_avg is None and plain.eval_actor() is plain.actor
    with pytest.raises(ConfigError, match="actor_average"):
        BehaviorConfig(actor_average=1.0)


def test_gaussian_policy_densities_match_torch_distributions():
    """The shared densities behind VMIL's actor, SAC and BC, against torch.distributions."""
    torch.manual_seed(0)
    mean, log_std, x = torch.randn(5, 3), 0.5 * torch.randn(5, 3), torch.randn(5, 3) * 4
    reference = torch.distributions.Normal(mean, log_std.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(normal_log_prob(x, mean, log_std), reference)
    # log |d tanh / du| = log(1 - tanh(u)^2), also for |u| where the naive form loses precision.
    u = torch.linspace(-6, 6, 13, dtype=torch.float64)[None]
    torch.testing.assert_close(tanh_log_det(u), torch.log1p(-torch.tanh(u).pow(2)).sum(-1))
