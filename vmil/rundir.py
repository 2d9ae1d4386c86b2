"""A run directory's layout, shared by the runner (which writes it) and evaluation (which reads it).

``RUN_DIR/{config.yaml, run.json, summary.json, episodes/, checkpoints/last.pt}``; the evaluation
env's seed is the run's seed plus :data:`EVAL_SEED_OFFSET`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vmil.checkpoint import CheckpointError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
EPISODE_DIR = "episodes"
CHECKPOINT_FILE = "checkpoints/last.pt"
EVAL_SEED_OFFSET = 1_000_003  # eval env seed = run seed + this (also `vmil eval`'s default)


def checkpoint_path(path: Path) -> Path:
    """A checkpoint file, or a run directory's last checkpoint."""
    path = Path(path)
    if path.is_dir():
        file = path / CHECKPOINT_FILE
        if not file.is_file():
            raise CheckpointError(f"{path}: no checkpoint in this directory (expected {file})")
        return file
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    return path


def demo_info_from_meta(meta: dict[str, Any]):
    """The demos' summary stored in a checkpoint (JSON), or None."""
    raw = meta.get("demo_info")
    if not raw:
        return None
    from vmil.data.episode import DemoInfo

    data = json.loads(raw)
    for key in ("lengths", "returns", "obs_shape"):
        data[key] = tuple(data[key])
    return DemoInfo(**data)
