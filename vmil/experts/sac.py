"""State-based SAC experts for tasks with no scripted controller (``vmil expert train``).

The learner sees only ``env.expert_observation()`` (the simulator's low-dimensional state) and the
env is built with ``render=False``, so training draws no frames. Continuous actions: SAC with a
tanh-Gaussian actor, twin Q critics with Polyak-averaged targets and a learned temperature
(Haarnoja et al. 2018). Discrete actions (classic control): discrete SAC (Christodoulou 2019), chosen
over DQN so that one learner, one checkpoint format and one temperature rule cover both; the
policy's expectation over actions replaces sampling, and the target entropy is a fraction of the
uniform policy's ``log(n)``: 0.5 by default, lower than the paper's 0.98, which asks the policy to
stay almost uniform (``discrete_entropy_ratio``). Measured on CartPole-v1 (64-unit nets, 10k steps):
returns 250-400 from 10k steps with ratio 0.5 or 0.2, not the maximum 500; classic control has
scripted experts (``vmil.envs.gym.scripted_expert``), which are the better demo source there.

``expert.pt`` is a :mod:`vmil.checkpoint` file (``algo="sac-expert"``): network and optimiser
state dicts, counters, RNG state and a metadata dict of plain types; the replay of the run lives next
to it (``replay-<step>.npz``) so that ``train`` resumes where a killed run stopped.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmil.base import TimeStep
from vmil.config import doc, from_dict, to_dict
from vmil.nn import normal_log_prob, optimize, resolve_device, seed_everything, soft_update, tanh_log_det

ALGO = "sac-expert"
CHECKPOINT = "expert.pt"


@dataclass(frozen=True)
class SACConfig:
    hidden: int = doc(256, "Units per hidden layer of actor and critics.")
    layers: int = doc(2, "Hidden layers of actor and critics.")
    lr: float = doc(3e-4, "Adam learning rate of actor, critics and temperature.")
    batch_size: int = doc(256, "Transitions per update.")
    discount: float = doc(0.99, "Discount factor.")
    tau: float = doc(0.005, "Polyak rate of the target critics.")
    init_temperature: float = doc(1.0, "Initial entropy temperature alpha.")
    discrete_entropy_ratio: float = doc(0.5, "Discrete actions: target entropy = ratio * log(n).")
    log_std_min: float = doc(-5.0, "Lower bound of the actor's log standard deviation.")
    log_std_max: float = doc(2.0, "Upper bound of the actor's log standard deviation.")
    random_steps: int = doc(5000, "Uniform-random agent steps before the first update.")
    updates_per_step: int = doc(1, "Gradient updates per agent step after random_steps.")
    replay_capacity: int = doc(1_000_000, "Replay capacity in transitions.")
    eval_episodes: int = doc(10, "Deterministic episodes per evaluation.")
    save_replay: bool = doc(True, "Write the replay with each checkpoint so that train() can resume exactly.")


def mlp(inp: int, hidden: int, layers: int, out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    mods.append(nn.Linear(hidden if layers else inp, out))
    return nn.Sequential(*mods)


class Actor(nn.Module):
    """Continuous: tanh-squashed Gaussian; discrete: categorical logits."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, cfg: SACConfig):
        super().__init__()
        self.discrete = discrete
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max
        self.net = mlp(obs_dim, cfg.hidden, cfg.layers, action_dim if discrete else 2 * action_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) for continuous actions; (logits, log_probs) for discrete ones."""
        out = self.net(obs)
        if self.discrete:
            return out, F.log_softmax(out, dim=-1)
        mean, log_std = out.chunk(2, dim=-1)
        # Soft bounds keep gradients alive at the limits, unlike clamping.
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous: a reparameterised action in (-1, 1) and its log-probability [B]."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(u)
        return action, normal_log_prob(u, mean, log_std) - tanh_log_det(u)


class TwinQ(nn.Module):
    """Two critics; continuous: Q(s, a) -> [B]; discrete: Q(s, .) -> [B, n]."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, cfg: SACConfig):
        super().__init__()
        self.discrete = discrete
        inp, out = (obs_dim, action_dim) if discrete else (obs_dim + action_dim, 1)
        self.q1 = mlp(inp, cfg.hidden, cfg.layers, out)
        self.q2 = mlp(inp, cfg.hidden, cfg.layers, out)

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            return self.q1(obs), self.q2(obs)
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SAC:
    """Actor, twin critics, their targets and the temperature, with one ``update`` per batch."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, cfg: SACConfig, device: torch.device):
        self.obs_dim, self.action_dim, self.discrete, self.cfg, self.device = obs_dim, action_dim, discrete, cfg, device
        self.actor = Actor(obs_dim, action_dim, discrete, cfg).to(device)
        self.critic = TwinQ(obs_dim, action_dim, discrete, cfg).to(device)
        self.critic_target = TwinQ(obs_dim, action_dim, discrete, cfg).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=device, requires_grad=True)
        self.target_entropy = (cfg.discrete_entropy_ratio * math.log(action_dim) if discrete else -float(action_dim))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, foreach=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, foreach=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr, foreach=True)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray | int:
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]
        assert x.shape == (1, self.obs_dim), f"SAC.act: expected obs of shape ({self.obs_dim},), got {tuple(obs.shape)}"
        if self.discrete:
            logits, _ = self.actor(x)
            if deterministic:
                return int(logits.argmax(-1))
            return int(torch.distributions.Categorical(logits=logits).sample())
        if deterministic:
            return torch.tanh(self.actor(x)[0])[0].cpu().numpy().astype(np.float32)
        return self.actor.sample(x)[0][0].cpu().numpy().astype(np.float32)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        obs, action, reward, next_obs, terminal = (batch[k] for k in ("obs", "action", "reward", "next_obs", "terminal"))
        B = obs.shape[0]
        assert obs.shape == next_obs.shape == (B, self.obs_dim), f"SAC.update: obs {tuple(obs.shape)}, next_obs {tuple(next_obs.shape)}"
        assert reward.shape == terminal.shape == (B,), f"SAC.update: reward {tuple(reward.shape)}, terminal {tuple(terminal.shape)}"
        assert action.shape == ((B,) if self.discrete else (B, self.action_dim)), f"SAC.update: action {tuple(action.shape)}"
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            if self.discrete:
                _, next_logp = self.actor(next_obs)
                tq1, tq2 = self.critic_target(next_obs)
                next_v = (next_logp.exp() * (torch.min(tq1, tq2) - alpha * next_logp)).sum(-1)
            else:
                next_a, next_logp = self.actor.sample(next_obs)
                tq1, tq2 = self.critic_target(next_obs, next_a)
                next_v = torch.min(tq1, tq2) - alpha * next_logp
            target = reward + self.cfg.discount * (1.0 - terminal.float()) * next_v
        q1, q2 = self.critic(obs, None if self.discrete else action)
        if self.discrete:
            q1, q2 = q1.gather(1, action[:, None]).squeeze(1), q2.gather(1, action[:, None]).squeeze(1)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_info = optimize(critic_loss, self.critic_opt, self.critic.parameters())

        # The actor's gradient flows through the critics' inputs, never into their weights.
        self.critic.requires_grad_(False)
        if self.discrete:
            _, logp = self.actor(obs)
            probs = logp.exp()
            q1_pi, q2_pi = self.critic(obs)
            actor_loss = (probs * (alpha * logp - torch.min(q1_pi, q2_pi))).sum(-1).mean()
            entropy = -(probs * logp).sum(-1).detach()
        else:
            a_pi, logp = self.actor.sample(obs)
            q1_pi, q2_pi = self.critic(obs, a_pi)
            actor_loss = (alpha * logp - torch.min(q1_pi, q2_pi)).mean()
            entropy = -logp.detach()
        self.critic.requires_grad_(True)
        actor_info = optimize(actor_loss, self.actor_opt, self.actor.parameters())
        # alpha grows while the policy's entropy is below the target, shrinks above it.
        alpha_loss = (self.log_alpha * (entropy - self.target_entropy)).mean()
        optimize(alpha_loss, self.alpha_opt, [self.log_alpha])
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha.item(),
                "entropy": float(entropy.mean()), "q": float(q1.detach().mean()),
                "critic_grad_norm": critic_info["grad_norm"], "actor_grad_norm": actor_info["grad_norm"],
                "skipped": critic_info["skipped"] + actor_info["skipped"]}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])


class StateReplay:
    """Ring buffer of low-dimensional transitions (numpy); not the pixel replay."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, discrete: bool):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity,), np.int64) if discrete else np.zeros((capacity, action_dim), np.float32)
        self.reward = np.zeros((capacity,), np.float32)
        self.terminal = np.zeros((capacity,), bool)

    def add(self, obs: np.ndarray, action: np.ndarray | int, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.reward[i], self.next_obs[i], self.terminal[i] = obs, action, reward, next_obs, terminal
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int, rng: np.random.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch)
        return {k: torch.as_tensor(getattr(self, k)[idx], device=device)
                for k in ("obs", "action", "reward", "next_obs", "terminal")}

    _KEYS = ("obs", "action", "reward", "next_obs", "terminal")

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, pos=np.int64(self.pos), size=np.int64(self.size),
                 **{k: getattr(self, k)[:self.size] for k in self._KEYS})
        tmp.replace(path)

    def load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            size = int(data["size"])
            if size > self.capacity or any(data[k].shape[0] != size or data[k].shape[1:] != getattr(self, k).shape[1:] for k in self._KEYS):
                raise ValueError(f"{path}: replay does not match this run (size {size}, capacity {self.capacity})")
            for k in self._KEYS:
                getattr(self, k)[:size] = data[k]
            # A larger buffer than the saved one (a longer run) keeps appending after the old data.
            self.size, self.pos = size, int(data["pos"]) if size == self.capacity else size


def _default_action_repeat(env_id: str) -> int:
    """The family's preset action repeat (configs/env/<family>.yaml), else EnvConfig's default."""
    from vmil.config import EnvConfig, _layer, configs_root

    layer = _layer(configs_root() / "env" / f"{env_id.split(':', 1)[0]}.yaml", "cpu")
    return int(layer.get("env", {}).get("action_repeat", EnvConfig.action_repeat))


def evaluate(agent: SAC, env: Any, episodes: int) -> list[float]:
    returns = []
    for _ in range(episodes):
        ts, total = env.reset(), 0.0
        while not ts.last:
            ts = env.step(agent.act(env.expert_observation(), deterministic=True))
            total += ts.reward
        returns.append(total)
    return returns


def train(env_id: str, steps: int, out_dir: str | Path, seed: int = 0, action_repeat: int | None = None,
          eval_every: int = 10_000, device: str = "auto", progress: bool = True,
          cfg: SACConfig = SACConfig(), tracker: Any = None) -> Path:
    """Train (or resume) a state-based SAC expert for ``steps`` agent steps; returns ``out_dir/expert.pt``.

    Evaluates and checkpoints every ``eval_every`` steps and at the end; each evaluation is printed
    (when ``progress``), appended to ``out_dir/log.jsonl`` and sent to ``tracker`` (a
    :class:`vmil.tracking.Tracker`) when one is given."""
    from vmil import envs
    from vmil.checkpoint import load_checkpoint, save_checkpoint

    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got steps={steps}, eval_every={eval_every}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    action_repeat = action_repeat or _default_action_repeat(env_id)
    dev = resolve_device(device)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    env = envs.make(env_id, action_repeat=action_repeat, seed=seed, render=False)
    if not hasattr(env, "expert_observation"):
        raise ValueError(f"{env_id}: this env has no expert_observation(); SAC experts need the low-dimensional state")
    spec = env.spec
    env.reset()
    obs_dim = int(env.expert_observation().shape[0])
    agent = SAC(obs_dim, spec.action_dim, spec.discrete, cfg, dev)
    payload = load_checkpoint(ckpt_path, algo=ALGO) if ckpt_path.exists() else None
    done_steps = payload["counters"]["step"] if payload else 0
    replay = StateReplay(min(cfg.replay_capacity, max(steps, done_steps)), obs_dim, spec.action_dim, spec.discrete)
    meta = {"env_id": spec.env_id, "obs_dim": obs_dim, "action_dim": spec.action_dim, "discrete": spec.discrete,
            "action_repeat": action_repeat, "seed": seed, "evals": []}
    step = updates = episodes = 0
    wall_before = 0.0
    if payload is not None:
        old = payload["meta"]
        for key in ("env_id", "obs_dim", "action_dim", "discrete", "action_repeat", "seed"):
            if old[key] != meta[key]:
                raise ValueError(f"{ckpt_path}: cannot resume: checkpoint has {key}={old[key]!r}, this run {meta[key]!r}; "
                                 f"use another --out directory")
        if payload["config"] != to_dict(cfg):
            diff = sorted(k for k in payload["config"] if payload["config"][k] != to_dict(cfg).get(k))
            raise ValueError(f"{ckpt_path}: cannot resume with a different SAC config (differs in {diff}); use another --out directory")
        agent.load_state_dict(payload["agent"])
        step, updates, episodes = (payload["counters"][k] for k in ("step", "updates", "episodes"))
        meta, wall_before = old, float(old["wall_seconds"])
        rng.bit_generator.state = json.loads(old["numpy_rng"])
        torch.set_rng_state(payload["rng"]["torch"])
        replay_file = out / old["replay_file"] if old.get("replay_file") else None
        if replay_file is not None and replay_file.exists():
            replay.load(replay_file)
        elif step > 0:
            print(f"{out}: no replay file beside the checkpoint; resuming at step {step} with an empty replay", file=sys.stderr)
        env.close()
        # A fresh episode with a new seed, so a resumed run does not replay its first episodes.
        env = envs.make(env_id, action_repeat=action_repeat, seed=seed + step, render=False)
        env.reset()
    eval_env = envs.make(env_id, action_repeat=action_repeat, seed=seed + 1_000_003, render=False)

    def checkpoint(wall: float) -> None:
        meta.update(wall_seconds=wall, numpy_rng=json.dumps(rng.bit_generator.state), config=to_dict(cfg))
        if cfg.save_replay:
            name = f"replay-{step}.npz"
            replay.save(out / name)
            meta["replay_file"] = name
        save_checkpoint(ckpt_path, algo=ALGO, agent_state=agent.state_dict(),
                        counters={"step": step, "updates": updates, "episodes": episodes},
                        config=to_dict(cfg), rng={"torch": torch.get_rng_state()}, meta=meta)
        for old_file in out.glob("replay-*.npz"):
            if old_file.name != meta.get("replay_file"):
                old_file.unlink()

    if tracker is not None:
        tracker.log_params({"env_id": env_id, "steps": steps, "seed": seed, "action_repeat": action_repeat,
                            **{f"sac.{k}": v for k, v in to_dict(cfg).items()}})
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"sac {env_id}", disable=not sys.stderr.isatty(), smoothing=0.05)
    start = time.time()
    obs, ep_return, recent, metrics = env.expert_observation(), 0.0, [], {}
    while step < steps:
        if step < cfg.random_steps:
            action: Any = int(rng.integers(spec.action_dim)) if spec.discrete else rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        else:
            action = agent.act(obs, deterministic=False)
        ts = env.step(action)
        next_obs = env.expert_observation()
        replay.add(obs, action, ts.reward, next_obs, ts.terminal)
        ep_return += ts.reward
        step += 1
        if ts.last:
            episodes += 1
            recent = (recent + [ep_return])[-10:]
            env.reset()
            next_obs, ep_return = env.expert_observation(), 0.0
        obs = next_obs
        if step > cfg.random_steps:
            for _ in range(cfg.updates_per_step):
                metrics = agent.update(replay.sample(cfg.batch_size, rng, dev))
                updates += 1
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step == steps:
            returns = evaluate(agent, eval_env, cfg.eval_episodes)
            wall = wall_before + time.time() - start
            record = {"step": step, "episodes": episodes, "updates": updates, "wall_seconds": round(wall, 1),
                      "eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
                      "train_return_recent": float(np.mean(recent)) if recent else None,
                      **{k: round(v, 5) for k, v in metrics.items()}}
            meta["evals"].append([step, record["eval_return_mean"], record["eval_return_std"], record["wall_seconds"]])
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if progress:
                line = (f"[sac {env_id}] step {step} eval {record['eval_return_mean']:.1f} ± {record['eval_return_std']:.1f} "
                        f"({wall / 60:.1f} min)")
                (bar.write if bar is not None else print)(line)
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=step)
            checkpoint(wall)
    if bar is not None:
        bar.close()
    env.close()
    eval_env.close()
    return ckpt_path


class SACExpert:
    """A trained SAC policy acting deterministically (the mean action) from ``env.expert_observation()``."""

    def __init__(self, actor: Actor, env: Any, metadata: dict[str, Any]):
        self.actor, self.env, self.metadata = actor.eval(), env, metadata
        self.obs_dim = int(metadata["obs_dim"])

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def act(self, timestep: TimeStep) -> np.ndarray | int:
        obs = np.asarray(self.env.expert_observation(), dtype=np.float32)
        if obs.shape != (self.obs_dim,):
            raise ValueError(f"SAC expert for {self.metadata['env_id']} expects a state of shape ({self.obs_dim},), "
                             f"the env gives {obs.shape}")
        out, _ = self.actor(torch.from_numpy(obs)[None])
        if self.actor.discrete:
            return int(out.argmax(-1))
        return torch.tanh(out)[0].numpy().astype(np.float32)


def load_expert(path: str | Path, env: Any) -> SACExpert:
    """The expert in ``path`` (an ``expert.pt`` or the directory holding it), checked against ``env``."""
    from vmil.checkpoint import CheckpointError, load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no SAC expert checkpoint here; train one with "
                                f"`vmil expert train --env {env.spec.env_id} --steps N --out DIR` and pass DIR/{CHECKPOINT}")
    payload = load_checkpoint(path, algo=ALGO)
    meta = payload["meta"]
    spec = env.spec
    if meta["env_id"] != spec.env_id:
        raise CheckpointError(f"{path}: expert trained on {meta['env_id']}, cannot drive {spec.env_id}; "
                              f"use --env {meta['env_id']} or an expert trained on {spec.env_id}")
    if (meta["action_dim"], meta["discrete"]) != (spec.action_dim, spec.discrete):
        raise CheckpointError(f"{path}: expert acts with {meta['action_dim']} {'discrete' if meta['discrete'] else 'continuous'} "
                              f"actions, {spec.env_id} has {spec.action_dim} {'discrete' if spec.discrete else 'continuous'}")
    if meta["action_repeat"] != spec.action_repeat:
        raise CheckpointError(f"{path}: expert trained with action_repeat={meta['action_repeat']}, the env uses "
                              f"{spec.action_repeat}; make the env with action_repeat={meta['action_repeat']} "
                              f"(`--action-repeat {meta['action_repeat']}`, or env.action_repeat={meta['action_repeat']})")
    env_obs_dim = spec.extra.get("expert_obs_dim")
    if env_obs_dim is not None and env_obs_dim != meta["obs_dim"]:
        raise CheckpointError(f"{path}: expert reads a {meta['obs_dim']}-d state, {spec.env_id} gives {env_obs_dim}-d")
    if not hasattr(env, "expert_observation"):
        raise CheckpointError(f"{spec.env_id} has no expert_observation(); a SAC expert cannot drive it")
    cfg = from_dict(SACConfig, payload["config"])
    actor = Actor(meta["obs_dim"], meta["action_dim"], meta["discrete"], cfg)
    actor.load_state_dict(payload["agent"]["actor"])
    return SACExpert(actor, env, {**meta, "step": payload["counters"]["step"]})
