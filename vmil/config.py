"""Frozen dataclass configs, YAML presets and dotted overrides.

Every field carries its documentation in ``metadata["doc"]`` (use :func:`doc`). Building a config
from a dict checks every key and type before any work starts and names the nearest valid keys.

Resolution order (later wins): dataclass defaults < ``configs/size/<preset>.yaml`` <
``configs/algo/<algo>.yaml`` (its ``defaults`` then ``presets.<preset>``) < ``configs/env/<family>.yaml``
(its ``defaults`` then ``presets.<preset>``) < command-line ``key=value`` overrides.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key, value or preset is wrong; the message says what to use instead."""


def doc(default: Any, text: str) -> Any:
    """A dataclass field with a default and its documentation."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (configs are frozen) instead of a mutable default")
    return field(default=default, metadata={"doc": text})


# ---------------------------------------------------------------------------------------------
# Components shared by every run. Algorithm configs live beside their algorithm.


@dataclass(frozen=True)
class EnvConfig:
    id: str = doc("toy:reach", "Environment id, e.g. dmc:cartpole_swingup, toy:reach (see `vmil envs`).")
    image_size: int = doc(64, "Square observation size in pixels.")
    action_repeat: int = doc(2, "Physics steps per agent step (the action is repeated).")
    camera: str = doc("", "Camera name or index; empty for the family's default.")
    fast_render: bool = doc(True, "Cheap rendering (no shadow map, no multisampling): ~5x faster frames.")
    grayscale: bool = doc(False, "Convert frames to one grayscale channel.")
    max_episode_steps: int = doc(0, "Agent steps per episode; 0 for the env's default.")
    proprio: bool = doc(False, "Also return proprioceptive state (TimeStep.state, stored as 'state' in "
                               "episodes); baoding's preset turns it on (image + hand proprioception).")


# Keys that were removed, with the only value old saved configs can hold (the old default, which
# never changed behaviour): run directories and checkpoints written before the removal still load,
# while a user who sets such a key gets told that it is gone.
REMOVED_KEYS: dict[tuple[str, str], tuple[Any, str]] = {
    ("EnvConfig", "num_workers"): (1, "the runner collects with one env in its own process; worker "
                                      "processes are used by `vmil bench env --workers N` only"),
}


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = doc(1_000_000, "Agent replay capacity in frames; oldest episodes are dropped first.")
    device: str = doc("auto", "Where frames live: auto (the training device), cpu or cuda.")
    save_episodes: bool = doc(True, "Write agent episodes to the run directory (needed to resume).")


@dataclass(frozen=True)
class TrainConfig:
    env_steps: int = doc(100_000, "Total agent steps (after action repeat) to collect.")
    prefill_steps: int = doc(1000, "Random-action agent steps collected before the first update.")
    update_every: int = doc(1, "Collect this many agent steps between update rounds.")
    updates_per_round: int = doc(1, "Updates per update round.")
    pretrain_updates: int = doc(0, "Updates run once, in a burst, before the first regular update round (after "
                                   "the prefill), as Dreamer's `pretrain`: the world model can learn from the "
                                   "prefill and the demos before the policy collects data. Costs wall time, not "
                                   "env steps.")
    offline_updates: int = doc(0, "Updates for offline algorithms (BC), which collect no data.")
    eval_every: int = doc(10_000, "Agent steps (or offline updates) between evaluations.")
    eval_episodes: int = doc(5, "Episodes per evaluation.")
    checkpoint_every: int = doc(10_000, "Agent steps (or offline updates) between checkpoints.")
    log_every: int = doc(1000, "Agent steps (or offline updates) between metric logs.")
    video: bool = doc(True, "Log an eval video at each evaluation.")
    max_bad_updates: int = doc(10, "Stop after this many consecutive non-finite updates.")

    def __post_init__(self):
        # Periods are divisors in the run loop: a 0 there would stop the run mid-way, not at start.
        for name in ("update_every", "eval_every", "checkpoint_every", "log_every", "eval_episodes",
                     "max_bad_updates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("env_steps", "prefill_steps", "updates_per_round", "pretrain_updates", "offline_updates"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    algo: str = doc("bc", "Algorithm name (see `vmil train --help`).")
    seed: int = doc(0, "Seed for torch, numpy and the environment.")
    device: str = doc("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
    threads: int = doc(0, "torch CPU threads; 0 keeps torch's default.")
    retain_host_memory: bool = doc(True, "Reuse freed CPU memory from the process heap instead of unmapping "
                                   "it (Linux glibc; saves the page faults of every large activation).")
    dense_backend: Literal["auto", "onednn", "blas"] = doc(
        "auto", "Library for large fp32 CPU dense layers (with more than one thread): oneDNN (up to 2x faster "
        "where the BLAS, MKL, runs its AVX2 kernels on AVX-512 AMD CPUs) or torch's BLAS (1.02-1.13x faster "
        "on an Intel Xeon); auto: the BLAS on Intel CPUs, oneDNN elsewhere. Results differ only in float "
        "rounding.")
    env: EnvConfig = doc(EnvConfig(), "Environment.")
    replay: ReplayConfig = doc(ReplayConfig(), "Replay storage.")
    train: TrainConfig = doc(TrainConfig(), "Training schedule.")
    agent: Any = doc(None, "The algorithm's own config (a frozen dataclass).")


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with checks.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}{hint}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        # PyYAML reads 1e-4 and 1e5 (no dot) as strings (YAML 1.1); take them as the numbers meant.
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # camera: 2 on the command line
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp}")


def unknown_key_error(key: str, valid: list[str], path: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    where = f"{path}.{key}" if path else key
    hint = f"; did you mean {', '.join((path + '.' if path else '') + n for n in near)}?" if near else ""
    return ConfigError(f"unknown config key '{where}'{hint} (valid: {', '.join(valid)})")


def from_dict(cls: type, data: dict[str, Any], path: str = "", agent_cls: type | None = None) -> Any:
    """Build a frozen dataclass from a nested dict, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        removed = REMOVED_KEYS.get((cls.__name__, key))
        if key not in fields and removed is not None:
            if value == removed[0]:
                continue
            raise ConfigError(f"config key '{path + '.' if path else ''}{key}' was removed: {removed[1]}")
        if key not in fields:
            raise unknown_key_error(key, sorted(fields), path)
        sub = f"{path}.{key}" if path else key
        tp = hints[key]
        if key == "agent" and cls is RunConfig:
            tp = agent_cls if agent_cls is not None else Any
        kwargs[key] = _convert(value, tp, sub)
    if cls is RunConfig and agent_cls is not None and "agent" not in kwargs:
        kwargs["agent"] = agent_cls()
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain nested dict (tuples become lists) for YAML, JSON and MLflow params."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``model.deter=200`` -> {"model": {"deter": 200}}; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.env_steps=5000")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def configs_root() -> Path:
    """The YAML presets, from the source tree or the installed package."""
    return Path(str(resources.files("configs")))


def presets() -> list[str]:
    return sorted(p.stem for p in (configs_root() / "size").glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _layer(path: Path, preset: str, data: dict[str, Any] | None = None, where: str = "top-level",
           allowed: frozenset[str] = frozenset({"defaults", "presets"})) -> dict[str, Any]:
    data = _read_yaml(path) if data is None else data
    extra = set(data) - allowed
    if extra:
        names = " and ".join(f"'{k}'" for k in sorted(allowed))
        raise ConfigError(f"{path}: {where} keys must be {names}, found {sorted(extra)}")
    out = data.get("defaults") or {}
    return merge(out, (data.get("presets") or {}).get(preset) or {})


def _algo_layers(path: Path, preset: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """An algorithm's own layer and its layer per env family: ``env_families: {dmc: {defaults,
    presets}}`` holds what the algorithm needs only on that family (it lands above the env layer)."""
    data = _read_yaml(path)
    own = _layer(path, preset, data, allowed=frozenset({"defaults", "presets", "env_families"}))
    valid = sorted(p.stem for p in (configs_root() / "env").glob("*.yaml"))
    per_family = {}
    for name, block in (data.get("env_families") or {}).items():
        if name not in valid:
            raise ConfigError(_unknown_name(f"{path}: env_families.{name} is not an env family", name, valid))
        per_family[name] = _layer(path, preset, block or {}, where=f"env_families.{name}")
    return own, per_family


def _check_preset(preset: str) -> None:
    valid = presets()
    if preset not in valid:
        raise ConfigError(_unknown_name(f"unknown preset '{preset}'", preset, valid))


def _unknown_name(message: str, name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    return message + (f"; did you mean {near[0]}?" if near else "") + f" (valid: {', '.join(valid)})"


def resolve_env(env_id: str, preset: str = "cpu") -> EnvConfig:
    """An env's settings under a preset without any algorithm's layer (size preset < env family)."""
    _check_preset(preset)
    root = configs_root()
    data = merge(_read_yaml(root / "size" / f"{preset}.yaml"),
                 _layer(root / "env" / f"{env_id.split(':', 1)[0]}.yaml", preset))
    return from_dict(EnvConfig, {**(data.get("env") or {}), "id": env_id}, "env")


def resolve(algo: str, agent_cls: type, env_id: str | None = None, preset: str = "cpu",
            overrides: tuple[str, ...] | list[str] = (), base: dict[str, Any] | None = None) -> RunConfig:
    """The run config for an algorithm, env and preset, with overrides applied and checked."""
    _check_preset(preset)
    root = configs_root()
    data: dict[str, Any] = merge(base or {}, _read_yaml(root / "size" / f"{preset}.yaml"))
    override_data: dict[str, Any] = {}
    for text in overrides:
        override_data = merge(override_data, parse_override(text))
    algo_data, algo_per_family = _algo_layers(root / "algo" / f"{algo}.yaml", preset)
    data = merge(data, algo_data)
    env = env_id or override_data.get("env", {}).get("id") or data.get("env", {}).get("id") or EnvConfig.id
    family = env.split(":", 1)[0]
    data = merge(data, _layer(root / "env" / f"{family}.yaml", preset))
    data = merge(data, algo_per_family.get(family, {}))
    data = merge(data, override_data)
    data = merge(data, {"algo": algo, "env": {"id": env}})
    return from_dict(RunConfig, data, agent_cls=agent_cls)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every field: `vmil config --help` and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return rows


def save_yaml(cfg: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def load_yaml(path: Path, agent_cls: type) -> RunConfig:
    """A run's saved resolved config."""
    return from_dict(RunConfig, _read_yaml(path), agent_cls=agent_cls)
