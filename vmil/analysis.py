"""Load a trained run for a notebook (agent, config, env spec, demo and episode directories), or
train a seconds-long one. The views themselves live beside the models they draw
(:mod:`world_model.analysis` for VMIL's latent rollouts, :mod:`imitation.viz` for patch rewards)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def train_smoke_run(out_dir: str | Path, env_id: str = "toy:reach", episodes: int = 3, preset: str = "smoke",
                    overrides: tuple[str, ...] = (), algo: str = "vmil") -> Path:
    """Record observation-only scripted demos and train ``algo`` briefly; returns the run directory."""
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    out_dir = Path(out_dir)
    cfg = resolve(algo, algo_module(algo).Config, env_id, preset, list(overrides) + ["train.video=false"])
    demos = out_dir / "demos"
    if not any(demos.glob("*.npz")):
        record(env_id, "scripted", episodes, demos, image_size=cfg.env.image_size,
               action_repeat=cfg.env.action_repeat, max_episode_steps=cfg.env.max_episode_steps, quiet=True)
    run_dir = out_dir / "run"
    runner = build_run(cfg, demos, run_dir, tracking_uri=None, quiet=True)
    runner.run()
    runner.close()
    return run_dir


def load_run(run_dir: str | Path, device: str = "cpu", algo: str | None = None) -> dict[str, Any]:
    """The trained agent of a run directory with its config, env spec and demo directory:
    ``{"agent", "config", "spec", "demos", "episodes"}`` (``episodes``: the agent's stored episodes).
    ``algo``: refuse a run of another algorithm."""
    from vmil import envs
    from vmil.checkpoint import load_checkpoint
    from vmil.config import RunConfig, from_dict
    from vmil.nn import resolve_device
    from vmil.registry import algo_module
    from vmil.rundir import RUN_FILE, checkpoint_path, demo_info_from_meta

    run_dir = Path(run_dir)
    payload = load_checkpoint(checkpoint_path(run_dir))
    if algo is not None and payload["algo"] != algo:
        raise ValueError(f"{run_dir} is a {payload['algo']} run; these views need a {algo} run")
    module = algo_module(payload["algo"])
    cfg: RunConfig = from_dict(RunConfig, payload["config"], agent_cls=module.Config)
    env = envs.make(cfg.env.id, image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat,
                    grayscale=cfg.env.grayscale, max_episode_steps=cfg.env.max_episode_steps, render=False)
    spec = env.spec
    env.close()
    agent = module.build(cfg.agent, spec, resolve_device(device), demo_info_from_meta(payload["meta"]))
    agent.load_state_dict(payload["agent"])
    info = json.loads((run_dir / RUN_FILE).read_text())
    return {"agent": agent, "config": cfg, "spec": spec, "demos": Path(info["demos"]) if info.get("demos") else None,
            "episodes": run_dir / "episodes"}
