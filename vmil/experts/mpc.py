"""Sampling-based MPC (MPPI with filtered noise, as PDDM, Nagabandi et al. 2019) on the true simulator.

The expert plans on copies of the env's simulator state: the env exposes
``evaluate_sequences(actions [N, H, A], threads=...) -> returns [N]``, which rolls every candidate
sequence out from a snapshot of its current state (``mj_getState`` + ``mujoco.rollout``) without
touching the env itself, and ``snapshot()``. Each control step:

1. shift the mean plan one step (its last action repeats),
2. sample ``N`` noise sequences ``eps ~ N(0, sigma^2)`` and filter them in time (PDDM):
   ``u_0 = beta (mu_0 + eps_0) + (1 - beta) a_prev``, ``u_h = beta (mu_h + eps_h) + (1 - beta) u_{h-1}``,
   clipped to [-1, 1]; the unperturbed filtered mean is always one of the candidates,
3. weight each sequence by ``exp(kappa (R - max R))`` and average: the new mean plan,
4. execute its first action.

With ``action_repeat > 1`` each planned action is held for ``repeat`` control steps in the rollouts,
exactly as the env will hold it. This is slow by design (``N * H`` simulated control steps per step):
``seconds_per_step`` records the cost of every decision. Defaults (H = 10 control steps, N = 100,
PDDM's kappa 20, sigma 0.9, beta 0.6; rollouts with a 5 ms physics step instead of the env's 2.5 ms,
which halves the cost) take ~1.5 CPU-seconds per control step on one core of the 2-core dev machine,
~2.5 CPU-minutes per 100-step Baoding episode; ``threads`` spreads the rollouts over cores.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from vmil.base import TimeStep


class MPPI:
    """The planner: samples, filters, weights. ``evaluate(actions [N, H, A]) -> returns [N]``."""

    def __init__(self, action_dim: int, *, horizon: int = 10, samples: int = 200, kappa: float = 20.0,
                 sigma: float = 0.9, beta: float = 0.6, seed: int = 0):
        if horizon < 1 or samples < 2:
            raise ValueError(f"MPPI needs horizon >= 1 and samples >= 2, got horizon={horizon}, samples={samples}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"MPPI filter coefficient beta must be in (0, 1], got {beta}")
        if sigma <= 0 or kappa <= 0:
            raise ValueError(f"MPPI needs sigma > 0 and kappa > 0, got sigma={sigma}, kappa={kappa}")
        self.action_dim = action_dim
        self.horizon = horizon
        self.samples = samples
        self.kappa = kappa
        self.sigma = sigma
        self.beta = beta
        self._rng = np.random.default_rng(seed)
        self.mean = np.zeros((horizon, action_dim))
        self.last_returns: np.ndarray | None = None

    def reset(self) -> None:
        self.mean = np.zeros((self.horizon, self.action_dim))

    def candidates(self) -> np.ndarray:
        """Shifts the mean plan and samples ``[N, H, A]`` filtered candidate sequences."""
        past = self.mean[0].copy()
        self.mean[:-1] = self.mean[1:]
        eps = self._rng.normal(0.0, self.sigma, size=(self.samples, self.horizon, self.action_dim))
        eps[0] = 0.0  # keep the current plan itself among the candidates
        u = np.empty_like(eps)
        prev = np.broadcast_to(past, (self.samples, self.action_dim))
        for h in range(self.horizon):
            u[:, h] = self.beta * (self.mean[h] + eps[:, h]) + (1.0 - self.beta) * prev
            prev = u[:, h]
        return np.clip(u, -1.0, 1.0)

    def update(self, candidates: np.ndarray, returns: np.ndarray) -> np.ndarray:
        """Reward-weighted mean of the candidates; returns the action to execute now."""
        returns = np.asarray(returns, dtype=np.float64)
        if returns.shape != (candidates.shape[0],):
            raise ValueError(f"expected {candidates.shape[0]} returns, got shape {returns.shape}")
        weights = mppi_weights(returns, self.kappa)
        self.mean = np.tensordot(weights, candidates, axes=1)
        self.last_returns = returns
        return self.mean[0].copy()

    def plan(self, evaluate) -> np.ndarray:
        cands = self.candidates()
        return self.update(cands, evaluate(cands))


def mppi_weights(returns: np.ndarray, kappa: float) -> np.ndarray:
    """Normalised ``exp(kappa (R - max R))`` (shifted by the max, so it never overflows)."""
    w = np.exp(kappa * (returns - np.max(returns)))
    return w / w.sum()


class MPPIExpert:
    """Expert protocol (``reset()``, ``act(timestep)``) around :class:`MPPI` for envs with
    ``evaluate_sequences`` (baoding). ``horizon`` counts control steps."""

    def __init__(self, env: Any, *, horizon: int = 10, samples: int = 100, kappa: float = 20.0,
                 sigma: float = 0.9, beta: float = 0.6, threads: int = 1, seed: int = 0,
                 timestep: float | None = 0.005):
        if not hasattr(env, "evaluate_sequences"):
            raise TypeError(f"{env.spec.env_id} cannot be planned on: the MPC expert needs an env with "
                            f"evaluate_sequences() (baoding:ccw, baoding:cw)")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.env = env
        self.repeat = int(env.spec.action_repeat)
        self.threads = threads
        self.timestep = timestep  # planning physics step; None: the env's own
        # Plan in agent steps: each held for `repeat` control steps, covering >= `horizon` of them.
        self.planner = MPPI(env.spec.action_dim, horizon=max(1, math.ceil(horizon / self.repeat)),
                            samples=samples, kappa=kappa, sigma=sigma, beta=beta, seed=seed)
        self.seconds_per_step: list[float] = []

    def reset(self) -> None:
        self.planner.reset()

    def act(self, timestep: TimeStep) -> np.ndarray:
        start = time.perf_counter()
        action = self.planner.plan(self._evaluate)
        self.seconds_per_step.append(time.perf_counter() - start)
        return action.astype(np.float32)

    def _evaluate(self, candidates: np.ndarray) -> np.ndarray:
        return self.env.evaluate_sequences(np.repeat(candidates, self.repeat, axis=1), threads=self.threads,
                                           timestep=self.timestep)


def mpc_expert(env: Any, **options: Any) -> MPPIExpert:
    return MPPIExpert(env, **options)
