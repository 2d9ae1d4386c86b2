"""Learning check of the imagination actor-critic alone: imagination runs on a TRUE, differentiable
cart-pole (no learned model), so a failure here is the actor-critic's, never the world model's.
Slow (a few minutes on one core)."""
from __future__ import annotations

import math

import pytest
import torch

from vmil.nn import optimize
from world_model.behavior import ActorCritic, BehaviorConfig, frozen, imagine
from world_model.rssm import State


def _state(physical: torch.Tensor) -> State:
    empty = physical[..., :0]
    return State(empty, empty, empty, physical)


class TrueCartPole:
    """The classic cart-pole (Barto et al. 1983; angle 0 upright, force 10 x action, 4 Euler steps of 5 ms
    per step, as two 10 ms control steps at action repeat 2) behind the RSSM interface imagine() uses:
    the physical state [x, angle, x', angle'] is the deterministic part, features are what DMC's
    cartpole observes [x, cos, sin, x', angle']."""

    stoch_size = 0

    @staticmethod
    def feat(state: State) -> torch.Tensor:
        x, angle, x_dot, angle_dot = state.deter.unbind(-1)
        return torch.stack([x, torch.cos(angle), torch.sin(angle), x_dot, angle_dot], -1)

    def img_step(self, state: State, action: torch.Tensor, sample: bool = True) -> State:
        x, angle, x_dot, angle_dot = state.deter.unbind(-1)
        force, cart, pole, half_length, g, dt = 10.0 * action[..., 0], 1.0, 0.1, 0.5, 9.81, 0.005
        for _ in range(4):
            sin, cos = torch.sin(angle), torch.cos(angle)
            temp = (force + pole * half_length * angle_dot ** 2 * sin) / (cart + pole)
            angle_acc = (g * sin - cos * temp) / (half_length * (4 / 3 - pole * cos ** 2 / (cart + pole)))
            x_acc = temp - pole * half_length * angle_acc * cos / (cart + pole)
            x, x_dot = x + dt * x_dot, x_dot + dt * x_acc
            angle, angle_dot = angle + dt * angle_dot, angle_dot + dt * angle_acc
        return _state(torch.stack([x, angle, x_dot, angle_dot], -1))


def balance_reward(feat: torch.Tensor) -> torch.Tensor:
    """DMC's balance reward shape (upright x centred x slow), 2 per agent step at best."""
    x, cos, _, _, angle_dot = feat.unbind(-1)
    return (cos + 1) * (1 + torch.exp(-x ** 2)) / 2 * (1 + torch.exp(-angle_dot ** 2 / 25)) / 2


def _starts(n: int) -> State:
    """Half near upright, half anywhere on the circle: what a replay of early episodes holds."""
    physical = torch.randn(n, 4) * torch.tensor([0.5, 0.3, 0.5, 0.5])
    wide = torch.rand(n) < 0.5
    physical[wide, 1] = (torch.rand(int(wide.sum())) * 2 - 1) * math.pi
    physical[wide, 3] = torch.randn(int(wide.sum())) * 3
    return _state(physical)


@torch.no_grad()
def _episode_returns(model: TrueCartPole, policy, episodes: int = 5,
                     steps: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    physical = torch.zeros(episodes, 4)
    physical[:, 1] = torch.randn(episodes) * 0.05
    state, total = _state(physical), torch.zeros(episodes)
    for _ in range(steps):
        state = model.img_step(state, policy(model.feat(state)).clamp(-1, 1))
        total += balance_reward(model.feat(state))
    return total, torch.cos(state.deter[:, 1])


def _train(cfg: BehaviorConfig, updates: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model, ac = TrueCartPole(), ActorCritic(5, 1, cfg)
    opt_actor = torch.optim.Adam(ac.actor.parameters(), cfg.actor_lr, eps=cfg.eps)
    opt_critic = torch.optim.Adam(ac.critic.parameters(), cfg.critic_lr, eps=cfg.eps)
    for i in range(updates):
        with frozen(ac.critic):
            rollout = imagine(model, ac.actor, _starts(256), cfg.horizon, input_grad=cfg.actor_input_grad)
            loss, returns, weights, _ = ac.actor_loss(rollout.feats, balance_reward(rollout.feats[1:]))
        optimize(loss, opt_actor, list(ac.actor.parameters()), 100.0)
        optimize(ac.critic_loss(rollout.feats, returns, weights), opt_critic, list(ac.critic.parameters()), 100.0)
        ac.update_target(i + 1)
    return _episode_returns(model, ac.actor.mode)


def test_true_cartpole_is_balanced_by_a_hand_controller_and_not_by_doing_nothing():
    model = TrueCartPole()
    controller = lambda f: 10 * f[:, 2:3] + 2 * f[:, 4:5] + f[:, 0:1] + f[:, 3:4]  # noqa: E731
    held, upright = _episode_returns(model, controller)
    idle, _ = _episode_returns(model, lambda f: torch.zeros(f.shape[0], 1))
    assert held.min() > 990 and upright.min() > 0.999, (held, upright)
    assert idle.max() < 700, idle


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_actor_critic_learns_to_balance_the_true_cartpole(seed):
    """The dmc `cpu` actor-critic (H=15, gamma 0.99, the bounded normal actor) with the closed-loop
    gradient balances within 1500 updates (seeds 0-2: 880, 986, 992). With Dreamer's stop-gradient on
    the actor's inputs the same learner balanced seeds 0 and 3 but not these two (243, 251), so this
    check fails if the closed-loop gradient stops reaching the actor (docs/experiments)."""
    cfg = BehaviorConfig(horizon=15, gamma=0.99, units=128, actor_layers=2, critic_layers=2, actor_lr=3e-4,
                         critic_lr=3e-4, slow_target=True, dist="normal", actor_input_grad=True)
    returns, upright = _train(cfg, 1500, seed=seed)
    assert returns.mean() > 700 and upright.min() > 0.95, (returns, upright)
