"""Recording expert demonstrations (``vmil demos record``) and summarising them (``vmil demos inspect``).

Demos are observation-only by default (the setting of imitation from observation); actions are
kept only when asked (BC, BCO and PatchAIL+BC need them).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


class DemosError(ValueError):
    """A demo recording request is wrong (e.g. the output directory already holds episodes)."""


def record(env_id: str, expert: str, episodes: int, out: str | Path, *, keep_actions: bool = False,
           image_size: int = 64, action_repeat: int = 2, seed: int = 0, camera: str | int | None = None,
           grayscale: bool = False, fast_render: bool = True, max_episode_steps: int = 0,
           proprio: bool | None = None, expert_options: dict[str, Any] | None = None,
           quiet: bool | None = None) -> Any:
    """Roll out ``expert`` ("scripted", "mpc" or a SAC checkpoint path) for ``episodes`` episodes and
    write one ``.npz`` per episode to ``out``. Returns the demos' :class:`DemoInfo`.

    ``proprio`` None keeps the family's default (on for baoding). ``expert_options`` go to the
    expert (e.g. ``{"samples": 200, "horizon": 10}`` for MPC). `vmil demos record` takes every env
    setting from the same config resolution as `vmil train` (:func:`vmil.config.resolve_env`)."""
    from tqdm import tqdm

    from vmil import envs
    from vmil.data.episode import EpisodeBuilder, demo_info, episode_filename, save_episode
    from vmil.experts import make_expert

    if episodes < 1:
        raise DemosError(f"--episodes must be >= 1, got {episodes}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemosError(f"{out} is a file; --out must be a directory")
    if out.is_dir() and any(out.glob("*.npz")):
        raise DemosError(f"{out} already holds episodes; choose another --out or delete them first")
    family_options = {} if proprio is None else {"proprio": bool(proprio)}
    env = envs.make(env_id, image_size=image_size, action_repeat=action_repeat, seed=seed, camera=camera,
                    fast_render=fast_render, grayscale=grayscale, max_episode_steps=max_episode_steps,
                    **family_options)
    try:
        policy = make_expert(expert, env, **(expert_options or {}))
        source = expert if expert in ("scripted", "mpc") else f"sac:{Path(expert).name}"
        builder = EpisodeBuilder(env.spec, meta={"source": f"expert:{source}", "seed": seed})
        recorded = []
        quiet = (not sys.stderr.isatty()) if quiet is None else quiet
        with tqdm(total=episodes, desc=f"record {env_id}", unit="ep", disable=quiet) as bar:
            for index in range(episodes):
                ts = env.reset()
                policy.reset()
                builder.start(ts)
                while not ts.last:
                    action = policy.act(ts)
                    ts = env.step(action)
                    builder.add(action if keep_actions else None, ts)
                ep = builder.finish()
                save_episode(ep, out / episode_filename(index, ep.length))
                recorded.append(ep)
                bar.update(1)
                bar.set_postfix(ret=f"{ep.ret:.1f}")
    finally:
        env.close()
    return demo_info(recorded, out)


def inspect(directory: str | Path) -> Any:
    """The :class:`DemoInfo` of a demo directory (every file loaded and validated)."""
    from vmil.data.episode import demo_info, load_episodes

    return demo_info(load_episodes(directory), directory)


def convert(directory: str | Path, out: str | Path, image_size: int, grayscale: bool = False,
            quiet: bool | None = None) -> Any:
    """Write ``directory``'s episodes to ``out`` at ``image_size`` (area interpolation; only shrinking)
    and, with ``grayscale``, as one luminance channel: what loading does on the fly, done once.
    Returns the new demos' :class:`DemoInfo`."""
    from tqdm import tqdm

    from vmil.data.episode import adaptable, convert_episode, demo_info, episode_paths, load_episode, save_episode

    out = Path(out)
    paths = episode_paths(directory)
    if out.resolve() == Path(directory).resolve():
        raise DemosError(f"--out {out} is the source directory; write the converted demos to a new one")
    if out.is_dir() and any(out.glob("*.npz")):
        raise DemosError(f"{out} already holds episodes; choose another --out or delete them first")
    if image_size < 1:
        raise DemosError(f"--image-size must be >= 1, got {image_size}")
    converted = []
    quiet = (not sys.stderr.isatty()) if quiet is None else quiet
    for path in tqdm(paths, desc="convert", unit="ep", disable=quiet):
        ep = load_episode(path)
        c, h, w = ep.obs.shape[1:]
        target = (1 if grayscale else c, image_size, image_size)
        if tuple(ep.obs.shape[1:]) != target:
            if not adaptable(ep.obs.shape[1:], target):
                why = (f"frames are {h}x{w}, smaller than {image_size}x{image_size} (demos are only shrunk; "
                       f"record them at {image_size} or larger)") if min(h, w) < image_size else (
                    f"{c}-channel frames cannot become {target[0]}-channel ones")
                raise DemosError(f"{path}: {why}")
            ep = convert_episode(ep, target)
        save_episode(ep, out / path.name)
        converted.append(ep)
    return demo_info(converted, out)


def serving_env_settings(env_id: str, preset: str = "cpu") -> dict[str, Any]:
    """Recording settings whose demos serve every algorithm on ``env_id`` under ``preset``: the
    largest image size any algorithm resolves to (the others resize on load) and colour unless all
    of them are grayscale (colour demos are converted on load)."""
    from vmil.config import ConfigError, resolve
    from vmil.registry import ALGOS, algo_module

    envs = []
    for algo in ALGOS:
        try:
            envs.append(resolve(algo, algo_module(algo).Config, env_id, preset).env)
        except (ConfigError, ImportError):
            continue  # an algorithm that does not run on this env
    if not envs:
        return {}
    return {"image_size": max(e.image_size for e in envs), "grayscale": all(e.grayscale for e in envs)}
