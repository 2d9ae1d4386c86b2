"""One demo set for every method: larger demos are area-resized on load (cached), colour demos
serve grayscale runs, `vmil demos convert` does the same offline, smaller demos still fail."""
from __future__ import annotations

import numpy as np
import pytest

from vmil.base import EnvSpec
from vmil.data.episode import (CACHE_DIR, Episode, EpisodeError, adapt_frames, area_weights, load_episode,
                               load_episodes, save_episode)


def _area_reference(img: np.ndarray, out: int) -> np.ndarray:
    """Area interpolation by definition: upsample by replication to a common multiple of both sizes,
    then average blocks (every input pixel contributes its exact overlap)."""
    size = img.shape[-1]
    lcm = np.lcm(size, out)
    up = img.repeat(lcm // size, axis=-1).repeat(lcm // size, axis=-2).astype(np.float64)
    k = lcm // out
    return up.reshape(*img.shape[:-2], out, k, out, k).mean(axis=(-3, -1))


def test_resize_84_to_64_matches_the_area_reference():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 3, 84, 84), dtype=np.uint8)
    ref = _area_reference(frames, 64)
    wh = area_weights(84, 64)
    assert np.allclose(wh.sum(1), 1.0) and wh.shape == (64, 84)
    floats = np.einsum("oh,nchw,pw->ncop", wh, frames.astype(np.float64), wh)
    np.testing.assert_allclose(floats, ref, atol=1e-9)
    out = adapt_frames(frames, (3, 64, 64))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 64, 64)
    clear = np.abs(ref - np.floor(ref) - 0.5) > 1e-6  # away from a rounding tie
    np.testing.assert_array_equal(out[clear], np.rint(ref[clear]).astype(np.uint8))
    # a hand-checked pixel: output (0, 0) covers input rows/cols [0, 1.3125): 1 + 0.3125 of the next
    w0 = np.array([1.0, 0.3125]) / 1.3125
    by_hand = w0 @ frames[0, 0, :2, :2].astype(np.float64) @ w0
    assert abs(floats[0, 0, 0, 0] - by_hand) < 1e-9


def test_integer_factor_is_the_block_mean_and_grayscale_is_the_envs_luminance():
    from vmil.envs import to_chw

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(1, 3, 8, 8), dtype=np.uint8)
    half = adapt_frames(frames, (3, 4, 4))
    block = frames.astype(np.float64).reshape(1, 3, 4, 2, 4, 2).mean(axis=(3, 5))
    assert np.abs(half.astype(int) - np.rint(block)).max() <= 0  # quarter-integers never tie here
    gray = adapt_frames(frames, (1, 8, 8))
    np.testing.assert_array_equal(gray[0], to_chw(frames[0].transpose(1, 2, 0), grayscale=True))
    with pytest.raises(ValueError, match="only shrinking"):
        adapt_frames(frames, (3, 16, 16))


def _episode(size: int, channels: int = 3, steps: int = 3) -> Episode:
    rng = np.random.default_rng(size)
    return Episode(obs=rng.integers(0, 256, size=(steps + 1, channels, size, size), dtype=np.uint8),
                   action=None, reward=np.zeros(steps, np.float32), terminal=np.zeros(steps, bool),
                   meta={"env_id": "toy:reach", "obs_shape": [channels, size, size], "action_repeat": 2})


def _spec(size: int, channels: int = 3) -> EnvSpec:
    return EnvSpec(env_id="toy:reach", obs_shape=(channels, size, size), action_dim=2, discrete=False,
                   action_repeat=2)


def test_larger_colour_demos_load_resized_and_cached(tmp_path, monkeypatch):
    path = save_episode(_episode(84), tmp_path / "ep_000000_T3.npz")
    eps = load_episodes(tmp_path, _spec(64, 1))
    assert eps[0].obs.shape == (4, 1, 64, 64) and eps[0].meta["resized_from"] == [3, 84, 84]
    assert eps[0].meta["obs_shape"] == [1, 64, 64] and "cache_source" not in eps[0].meta
    cached = tmp_path / CACHE_DIR / "1x64x64" / path.name
    assert cached.is_file()
    # the second load reads the cache (the conversion would fail if it ran)
    import vmil.data.episode as episode

    monkeypatch.setattr(episode, "adapt_frames", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = load_episode(path, _spec(64, 1))
    np.testing.assert_array_equal(again.obs, eps[0].obs)
    # a changed source file invalidates its cache entry
    save_episode(_episode(84, steps=4), path)
    with pytest.raises(AssertionError, match="recomputed"):
        load_episode(path, _spec(64, 1))


def test_smaller_demos_fail_with_the_clear_error(tmp_path):
    save_episode(_episode(32), tmp_path / "ep_000000_T3.npz")
    with pytest.raises(EpisodeError, match=r"frames are C,H,W=\(3, 32, 32\) but env toy:reach gives "
                                           r"\(3, 64, 64\); record the demos at 64x64 or larger"):
        load_episodes(tmp_path, _spec(64))
    # grayscale demos cannot become colour ones
    save_episode(_episode(84, channels=1), tmp_path / "gray" / "ep_000000_T3.npz")
    with pytest.raises(EpisodeError, match="frames are C,H,W"):
        load_episodes(tmp_path / "gray", _spec(64))


def test_demos_convert_cli(tmp_path, capsys):
    from vmil.cli import main

    save_episode(_episode(84), tmp_path / "src" / "ep_000000_T3.npz")
    assert main(["demos", "convert", str(tmp_path / "src"), "--image-size", "64", "--grayscale",
                 "--out", str(tmp_path / "dst")]) == 0
    assert "1x64x64" in capsys.readouterr().out
    ep = load_episode(tmp_path / "dst" / "ep_000000_T3.npz")
    np.testing.assert_array_equal(ep.obs, adapt_frames(_episode(84).obs, (1, 64, 64)))
    assert main(["demos", "convert", str(tmp_path / "src"), "--image-size", "96", "--out",
                 str(tmp_path / "big")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmil: error: ") and "smaller than 96x96" in err and "\n" not in err


def test_recording_defaults_serve_every_algorithm():
    """Without --algo, demos are recorded at the largest image size any algorithm resolves to."""
    from imitation.patchail import Config
    from vmil.config import resolve
    from vmil.demos import serving_env_settings

    paper = serving_env_settings("toy:reach", "paper")
    assert paper == {"image_size": resolve("patchail", Config, "toy:reach", "paper").env.image_size, "grayscale": False}
    assert paper["image_size"] == 84
    assert serving_env_settings("toy:reach", "cpu")["image_size"] == 64  # VMIL's; PatchAIL's cpu preset uses 32
