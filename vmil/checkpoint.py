"""Checkpoints: agent state (with its optimisers), counters, RNG states and the run's config.

Only tensors, numbers, strings and containers of them are stored, so loading works with
``torch.load(..., weights_only=True)``; no pickled objects. Writes are atomic (temp file + rename),
so a run killed mid-write keeps its previous checkpoint.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vmil

FORMAT = "vmil-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or belongs to something else."""


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a run draws from (global ones plus named generators), as tensors and ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "python": (int(version), torch.tensor(py_state, dtype=torch.int64), gauss_next),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss_next = state["python"]
    random.setstate((version, tuple(int(v) for v in py_state.tolist()), gauss_next))
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise CheckpointError(f"checkpoint has no state for random generator '{name}' "
                                  f"(it has {sorted(state['generators'])})")
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def parts_state(parts: dict[str, Any], **counters: int) -> dict[str, Any]:
    """An agent's state: each part's (module or optimiser) ``state_dict`` under its name, plus counters."""
    state: dict[str, Any] = {name: part.state_dict() for name, part in parts.items()}
    state.update({name: int(value) for name, value in counters.items()})
    return state


def load_parts(state: dict[str, Any], parts: dict[str, Any], counters: tuple[str, ...], owner: str,
               hint: str = "") -> dict[str, int]:
    """Load what :func:`parts_state` wrote into ``parts``; returns the counters. The names are checked
    before anything loads, so a state from another algorithm or config fails naming the missing and
    unexpected keys; a part of other sizes fails naming that part."""
    expected = set(parts) | set(counters)
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(f"not a {owner} checkpoint for this config: missing keys {sorted(missing)}, "
                              f"unexpected keys {sorted(unexpected)}" + (f" ({hint})" if hint else ""))
    for name, part in parts.items():
        try:
            part.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{owner} checkpoint part '{name}' does not fit this config (different sizes?): "
                                  f"{str(err).splitlines()[0]}") from err
    return {name: int(state[name]) for name in counters}


def save_checkpoint(path: str | Path, *, algo: str, agent_state: dict[str, Any], counters: dict[str, int],
                    config: dict[str, Any], rng: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """``config`` is the resolved run config as a plain dict (``vmil.config.to_dict``); ``meta`` holds
    numbers and strings (e.g. the demos' summary as JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vmil_version": vmil.__version__,
        "algo": algo,
        "agent": agent_state,
        "counters": {k: int(v) for k, v in counters.items()},
        "config": config,
        "rng": rng,
        "meta": meta or {},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, algo: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's payload; ``algo`` given: fail unless the checkpoint belongs to that algorithm."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint (truncated or not a vmil checkpoint): "
                              f"{str(err).splitlines()[0]}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vmil checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload.get('format_version')}, this vmil reads "
                              f"{FORMAT_VERSION}")
    if algo is not None and payload["algo"] != algo:
        raise CheckpointError(f"{path}: checkpoint of algorithm '{payload['algo']}', cannot load it into "
                              f"'{algo}' (use --algo {payload['algo']})")
    return payload
