"""Patch-reward maps (the paper's Figure 1): each patch's reward painted back onto the pixels it
sees, overlaid on the frame with a diverging colour map centred at 0 (``coolwarm``: red =
expert-like, positive reward; blue = agent-like, negative).

Mapping patches to pixels follows the conv geometry exactly: patch (i, j) of a discriminator with
receptive field ``rf``, total stride ``S`` and offset ``o`` sees rows [i*S - o, i*S - o + rf) and
the same columns (clipped to the image); every pixel shows the mean value of all patches whose
receptive fields cover it. For the default discriminator (kernel 4) rf = 22, S = 2, o = 7.

``vmil viz patch-rewards RUN_DIR --demos DIR --out FILE.{png,mp4}`` is :func:`patch_reward_cli`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from imitation.discriminators import PatchDiscriminator, PatchGeometry, normalize_image
from imitation.rewards import TransformKind, transform

DEFAULT_GEOMETRY = PatchGeometry(receptive_field=22, stride=2, offset=7)


def receptive_field(disc: torch.nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(rf_h, rf_w) of the centre output by autograd: the extent of the input pixels its gradient
    reaches. Measured on a float64 copy with positive weights and a positive input, so no
    gradient cancels inside the field by chance."""
    probe = copy.deepcopy(disc).double().eval()
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(p.abs() + 1e-3)
    x = torch.ones(1, *input_shape, dtype=torch.float64, requires_grad=True)
    out = probe(x)
    centre = out[0, 0, out.shape[2] // 2, out.shape[3] // 2] if out.ndim == 4 else out.reshape(-1)[0]
    grad, = torch.autograd.grad(centre, x)
    hit = grad[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def patch_value_map(patch_values: np.ndarray | torch.Tensor, height: int, width: int,
                    geometry: PatchGeometry = DEFAULT_GEOMETRY) -> np.ndarray:
    """Patch values [P, P] or [N, P, P] -> pixel values [H, W] or [N, H, W] (float32): the mean
    of the patches covering each pixel (0 where none does)."""
    v = torch.as_tensor(np.asarray(patch_values, dtype=np.float32))
    single = v.ndim == 2
    if single:
        v = v[None]
    if v.ndim != 3:
        raise ValueError(f"patch values must be [P, P] or [N, P, P], got {tuple(v.shape)}")
    rf, s, o = geometry.receptive_field, geometry.stride, geometry.offset
    expected = ((height + 2 * o - rf) // s + 1, (width + 2 * o - rf) // s + 1)
    if tuple(v.shape[1:]) != expected:
        raise ValueError(f"{v.shape[1]}x{v.shape[2]} patches do not fit a {height}x{width} frame with receptive "
                         f"field {rf}, stride {s}, offset {o} (that geometry gives {expected[0]}x{expected[1]}); "
                         "pass the discriminator's geometry (PatchDiscriminator.geometry())")
    kernel = torch.ones(1, 1, rf, rf)
    # The canvas starts at input pixel -o; each patch adds its value over its whole field.
    num = F.conv_transpose2d(v[:, None], kernel, stride=s)[:, 0]
    den = F.conv_transpose2d(torch.ones_like(v[:1, None]), kernel, stride=s)[:, 0]
    canvas_h, canvas_w = num.shape[-2:]
    pad_h, pad_w = max(0, o + height - canvas_h), max(0, o + width - canvas_w)
    num = F.pad(num, (0, pad_w, 0, pad_h))[:, o:o + height, o:o + width]
    den = F.pad(den, (0, pad_w, 0, pad_h))[:, o:o + height, o:o + width]
    out = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num)).numpy()
    return out[0] if single else out


def frame_rgb(frame: np.ndarray) -> np.ndarray:
    """uint8 [C, H, W] or [H, W, C] (C = 1 or 3) or [H, W] -> uint8 [H, W, 3]."""
    f = np.asarray(frame)
    if f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {f.dtype}")
    if f.ndim == 2:
        f = f[..., None]
    elif f.ndim == 3:
        chw, hwc = f.shape[0] in (1, 3), f.shape[-1] in (1, 3)
        if chw and hwc:
            raise ValueError(f"frame shape {f.shape} is ambiguous: give [H, W, C] with H, W > 3")
        if chw:
            f = f.transpose(1, 2, 0)
        elif not hwc:
            raise ValueError(f"frame shape {f.shape}: expected one RGB or gray frame [C, H, W] or [H, W, C] "
                             "with C in (1, 3); for a frame stack pass its last frame")
    else:
        raise ValueError(f"frame shape {f.shape}: expected [C, H, W], [H, W, C] or [H, W]")
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    return np.ascontiguousarray(f)


def colorize(values: np.ndarray, vmax: float, cmap: str = "coolwarm") -> np.ndarray:
    """Values [...] -> RGB float [..., 3] in [0, 1], diverging around 0: -vmax -> blue, +vmax -> red."""
    import matplotlib

    scaled = 0.5 + 0.5 * np.clip(np.asarray(values, dtype=np.float64) / max(float(vmax), 1e-12), -1.0, 1.0)
    return matplotlib.colormaps[cmap](scaled)[..., :3]


def patch_reward_map(frame: np.ndarray, patch_values: np.ndarray | torch.Tensor, receptive_field: int = 22,
                     stride: int = 2, offset: int = 7, *, vmax: float | None = None, alpha: float = 0.55,
                     cmap: str = "coolwarm") -> np.ndarray:
    """One frame with its patch rewards [P, P] overlaid -> uint8 [H, W, 3]. ``vmax`` sets the
    colour scale of the pixel map (default: its own max |value|); share one across maps to
    compare them (:func:`patch_value_map` gives the pixel values to take it from)."""
    rgb = frame_rgb(frame)
    h, w = rgb.shape[:2]
    values = patch_value_map(patch_values, h, w, PatchGeometry(receptive_field, stride, offset))
    if vmax is None:
        vmax = float(np.abs(values).max())
    color = colorize(values, vmax, cmap)
    out = (1.0 - alpha) * rgb.astype(np.float64) + alpha * 255.0 * color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def side_by_side(expert_maps: Sequence[np.ndarray], agent_maps: Sequence[np.ndarray], *, scale: int = 1,
                 gap: int = 2) -> np.ndarray:
    """Figure 1's layout: expert maps on the top row, agent maps below, uint8 [H', W', 3] with
    white gaps (the world model's ``frame_grid``); a row with fewer maps is padded with black
    tiles; ``scale`` upsamples each pixel to scale x scale for viewing."""
    from world_model.viz import frame_grid

    rows = [list(expert_maps), list(agent_maps)]
    if not rows[0] and not rows[1]:
        raise ValueError("side_by_side needs at least one map")
    tiles = [np.asarray(m) for row in rows for m in row]
    shape = tiles[0].shape
    for m in tiles:
        if m.shape != shape or m.dtype != np.uint8 or len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"maps must all be uint8 [H, W, 3] of one size; got {m.shape} {m.dtype} and {shape}")
    cols = max(len(rows[0]), len(rows[1]))
    blank = np.zeros(shape, np.uint8)
    grid = np.stack([np.stack([np.asarray(row[c]) if c < len(row) else blank for c in range(cols)])
                     for row in rows])  # [2, cols, H, W, 3]
    grid = grid.repeat(scale, axis=2).repeat(scale, axis=3)
    return frame_grid(grid.transpose(0, 1, 4, 2, 3), gap=gap)


def write_png(image: np.ndarray, path: str | Path) -> Path:
    import imageio.v2 as imageio

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{path}: PNG images must be uint8 [H, W, 3|4], got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, image)
    return path


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 15) -> Path:
    """mp4 via imageio-ffmpeg (``macro_block_size=1``: odd sizes stay as they are)."""
    from vmil.evaluate import write_video as _write

    for f in frames:
        if np.asarray(f).dtype != np.uint8 or np.asarray(f).ndim != 3:
            raise ValueError(f"{path}: video frames must be uint8 [H, W, 3], got {np.asarray(f).dtype} "
                             f"{np.asarray(f).shape}")
    return _write(list(frames), path, fps=fps)


# ---------------------------------------------------------------------------------------------
# From a discriminator to maps


@torch.no_grad()
def patch_values(disc: PatchDiscriminator, x: torch.Tensor, transform_kind: TransformKind = "logit",
                 chunk: int = 64) -> torch.Tensor:
    """Per-patch rewards h(D) [N, P, P] of discriminator inputs x (float [0, 1]), in chunks."""
    was_training = disc.training
    disc.eval()
    try:
        device = next(disc.parameters()).device
        parts = [transform(disc(x[i:i + chunk].to(device)).float(), transform_kind)[:, 0].cpu()
                 for i in range(0, x.shape[0], chunk)]
    finally:
        disc.train(was_training)
    return torch.cat(parts)


def maps_for_frames(frames: Sequence[np.ndarray], values: torch.Tensor | np.ndarray, geometry: PatchGeometry,
                    vmax: float) -> list[np.ndarray]:
    return [patch_reward_map(f, v, geometry.receptive_field, geometry.stride, geometry.offset, vmax=vmax)
            for f, v in zip(frames, np.asarray(values))]


def transition_inputs(obs: np.ndarray, frame_stack: int, pair: bool) -> torch.Tensor:
    """An episode's frames uint8 [T+1, C, H, W] -> discriminator inputs float [0, 1] [T, k*C(*2), H, W]
    of every transition (s_t, s_{t+1}); stacks before the start repeat the first frame, as the
    runner's frame stacker does."""
    t1 = obs.shape[0]
    padded = np.concatenate([np.repeat(obs[:1], frame_stack - 1, axis=0), obs])
    idx = np.arange(t1)[:, None] + np.arange(frame_stack)[None]
    stacks = torch.from_numpy(padded[idx].reshape(t1, -1, *obs.shape[2:]))
    x = torch.cat([stacks[:-1], stacks[1:]], 1) if pair else stacks[:-1]
    return normalize_image(x)


def shared_vmax(values: Sequence[np.ndarray], height: int, width: int, geometry: PatchGeometry) -> float:
    """One colour scale for several sets of patch values [N, P, P]: the largest |pixel value| of
    their maps, so expert and agent maps are comparable."""
    return max((float(np.abs(patch_value_map(v, height, width, geometry)).max()) for v in values if len(v)),
               default=0.0)


def batch_figure(disc: PatchDiscriminator, expert_x: torch.Tensor, agent_x: torch.Tensor | None,
                 expert_frames: torch.Tensor | np.ndarray, agent_frames: torch.Tensor | np.ndarray | None,
                 transform_kind: TransformKind = "logit", scale: int | None = None) -> np.ndarray:
    """Figure-1 image for sampled batches (an agent's ``visualize`` at eval time): discriminator
    inputs float [0, 1] [N, C', H, W] and the frames to draw on, uint8 [N, C, H, W] (C = 1 or 3,
    typically the last frame of s'). Expert row on top, one colour scale; ``agent_x`` None
    leaves the agent row black (no agent data yet)."""
    values, frames = {}, {}
    for name, x, f in (("expert", expert_x, expert_frames), ("agent", agent_x, agent_frames)):
        if x is not None and x.shape[0] > 0:
            values[name] = patch_values(disc, x, transform_kind).numpy()
            frames[name] = list(np.asarray(torch.as_tensor(f).cpu()))
    geometry = disc.geometry()
    height, width = expert_x.shape[-2:]
    vmax = shared_vmax(list(values.values()), height, width, geometry)
    maps = {k: maps_for_frames(frames[k], values[k], geometry, vmax) for k in values}
    return side_by_side(maps.get("expert", []), maps.get("agent", []), scale=scale or max(1, 128 // height))


@dataclass
class PatchRun:
    """A PatchAIL run loaded for visualisation: its discriminator and how it reads frames."""

    algo: str
    disc: PatchDiscriminator
    frame_stack: int
    pair: bool  # (s, s') on channels, else s alone
    obs_shape: tuple[int, int, int]
    run_dir: Path

    def values(self, obs: np.ndarray, transform_kind: TransformKind = "logit",
               times: np.ndarray | None = None) -> np.ndarray:
        """Patch rewards h(D) [T, P, P] of an episode's transitions (``times`` selects some)."""
        x = transition_inputs(obs, self.frame_stack, self.pair)
        return patch_values(self.disc, x if times is None else x[torch.as_tensor(times)], transform_kind).numpy()


def load_patch_run(run_dir: str | Path, device: str = "cpu") -> PatchRun:
    """The last checkpoint of a PatchAIL-family run (``vmil.checkpoint``, weights only), rebuilt
    through the registry with the run's own config."""
    from vmil import envs
    from vmil.checkpoint import load_checkpoint
    from vmil.config import RunConfig, from_dict
    from vmil.nn import resolve_device
    from vmil.registry import algo_module
    from vmil.rundir import checkpoint_path

    run_dir = Path(run_dir)
    payload = load_checkpoint(checkpoint_path(run_dir))
    module = algo_module(payload["algo"])
    cfg: RunConfig = from_dict(RunConfig, payload["config"], agent_cls=module.Config)
    env = envs.make(cfg.env.id, image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat, seed=cfg.seed,
                    camera=cfg.env.camera or None, fast_render=cfg.env.fast_render, grayscale=cfg.env.grayscale,
                    max_episode_steps=cfg.env.max_episode_steps, render=False)
    spec = env.spec
    env.close()
    agent = module.build(cfg.agent, spec, resolve_device(device), None)
    agent.load_state_dict(payload["agent"])
    disc = getattr(agent, "disc", None)
    if not isinstance(disc, PatchDiscriminator):
        raise ValueError(f"{run_dir}: a '{payload['algo']}' run has no patch discriminator; patch-reward maps "
                         "need a patchail, patchail-w, patchail-b or patchail-bc run")
    return PatchRun(payload["algo"], disc, agent.request.frame_stack, bool(getattr(agent.cfg, "disc_pair", True)),
                    tuple(spec.obs_shape), run_dir)


def load_frames(directory: str | Path, index: int, obs_shape: Sequence[int], what: str) -> np.ndarray:
    """Frames uint8 [T+1, C, H, W] of episode ``index`` (Python indexing, sorted by name) of a
    directory, checked against the run's frame shape."""
    from vmil.data.episode import EpisodeError, episode_paths, load_episode

    directory = Path(directory)
    paths = episode_paths(directory)
    if not -len(paths) <= index < len(paths):
        raise EpisodeError(f"{directory}: {what} episode {index} does not exist ({len(paths)} episodes)")
    ep = load_episode(paths[index])
    if tuple(ep.obs.shape[1:]) != tuple(obs_shape):
        raise EpisodeError(f"{paths[index]}: frames {tuple(ep.obs.shape[1:])} but the run's env gives "
                           f"{tuple(obs_shape)}; use demos of the run's env and image size")
    if ep.obs.shape[0] < 2:
        raise EpisodeError(f"{paths[index]}: a single frame has no transition to score")
    return ep.obs


def comparison_frames(run: PatchRun, expert_obs: np.ndarray, agent_obs: np.ndarray, times: Sequence[int],
                      transform_kind: TransformKind = "logit") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Expert and agent maps at ``times`` (transition t drawn on frame t+1, the newest the
    discriminator sees), on one colour scale."""
    times = np.asarray(times, dtype=int)
    values = {"expert": run.values(expert_obs, transform_kind, times),
              "agent": run.values(agent_obs, transform_kind, times)}
    geometry = run.disc.geometry()
    vmax = shared_vmax(list(values.values()), *run.obs_shape[1:], geometry)
    return (maps_for_frames([expert_obs[t + 1] for t in times], values["expert"], geometry, vmax),
            maps_for_frames([agent_obs[t + 1] for t in times], values["agent"], geometry, vmax))


def patch_reward_cli(run_dir: str | Path, demos_dir: str | Path, out: str | Path, *, device: str = "cpu",
                     expert_episode: int = 0, agent_episode: int = -1, png_frames: int = 4,
                     max_steps: int = 0, fps: int = 15, transform_kind: TransformKind = "logit") -> Path:
    """``vmil viz patch-rewards``: patch-reward maps of a PatchAIL run's discriminator on a demo
    episode (top row) and one of the run's saved episodes (bottom; default the latest).
    ``.png``: ``png_frames`` evenly spaced steps; ``.mp4``: every step (up to ``max_steps`` if > 0)."""
    from vmil.runner import EPISODE_DIR

    out = Path(out)
    if out.suffix.lower() not in (".png", ".mp4"):
        raise ValueError(f"--out {out}: give a .png (a few frames) or .mp4 (every step) file name")
    run = load_patch_run(run_dir, device)
    expert_obs = load_frames(demos_dir, expert_episode, run.obs_shape, "demo")
    agent_obs = load_frames(run.run_dir / EPISODE_DIR, agent_episode, run.obs_shape, "agent")
    steps = min(expert_obs.shape[0], agent_obs.shape[0]) - 1
    if max_steps > 0:
        steps = min(steps, max_steps)
    video = out.suffix.lower() == ".mp4"
    times = np.arange(steps) if video else np.linspace(0, steps - 1, min(png_frames, steps)).round().astype(int)
    expert_maps, agent_maps = comparison_frames(run, expert_obs, agent_obs, times, transform_kind)
    scale = max(1, 256 // run.obs_shape[1])
    if not video:
        return write_png(side_by_side(expert_maps, agent_maps, scale=scale), out)
    return write_video([side_by_side([e], [a], scale=scale) for e, a in zip(expert_maps, agent_maps)], out, fps=fps)


def example_run(directory: str | Path, algo: str = "patchail", env_id: str = "toy:reach",
                preset: str = "smoke") -> tuple[Path, Path]:
    """A tiny trained run to look at when none is given (notebooks, docs): scripted toy:reach
    demos and a ``preset`` run of ``algo`` without tracking. Returns (run_dir, demos_dir)."""
    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    root = Path(directory).resolve()
    cfg = resolve(algo, algo_module(algo).Config, env_id, preset, ["train.video=false"])
    demos = root / "demos"
    record(env_id, "scripted", 2, demos, image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat,
           quiet=True)
    run_dir = root / "runs" / algo
    runner = build_run(cfg, demos, run_dir, None, quiet=True)
    try:
        runner.run()
    finally:
        runner.close()
    return run_dir, demos
