"""`vmil sweep`: spec checks (one-line errors), grid expansion, skip / resume / retry logic with a fake
executor, and a real sweep of smoke runs on a local Ray instance (killed run resumed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vmil import sweep as sw


def _spec(tmp_path: Path, demo_dir: Path | None, **changes) -> Path:
    spec = {"name": "t", "algos": ["bc", "patchail"], "envs": ["toy:reach"], "seeds": 2, "presets": ["smoke"],
            "demos": {"toy:reach": str(demo_dir)} if demo_dir else None, "root": str(tmp_path / "runs"),
            "tracking_uri": "none", "retries": 1}
    spec.update(changes)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = tmp_path / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


class FakeExecutor(sw.LocalExecutor):
    """Records commands; 'runs' one by writing its run directory (run.json, then summary.json),
    failing the runs named in ``fail`` (key -> how many times)."""

    def __init__(self, fail: dict[str, int] | None = None):
        super().__init__(self._execute)
        self.fail = dict(fail or {})
        self.commands: list[list[str]] = []

    def _execute(self, command, log_path, threads):
        self.commands.append(command)
        run_dir = Path(command[command.index("--resume") + 1] if "--resume" in command
                       else command[command.index("--run-dir") + 1])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text("{}")
        key = "/".join(run_dir.parts[-4:])
        if self.fail.get(key, 0) > 0:
            self.fail[key] -= 1
            return {"rc": 1, "seconds": 0.1, "error": "vmil: error: boom", "host": "h"}
        (run_dir / "summary.json").write_text("{}")
        return {"rc": 0, "seconds": 0.1, "error": None, "host": "h"}


def test_grid_expansion_and_commands(tmp_path, toy_demos):
    spec = sw.load_spec(_spec(tmp_path, toy_demos, variants={"a": ["train.eval_episodes=2"], "b": []},
                              algo_overrides={"bc": ["train.offline_updates=10"]}, seeds=[3, 5]))
    assert [r.key for r in spec.runs] == [f"{algo}/toy_reach/smoke-{v}/s{s}" for algo in ("bc", "patchail")
                                          for v in ("a", "b") for s in (3, 5)]
    first = spec.runs[0]
    assert first.overrides == ("threads=1", "train.offline_updates=10", "train.eval_episodes=2")
    cmd = first.command(spec)
    assert cmd[cmd.index("--run-dir") + 1] == str(tmp_path / "runs" / "t" / first.key)
    assert ["--tag", "sweep=t"] == cmd[cmd.index("--tag"):cmd.index("--tag") + 2] and "variant=a" in cmd
    assert spec.runs[4].overrides == ("threads=1", "train.eval_episodes=2")  # patchail: no bc overrides


@pytest.mark.parametrize("changes,message", [
    ({"algoz": ["bc"]}, "unknown spec key 'algoz'; did you mean algos?"),
    ({"algos": ["patchail-x"]}, "unknown algorithm 'patchail-x'; did you mean patchail"),
    ({"envs": ["toy:reac"]}, "reac"),
    ({"presets": ["smok"]}, "unknown preset 'smok'"),
    ({"overrides": ["train.env_step=10"]}, "train.env_step"),
    ({"seeds": 0}, "spec key 'seeds' must be >= 1"),
    ({"demos": None}, "bc learns from demonstrations but the spec has no demos for toy:reach"),
    ({"resources": {"cpu": 1}}, "resources: unknown key 'cpu'; did you mean cpus?"),
])
def test_bad_specs_fail_in_one_line(tmp_path, toy_demos, capsys, changes, message):
    from vmil.cli import main

    path = _spec(tmp_path, toy_demos, **changes)
    assert main(["sweep", str(path), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmil: error: ") and message in err and "\n" not in err, err


def test_demos_that_do_not_fit_fail_before_anything_runs(tmp_path, record_demos, toy_demos_obs, capsys):
    from vmil.cli import main

    small = record_demos(tmp_path / "small", 1, keep_actions=True, image_size=16)
    assert main(["sweep", str(_spec(tmp_path, small, algos=["bc"])), "--no-ray"]) == 1
    err = capsys.readouterr().err
    assert "the demos do not fit" in err and "record the demos at 64x64 or larger" in err
    assert main(["sweep", str(_spec(tmp_path, toy_demos_obs, algos=["bc"])), "--no-ray"]) == 1
    assert "bc needs demos with actions" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_skip_resume_retry_and_status(tmp_path, toy_demos):
    spec = sw.load_spec(_spec(tmp_path, toy_demos))
    ex = FakeExecutor(fail={"patchail/toy_reach/smoke/s1": 1, "bc/toy_reach/smoke/s1": 5})
    report = sw.run_sweep(spec, ex, quiet=True, poll=0)
    # bc s1 failed twice (1 retry) and stays failed; patchail s1 failed once, then resumed and finished
    assert (report["done"], report["failed"]) == (3, 1)
    assert len(ex.commands) == 6
    retried = [c for c in ex.commands if "--resume" in c]
    assert [Path(c[-1]).parts[-4:] for c in retried] == [("bc", "toy_reach", "smoke", "s1"),
                                                        ("patchail", "toy_reach", "smoke", "s1")]
    failed = next(r for r in report["runs"] if r["status"] == "failed")
    assert failed["run"] == "bc/toy_reach/smoke/s1" and failed["attempts"] == 2 and "boom" in failed["error"]
    text = sw.format_status(sw.status(spec))
    assert "done 3  running 0  failed 1" in text

    # Run again: finished runs are skipped, the failed one gets a fresh set of tries (and resumes).
    ex2 = FakeExecutor()
    report = sw.run_sweep(spec, ex2, quiet=True, poll=0)
    assert report["done"] == 4 and len(ex2.commands) == 1 and "--resume" in ex2.commands[0]
    # Nothing left: no executor is even created.
    report = sw.run_sweep(spec, lambda: pytest.fail("an executor was started with nothing to run"), quiet=True)
    assert report["done"] == 4

    # A killed run (a run directory without summary.json) is resumed; a stale "running" state whose
    # driver is gone reads as stopped.
    killed = Path(spec.runs[0].run_dir)
    (killed / "summary.json").unlink()
    state = json.loads((spec.root / "sweep.json").read_text())
    state["runs"][spec.runs[0].key]["state"] = "running"
    state["driver"] = {"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname(), "heartbeat": 0}
    (spec.root / "sweep.json").write_text(json.dumps(state))
    assert sw.status(spec)["runs"][0]["status"] == "stopped"
    ex3 = FakeExecutor()
    sw.run_sweep(spec, ex3, quiet=True, poll=0)
    assert ex3.commands == [spec.runs[0].command(spec)] and "--resume" in ex3.commands[0]


class LosingExecutor(FakeExecutor):
    """Runs ``survive`` runs, then its Ray instance 'dies' (as when Ctrl-C reaches the raylet)."""

    def __init__(self, survive: int):
        super().__init__()
        self.survive = survive

    def wait(self, handles, timeout):
        if len(self.commands) >= self.survive:
            raise sw.ExecutorLost("Ray's local instance died (test)")
        return super().wait(handles, timeout)


def test_a_dead_executor_stops_the_sweep_without_charging_retries(tmp_path, toy_demos):
    spec = sw.load_spec(_spec(tmp_path, toy_demos))
    ex = LosingExecutor(survive=1)
    with pytest.raises(sw.SweepError, match="nothing is lost: run the same command again"):
        sw.run_sweep(spec, ex, quiet=True, poll=0)
    assert len(ex.commands) == 1  # no cascade of submissions to the dead instance
    state = json.loads((spec.root / "sweep.json").read_text())
    assert state["driver"] is None
    states = [r.get("state", "pending") for r in state["runs"].values()]
    assert states.count("done") == 1 and states.count("pending") == len(spec.runs) - 1
    assert all(r["tries"] == 0 for r in state["runs"].values() if r.get("state") != "done")
    report = sw.run_sweep(spec, FakeExecutor(), quiet=True, poll=0)
    assert report["done"] == len(spec.runs) and report["failed"] == 0


def test_status_cli(tmp_path, toy_demos, capsys):
    from vmil.cli import main

    path = _spec(tmp_path, toy_demos)
    assert main(["sweep", str(path), "--status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["total"], report["pending"]) == (4, 4)


def test_sweep_on_a_local_ray_instance(tmp_path, toy_demos):
    """2 algos x 2 seeds of smoke runs on Ray (2 CPUs), again (nothing runs), then a run killed
    after its first checkpoint is resumed by the next sweep."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]'); the sweep test needs it")
    path = _spec(tmp_path, toy_demos, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                 overrides=["train.env_steps=400", "train.checkpoint_every=40", "train.eval_every=200"])
    spec = sw.load_spec(path)
    start = time.time()
    report = sw.run_sweep(spec, sw.RayExecutor(num_cpus=2), quiet=True, poll=0.5)
    assert report["done"] == 4, sw.format_status(report)
    first_wall = time.time() - start

    from vmil.compare import load_runs

    runs = load_runs(spec.tracking_uri)
    assert sorted((r["algo"], r["seed"], r["preset"], r["sweep"]) for r in runs) == [
        (a, s, "smoke", "t") for a in ("bc", "patchail") for s in (0, 1)]

    # Again: nothing new runs (no Ray instance is started).
    report = sw.run_sweep(spec, lambda: pytest.fail("nothing should run"), quiet=True)
    assert report["done"] == 4

    # Kill a run after its first checkpoint; the next sweep resumes it from there.
    victim = next(r for r in spec.runs if r.algo == "patchail" and r.seed == 1)
    import shutil

    shutil.rmtree(victim.run_dir)
    proc = subprocess.Popen(victim.command(spec), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MUJOCO_GL": "egl"})
    ckpt = Path(victim.run_dir) / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (Path(victim.run_dir) / "summary.json").exists(), "the run ended before it could be killed"
    assert sw.status(spec)["runs"][spec.runs.index(victim)]["status"] == "stopped"
    report = sw.run_sweep(spec, sw.RayExecutor(num_cpus=2), quiet=True, poll=0.5)
    assert report["done"] == 4
    state = json.loads((spec.root / "sweep.json").read_text())["runs"][victim.key]
    log = (spec.root / "logs" / f"{victim.key.replace('/', '_')}.{state['attempts']}.log").read_text()
    assert "--resume" in log.splitlines()[0]
    summary = json.loads((Path(victim.run_dir) / "summary.json").read_text())
    assert summary["env_steps"] == 400
    print(f"first sweep of 4 smoke runs on Ray: {first_wall:.1f} s")
