"""The `vmil` command in-process: every bad input is one line on stderr and a non-zero exit; the
main paths (demos, train, eval, config) print what they promise."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmil.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _fails(capsys, argv: list[str], *fragments: str) -> str:
    """Runs ``vmil argv``; asserts a non-zero exit and exactly one error line holding ``fragments``."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"vmil {' '.join(argv)} exited 0"
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("vmil") and "error" in lines[0], lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def _train(demos: Path, run_dir: Path, *extra: str, env: str = "toy:reach", algo: str = "bc") -> list[str]:
    return ["train", "--algo", algo, "--env", env, "--demos", str(demos), "--preset", "smoke",
            "--run-dir", str(run_dir), "--tracking-uri", "none", *extra]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from vmil.cli import main; rc = main(['train', '--help']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, "
            "[m for m in ('torch', 'mlflow') if m in sys.modules]")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout and "bc" in out.stdout


def test_usage_errors(capsys):
    _fails(capsys, ["trian"], "did you mean train?", "vmil --help")
    _fails(capsys, ["train", "--algo", "bc", "--env", "toy:reach"], "--demos required")
    _fails(capsys, ["demos", "record", "--env", "toy:reach", "--expert", "scripted", "--episodes", "two",
                    "--out", "x"], "invalid int value")
    _fails(capsys, ["train", "--resume", "runs/x", "--algo", "bc"], "drop --algo")


def test_unknown_env_algo_and_key(capsys, tmp_path, toy_demos):
    _fails(capsys, _train(toy_demos, tmp_path / "a", env="toy:raech"), "unknown toy task 'raech'", "toy:reach")
    _fails(capsys, _train(toy_demos, tmp_path / "b", env="dmx:cheetah_run"), "unknown env family 'dmx'", "dmc")
    _fails(capsys, _train(toy_demos, tmp_path / "c", algo="patchial"), "unknown algorithm 'patchial'", "patchail")
    _fails(capsys, _train(toy_demos, tmp_path / "d", "train.env_step=5"), "train.env_steps")
    _fails(capsys, _train(toy_demos, tmp_path / "e", "agent.lr=fast"), "agent.lr: expected a number")
    _fails(capsys, _train(toy_demos, tmp_path / "f", "--preset", "smok"), "unknown preset 'smok'")
    _fails(capsys, ["config", "show", "--algo", "bc", "train.nope=1"], "unknown config key 'train.nope'")
    assert not any((tmp_path / d).exists() for d in "abcdef"), "a failed start left a run directory"


def test_bad_demo_directories(capsys, tmp_path, toy_demos, toy_demos_obs):
    _fails(capsys, _train(tmp_path / "missing", tmp_path / "r1"), "missing: no such episode directory")
    (tmp_path / "empty").mkdir()
    _fails(capsys, _train(tmp_path / "empty", tmp_path / "r2"), "empty: no episode .npz files")

    corrupt = _copy(toy_demos, tmp_path / "corrupt")
    victim = sorted(corrupt.glob("*.npz"))[1]
    victim.write_bytes(victim.read_bytes()[:5000])
    _fails(capsys, _train(corrupt, tmp_path / "r3"), victim.name, "truncated or corrupt")

    # Demos recorded at a smaller image size than the env gives (larger ones are resized on load).
    _fails(capsys, _train(toy_demos, tmp_path / "r4", "env.image_size=84"), "frames are C,H,W=(3, 64, 64)",
           "(3, 84, 84)", "record the demos at 84x84 or larger")

    nan = _copy(toy_demos, tmp_path / "nan")
    path = sorted(nan.glob("*.npz"))[0]
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["action"][3, 0] = np.nan
    np.savez(path, **arrays)
    _fails(capsys, _train(nan, tmp_path / "r5"), path.name, "NaN")

    _fails(capsys, _train(toy_demos_obs, tmp_path / "r6"), "bc needs demos with actions", "--keep-actions")
    _fails(capsys, ["demos", "inspect", str(tmp_path / "missing")], "no such episode directory")


def test_resume_of_a_directory_without_a_run(capsys, tmp_path):
    _fails(capsys, ["train", "--resume", str(tmp_path)], "holds no vmil run")
    _fails(capsys, ["train", "--resume", str(tmp_path / "nope")], "no such run directory")
    _fails(capsys, ["eval", str(tmp_path)], "no checkpoint in this directory")


def test_demos_train_eval_round_trip(capsys, tmp_path):
    out = tmp_path / "demos"
    assert main(["demos", "record", "--env", "toy:reach", "--expert", "scripted", "--episodes", "2", "--out",
                 str(out), "--keep-actions", "--algo", "bc", "--preset", "smoke"]) == 0
    printed = capsys.readouterr().out
    assert "episodes      2" in printed and "actions       2 continuous" in printed
    _fails(capsys, ["demos", "record", "--env", "toy:reach", "--expert", "scripted", "--episodes", "1", "--out",
                    str(out)], "already holds episodes")
    assert main(["demos", "inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_episodes"] == 2 and info["has_actions"] is True and info["obs_shape"] == [3, 64, 64]

    run = tmp_path / "run"
    assert main(_train(out, run, "train.offline_updates=4", "train.eval_every=4")) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 4 and summary["algo"] == "bc" and summary["expert_return"] == info["return_mean"]
    assert "tracking off" in printed and f"vmil train --resume {run}" in printed
    assert summary["mlflow_run_id"] is None

    video = tmp_path / "eval.mp4"
    assert main(["eval", str(run), "--episodes", "2", "--video", str(video)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and result["updates"] == 4 and video.stat().st_size > 0
    assert set(result) >= {"return_mean", "return_std", "normalized_score", "expert_return"}
    assert "plan_replaced_fraction" not in result
    _fails(capsys, ["eval", str(run), "agent.lr=1.0"], "vmil eval cannot change agent.lr", "agent.behavior.plan_*")
    import imageio.v3 as iio
    frames = iio.imread(video)
    assert frames.shape[0] >= 2 and frames.shape[-1] == 3


def test_config_commands(capsys):
    assert main(["config", "show", "--algo", "bc", "--env", "toy:reach", "--preset", "smoke",
                 "train.offline_updates=9"]) == 0
    import yaml
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["offline_updates"] == 9 and shown["algo"] == "bc" and shown["env"]["id"] == "toy:reach"
    # overrides may sit on both sides of flags; a stray non-override token is still an error
    assert main(["config", "show", "train.eval_every=7", "--algo", "bc", "--env", "toy:reach",
                 "train.offline_updates=9", "--preset", "smoke", "train.log_every=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["train"]["eval_every"], shown["train"]["offline_updates"], shown["train"]["log_every"]) == (7, 9, 3)
    assert main(["config", "show", "--algo", "bc", "--preset", "smoke", "train.eval_every=7", "--env", "toy:reach",
                 "oops"]) == 1
    assert "unrecognized arguments: oops" in capsys.readouterr().err
    assert main(["config", "keys", "--algo", "bc"]) == 0
    keys = capsys.readouterr().out
    assert "train.env_steps" in keys and "agent.frame_stack" in keys


def test_envs_listing(capsys, tmp_path):
    assert main(["envs"]) == 0
    assert "toy:reach" in capsys.readouterr().out
    png = tmp_path / "frame.png"
    assert main(["envs", "show", "toy:reach", "--out", str(png)]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["obs_shape"] == [3, 64, 64] and spec["action_dim"] == 2 and png.stat().st_size > 0
    _fails(capsys, ["envs", "show", "toy:nope"], "unknown toy task")


@pytest.mark.parametrize("env_id", ["toy:reach", "dmc:cartpole_swingup", "gym:CartPole-v1", "gym:Hopper-v5",
                                    "sawyer:peg_insert", "baoding:ccw"])
def test_demos_record_takes_env_settings_from_the_training_config(env_id):
    """Without flags, `vmil demos record` records with exactly the env settings `vmil train` resolves
    (env family yaml; with --algo, the algorithm's preset too), so its demos always load in training.
    Only the config is resolved here: no env is built."""
    from vmil.cli import _env_settings_for, build_parser
    from vmil.config import resolve, resolve_env
    from vmil.registry import ALGOS, algo_module

    def settings(*extra: str) -> dict:
        args = build_parser().parse_args(["demos", "record", "--env", env_id, "--expert", "scripted",
                                          "--episodes", "1", "--out", "x", *extra])
        return _env_settings_for(args)

    def expected(env) -> dict:
        return {"image_size": env.image_size, "action_repeat": env.action_repeat, "grayscale": env.grayscale,
                "camera": env.camera or None, "fast_render": env.fast_render, "proprio": env.proprio}

    family = yaml_env(env_id)
    got = settings()
    assert got == expected(resolve_env(env_id, "cpu"))
    for key in ("action_repeat", "camera", "proprio"):
        if key in family:
            assert got[key] == family[key], (key, got)
    for algo in sorted(ALGOS):
        for preset in ("smoke", "paper"):
            env = resolve(algo, algo_module(algo).Config, env_id, preset).env
            assert settings("--algo", algo, "--preset", preset) == expected(env), (algo, preset)
    flagged = settings("--algo", "vmil", "--image-size", "32", "--action-repeat", "3", "--camera", "1",
                       "--no-proprio", "--grayscale")
    assert flagged == {**expected(resolve("vmil", algo_module("vmil").Config, env_id).env), "image_size": 32,
                       "action_repeat": 3, "camera": "1", "proprio": False, "grayscale": True}


def yaml_env(env_id: str) -> dict:
    import yaml

    from vmil.config import configs_root

    data = yaml.safe_load((configs_root() / "env" / f"{env_id.split(':')[0]}.yaml").read_text())
    return data["defaults"]["env"]


def test_recorded_demos_fit_training_without_flags(capsys, tmp_path):
    """gym's family yaml says action repeat 1 (its SAC experts were trained at 1): demos recorded
    without --algo or flags carry it, and BC trains on them."""
    demos = tmp_path / "demos"
    assert main(["demos", "record", "--env", "gym:CartPole-v1", "--expert", "scripted", "--episodes", "2",
                 "--out", str(demos), "--keep-actions", "--max-episode-steps", "6"]) == 0
    capsys.readouterr()
    assert main(["demos", "inspect", str(demos), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["action_repeat"] == 1 and info["obs_shape"] == [3, 64, 64] and info["state_dim"] == 0
    assert main(_train(demos, tmp_path / "run", "train.offline_updates=2", "train.eval_every=2",
                       env="gym:CartPole-v1")) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["updates"] == 2


def test_demos_record_proprio_flag(capsys, tmp_path):
    demos = tmp_path / "demos"
    assert main(["demos", "record", "--env", "toy:reach", "--expert", "scripted", "--episodes", "1",
                 "--out", str(demos), "--proprio"]) == 0
    capsys.readouterr()
    assert main(["demos", "inspect", str(demos), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state_dim"] == 2


def test_demos_record_expert_options(capsys, tmp_path):
    out = str(tmp_path / "demos")
    base = ["demos", "record", "--env", "toy:reach", "--episodes", "1", "--out", out]
    _fails(capsys, [*base, "--expert", "scripted", "samples=8"], "expert scripted takes no options")
    _fails(capsys, [*base, "--expert", "mpc", "sampels=8"], "unknown mpc expert option 'sampels'",
           "did you mean samples?", "horizon=10")
    _fails(capsys, [*base, "--expert", "mpc", "samples=8.5"], "samples must be an integer")
    _fails(capsys, [*base, "--expert", "mpc", "model.samples=8"], "plain key=value")
    # Valid options pass the checks and reach the expert factory, which toy does not have.
    _fails(capsys, [*base, "--expert", "mpc", "samples=8", "horizon=3"], "has no mpc expert")
    assert not Path(out).exists() or not any(Path(out).glob("*.npz"))


def test_bench_env_flags(capsys):
    assert main(["bench", "env", "--env", "toy:reach", "--image-size", "16", "--steps", "2", "--workers", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["env_id"] == "toy:reach" and out["settings"]["image_size"] == 16
    assert out["settings"]["steps"] == 2 and out["settings"]["workers"] == 1
    assert out["fps_fast_1workers"] > 0 and "fps_fast_2workers" not in out
    _fails(capsys, ["bench", "replay", "--workers", "2"], "--workers does not apply")
    _fails(capsys, ["bench", "patchail", "--expert-batch", "2"], "--expert-batch does not apply")


def test_bench_vmil_batch_counts_world_model_sequences(capsys):
    assert main(["bench", "vmil", "--preset", "smoke", "--batch", "4", "--expert-batch", "1", "--seq", "4",
                 "--updates", "1", "--image-size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["batch"], out["agent_batch"], out["expert_batch"], out["seq"]) == (4, 3, 1, 4)


def test_demos_record_help_lists_the_mpc_options(capsys):
    from vmil.experts import expert_option_defaults

    assert main(["demos", "record", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for key, default in expert_option_defaults("mpc").items():
        shown = f"{default:g}" if isinstance(default, float) else default
        assert f"{key}={shown}" in text, (key, default)


def test_envs_show_uses_the_family_config(capsys):
    assert main(["envs", "show", "gym:CartPole-v1"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["action_repeat"] == 1 and spec["obs_shape"] == [3, 64, 64]  # gym.yaml: action_repeat 1
    assert main(["envs", "show", "gym:CartPole-v1", "--action-repeat", "3", "--image-size", "32"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["action_repeat"] == 3 and spec["obs_shape"] == [3, 32, 32]
