"""N environments stepped in worker processes, frames written straight into shared memory.

Rendering (MuJoCo through EGL) is the cost of a pixel env step, so spreading envs over processes
uses every core. Workers start with the ``spawn`` method (a fresh interpreter: no forked GL or
OpenMP state), build their envs from picklable factories, and write each frame into one shared
``uint8 [N, C, H, W]`` block; only the small per-env fields travel through pipes.

Episode ends are handled inside: after an env returns ``last``, the next :meth:`VectorEnv.step`
resets that env and returns its ``first`` timestep (the action given for it is ignored), so each
env's stream reads first, mid..., last, first, ... like a single env.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import time
import traceback
from multiprocessing import shared_memory
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from vmil.base import EnvSpec, TimeStep
from vmil.envs import EnvError

EnvFn = Callable[[], Any]


class VecStep(NamedTuple):
    obs: np.ndarray  # uint8 [N, C, H, W]; [N, 0] when the envs run with render=False
    state: np.ndarray | None  # float32 [N, S]
    reward: np.ndarray  # float32 [N]
    first: np.ndarray  # bool [N]
    terminal: np.ndarray  # bool [N]
    last: np.ndarray  # bool [N]
    info: list[dict[str, Any]]

    def timestep(self, i: int) -> TimeStep:
        """Env ``i``'s fields as a single-env TimeStep."""
        return TimeStep(obs=self.obs[i], state=None if self.state is None else self.state[i],
                        reward=float(self.reward[i]), first=bool(self.first[i]),
                        terminal=bool(self.terminal[i]), last=bool(self.last[i]), info=self.info[i])


def _obs_shape(spec: EnvSpec) -> tuple[int, ...]:
    return tuple(spec.obs_shape) if spec.extra.get("render", True) else (0,)


class _EnvGroup:
    """The envs of one worker (or of the parent, with ``num_workers=0``), with auto-reset."""

    def __init__(self, env_fns: Sequence[EnvFn]):
        self.envs = []
        try:
            for fn in env_fns:
                self.envs.append(fn())
        except BaseException:
            self.close()
            raise
        self.needs_reset = [True] * len(self.envs)
        self.obs_view: np.ndarray | None = None  # [n, C, H, W] view into the shared block

    def specs(self) -> list[EnvSpec]:
        return [env.spec for env in self.envs]

    def _record(self, i: int, ts: TimeStep) -> tuple:
        if self.obs_view is not None and ts.obs.size:
            self.obs_view[i] = ts.obs
        self.needs_reset[i] = ts.last
        return ts.state, ts.reward, ts.first, ts.terminal, ts.last, ts.info

    def reset(self) -> list[tuple]:
        return [self._record(i, env.reset()) for i, env in enumerate(self.envs)]

    def step(self, actions: Sequence[Any]) -> list[tuple]:
        out = []
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            ts = env.reset() if self.needs_reset[i] else env.step(action)
            out.append(self._record(i, ts))
        return out

    def call(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        return [getattr(env, name)(*args, **kwargs) for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def _worker(conn, env_fns: list[EnvFn]) -> None:
    """Worker loop: (command, payload) in, ("ok", result) or ("error", traceback) out."""
    shm = None
    group = None
    try:
        group = _EnvGroup(env_fns)
        conn.send(("ok", group.specs()))
        while True:
            command, payload = conn.recv()
            try:
                if command == "attach":
                    name, shape, offset = payload
                    shm = shared_memory.SharedMemory(name=name)
                    group.obs_view = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf, offset=offset)
                    result = None
                elif command == "reset":
                    result = group.reset()
                elif command == "step":
                    result = group.step(payload)
                elif command == "call":
                    result = group.call(*payload)
                elif command == "cpu_time":
                    result = time.process_time()
                elif command == "close":
                    break
                else:
                    raise ValueError(f"unknown worker command {command!r}")
                conn.send(("ok", result))
            except Exception:  # reported to the parent, which raises it there
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass  # the parent went away
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        if group is not None:
            group.obs_view = None
            group.close()
        if shm is not None:
            shm.close()
        conn.close()


class VectorEnv:
    """``VectorEnv(env_fns, num_workers)``, ``VectorEnv((env_id, [kwargs, ...]), num_workers)`` or
    ``VectorEnv.from_id(env_id, num_envs, seed=..., **kwargs)``.

    ``env_fns`` are picklable zero-argument factories (e.g. ``functools.partial(vmil.envs.make, ...)``);
    with ``(env_id, kwargs_list)`` env ``i`` is ``vmil.envs.make(env_id, **kwargs_list[i])``.
    ``num_workers`` processes share the envs in contiguous blocks; ``num_workers=0`` steps them in this
    process (same results, for debugging). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, env_fns: Sequence[EnvFn] | tuple[str, Sequence[dict[str, Any]]],
                 num_workers: int | None = None, *, context: str = "spawn", copy: bool = True):
        if isinstance(env_fns, tuple) and len(env_fns) == 2 and isinstance(env_fns[0], str):
            from vmil.envs import make

            env_id, kwargs_list = env_fns  # (env_id, [make kwargs per env])
            env_fns = [functools.partial(make, env_id, **kwargs) for kwargs in kwargs_list]
        if len(env_fns) == 0:
            raise ValueError("VectorEnv needs at least one env factory")
        num_envs = len(env_fns)
        if num_workers is None:
            num_workers = min(num_envs, os.cpu_count() or 1)
        if not 0 <= num_workers <= num_envs:
            raise ValueError(f"num_workers must be in [0, {num_envs}] (0: step the envs in this process), "
                             f"got {num_workers}")
        self.num_envs = num_envs
        self.num_workers = num_workers
        self.copy = copy
        self.closed = False
        self._shm: shared_memory.SharedMemory | None = None
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._local: _EnvGroup | None = None
        self._blocks = [b.tolist() for b in np.array_split(np.arange(num_envs), max(num_workers, 1))]
        try:
            specs = self._start(list(env_fns), context)
            self.spec = self._check_specs(specs)
            self.obs_shape = _obs_shape(self.spec)
            self._obs = self._allocate()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_id(cls, env_id: str, num_envs: int, *, seed: int = 0, num_workers: int | None = None,
                context: str = "spawn", copy: bool = True, **make_kwargs: Any) -> "VectorEnv":
        """``num_envs`` copies of ``vmil.envs.make(env_id, seed=seed + i, **make_kwargs)``."""
        from vmil.envs import make

        fns = [functools.partial(make, env_id, seed=seed + i, **make_kwargs) for i in range(num_envs)]
        return cls(fns, num_workers, context=context, copy=copy)

    # -- start-up --------------------------------------------------------------------------------

    def _start(self, env_fns: list[EnvFn], context: str) -> list[EnvSpec]:
        if self.num_workers == 0:
            self._local = _EnvGroup(env_fns)
            return self._local.specs()
        ctx = mp.get_context(context)
        for block in self._blocks:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, [env_fns[i] for i in block]), daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        specs: list[EnvSpec] = []
        for w in range(self.num_workers):
            specs.extend(self._receive(w))
        return specs

    @staticmethod
    def _check_specs(specs: list[EnvSpec]) -> EnvSpec:
        first = specs[0]
        for i, spec in enumerate(specs[1:], 1):
            if (_obs_shape(spec), spec.action_dim, spec.discrete, spec.state_dim) != \
                    (_obs_shape(first), first.action_dim, first.discrete, first.state_dim):
                raise ValueError(f"VectorEnv envs must share obs shape, action and state sizes: env 0 is "
                                 f"{first.env_id} {_obs_shape(first)}, env {i} is {spec.env_id} {_obs_shape(spec)}")
        return first

    def _allocate(self) -> np.ndarray:
        shape = (self.num_envs, *self.obs_shape)
        size = int(np.prod(shape))
        if size == 0:  # render=False: nothing to share
            return np.zeros(shape, dtype=np.uint8)
        if self._local is not None:
            obs = np.zeros(shape, dtype=np.uint8)
            self._local.obs_view = obs
            return obs
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        obs = np.ndarray(shape, dtype=np.uint8, buffer=self._shm.buf)
        obs[:] = 0
        frame_bytes = int(np.prod(self.obs_shape))
        payloads = [(self._shm.name, (len(block), *self.obs_shape), block[0] * frame_bytes)
                    for block in self._blocks]  # each worker writes its own contiguous rows
        self._broadcast("attach", payloads)
        return obs

    # -- messaging ---------------------------------------------------------------------------------

    def _receive(self, w: int) -> Any:
        try:
            status, result = self._conns[w].recv()
        except EOFError:
            code = self._procs[w].exitcode
            raise EnvError(f"VectorEnv worker {w} died (exit code {code}); see its output above. Workers are "
                           f"spawned and re-import the main module: in a script, create the VectorEnv under "
                           f"`if __name__ == '__main__':`") from None
        if status == "error":
            raise EnvError(f"VectorEnv worker {w} (envs {self._blocks[w]}) failed:\n{result}")
        return result

    def _broadcast(self, command: str, payloads: list[Any] | None = None) -> list[Any]:
        self._check_open()
        for w in range(self.num_workers):
            self._conns[w].send((command, None if payloads is None else payloads[w]))
        results = []
        errors = []
        for w in range(self.num_workers):  # drain every pipe even when one fails
            try:
                results.append(self._receive(w))
            except EnvError as err:
                errors.append(err)
        if errors:
            raise errors[0]
        return results

    def _check_open(self) -> None:
        if self.closed:
            raise EnvError("VectorEnv is closed; create a new one")

    # -- stepping ----------------------------------------------------------------------------------

    def _collect(self, per_env: list[tuple]) -> VecStep:
        states = [r[0] for r in per_env]
        state = None if states[0] is None else np.stack(states).astype(np.float32)
        obs = self._obs.copy() if self.copy else self._obs
        return VecStep(obs=obs, state=state,
                       reward=np.array([r[1] for r in per_env], dtype=np.float32),
                       first=np.array([r[2] for r in per_env], dtype=bool),
                       terminal=np.array([r[3] for r in per_env], dtype=bool),
                       last=np.array([r[4] for r in per_env], dtype=bool),
                       info=[r[5] for r in per_env])

    def reset(self) -> VecStep:
        """Resets every env."""
        self._check_open()
        if self._local is not None:
            return self._collect(self._local.reset())
        return self._collect([r for block in self._broadcast("reset") for r in block])

    def step(self, actions: Sequence[Any] | np.ndarray) -> VecStep:
        """One step of every env (envs whose last step ended an episode are reset instead)."""
        self._check_open()
        if len(actions) != self.num_envs:
            raise EnvError(f"VectorEnv.step needs one action per env ({self.num_envs}), got {len(actions)}")
        if self._local is not None:
            return self._collect(self._local.step(list(actions)))
        payloads = [[actions[i] for i in block] for block in self._blocks]
        return self._collect([r for block in self._broadcast("step", payloads) for r in block])

    def call(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """``getattr(env, name)(*args, **kwargs)`` on every env, e.g. ``call("expert_observation")``."""
        self._check_open()
        if self._local is not None:
            return self._local.call(name, args, kwargs)
        payload = (name, args, kwargs)
        return [r for block in self._broadcast("call", [payload] * self.num_workers) for r in block]

    def worker_cpu_times(self) -> list[float]:
        """CPU seconds used so far by each worker process (or this process with ``num_workers=0``)."""
        if self._local is not None:
            return [time.process_time()]
        return self._broadcast("cpu_time")

    # -- shutdown ----------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        if self.closed:
            return
        self.closed = True
        if self._local is not None:
            self._local.close()
            self._local = None
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        if self._shm is not None:
            self._obs = None
            try:
                self._shm.close()
            except BufferError:  # a caller still holds a view (copy=False); the OS frees it at exit
                pass
            self._shm.unlink()
            self._shm = None

    def __enter__(self) -> "VectorEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close(timeout=2.0)
