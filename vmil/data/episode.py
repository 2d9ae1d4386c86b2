"""The one episode format for agent data and expert demos: one ``.npz`` per episode.

Arrays (``t`` indexes agent steps; ``action[t]`` is taken at ``obs[t]`` and leads to ``obs[t+1]``):

- ``obs``       uint8   ``[T+1, C, H, W]``
- ``action``    float32 ``[T, A]``, int64 ``[T]`` for discrete envs, or absent (observation-only demos)
- ``reward``    float32 ``[T]`` true env reward (evaluation only, never seen by imitation methods)
- ``terminal``  bool    ``[T]`` (only the last step may be terminal)
- ``state``     float32 ``[T+1, S]`` proprioception, optional
- ``meta_json`` 0-d unicode array holding a JSON object (env id, obs shape, action dim, discrete,
  state dim, action repeat, camera, source...), so ``np.load(..., allow_pickle=False)`` reads it all.

Files are written with plain ``np.savez``: zlib (``savez_compressed``) shrinks rendered frames only
~2-4x but costs ~30 MB/s of one core on save and again on load, which would stall data collection
on a 2-core machine for every 1000-step episode; disk is the cheaper resource here.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vmil.base import EnvSpec, TimeStep

REQUIRED_KEYS = ("obs", "reward", "terminal", "meta_json")
OPTIONAL_KEYS = ("action", "state")
_NAME_RE = re.compile(r"^ep_(\d+)_T(\d+)\.npz$")


class EpisodeError(ValueError):
    """An episode (file) is malformed or does not fit the env; the message names the file."""


@dataclass
class Episode:
    obs: np.ndarray  # uint8 [T+1, C, H, W]
    action: np.ndarray | None  # float32 [T, A] | int64 [T] | None
    reward: np.ndarray  # float32 [T]
    terminal: np.ndarray  # bool [T]
    state: np.ndarray | None = None  # float32 [T+1, S]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_arrays(self.obs, self.action, self.reward, self.terminal, self.state, self.meta,
                        where="episode")

    @property
    def length(self) -> int:
        """Number of transitions T (frames are T + 1)."""
        return int(self.reward.shape[0])

    @property
    def ret(self) -> float:
        return float(self.reward.astype(np.float64).sum())

    @property
    def has_actions(self) -> bool:
        return self.action is not None

    @property
    def discrete(self) -> bool:
        return self.action is not None and self.action.dtype == np.int64

    def without_actions(self) -> "Episode":
        """The same episode as an observation-only demo."""
        return replace(self, action=None, meta={**self.meta, "actions_removed": True})


# ---------------------------------------------------------------------------------------------
# Validation shared by in-memory episodes and files.


def validate_arrays(obs: Any, action: Any, reward: Any, terminal: Any, state: Any, meta: Any,
                    where: str) -> None:
    """Raise :class:`EpisodeError` (prefixed with ``where``) unless the arrays form a valid episode."""

    def fail(msg: str) -> None:
        raise EpisodeError(f"{where}: {msg}")

    def check(name: str, arr: Any, dtype: Any, ndim: int) -> None:
        if not isinstance(arr, np.ndarray):
            fail(f"'{name}' must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.dtype(dtype):
            fail(f"'{name}' has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if arr.ndim != ndim:
            fail(f"'{name}' has shape {arr.shape}, expected {ndim} dimensions")

    check("obs", obs, np.uint8, 4)
    frames = obs.shape[0]
    if frames < 2:
        fail(f"'obs' holds {frames} frame(s); an episode needs at least 2 (T+1 with T >= 1)")
    steps = frames - 1
    check("reward", reward, np.float32, 1)
    check("terminal", terminal, np.bool_, 1)
    for name, arr in (("reward", reward), ("terminal", terminal)):
        if arr.shape[0] != steps:
            fail(f"'{name}' has {arr.shape[0]} steps but 'obs' has {frames} frames (expected T={steps})")
    if not np.isfinite(reward).all():
        fail(f"'reward' contains NaN/inf at steps {np.flatnonzero(~np.isfinite(reward))[:5].tolist()}")
    if terminal[:-1].any():
        fail(f"'terminal' is set before the last step (at t={int(np.flatnonzero(terminal[:-1])[0])}); "
             "an episode ends at its first terminal step")
    if action is not None:
        if not isinstance(action, np.ndarray):
            fail(f"'action' must be a numpy array, got {type(action).__name__}")
        if action.dtype == np.int64:
            check("action", action, np.int64, 1)
            if action.size and action.min() < 0:
                fail("discrete 'action' contains negative indices")
        elif action.dtype == np.float32:
            check("action", action, np.float32, 2)
            if action.shape[1] < 1:
                fail(f"'action' has shape {action.shape}; the action dimension must be >= 1")
            if not np.isfinite(action).all():
                fail("'action' contains NaN/inf")
        else:
            fail(f"'action' has dtype {action.dtype}, expected float32 [T, A] or int64 [T] (discrete)")
        if action.shape[0] != steps:
            fail(f"'action' has {action.shape[0]} steps but 'obs' has {frames} frames (expected T={steps})")
    if state is not None:
        check("state", state, np.float32, 2)
        if state.shape[0] != frames:
            fail(f"'state' has {state.shape[0]} rows but 'obs' has {frames} frames (expected T+1={frames})")
        if not np.isfinite(state).all():
            fail("'state' contains NaN/inf")
    if not isinstance(meta, dict):
        fail(f"metadata must be a JSON object (dict), got {type(meta).__name__}")
    # Metadata that contradicts the arrays means the file was assembled wrongly.
    if meta.get("obs_shape") is not None and list(meta["obs_shape"]) != list(obs.shape[1:]):
        fail(f"metadata obs_shape {meta['obs_shape']} does not match the frames {list(obs.shape[1:])}")
    if action is not None:
        discrete = action.dtype == np.int64
        if "discrete" in meta and bool(meta["discrete"]) != discrete:
            fail(f"metadata says discrete={meta['discrete']} but 'action' has dtype {action.dtype}")
        dim = meta.get("action_dim")
        if dim is not None and not discrete and action.shape[1] != dim:
            fail(f"metadata action_dim {dim} does not match 'action' shape {action.shape}")
        if dim is not None and discrete and action.size and action.max() >= dim:
            fail(f"discrete 'action' index {int(action.max())} is out of range for action_dim {dim}")
    if state is not None and meta.get("state_dim") not in (None, state.shape[1]):
        fail(f"metadata state_dim {meta['state_dim']} does not match 'state' shape {state.shape}")


def check_compatible(ep: Episode, spec: EnvSpec, where: str, allow_env_mismatch: bool = False) -> None:
    """Raise :class:`EpisodeError` unless ``ep`` can be trained on with env ``spec``."""

    def fail(msg: str) -> None:
        raise EpisodeError(f"{where}: {msg}")

    shape = tuple(ep.obs.shape[1:])
    if shape != tuple(spec.obs_shape):
        c, env_c = shape[0], spec.obs_shape[0]
        # 3 channels for a 1-channel env is an RGB-vs-grayscale mismatch, not a stack of 3
        stacked = (c > env_c and c % env_c == 0 and shape[1:] == tuple(spec.obs_shape[1:])
                   and not (env_c == 1 and c == 3))
        hint = (f"; they look like stacks of {c // env_c} frames: store single frames, the replay stacks "
                "them (agent.frame_stack)") if stacked else (
            f"; record the demos at {spec.obs_shape[1]}x{spec.obs_shape[2]} or larger (larger and colour demos "
            "are resized / converted to grayscale on load), or set env.image_size/env.grayscale to match")
        fail(f"frames are C,H,W={shape} but env {spec.env_id} gives {tuple(spec.obs_shape)}{hint}")
    if ep.action is not None:
        if ep.discrete != spec.discrete:
            kind = "discrete" if ep.discrete else "continuous"
            fail(f"episode has {kind} actions but env {spec.env_id} is "
                 f"{'discrete' if spec.discrete else 'continuous'}")
        if not ep.discrete and ep.action.shape[1] != spec.action_dim:
            fail(f"actions have dimension {ep.action.shape[1]} but env {spec.env_id} has action_dim "
                 f"{spec.action_dim}")
        if ep.discrete and ep.action.size and ep.action.max() >= spec.action_dim:
            fail(f"discrete action {int(ep.action.max())} is out of range for env {spec.env_id} "
                 f"({spec.action_dim} actions)")
    if ep.state is not None and ep.state.shape[1] != spec.state_dim:
        fail(f"state has dimension {ep.state.shape[1]} but env {spec.env_id} has state_dim {spec.state_dim}")
    if allow_env_mismatch:
        return
    env_id = ep.meta.get("env_id")
    if env_id is not None and env_id != spec.env_id:
        fail(f"recorded on env '{env_id}' but training on '{spec.env_id}'; record demos on the same env "
             "or allow the mismatch explicitly (allow_env_mismatch=True)")
    repeat = ep.meta.get("action_repeat")
    if repeat is not None and repeat != spec.action_repeat:
        fail(f"recorded with action_repeat {repeat} but the env uses {spec.action_repeat}; frames would "
             "move at a different speed (set env.action_repeat to match, or allow_env_mismatch=True)")


# ---------------------------------------------------------------------------------------------
# Building episodes from env steps.


class EpisodeBuilder:
    """Collects ``TimeStep``s into an :class:`Episode`: ``start(reset_ts)``, ``add(action, ts)``..., ``finish()``."""

    def __init__(self, spec: EnvSpec, meta: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.meta = dict(meta or {})
        self._clear()

    def _clear(self) -> None:
        self._obs: list[np.ndarray] = []
        self._state: list[np.ndarray] = []
        self._action: list[Any] = []
        self._reward: list[float] = []
        self._terminal: list[bool] = []
        self._success: bool | None = None
        self._started = False
        self._last = False

    @property
    def length(self) -> int:
        return len(self._reward)

    @property
    def done(self) -> bool:
        """The last added step ended the episode (terminal or time limit)."""
        return self._last

    def _frame(self, ts: TimeStep) -> None:
        obs = np.asarray(ts.obs)
        if obs.dtype != np.uint8 or obs.shape != tuple(self.spec.obs_shape):
            raise EpisodeError(f"episode builder: frame has dtype {obs.dtype} shape {obs.shape}, expected uint8 "
                               f"{tuple(self.spec.obs_shape)} for env {self.spec.env_id} (was the env made "
                               "with render=False?)")
        self._obs.append(obs.copy())  # envs may reuse their frame buffer
        if ts.state is not None:
            self._state.append(np.asarray(ts.state, dtype=np.float32).reshape(-1).copy())
        elif self._state:
            raise EpisodeError("episode builder: the env stopped returning state mid-episode")
        if "success" in ts.info:
            self._success = bool(self._success) or bool(ts.info["success"])

    def start(self, timestep: TimeStep) -> None:
        if not timestep.first:
            raise EpisodeError("episode builder: start() takes the TimeStep from env.reset() (first=True)")
        self._clear()
        self._started = True
        self._frame(timestep)

    def add(self, action: np.ndarray | int | None, timestep: TimeStep) -> None:
        if not self._started:
            raise EpisodeError("episode builder: call start(env.reset()) before add()")
        if self._last:
            raise EpisodeError("episode builder: the episode already ended (last=True); call finish() first")
        if timestep.first:
            raise EpisodeError("episode builder: got a reset TimeStep in add(); call finish() then start()")
        if self._action and (action is None) != (self._action[0] is None):
            raise EpisodeError("episode builder: actions must be given for every step or for none")
        if action is not None:
            if self.spec.discrete:
                arr = np.asarray(action)
                if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
                    raise EpisodeError(f"episode builder: discrete env {self.spec.env_id} takes an int action, "
                                       f"got {action!r}")
                action = int(arr.reshape(()))
                if not 0 <= action < self.spec.action_dim:
                    raise EpisodeError(f"episode builder: action {action} outside [0, {self.spec.action_dim})")
            else:
                action = np.asarray(action, dtype=np.float32).reshape(-1).copy()
                if action.shape != (self.spec.action_dim,):
                    raise EpisodeError(f"episode builder: action has shape {action.shape}, expected "
                                       f"({self.spec.action_dim},)")
        self._action.append(action)
        self._reward.append(float(timestep.reward))
        self._terminal.append(bool(timestep.terminal))
        self._last = bool(timestep.last or timestep.terminal)
        self._frame(timestep)

    def finish(self) -> Episode:
        if not self._reward:
            raise EpisodeError("episode builder: no steps were added; an episode needs at least one")
        if self._action[0] is None:
            action = None
        elif self.spec.discrete:
            action = np.asarray(self._action, dtype=np.int64)
        else:
            action = np.stack(self._action).astype(np.float32, copy=False)
        state = np.stack(self._state).astype(np.float32, copy=False) if self._state else None
        meta = self.spec.metadata()
        if self._success is not None:
            meta["success"] = self._success
        meta.update(self.meta)
        ep = Episode(obs=np.stack(self._obs), action=action,
                     reward=np.asarray(self._reward, dtype=np.float32),
                     terminal=np.asarray(self._terminal, dtype=np.bool_), state=state, meta=meta)
        self._clear()
        return ep


# ---------------------------------------------------------------------------------------------
# Files.


def episode_filename(index: int, length: int) -> str:
    """``ep_000012_T500.npz``: the running index keeps directory order = recording order."""
    return f"ep_{index:06d}_T{length}.npz"


def next_episode_index(directory: str | os.PathLike) -> int:
    """One past the largest ``ep_<index>_T<len>.npz`` index in ``directory`` (0 when none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    indices = [int(m.group(1)) for p in directory.iterdir() if (m := _NAME_RE.match(p.name))]
    return max(indices) + 1 if indices else 0


def save_episode(ep: Episode, path: str | os.PathLike) -> Path:
    """Write ``ep`` to ``path`` (.npz) atomically: a temp file in the same directory, then os.replace,
    so a killed run never leaves a half-written episode under the final name."""
    path = Path(path)
    if path.suffix != ".npz":
        raise EpisodeError(f"{path}: episode files must end in .npz (e.g. {episode_filename(0, ep.length)})")
    try:
        meta_json = json.dumps(ep.meta, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise EpisodeError(f"{path}: metadata is not JSON-serialisable ({err}); use plain str/int/float/"
                           "bool/list/dict values") from err
    arrays: dict[str, np.ndarray] = {"obs": ep.obs, "reward": ep.reward, "terminal": ep.terminal,
                                     "meta_json": np.array(meta_json)}
    if ep.action is not None:
        arrays["action"] = ep.action
    if ep.state is not None:
        arrays["state"] = ep.state
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# What a truncated or corrupt zip can raise while numpy reads it.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError)


def load_episode(path: str | os.PathLike, spec: EnvSpec | None = None, *,
                 allow_env_mismatch: bool = False) -> Episode:
    """Load and validate one episode file; with ``spec``, also check it fits that env."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(f"{path}: no such episode file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise EpisodeError(f"{path}: holds a single array (.npy), not an episode .npz")
        with data:
            keys = set(data.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            unknown = sorted(keys - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
            if missing or unknown:
                raise EpisodeError(
                    f"{path}: " + (f"missing key(s) {missing}" if missing else "")
                    + ("; " if missing and unknown else "") + (f"unknown key(s) {unknown}" if unknown else "")
                    + f"; an episode has {list(REQUIRED_KEYS)} and optionally {list(OPTIONAL_KEYS)}")
            arrays = {k: data[k] for k in keys}
    except EpisodeError:
        raise
    except _READ_ERRORS as err:
        if isinstance(err, ValueError) and "Object arrays" in str(err):
            raise EpisodeError(f"{path}: holds pickled (object) arrays, which vmil never loads; save "
                               "numeric arrays only (see vmil.data.episode.save_episode)") from err
        raise EpisodeError(f"{path}: unreadable episode file ({type(err).__name__}: {err}); it is truncated "
                           "or corrupt — delete it or record it again") from err
    raw = arrays["meta_json"]
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise EpisodeError(f"{path}: 'meta_json' must be a 0-d unicode array holding a JSON object, "
                           f"got dtype {raw.dtype} shape {raw.shape}")
    try:
        meta = json.loads(str(raw[()]))
    except json.JSONDecodeError as err:
        raise EpisodeError(f"{path}: 'meta_json' is not valid JSON ({err})") from err
    where = str(path)
    validate_arrays(arrays["obs"], arrays.get("action"), arrays["reward"], arrays["terminal"],
                    arrays.get("state"), meta, where=where)
    ep = Episode(obs=arrays["obs"], action=arrays.get("action"), reward=arrays["reward"],
                 terminal=arrays["terminal"], state=arrays.get("state"), meta=meta)
    if spec is not None:
        if adaptable(ep.obs.shape[1:], spec.obs_shape):
            ep = _adapted(path, ep, tuple(spec.obs_shape))
        check_compatible(ep, spec, where=where, allow_env_mismatch=allow_env_mismatch)
    return ep


# ---------------------------------------------------------------------------------------------
# One demo set for every method: larger frames are resized (area interpolation) and colour frames
# converted to grayscale on load, so demos recorded at 84x84 RGB serve 64x64 (VMIL), 84x84 (PatchAIL)
# and grayscale runs alike. Converted episodes are cached beside the demos (CACHE_DIR), keyed by the
# source file's size and modification time.

CACHE_DIR = ".vmil-cache"


def adaptable(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether frames of ``shape`` (C, H, W) can be turned into ``target`` by shrinking and/or
    converting RGB to grayscale (and are not already that shape)."""
    c, h, w = (int(v) for v in shape)
    tc, th, tw = (int(v) for v in target)
    return ((c == tc or (c == 3 and tc == 1)) and h >= th and w >= tw and (c, h, w) != (tc, th, tw))


def area_weights(size: int, out: int) -> np.ndarray:
    """[out, size] matrix of area interpolation: output pixel i averages the input span
    [i * size / out, (i + 1) * size / out), each input pixel weighted by its overlap with it."""
    if out > size or out < 1:
        raise ValueError(f"area_weights: can only shrink ({size} -> {out})")
    scale = size / out
    lo = np.arange(out)[:, None] * scale
    hi = lo + scale
    j = np.arange(size)[None, :]
    return np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None) / scale


def adapt_frames(obs: np.ndarray, target: tuple[int, int, int]) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, *target]: area-interpolated to the target size (exact
    pixel-overlap averaging, as OpenCV's INTER_AREA when shrinking) and, for a 1-channel target
    from RGB frames, the env's luminance (0.299 R + 0.587 G + 0.114 B); one rounding at the end."""
    tc, th, tw = target
    n, c, h, w = obs.shape
    if not adaptable((c, h, w), target):
        raise ValueError(f"adapt_frames: cannot turn frames {(c, h, w)} into {tuple(target)} (only shrinking "
                         "and RGB -> grayscale)")
    out = np.empty((n, tc, th, tw), np.uint8)
    wh, ww = area_weights(h, th), area_weights(w, tw)
    lum = np.array([0.299, 0.587, 0.114])
    for start in range(0, n, 256):  # bounded float64 temporaries for long episodes
        x = obs[start:start + 256].astype(np.float64)
        if (h, w) != (th, tw):
            x = np.einsum("oh,nchw,pw->ncop", wh, x, ww, optimize=True)
        if tc == 1 and c == 3:
            x = np.einsum("nchw,c->nhw", x, lum)[:, None]
        out[start:start + 256] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def convert_episode(ep: Episode, target: tuple[int, int, int]) -> Episode:
    """The episode with its frames adapted to ``target`` (C, H, W); the metadata records the source shape."""
    meta = dict(ep.meta)
    meta["resized_from"] = list(meta.get("resized_from") or ep.obs.shape[1:])
    meta["obs_shape"] = list(target)
    return replace(ep, obs=adapt_frames(ep.obs, target), meta=meta)


def _adapted(path: Path, ep: Episode, target: tuple[int, int, int]) -> Episode:
    """``ep`` adapted to ``target``, from the cache when the cache entry matches the source file."""
    stat = path.stat()
    key = f"{stat.st_size}-{stat.st_mtime_ns}"
    cache = path.parent / CACHE_DIR / "x".join(str(v) for v in target) / path.name
    if cache.is_file():
        try:
            cached = load_episode(cache)
            if cached.meta.get("cache_source") == key and tuple(cached.obs.shape[1:]) == target:
                meta = {k: v for k, v in cached.meta.items() if k != "cache_source"}
                return replace(cached, meta=meta)
        except EpisodeError:
            pass  # a stale or broken entry is rebuilt below
    converted = convert_episode(ep, target)
    try:
        save_episode(replace(converted, meta={**converted.meta, "cache_source": key}), cache)
    except OSError:
        pass  # a read-only demo directory: convert on every load
    return converted


def episode_paths(directory: str | os.PathLike) -> list[Path]:
    """The ``.npz`` files of an episode directory, sorted by name (= recording order)."""
    directory = Path(directory)
    if not directory.exists():
        raise EpisodeError(f"{directory}: no such episode directory")
    if not directory.is_dir():
        raise EpisodeError(f"{directory}: not a directory; give the directory that holds the episode .npz files")
    paths = sorted(p for p in directory.iterdir() if p.suffix == ".npz" and p.is_file())
    if not paths:
        raise EpisodeError(f"{directory}: no episode .npz files (record some with `vmil demos record`)")
    return paths


def iter_episodes(directory: str | os.PathLike, spec: EnvSpec | None = None, *,
                  allow_env_mismatch: bool = False) -> Iterator[Episode]:
    """Load a directory one episode at a time, checking every episode matches the first."""
    first: Episode | None = None
    first_path: Path | None = None
    for path in episode_paths(directory):
        ep = load_episode(path, spec, allow_env_mismatch=allow_env_mismatch)
        if first is None:
            first, first_path = ep, path
        else:
            _check_consistent(first, first_path, ep, path)
        yield ep


def _check_consistent(a: Episode, a_path: Path | None, b: Episode, b_path: Path) -> None:
    def sig(ep: Episode) -> dict[str, Any]:
        return {"frame shape": tuple(ep.obs.shape[1:]), "has actions": ep.has_actions,
                "action shape": None if ep.action is None else (ep.action.dtype.name,) + ep.action.shape[1:],
                "state dim": None if ep.state is None else ep.state.shape[1]}

    sa, sb = sig(a), sig(b)
    for key in sa:
        if sa[key] != sb[key]:
            raise EpisodeError(f"{b_path}: {key} {sb[key]} differs from {sa[key]} in {a_path}; one directory "
                               "must hold episodes of one env/format")


def load_episodes(directory: str | os.PathLike, spec: EnvSpec | None = None, *,
                  allow_env_mismatch: bool = False) -> list[Episode]:
    """All episodes of ``directory`` in sorted (recording) order, validated and mutually consistent."""
    return list(iter_episodes(directory, spec, allow_env_mismatch=allow_env_mismatch))


# ---------------------------------------------------------------------------------------------
# Summaries.


@dataclass(frozen=True)
class DemoInfo:
    directory: str
    num_episodes: int
    lengths: tuple[int, ...]
    returns: tuple[float, ...]
    return_mean: float
    return_std: float
    has_actions: bool
    obs_shape: tuple[int, int, int]
    action_dim: int  # vector size, or number of actions when discrete; 0 when no actions
    discrete: bool
    state_dim: int  # 0 when no proprioception
    success_rate: float | None  # None when the episodes record no success flag
    meta: dict[str, Any]  # metadata equal across all episodes

    @property
    def num_frames(self) -> int:
        return sum(self.lengths) + self.num_episodes


def demo_info(episodes: list[Episode], directory: str | os.PathLike = "") -> DemoInfo:
    if not episodes:
        raise EpisodeError(f"{directory or 'demos'}: no episodes to summarise")
    returns = [ep.ret for ep in episodes]
    first = episodes[0]
    common = {k: v for k, v in first.meta.items()
              if all(k in ep.meta and json.dumps(ep.meta[k]) == json.dumps(v) for ep in episodes[1:])}
    if first.action is None:
        action_dim = 0
    elif first.discrete:
        action_dim = int(first.meta.get("action_dim", int(max(ep.action.max() for ep in episodes)) + 1))
    else:
        action_dim = int(first.action.shape[1])
    flags = [ep.meta["success"] for ep in episodes if "success" in ep.meta]
    return DemoInfo(
        directory=str(directory), num_episodes=len(episodes),
        lengths=tuple(ep.length for ep in episodes), returns=tuple(returns),
        return_mean=float(np.mean(returns)), return_std=float(np.std(returns)),
        has_actions=all(ep.has_actions for ep in episodes),
        obs_shape=tuple(int(s) for s in first.obs.shape[1:]),  # type: ignore[arg-type]
        action_dim=action_dim, discrete=first.discrete,
        state_dim=0 if first.state is None else int(first.state.shape[1]),
        success_rate=float(np.mean(flags)) if flags else None, meta=common)


def format_demo_info(info: DemoInfo) -> str:
    lengths = np.asarray(info.lengths)
    c, h, w = info.obs_shape
    if not info.has_actions:
        actions = "none (observation-only)"
    else:
        actions = f"{info.action_dim} {'discrete' if info.discrete else 'continuous'}"
    source = {k: v for k, v in info.meta.items()
              if k not in ("env_id", "obs_shape", "action_dim", "discrete", "state_dim", "action_repeat", "camera")}
    lines = [
        f"directory     {info.directory}",
        f"env           {info.meta.get('env_id', '?')}  (action repeat {info.meta.get('action_repeat', '?')}, "
        f"camera {info.meta.get('camera')})",
        f"episodes      {info.num_episodes}  ({info.num_frames} frames)",
        f"length        mean {lengths.mean():.1f}  min {lengths.min()}  max {lengths.max()}",
        f"return        {info.return_mean:.2f} ± {info.return_std:.2f}  "
        f"(min {min(info.returns):.2f}, max {max(info.returns):.2f})",
        f"frames        {c}x{h}x{w} uint8",
        f"actions       {actions}",
        f"state         {info.state_dim if info.state_dim else 'none'}",
    ]
    if info.success_rate is not None:
        lines.append(f"success       {100 * info.success_rate:.0f}%")
    for key in sorted(source):
        value = source[key]
        if isinstance(value, float) and math.isfinite(value):
            value = f"{value:.4g}"
        lines.append(f"{key:<13} {value}")
    return "\n".join(lines)
