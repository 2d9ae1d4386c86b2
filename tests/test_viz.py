"""Patch-reward maps: geometry (a hot patch lights exactly the pixels it sees), overlays, layout,
PNG/mp4 output, and the CLI on a saved smoke run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imitation.discriminators import PatchDiscriminator
from imitation.viz import (frame_rgb, patch_reward_map, patch_value_map, side_by_side,
                           transition_inputs, write_png, write_video)


def gradient_footprint(disc: PatchDiscriminator, shape, i: int, j: int) -> np.ndarray:
    """The input pixels patch (i, j)'s logit depends on, by autograd (positive weights: no cancelling)."""
    probe = PatchDiscriminator(shape[0], disc.convs[0].kernel_size[0], channels=(2, 2, 2)).double()
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(p.abs() + 1e-3)
    x = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(probe(x)[0, 0, i, j], x)
    return (grad[0].abs().sum(0) > 0).numpy()


@pytest.mark.parametrize("kernel,i,j", [(4, 10, 20), (4, 0, 38), (2, 45, 3), (8, 12, 0)])
def test_hot_patch_lights_the_pixels_it_sees(kernel, i, j):
    disc = PatchDiscriminator(3, kernel, channels=(2, 2, 2))
    p = disc.output_shape(84, 84)[0]
    values = np.zeros((p, p), np.float32)
    values[i, j] = 1.0
    lit = patch_value_map(values, 84, 84, disc.geometry()) > 0
    np.testing.assert_array_equal(lit, gradient_footprint(disc, (3, 84, 84), i, j))
    if kernel == 4 and (i, j) == (10, 20):  # rows/cols [i*2-7, i*2-7+22): [13, 35) x [33, 55)
        rows, cols = np.nonzero(lit.any(1))[0], np.nonzero(lit.any(0))[0]
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (13, 34, 33, 54)


def test_value_map_averages_overlapping_patches():
    np.testing.assert_allclose(patch_value_map(np.full((39, 39), 0.7), 84, 84), 0.7, rtol=1e-6)
    ramp = np.tile(np.arange(39, dtype=np.float32), (39, 1))  # value = column index
    m = patch_value_map(ramp, 84, 84)
    # Column 0 is seen by patch columns 0..3 (start j*2 - 7 <= 0): their mean, 1.5.
    assert (np.diff(m[40]) >= 0).all() and m[40, 0] == 1.5 and m[40, 83] == (35 + 36 + 37 + 38) / 4
    batch = patch_value_map(np.stack([ramp, -ramp]), 84, 84)
    np.testing.assert_allclose(batch[1], -m)
    with pytest.raises(ValueError, match="geometry"):
        patch_value_map(np.zeros((40, 40)), 84, 84)


def test_overlay_colours_and_frame_layouts():
    values = np.zeros((39, 39), np.float32)
    values[10, 20], values[30, 5] = 2.0, -2.0  # two patches far apart: every pixel sees at most one
    black = np.zeros((3, 84, 84), np.uint8)
    out = patch_reward_map(black, values)
    assert out.shape == (84, 84, 3) and out.dtype == np.uint8
    red, blue = out[20, 40].astype(int), out[65, 10].astype(int)  # inside the hot / cold patch
    assert red[0] > red[2] + 60 and blue[2] > blue[0] + 60
    neutral = out[0, 83].astype(int)  # far from both: zero reward, the colour map's neutral grey
    assert abs(neutral[0] - neutral[2]) <= 12
    np.testing.assert_array_equal(patch_reward_map(black.transpose(1, 2, 0), values), out)  # HWC frame
    assert patch_reward_map(np.zeros((84, 84), np.uint8), values).shape == (84, 84, 3)
    assert patch_reward_map(np.zeros((1, 84, 84), np.uint8), values).shape == (84, 84, 3)
    with pytest.raises(ValueError, match="last frame"):
        frame_rgb(np.zeros((9, 84, 84), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        frame_rgb(np.zeros((3, 84, 84), np.float32))


def test_side_by_side_layout_and_files(tmp_path):
    a = np.full((10, 12, 3), 100, np.uint8)
    fig = side_by_side([a, a], [a, a, a], scale=2, gap=2)
    assert fig.shape == (2 * 20 + 2, 3 * 24 + 2 * 2, 3)
    assert (fig[:20, :24] == 100).all() and (fig[20:22] == 255).all()  # gap row
    assert (fig[:20, 2 * 26:] == 0).all()  # the expert row has no third map
    png = write_png(fig, tmp_path / "maps.png")
    import imageio.v2 as imageio

    np.testing.assert_array_equal(imageio.imread(png), fig)
    video = write_video([fig] * 3, tmp_path / "maps.mp4", fps=5)
    assert video.stat().st_size > 0
    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(video))[0] == 3
    with pytest.raises(ValueError, match="uint8"):
        write_png(fig.astype(np.float32), tmp_path / "bad.png")


def test_batch_figure_layout():
    from imitation.viz import batch_figure

    disc = PatchDiscriminator(6, channels=(2, 2, 2))
    x = torch.rand(3, 6, 32, 32)
    frames = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    fig = batch_figure(disc, x, x[:2], frames, frames[:2], scale=2)
    assert fig.shape == (2 * 64 + 2, 3 * 64 + 2 * 2, 3) and fig.dtype == np.uint8


def test_transition_inputs_stack_like_the_runner():
    obs = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1).repeat(2, 2).repeat(2, 3)  # frames 0..3
    x = transition_inputs(obs, frame_stack=3, pair=True)
    assert x.shape == (3, 6, 2, 2)
    stacks = (x[:, :, 0, 0] * 255).round().int().tolist()
    assert stacks == [[0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 1, 2], [0, 1, 2, 1, 2, 3]]
    assert transition_inputs(obs, 2, pair=False).shape == (3, 2, 2, 2)


def test_patch_reward_cli_on_a_saved_smoke_run(tmp_path):
    from imitation import patchail
    from imitation.viz import patch_reward_cli
    from vmil import envs
    from vmil.checkpoint import save_checkpoint
    from vmil.config import resolve, to_dict
    from vmil.runner import CHECKPOINT_FILE, EPISODE_DIR

    from vmil.demos import record

    cfg = resolve("patchail", patchail.Config, "toy:reach", "smoke")
    demos = tmp_path / "demos"
    record("toy:reach", "scripted", 1, demos, image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat,
           seed=0, quiet=True)
    env = envs.make(cfg.env.id, image_size=cfg.env.image_size, action_repeat=cfg.env.action_repeat,
                    max_episode_steps=cfg.env.max_episode_steps, render=False)
    agent = patchail.build(cfg.agent, env.spec, torch.device("cpu"), None)
    run = tmp_path / "run"
    save_checkpoint(run / CHECKPOINT_FILE, algo="patchail", agent_state=agent.state_dict(), counters={},
                    config=to_dict(cfg))
    (run / EPISODE_DIR).mkdir(parents=True)
    for path in sorted(demos.glob("*.npz"))[:1]:  # stands in for an agent episode
        (run / EPISODE_DIR / path.name).write_bytes(path.read_bytes())
    png = patch_reward_cli(run, demos, tmp_path / "maps.png", png_frames=3)
    import imageio.v2 as imageio

    image = imageio.imread(png)
    side = cfg.env.image_size * max(1, 256 // cfg.env.image_size)
    assert image.shape == (2 * side + 2, 3 * side + 2 * 2, 3)
    mp4 = patch_reward_cli(run, demos, tmp_path / "maps.mp4", max_steps=4)
    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == 4
    with pytest.raises(ValueError, match=".png"):
        patch_reward_cli(run, demos, tmp_path / "maps.gif")
