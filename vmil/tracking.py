"""Experiment tracking: MLflow (embedded sqlite store by default) or in memory for tests.

MLflow is imported only when a :class:`MlflowTracker` is created (``import mlflow`` takes seconds),
and every call after the run has started goes through a queue to one background thread, so
training never waits for the database.
"""
from __future__ import annotations

import itertools
import logging
import math
import queue
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "vmil"


class TrackingError(RuntimeError):
    """The tracking backend failed; the message names the call and the backend's error."""


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None  # None when nothing is stored (MemoryTracker)

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, image: np.ndarray, name: str) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"log_image('{name}'): expected uint8 [H, W, C] with C in 1/3/4, "
                         f"got {image.dtype} {image.shape}")
    return image


class MemoryTracker:
    """Keeps everything in memory: tests and runs without tracking."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[str, str | None]] = []
        self.images: dict[str, np.ndarray] = {}
        self.tags: dict[str, str] = {}
        self.status: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((int(step), {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        self.artifacts.append((str(path), artifact_path))

    def log_image(self, image: np.ndarray, name: str) -> None:
        self.images[name] = _check_image(image, name).copy()

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def close(self, status: str = "FINISHED") -> None:
        self.status = status

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.metrics if key in m]


class MlflowTracker:
    """One MLflow run. ``run_id`` given: continue that run (``vmil train --resume``)."""

    def __init__(self, uri: str = DEFAULT_URI, experiment: str = DEFAULT_EXPERIMENT,
                 run_name: str | None = None, run_id: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise TrackingError("mlflow is not installed; `pip install mlflow` or use --tracking-uri none") from err
        # Database set-up messages would interleave with training output.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            if run_id:
                self.run_id = self.client.get_run(run_id).info.run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                exp = self.client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
                self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        except Exception as err:  # mlflow raises many types (sqlalchemy, REST, ...); name the backend
            raise TrackingError(f"cannot start an MLflow run at '{uri}': {err}") from err
        self._queue: queue.Queue = queue.Queue()
        self._errors: list[str] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="vmil-track-"))
        self._counter = itertools.count()
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # Every call below runs on the worker thread, in order.
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception as err:  # keep logging the rest; close() reports what failed
                if not self._errors:
                    print(f"vmil: warning: MLflow {fn.__name__} failed: {err}", file=sys.stderr)
                self._errors.append(f"{fn.__name__}: {err}")

    def _put(self, fn, *args) -> None:
        if not self._thread.is_alive():
            raise TrackingError("the tracker is closed")
        self._queue.put((fn, args))

    def _params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _metrics(self, metrics: dict[str, float], step: int, timestamp: int) -> None:
        from mlflow.entities import Metric
        items = [Metric(k, float(v), timestamp, step) for k, v in metrics.items() if math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def _artifact(self, path: str, artifact_path: str | None, remove: bool) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)
        if remove:
            Path(path).unlink()

    def _tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        self._put(self._params, dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time
        self._put(self._metrics, {k: float(v) for k, v in metrics.items()}, int(step), int(time.time() * 1000))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        # Copy first: the caller may overwrite the file (checkpoints) before the worker gets to it.
        copy = self._tmp / str(next(self._counter)) / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
        self._put(self._artifact, str(copy), artifact_path, True)

    def log_image(self, image: np.ndarray, name: str) -> None:
        import imageio.v3 as iio
        image = _check_image(image, name)
        rel = Path(name if name.endswith(".png") else name + ".png")
        path = self._tmp / "images" / rel.name
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, image[..., 0] if image.shape[2] == 1 else image)
        self.log_artifact(path, "images" if rel.parent == Path(".") else f"images/{rel.parent.as_posix()}")
        path.unlink()

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put(self._tags, dict(tags))

    def close(self, status: str = "FINISHED") -> None:
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join()
        shutil.rmtree(self._tmp, ignore_errors=True)
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:  # mlflow raises many types
            self._errors.append(f"set_terminated: {err}")
        if self._errors:
            raise TrackingError(f"{len(self._errors)} MLflow call(s) failed at '{self.uri}'; first: {self._errors[0]}")


def make_tracker(uri: str | None, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 run_id: str | None = None) -> Tracker:
    """``uri`` "none" (or empty) keeps metrics in memory only."""
    if not uri or uri == "none":
        return MemoryTracker()
    return MlflowTracker(uri, experiment, run_name=run_name, run_id=run_id)
