"""`vmil sweep SPEC.yaml`: a grid of training runs (algos x envs x presets x variants x seeds) run to
completion on Ray, idempotently.

A spec (YAML)::

    name: toy-reach-3algos          # tags every run (MLflow tag `sweep`); `vmil compare --sweep NAME`
    algos: [vmil, patchail, bc]
    envs: [toy:reach]
    seeds: 5                        # 0..4, or a list [0, 1, 7]
    algo_seeds: {vmil: 8}           # per algorithm, instead of seeds (optional)
    presets: [cpu]                  # default [cpu]
    overrides: [threads=1]          # every run (a list of key=value, or a mapping)
    algo_overrides:                 # per algorithm
      bc: [train.eval_every=2000]
    variants:                       # an extra grid axis of named override sets (optional)
      short: [train.env_steps=10000]
      long: [train.env_steps=30000]
    demos:                          # one demo set per env serves every algorithm (resized on load)
      toy:reach: demos/toy-reach    # or {dir: demos/toy-reach, record: {expert: scripted, episodes: 100}}
    root: runs/sweeps               # run directories: ROOT/NAME/ALGO/ENV/PRESET[-VARIANT]/sSEED
    tracking_uri: sqlite:///mlflow.db
    retries: 2                      # a failed run is tried again (resumed from its checkpoint) this often
    resources: {cpus: 1, gpus: auto}   # per run; gpus auto: 1 when the run's device is cuda, or auto and this
                                       # machine has a GPU (on a cluster whose driver has none, say gpus: 1)

Every run is one ``vmil train`` process (``--resume`` when its directory already holds a run), so a
sweep started again skips finished runs (``summary.json``), resumes killed ones from their last
checkpoint, and retries failed ones. The sweep's state (attempts, last errors, the driver's pid)
lives in ``ROOT/NAME/sweep.json``; ``vmil sweep SPEC --status`` reads it with the run directories.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from vmil.rundir import RUN_FILE, SUMMARY_FILE

SPEC_KEYS = ("name", "algos", "envs", "seeds", "algo_seeds", "presets", "overrides", "algo_overrides", "variants",
             "demos", "root", "tracking_uri", "retries", "resources")
REQUIRED_KEYS = ("name", "algos", "envs", "seeds")
STATE_FILE = "sweep.json"
LOG_DIR = "logs"


class ExecutorLost(RuntimeError):
    """The executor itself is gone (Ray's local raylet died, e.g. on Ctrl-C): no run failed, so
    none is charged a retry; the sweep stops and resumes when it is run again."""


class SweepError(ValueError):
    """A sweep spec that cannot run; the message names the key and the nearest valid value."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    key: str  # ALGO/ENV/PRESET[-VARIANT]/sSEED: its directory under the sweep's root
    algo: str
    env: str
    preset: str
    variant: str
    seed: int
    overrides: tuple[str, ...]
    demos: str | None
    run_dir: str
    gpus: float

    def command(self, sweep: "Sweep") -> list[str]:
        """The ``vmil train`` command line that starts it, or resumes it when its directory holds a run."""
        base = [sys.executable, "-m", "vmil.cli", "train"]
        if (Path(self.run_dir) / RUN_FILE).is_file():
            return base + ["--resume", self.run_dir]
        cmd = base + ["--algo", self.algo, "--env", self.env, "--preset", self.preset, "--seed", str(self.seed),
                      "--run-dir", self.run_dir, "--tracking-uri", sweep.tracking_uri, "--tag", f"sweep={sweep.name}"]
        if self.variant:
            cmd += ["--tag", f"variant={self.variant}"]
        if self.demos:
            cmd += ["--demos", self.demos]
        return cmd + list(self.overrides)


@dataclasses.dataclass
class Sweep:
    name: str
    root: Path  # ROOT/NAME
    tracking_uri: str
    retries: int
    cpus: float
    runs: list[RunSpec]
    records: dict[str, dict[str, Any]]  # demo dir -> recording settings, for demo sets not recorded yet

    def run_status(self, run: RunSpec) -> str:
        """done (summary.json), started (a run directory that can be resumed) or new."""
        run_dir = Path(run.run_dir)
        if (run_dir / SUMMARY_FILE).is_file():
            return "done"
        if (run_dir / RUN_FILE).is_file():
            return "started"
        return "new"


# ----------------------------------------------------------------------------- the spec


def _near(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    return (f"; did you mean {near[0]}?" if near else "") + f" (valid: {', '.join(valid)})"


def _list(spec: dict[str, Any], key: str, default: Any = None) -> list[Any]:
    value = spec.get(key, default)
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    if not isinstance(value, list):
        raise SweepError(f"spec key '{key}' must be a list (or one value), got {type(value).__name__}")
    return value


def _overrides(value: Any, where: str) -> list[str]:
    """A list of 'key=value' strings, or a mapping (nested or dotted) -> that list."""
    if value is None:
        return []
    if isinstance(value, dict):
        from vmil.config import flatten

        return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in flatten(value).items()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise SweepError(f"spec key '{where}' must be a list of key=value overrides (e.g. [threads=1]) or a mapping")
    return list(value)


def _seeds(spec: dict[str, Any], key: str = "seeds") -> list[int]:
    seeds = spec[key]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepError(f"spec key '{key}' must be >= 1 (a count) or a list of seeds, got {seeds}")
        return list(range(seeds))
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        if len(set(seeds)) != len(seeds):
            raise SweepError(f"spec key '{key}' lists a seed twice: {seeds}")
        return seeds
    raise SweepError(f"spec key '{key}' must be a count (e.g. 5) or a list of ints, got {seeds!r}")


def _demo_sets(spec: dict[str, Any], envs: list[str]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """env -> demo directory; demo directory -> recording settings (for sets recorded on demand)."""
    raw = spec.get("demos")
    if raw is None:
        return {}, {}
    if isinstance(raw, str):
        if len(envs) != 1:
            raise SweepError("spec key 'demos' is one directory but the sweep has several envs; give a mapping "
                             "env -> directory (demos: {toy:reach: demos/toy, ...})")
        raw = {envs[0]: raw}
    if not isinstance(raw, dict):
        raise SweepError(f"spec key 'demos' must map env ids to demo directories, got {type(raw).__name__}")
    dirs, records = {}, {}
    for env, value in raw.items():
        if env not in envs:
            raise SweepError(f"demos for env '{env}', which is not in the sweep's envs" + _near(env, envs))
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"dir", "record"})
            if unknown or "dir" not in value:
                raise SweepError(f"demos['{env}'] takes dir (and optionally record: {{expert, episodes, "
                                 f"keep_actions}}), got {sorted(value)}")
            directory = str(Path(value["dir"]).resolve())
            if value.get("record") is not None:
                record = dict(value["record"])
                bad = sorted(set(record) - {"expert", "episodes", "keep_actions", "seed", "preset"})
                if bad:
                    raise SweepError(f"demos['{env}'].record: unknown key '{bad[0]}'"
                                     + _near(bad[0], ["expert", "episodes", "keep_actions", "seed", "preset"]))
                records[directory] = {"env": env, **record}
        else:
            directory = str(Path(value).resolve())
        dirs[env] = directory
    return dirs, records


def load_spec(path: str | Path, check_demos: bool = True) -> Sweep:
    """Read and check a spec: keys, algorithms, envs, presets, every run's config (with its
    overrides) and that each demo set fits each algorithm, before anything runs."""
    import yaml

    from vmil import envs as envs_mod
    from vmil.config import resolve
    from vmil.registry import ALGOS, algo_module

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep spec (a YAML file; see `vmil sweep --help`)")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep spec is a mapping with keys {', '.join(REQUIRED_KEYS)}")
    for key in spec:
        if key not in SPEC_KEYS:
            raise SweepError(f"{path}: unknown spec key '{key}'" + _near(str(key), list(SPEC_KEYS)))
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise SweepError(f"{path}: missing spec key(s) {', '.join(missing)}")
    name = str(spec["name"])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SweepError(f"{path}: name '{name}' must be letters, digits, '.', '_' or '-' (it names a directory)")
    algos = [str(a) for a in _list(spec, "algos")]
    for algo in algos:
        if algo not in ALGOS:
            raise SweepError(f"{path}: unknown algorithm '{algo}'" + _near(algo, sorted(ALGOS)))
    env_ids = [str(e) for e in _list(spec, "envs")]
    for env in env_ids:
        envs_mod.split_id(env)  # a malformed or unknown id fails here with the valid ones
    presets = [str(p) for p in _list(spec, "presets", ["cpu"])]
    seeds = _seeds(spec)
    common = _overrides(spec.get("overrides"), "overrides")
    per_algo = spec.get("algo_overrides") or {}
    if not isinstance(per_algo, dict):
        raise SweepError(f"{path}: spec key 'algo_overrides' must map algorithms to override lists")
    for algo in per_algo:
        if algo not in algos:
            raise SweepError(f"{path}: algo_overrides for '{algo}', which is not in the sweep's algos" + _near(str(algo), algos))
    algo_seeds = spec.get("algo_seeds") or {}
    if not isinstance(algo_seeds, dict):
        raise SweepError(f"{path}: spec key 'algo_seeds' must map algorithms to seed counts or lists")
    for algo in algo_seeds:
        if algo not in algos:
            raise SweepError(f"{path}: algo_seeds for '{algo}', which is not in the sweep's algos" + _near(str(algo), algos))
    seeds_of = {algo: _seeds(algo_seeds, algo) if algo in algo_seeds else seeds for algo in algos}
    variants = spec.get("variants") or {"": []}
    if not isinstance(variants, dict):
        raise SweepError(f"{path}: spec key 'variants' must map variant names to override lists")
    for variant in variants:
        if variant and not re.fullmatch(r"[A-Za-z0-9_.-]+", str(variant)):
            raise SweepError(f"{path}: variant name '{variant}' must be letters, digits, '.', '_' or '-'")
    demo_dirs, records = _demo_sets(spec, env_ids)
    retries = spec.get("retries", 2)
    if not isinstance(retries, int) or retries < 0:
        raise SweepError(f"{path}: spec key 'retries' must be an int >= 0, got {retries!r}")
    resources = spec.get("resources") or {}
    bad = sorted(set(resources) - {"cpus", "gpus"})
    if bad:
        raise SweepError(f"{path}: resources: unknown key '{bad[0]}'" + _near(bad[0], ["cpus", "gpus"]))
    cpus = float(resources.get("cpus", 1))
    if cpus <= 0:
        raise SweepError(f"{path}: resources.cpus must be > 0, got {cpus}")
    if not any(o.startswith("threads=") for o in common):
        common = [f"threads={max(int(cpus), 1)}"] + common  # one run per core, one torch thread each
    gpus_spec = resources.get("gpus", "auto")
    root = Path(spec.get("root", "runs/sweeps")).resolve() / name
    tracking_uri = str(spec.get("tracking_uri", "sqlite:///mlflow.db"))
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).resolve())

    runs: list[RunSpec] = []
    checked: set[tuple[str, str, str, str]] = set()
    for algo in algos:
        module = algo_module(algo)
        for env in env_ids:
            demos = demo_dirs.get(env)
            if demos is None and getattr(module, "NEEDS_DEMOS", True):
                raise SweepError(f"{path}: {algo} learns from demonstrations but the spec has no demos for {env} "
                                 f"(demos: {{{env}: DIR}})")
            for preset in presets:
                for variant, variant_overrides in variants.items():
                    overrides = (common + _overrides(per_algo.get(algo), f"algo_overrides.{algo}")
                                 + _overrides(variant_overrides, f"variants.{variant}"))
                    where = f"{path}: {algo} on {env} ({preset}{', ' + variant if variant else ''})"
                    try:
                        cfg = resolve(algo, module.Config, env, preset, overrides)
                    except ValueError as err:
                        raise SweepError(f"{where}: {err}") from err
                    if check_demos and demos and (demos, algo, env, preset) not in checked and demos not in records:
                        _check_demos(where, algo, module, cfg, demos)
                        checked.add((demos, algo, env, preset))
                    gpus = _gpus(gpus_spec, cfg.device, where)
                    for seed in seeds_of[algo]:
                        env_dir = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
                        key = f"{algo}/{env_dir}/{preset}{'-' + variant if variant else ''}/s{seed}"
                        runs.append(RunSpec(key=key, algo=algo, env=env, preset=preset, variant=str(variant or ""),
                                            seed=seed, overrides=tuple(overrides), demos=demos,
                                            run_dir=str(root / key), gpus=gpus))
    return Sweep(name=name, root=root, tracking_uri=tracking_uri, retries=retries, cpus=cpus, runs=runs,
                 records=records)


def _gpus(spec: Any, device: str, where: str) -> float:
    if spec == "auto":
        if device.startswith("cuda"):
            return 1.0
        if device == "auto":
            import torch

            return 1.0 if torch.cuda.is_available() else 0.0
        return 0.0
    try:
        return float(spec)
    except (TypeError, ValueError):
        raise SweepError(f"{where}: resources.gpus must be a number or auto, got {spec!r}") from None


def _check_demos(where: str, algo: str, module: Any, cfg: Any, demos: str) -> None:
    """The checks `vmil train` makes before training, on the first episode: frames (resized when
    larger), env id, action repeat, and whether the algorithm needs actions."""
    import torch

    from vmil import envs
    from vmil.data.episode import EpisodeError, demo_info, episode_paths, load_episode

    try:
        first = episode_paths(demos)[0]
        env = envs.from_config(cfg.env, cfg.seed)
        try:
            ep = load_episode(first, env.spec)
            spec = env.spec
        finally:
            env.close()
        module.build(cfg.agent, spec, torch.device("cpu"), demo_info([ep], demos))
    except EpisodeError as err:
        raise SweepError(f"{where}: the demos do not fit: {err}") from err
    except (ValueError, RuntimeError) as err:
        raise SweepError(f"{where}: {err}") from err


# ----------------------------------------------------------------------------- state and status


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(sweep: Sweep) -> dict[str, Any]:
    path = sweep.root / STATE_FILE
    if not path.is_file():
        return {"runs": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"runs": {}}


def write_state(sweep: Sweep, state: dict[str, Any]) -> None:
    sweep.root.mkdir(parents=True, exist_ok=True)
    tmp = sweep.root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, sweep.root / STATE_FILE)


def status(sweep: Sweep) -> dict[str, Any]:
    """Per run: done / running / failed / stopped (killed or interrupted; resumable) / pending."""
    state = read_state(sweep)
    driver = state.get("driver") or {}
    driver_alive = bool(driver) and driver.get("host") == socket.gethostname() and _pid_alive(int(driver.get("pid", -1)))
    if driver and driver.get("host") != socket.gethostname():
        driver_alive = time.time() - float(driver.get("heartbeat", 0)) < 120  # another machine: its heartbeat
    rows = []
    for run in sweep.runs:
        info = state["runs"].get(run.key, {})
        on_disk = sweep.run_status(run)
        if on_disk == "done":
            label = "done"
        elif info.get("state") == "running" and driver_alive:
            label = "running"
        elif info.get("state") == "failed":
            label = "failed"
        elif on_disk == "started" or info.get("state") == "running":
            label = "stopped"
        else:
            label = "pending"
        rows.append({"run": run.key, "status": label, "attempts": info.get("attempts", 0),
                     "error": info.get("error") if label == "failed" else None, "run_dir": run.run_dir})
    counts = {k: sum(r["status"] == k for r in rows) for k in ("done", "running", "failed", "stopped", "pending")}
    return {"sweep": sweep.name, "root": str(sweep.root), "total": len(rows), **counts,
            "driver": driver if driver_alive else None, "runs": rows}


def format_status(report: dict[str, Any]) -> str:
    lines = [f"sweep {report['sweep']}: {report['total']} runs  done {report['done']}  running {report['running']}  "
             f"failed {report['failed']}  stopped {report['stopped']}  pending {report['pending']}  ({report['root']})"]
    for row in report["runs"]:
        extra = f"  attempts {row['attempts']}" if row["attempts"] else ""
        if row["error"]:
            extra += f"  {row['error']}"
        lines.append(f"  {row['status']:<8} {row['run']}{extra}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- executing runs


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies (Linux), so a
    killed sweep leaves no orphaned training behind (it resumes from its checkpoint next time)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute(command: list[str], log_path: str, threads: int = 1) -> dict[str, Any]:
    """Run one ``vmil train`` command to its end; its output goes to ``log_path``. Returns rc, seconds
    and the last error line. This is what a Ray task runs (on whichever node it lands)."""
    if command[1:3] == ["-m", "vmil.cli"]:
        command = [sys.executable] + command[1:]  # this node's interpreter (a cluster node's may live elsewhere)
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(max(threads, 1))
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent)
        try:
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    error = None
    if rc != 0:
        lines = [ln.strip() for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        error = (errors or lines or [f"exit code {rc}"])[-1][:300]
    return {"rc": rc, "seconds": round(time.time() - start, 1), "error": error, "host": socket.gethostname()}


class Executor(Protocol):
    """Runs commands somewhere; ``submit`` returns a handle, ``wait`` the finished (handle, result) pairs."""

    slots: int

    def submit(self, run: RunSpec, command: list[str], log_path: str, cpus: float) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, dict[str, Any]]]: ...

    def shutdown(self) -> None: ...


class RayExecutor:
    """Each run is a Ray task (num_cpus per run, num_gpus when its device is cuda) that runs the
    ``vmil train`` process. ``address`` None starts a local instance with ``num_cpus`` CPUs."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as err:
            raise SweepError("vmil sweep runs on Ray: pip install -e '.[ray]' (or run it without Ray: --no-ray)") from err
        self.ray = ray
        self.local = address is None  # one node, this machine: its death ends the instance
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SweepError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                             f"{' '.join(str(err).split())[:300]}") from err
        self.slots = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        self._remote = ray.remote(max_retries=0)(execute)

    def submit(self, run: RunSpec, command: list[str], log_path: str, cpus: float) -> Any:
        return self._remote.options(num_cpus=cpus, num_gpus=run.gpus).remote(command, log_path, max(int(cpus), 1))

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for handle in ready:
            try:
                out.append((handle, self.ray.get(handle)))
            except self.ray.exceptions.RayError as err:  # the task itself died (node lost, OOM kill)
                text = " ".join(str(err).split())[:300]
                # Without this, every queued run would be submitted to the dead instance and charged a retry.
                if isinstance(err, self.ray.exceptions.LocalRayletDiedError) or (
                        self.local and isinstance(err, self.ray.exceptions.NodeDiedError)):
                    raise ExecutorLost(f"Ray's local instance died ({text[:120]})") from err
                out.append((handle, {"rc": -1, "seconds": 0.0, "error": text}))
        return out

    def shutdown(self) -> None:
        self.ray.shutdown()


class LocalExecutor:
    """No Ray: runs one at a time in this process's children (``vmil sweep --no-ray``, tests)."""

    slots = 1

    def __init__(self, execute_fn: Callable[..., dict[str, Any]] = execute):
        self.execute_fn = execute_fn
        self._queue: list[tuple[int, list[str], str, float]] = []
        self._next = 0

    def submit(self, run: RunSpec, command: list[str], log_path: str, cpus: float) -> Any:
        self._next += 1
        self._queue.append((self._next, command, log_path, cpus))
        return self._next

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        handle, command, log_path, cpus = next(item for item in self._queue if item[0] in handles)
        self._queue = [item for item in self._queue if item[0] != handle]
        return [(handle, self.execute_fn(command, log_path, max(int(cpus), 1)))]

    def shutdown(self) -> None:
        pass


def _record_missing_demos(sweep: Sweep, quiet: bool) -> None:
    from vmil.demos import record, serving_env_settings

    for directory, settings in sweep.records.items():
        if Path(directory).is_dir() and any(Path(directory).glob("*.npz")):
            continue
        env = settings["env"]
        env_settings = serving_env_settings(env, settings.get("preset", "cpu"))
        from vmil.config import resolve_env

        base = resolve_env(env, settings.get("preset", "cpu"))
        print(f"sweep: recording {settings.get('episodes', 10)} demos of {env} in {directory}", file=sys.stderr)
        record(env, settings.get("expert", "scripted"), int(settings.get("episodes", 10)), directory,
               keep_actions=bool(settings.get("keep_actions", True)), seed=int(settings.get("seed", 0)),
               image_size=env_settings.get("image_size", base.image_size), action_repeat=base.action_repeat,
               grayscale=env_settings.get("grayscale", base.grayscale), camera=base.camera or None,
               fast_render=base.fast_render, proprio=base.proprio, quiet=quiet)


def _init_store(uri: str) -> None:
    """Create the MLflow store (and its 'vmil' experiment) once, before runs start in parallel: two
    processes creating one sqlite store at the same moment collide in its schema migration."""
    if uri == "none":
        return
    from vmil.tracking import DEFAULT_EXPERIMENT

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(DEFAULT_EXPERIMENT) is None:
        client.create_experiment(DEFAULT_EXPERIMENT)


def run_sweep(sweep: Sweep, executor: Executor | Callable[[], Executor], *, quiet: bool | None = None,
              poll: float = 5.0) -> dict[str, Any]:
    """Run every run that is not done: new ones start, started ones resume, failed ones are tried
    again up to ``sweep.retries`` more times. ``executor`` may be a factory, called only when
    something is left to run. Returns the final :func:`status` report."""
    from tqdm import tqdm

    quiet = (not sys.stderr.isatty()) if quiet is None else quiet
    _record_missing_demos(sweep, quiet)
    todo = [run for run in sweep.runs if sweep.run_status(run) != "done"]
    if todo:
        _init_store(sweep.tracking_uri)
        if isinstance(executor, type) or not hasattr(executor, "wait"):
            executor = executor()  # a factory: Ray starts only when something is left to run
    else:
        if hasattr(executor, "wait") and not isinstance(executor, type):
            executor.shutdown()  # an executor was started, but nothing is left to run
        executor = None
    state = read_state(sweep)
    state["name"] = sweep.name
    runs_state = state.setdefault("runs", {})
    done_before = len(sweep.runs) - len(todo)
    for run in sweep.runs:  # a sweep started again gives failed runs a fresh set of tries
        info = runs_state.setdefault(run.key, {})
        if sweep.run_status(run) == "done":
            info["state"] = "done"
        elif info.get("state") in ("failed", "running"):
            info["state"] = "pending"
        info["tries"] = 0
    state["driver"] = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                       "heartbeat": time.time()}
    write_state(sweep, state)
    resumed = sum(sweep.run_status(r) == "started" for r in todo)
    print(f"sweep {sweep.name}: {len(sweep.runs)} runs, {done_before} done, {len(todo)} to run ({resumed} resumed); "
          f"run directories under {sweep.root}", file=sys.stderr)
    queue = list(todo)
    running: dict[Any, RunSpec] = {}
    failed = finished = 0
    started = time.time()
    bar = tqdm(total=len(sweep.runs), initial=done_before, desc=f"sweep {sweep.name}", unit="run", disable=quiet,
               dynamic_ncols=True)

    def say(text: str) -> None:  # stderr: stdout stays for --json
        if bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            bar.write(text, file=sys.stderr)

    def submit(run: RunSpec) -> None:
        info = runs_state[run.key]
        info["attempts"] = info.get("attempts", 0) + 1
        info["tries"] = info.get("tries", 0) + 1
        info["state"] = "running"
        log = sweep.root / LOG_DIR / f"{run.key.replace('/', '_')}.{info['attempts']}.log"
        handle = executor.submit(run, run.command(sweep), str(log), sweep.cpus)
        running[handle] = run

    slots = max(int(executor.slots // sweep.cpus), 1) if executor is not None else 1
    try:
        while queue or running:
            # Keep every slot busy (Ray queues what does not fit; the local executor runs one at a time).
            while queue and len(running) < slots:
                submit(queue.pop(0))
            write_state(sweep, state)
            for handle, result in executor.wait(list(running), timeout=poll):
                run = running.pop(handle)
                info = runs_state[run.key]
                info.update(seconds=info.get("seconds", 0.0) + result.get("seconds", 0.0), host=result.get("host"))
                if result["rc"] == 0 and sweep.run_status(run) == "done":
                    info.update(state="done", error=None)
                    bar.update(1)
                    finished += 1
                    if quiet:  # no bar (not a terminal): one line per finished run, for logs
                        eta = (time.time() - started) / finished * (len(queue) + len(running))  # at the rate so far
                        say(f"sweep: {run.key} done in {result.get('seconds', 0):.0f} s; {done_before + finished}/"
                            f"{len(sweep.runs)} done, {failed} failed, ETA {eta / 60:.0f} min")
                elif info["tries"] <= sweep.retries:
                    info.update(state="pending", error=result.get("error"))
                    say(f"sweep: {run.key} failed ({result.get('error')}); trying again "
                        f"({info['tries']}/{sweep.retries} retries used)")
                    queue.append(run)
                else:
                    info.update(state="failed", error=result.get("error"))
                    failed += 1
                    say(f"sweep: {run.key} failed {info['tries']} times; last error: {result.get('error')}")
            state["driver"]["heartbeat"] = time.time()
            bar.set_postfix(running=len(running), failed=failed)
    except (KeyboardInterrupt, ExecutorLost) as err:
        for run in running.values():
            info = runs_state[run.key]
            info.update(state="pending", tries=max(info.get("tries", 1) - 1, 0))
        if isinstance(err, ExecutorLost):
            raise SweepError(f"sweep {sweep.name} stopped: {err}; nothing is lost: run the same command again "
                             "to resume") from err
        raise
    finally:
        bar.close()
        state["driver"] = None
        write_state(sweep, state)
        if executor is not None:
            executor.shutdown()
    return status(sweep)
