"""Gradient averaging over learners (Relational Mimic: 4 learners that differ only by seed, their
gradients averaged at every update) with ``torch.distributed``: gloo on the CPU, nccl on GPUs.

Every helper is a no-op in a single process, so learners call them unconditionally:
:func:`broadcast_module` (every learner starts from learner 0's weights), :func:`average_gradients`
(called by :func:`vmil.nn.optimize` between backward and the optimiser step), :func:`all_sum`
(statistics that must stay equal everywhere, e.g. observation standardisation).

Launch: ``vmil train --learners N`` spawns N processes on this machine (:func:`launch`); under
``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set, any number of machines) `vmil train`
joins the process group torchrun describes (:func:`init_from_env`). Learner r runs with seed
``seed + r``; learner 0 alone logs to MLflow and writes checkpoints.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

# A learner that dies leaves the others blocked in a collective; gloo gives up after this long.
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("VMIL_DIST_TIMEOUT", "300")))


class LearnerFailed(RuntimeError):
    """A learner process died; the others were stopped."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def init(rank_: int, world: int, init_method: str, backend: str = "gloo") -> None:
    dist.init_process_group(backend, init_method=init_method, rank=rank_, world_size=world, timeout=TIMEOUT)


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group of a torchrun launch; False when not launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Learner 0's parameters and buffers everywhere."""
    if not active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def all_sum(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The sums over learners (the inputs themselves in one process)."""
    if not active():
        return tensors
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].reshape(t.shape).to(t.dtype))
        offset += t.numel()
    return tuple(out)


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter], finite: bool) -> bool:
    """Average every learner's gradients in place (one all-reduce of one flat buffer); returns whether
    every learner's loss and gradients were finite, so that all of them skip the step together."""
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flag = torch.tensor([0.0 if finite else 1.0], device=grads[0].device if grads else "cpu")
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [flag])
    flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0) if not finite else flat
    if not finite:
        flat[:-1] = 0.0
    dist.all_reduce(flat)
    ok = bool(flat[-1] == 0) and bool(torch.isfinite(flat).all())
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].reshape(g.shape).to(g.dtype)
        offset += g.numel()
    return ok


# ---------------------------------------------------------------------------------------------
# Launching N learners on this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learner(rank_: int, world: int, init_method: str, backend: str, fn: Callable[..., Any], args: tuple,
             report_dir: str) -> None:
    init(rank_, world, init_method, backend)
    try:
        fn(rank_, *args)
    except BaseException as err:
        # Written before this process exits and closes its connections, so the first learner to fail
        # is the earliest report, whichever exit the launcher happens to notice first.
        why = f"{type(err).__name__}: {err}".replace("\n", " ")
        with open(os.path.join(report_dir, f"failure_{rank_}.txt"), "w") as f:
            f.write(f"{time.time()!r}\n{why}")
        raise
    finally:
        shutdown()


def _first_failure(report_dir: str) -> tuple[int, str] | None:
    """(rank, "Type: message") of the earliest failure a learner reported, or None."""
    reports = []
    for name in os.listdir(report_dir):
        if name.startswith("failure_") and name.endswith(".txt"):
            with open(os.path.join(report_dir, name)) as f:
                stamp, _, why = f.read().partition("\n")
            reports.append((float(stamp), int(name[len("failure_"):-len(".txt")]), why.splitlines()[0] if why else ""))
    if not reports:
        return None
    _, rank_, why = min(reports)
    return rank_, why


def warn_oversubscribed(world: int, backend: str) -> bool:
    """Warn (stderr) when more CPU learners than cores are asked for; returns whether it warned."""
    cores = os.cpu_count() or 1
    if backend == "gloo" and world > cores:
        print(f"vmil: warning: {world} learners on {cores} CPU cores without a GPU: they will share cores and "
              "each update waits for the slowest", file=sys.stderr)
        return True
    return False


def launch(world: int, fn: Callable[..., Any], args: tuple = (), backend: str = "gloo",
           run_dir: str | os.PathLike | None = None) -> None:
    """Run ``fn(rank, *args)`` in ``world`` spawned processes joined in one process group. When one
    learner fails the others are stopped and :class:`LearnerFailed` names the failed one."""
    import torch.multiprocessing as mp

    warn_oversubscribed(world, backend)
    init_method = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="vmil-learners-") as report_dir:
        try:
            mp.spawn(_learner, args=(world, init_method, backend, fn, args, report_dir), nprocs=world, join=True)
        except mp.ProcessRaisedException as err:
            # The learners that lost their peer fail too; name the one that failed first.
            first = _first_failure(report_dir)
            if first is None:
                lines = str(err).strip().splitlines()
                first = (err.error_index, lines[-1] if lines else "unknown error")
            raise LearnerFailed(f"learner {first[0]} failed ({first[1]}); the others were stopped. "
                                f"{_where(run_dir)}") from err
        except mp.ProcessExitedException as err:
            raise LearnerFailed(f"learner {err.error_index} died (exit code {err.exit_code}); the others were "
                                f"stopped. {_where(run_dir)}") from err


def _where(run_dir: str | os.PathLike | None) -> str:
    if run_dir is None:
        return "Learner 0's last checkpoint is intact; continue with `vmil train --resume RUN_DIR`."
    return f"Learner 0's last checkpoint in {run_dir} is intact; continue with `vmil train --resume {run_dir}`."
