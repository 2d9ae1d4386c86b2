"""The ``vmil`` command. Heavy modules (torch, mlflow, MuJoCo) are imported inside the handlers, so
``vmil --help`` and argument errors answer at once.

Every error vmil raises on purpose (bad ids, keys, files, runs) is printed as one line
``vmil: error: ...`` with a non-zero exit; ``vmil --debug ...`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

PROJECT_PACKAGES = ("vmil", "imitation", "world_model", "configs")
# Built-in error types count as the user's mistake only when raised by project code itself.
_RAISED_ON_PURPOSE = (ValueError, RuntimeError, ImportError, OSError, TypeError)


class UsageError(Exception):
    """A command line that cannot be parsed or does not fit together; printed as
    ``<prog>: error: <message>``."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{prog}: error: {message}")


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line instead of printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2))
            near = difflib.get_close_matches(match.group(1), choices, n=1)
            message = (f"unknown choice '{match.group(1)}'" + (f"; did you mean {near[0]}?" if near else "")
                       + f" (valid: {', '.join(choices)})")
        raise UsageError(self.prog, f"{message} (see `{self.prog} --help`)")


def _project_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PROJECT_PACKAGES


def is_user_error(err: BaseException) -> bool:
    """Errors that vmil raises on purpose with a message meant for the user."""
    if isinstance(err, UsageError):
        return True
    if _project_module(type(err).__module__) and isinstance(err, Exception):
        return True
    if isinstance(err, _RAISED_ON_PURPOSE):
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and _project_module(tb.tb_frame.f_globals.get("__name__"))
    return False


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# ---------------------------------------------------------------------------------------------
# Handlers


def cmd_envs(args: argparse.Namespace) -> int:
    from vmil import envs

    families = envs.list_families()
    for family, info in families.items():
        if args.family and family != args.family:
            continue
        if info["available"]:
            ids = envs.list_ids(family)
            print(f"{family} ({len(ids)} tasks)")
            for env_id in ids:
                print(f"  {env_id}")
        else:
            print(f"{family}: unavailable ({info['reason']})")
    if args.family and args.family not in families:
        envs.family_module(args.family)  # raises with the valid names
    return 0


def cmd_envs_show(args: argparse.Namespace) -> int:
    from vmil import envs
    from vmil.config import resolve_env

    envs.split_id(args.env_id)  # a malformed id is answered before the config lookup
    cfg = resolve_env(args.env_id)  # the family's settings, as training and recording use them
    kwargs = {"image_size": args.image_size or cfg.image_size,
              "action_repeat": args.action_repeat or cfg.action_repeat, "camera": args.camera or cfg.camera or None,
              "proprio": cfg.proprio}
    _print_json(envs.describe(args.env_id, **kwargs))
    if args.out:
        import imageio.v3 as iio

        from vmil.evaluate import to_video_frame

        env = envs.make(args.env_id, **kwargs)
        try:
            frame = to_video_frame(env.reset().obs, min_size=kwargs["image_size"])  # the true size
        finally:
            env.close()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(args.out, frame)
        print(f"frame written to {args.out}", file=sys.stderr)
    return 0


def _env_settings_for(args: argparse.Namespace) -> dict[str, Any]:
    """The env settings demos are recorded with: the same resolution as `vmil train` (size preset,
    the algorithm's layer with ``--algo``, then ``configs/env/<family>.yaml``), then the flags given.
    So demos recorded without flags always fit the runs that will use them (e.g. baoding's and
    gym's action repeat 1, baoding's proprioception)."""
    from vmil.config import resolve, resolve_env
    from vmil.registry import algo_module

    if args.algo:
        env = resolve(args.algo, algo_module(args.algo).Config, args.env, args.preset).env
    else:
        env = resolve_env(args.env, args.preset)
    settings: dict[str, Any] = {"image_size": env.image_size, "action_repeat": env.action_repeat,
                                "grayscale": env.grayscale, "camera": env.camera or None,
                                "fast_render": env.fast_render, "proprio": env.proprio}
    if not args.algo:
        # Without --algo, demos serve every algorithm: the largest image size any of them resolves to
        # (smaller runs resize on load), in colour unless every one of them is grayscale.
        from vmil.demos import serving_env_settings

        settings.update(serving_env_settings(args.env, args.preset))
    for key in ("image_size", "action_repeat", "camera", "proprio"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.grayscale:
        settings["grayscale"] = True
    return settings


def _expert_options(args: argparse.Namespace) -> dict[str, Any]:
    from vmil.config import merge, parse_override
    from vmil.experts import check_expert_options

    options: dict[str, Any] = {}
    for text in args.expert_options:
        if "." in text.split("=", 1)[0]:
            raise UsageError("vmil demos record", f"expert option '{text}' must be a plain key=value, e.g. samples=200")
        options = merge(options, parse_override(text))
    return check_expert_options(args.expert, options)


def cmd_demos_record(args: argparse.Namespace) -> int:
    from vmil.data.episode import format_demo_info
    from vmil.demos import record

    options = _expert_options(args)  # checked before any env is built
    info = record(args.env, args.expert, args.episodes, args.out, keep_actions=args.keep_actions,
                  seed=args.seed, max_episode_steps=args.max_episode_steps, expert_options=options,
                  **_env_settings_for(args))
    print(format_demo_info(info))
    return 0


def cmd_demos_inspect(args: argparse.Namespace) -> int:
    import dataclasses

    from vmil.data.episode import format_demo_info
    from vmil.demos import inspect

    info = inspect(args.dir)
    if args.json:
        _print_json(dataclasses.asdict(info))
    else:
        print(format_demo_info(info))
    return 0


def cmd_demos_convert(args: argparse.Namespace) -> int:
    from vmil.data.episode import format_demo_info
    from vmil.demos import convert

    print(format_demo_info(convert(args.dir, args.out, args.image_size, grayscale=args.grayscale)))
    return 0


def cmd_expert_train(args: argparse.Namespace) -> int:
    from vmil.config import from_dict, merge, parse_override
    from vmil.experts import sac
    from vmil.tracking import make_tracker

    data: dict[str, Any] = {}
    for text in args.overrides:
        data = merge(data, parse_override(text))
    cfg = from_dict(sac.SACConfig, data)
    tracker = make_tracker(args.tracking_uri, "vmil-experts", run_name=f"sac-{args.env}-s{args.seed}")
    status = "FAILED"
    try:
        path = sac.train(args.env, args.steps, args.out, seed=args.seed, action_repeat=args.action_repeat,
                         eval_every=args.eval_every, device=args.device, cfg=cfg, tracker=tracker)
        status = "FINISHED"
    finally:
        tracker.close(status)
    print(f"expert checkpoint: {path}  (record demos: vmil demos record --env {args.env} --expert {path} "
          f"--episodes 10 --out demos/NAME)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vmil.runner import build_run, resume_run

    import os

    if args.learners != 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from vmil.rl.onpolicy import cli_train_learners  # gradient averaging over learners (torch.distributed)

        return cli_train_learners(args, _print_json)

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in ("algo", "env", "demos", "preset", "seed", "run_dir", "tracking_uri")
                 if getattr(args, k) is not None] + (["--tag"] if args.tag else [])
        if given:
            raise UsageError("vmil train", f"--resume continues a run with its saved settings; drop "
                                           f"{', '.join(given)} (only train.* overrides may change)")
        runner = resume_run(args.resume, args.overrides)
    else:
        from vmil.registry import algo_module

        needs_demos = args.algo is None or getattr(algo_module(args.algo), "NEEDS_DEMOS", True)
        missing = [f"--{k}" for k in ("algo", "env", "demos") if getattr(args, k) is None
                   and (k != "demos" or needs_demos)]
        if missing:
            raise UsageError("vmil train", f"{', '.join(missing)} required (or --resume RUN_DIR) "
                                           "(see `vmil train --help`)")
        from vmil.config import resolve

        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = resolve(args.algo, algo_module(args.algo).Config, args.env, args.preset or "cpu", overrides)
        tags = {"preset": args.preset or "cpu"}
        for text in args.tag:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise UsageError("vmil train", f"--tag '{text}' must be KEY=VALUE, e.g. --tag sweep=dmc-5seeds")
            tags[key] = value
        runner = build_run(cfg, args.demos, args.run_dir, args.tracking_uri or "sqlite:///mlflow.db", tags=tags)
    try:
        summary = runner.run()
    finally:
        runner.close()
    _print_json(summary)
    run_dir = runner.run_dir
    print(f"run directory: {run_dir}  (resume: vmil train --resume {run_dir}; evaluate: vmil eval {run_dir})")
    uri = getattr(runner.tracker, "uri", None)
    if uri:
        print(f"MLflow run id: {summary['mlflow_run_id']}")
        print(f"browse it: mlflow ui --backend-store-uri {uri}")
    else:
        print("tracking off (--tracking-uri none): metrics were not stored")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from vmil import sweep

    spec = sweep.load_spec(args.spec, check_demos=not (args.status or args.dry_run))
    if args.status or args.dry_run:
        report = sweep.status(spec)
        if args.dry_run:
            for row, run in zip(report["runs"], spec.runs):
                row["command"] = " ".join(run.command(spec))
        if args.json:
            _print_json(report)
        else:
            print(sweep.format_status(report))
            if args.dry_run:
                for row in report["runs"]:
                    print(f"  {row['command']}")
        return 0
    if args.no_ray:
        if args.address:
            raise UsageError("vmil sweep", "--address needs Ray; drop --no-ray")
        executor = sweep.LocalExecutor
    else:
        executor = lambda: sweep.RayExecutor(args.address, args.cpus)  # noqa: E731  (started only when needed)
    start = time.time()
    report = sweep.run_sweep(spec, executor)
    report["wall_seconds"] = round(time.time() - start, 1)
    if args.json:
        _print_json(report)
    else:
        print(sweep.format_status(report))
        hint = (f"; compare them: vmil compare --sweep {spec.name} --tracking-uri {spec.tracking_uri} "
                f"--out {spec.root / 'compare'}") if spec.tracking_uri != "none" else ""
        print(f"wall time {report['wall_seconds']:.0f} s{hint}")
    return 1 if report["failed"] else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vmil.evaluate import evaluate_checkpoint

    _print_json(evaluate_checkpoint(args.path, args.episodes, video=args.video, device=args.device, seed=args.seed,
                                    overrides=args.overrides))
    return 0


# Flags each benchmark accepts (flag -> keyword); only flags given on the command line are passed,
# so every benchmark keeps its own defaults.
BENCH_FLAGS = {
    "env": {"env": "env_id", "image_size": "image_size", "steps": "steps", "workers": "workers"},
    "replay": {"device": "device", "image_size": "image_size"},
    "vmil": {"preset": "preset", "batch": "batch", "expert_batch": "expert_batch", "seq": "seq", "device": "device",
             "threads": "threads", "updates": "updates", "amp": "amp", "compile": "compile",
             "image_size": "image_size", "heap": "heap", "dense": "dense"},
    "patchail": {"algo": "algo", "batch": "batch", "device": "device", "threads": "threads",
                 "image_size": "image_size", "updates": "updates"},
    "rm": {"algo": "algo", "device": "device", "threads": "threads", "image_size": "image_size", "updates": "updates"},
}


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    flags = BENCH_FLAGS[args.what]
    extra = sorted(f"--{k.replace('_', '-')}" for k in {k for f in BENCH_FLAGS.values() for k in f} - set(flags)
                   if getattr(args, k) is not None)
    if extra:
        raise UsageError(f"vmil bench {args.what}", f"{', '.join(extra)} does not apply "
                         f"(it takes {', '.join('--' + k.replace('_', '-') for k in flags)})")
    kwargs = {kw: getattr(args, flag) for flag, kw in flags.items() if getattr(args, flag) is not None}
    module = importlib.import_module(f"vmil.bench.{args.what}")
    _print_json(getattr(module, f"bench_{args.what}")(**kwargs))
    return 0


def cmd_viz_patch_rewards(args: argparse.Namespace) -> int:
    from imitation.viz import patch_reward_cli

    result = patch_reward_cli(args.run_dir, args.demos, args.out)
    if result is not None:
        print(result)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from vmil.config import resolve, to_dict
    from vmil.registry import algo_module

    cfg = resolve(args.algo, algo_module(args.algo).Config, args.env, args.preset, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    from vmil.config import RunConfig, describe
    from vmil.registry import algo_module

    rows = [r for r in describe(RunConfig) if r[0] != "agent"]
    if args.algo:
        rows += describe(algo_module(args.algo).Config, "agent.")
    width = max(len(r[0]) for r in rows)
    for key, tp, default, text in rows:
        print(f"{key:<{width}}  {tp:<8} {default!r:<14} {text}")
    return 0


def _csv(values: list[str] | None) -> list[str] | None:
    return [v for text in values for v in text.split(",") if v] if values else None


def cmd_compare(args: argparse.Namespace) -> int:
    from vmil import stats
    from vmil.compare import filter_runs, learning_curves, load_runs, log_report

    try:
        budgets = tuple(int(float(b)) for b in args.budgets.split(",") if b)
    except ValueError:
        raise UsageError("vmil compare", f"--budgets '{args.budgets}' must be step counts, e.g. 10000,50000,100000")
    key = stats.metric_key(args.metric)
    runs = load_runs(args.tracking_uri, args.experiment, finished_only=not args.include_unfinished)
    runs = filter_runs(runs, envs=_csv(args.env), algos=_csv(args.algo), presets=_csv(args.preset), sweep=args.sweep)
    if not runs:
        raise stats.StatsError(f"no {'' if args.include_unfinished else 'finished '}training runs in experiment "
                               f"'{args.experiment}' at {args.tracking_uri}")
    curves = learning_curves(runs, args.tracking_uri, key)
    result = stats.compare(runs, curves, metric=args.metric, budgets=budgets, reps=args.reps, seed=args.seed,
                           improvement_of=args.improvement_of)
    if args.out:
        files = stats.write_report(result, args.out)
        note = f"compare: wrote {', '.join(p.name for p in files)} to {args.out}"
        if not args.no_mlflow:
            tags = {"metric": key, **({"sweep": args.sweep} if args.sweep else {})}
            run_id = log_report(args.tracking_uri, files, tags)
            note += f"; MLflow run {run_id} (experiment vmil-comparisons) holds them"
        print(note, file=sys.stderr)
    if args.ccdf:  # Relational Mimic's evaluation: CCDF of final returns over seeds, and its area
        from vmil.compare import ccdf_rows, format_ccdf, plot_ccdf

        result["ccdf"] = ccdf_rows(runs, stats.metric_key("return"))
        path = Path(args.out or ".") / "ccdf.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_ccdf(result["ccdf"]).savefig(path, dpi=120)
        print(f"compare: CCDF plot written to {path}", file=sys.stderr)
    if args.json:
        _print_json(result)
    else:
        print(stats.format_comparison(result))
        if args.ccdf:
            print(format_ccdf(result["ccdf"]))
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def build_parser() -> Parser:
    from vmil import __version__
    from vmil.registry import ALGOS

    algos = ", ".join(sorted(ALGOS))
    p = Parser(prog="vmil", description="Visual imitation learning from observation: demos, training, "
                                         "evaluation, benchmarks.")
    p.add_argument("--version", action="version", version=f"vmil {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    s = sub.add_parser("envs", help="list env families and ids")
    s.add_argument("--family", help="only this family")
    s.set_defaults(fn=cmd_envs)
    envs_sub = s.add_subparsers(dest="envs_command", metavar="{show}", parser_class=Parser)
    e = envs_sub.add_parser("show", help="an env's specs (JSON), optionally a frame as PNG")
    e.add_argument("env_id", metavar="ID")
    e.add_argument("--image-size", type=int, default=None, help="default: the env family's config (64)")
    e.add_argument("--action-repeat", type=int, default=None, help="default: the env family's config")
    e.add_argument("--camera", default=None, help="default: the env family's config")
    e.add_argument("--out", help="write the first frame to this PNG")
    e.set_defaults(fn=cmd_envs_show)

    s = sub.add_parser("demos", help="record and inspect expert demonstrations")
    demos = s.add_subparsers(dest="demos_command", metavar="{record,convert,inspect}", parser_class=Parser, required=True)
    r = demos.add_parser("record", help="record expert episodes (observation-only unless --keep-actions)",
                         description="Env settings (image size, action repeat, camera, grayscale, proprio) "
                                     "come from the same config resolution as `vmil train` (configs/env/"
                                     "<family>.yaml; with --algo, that algorithm's preset too); flags win.")
    r.add_argument("--env", required=True, help="env id, e.g. dmc:cartpole_swingup")
    r.add_argument("--expert", required=True, help="scripted, mpc, or a SAC checkpoint path")
    r.add_argument("--episodes", type=int, required=True)
    r.add_argument("--out", required=True, help="output directory (one .npz per episode)")
    actions = r.add_mutually_exclusive_group()
    actions.add_argument("--keep-actions", action="store_true", help="store the expert's actions (BC, BCO)")
    actions.add_argument("--no-actions", dest="keep_actions", action="store_false",
                         help="observation-only demos (the default)")
    r.add_argument("--algo", help="take the env settings from this algorithm's resolved config (e.g. "
                                  "image size 64 for vmil, 84 for patchail), as `vmil train --algo` will; "
                                  "default: settings that serve every algorithm (the largest image size, "
                                  "resized on load for the others)")
    r.add_argument("--preset", default="cpu", help="preset whose env settings to use (default: cpu)")
    r.add_argument("--image-size", type=int, default=None, help="square frame size (default: the config's)")
    r.add_argument("--action-repeat", type=int, default=None, help="default: the config's (env family yaml)")
    r.add_argument("--camera", default=None, help="default: the config's")
    r.add_argument("--grayscale", action="store_true", default=False, help="default: the config's")
    r.add_argument("--proprio", action=argparse.BooleanOptionalAction, default=None,
                   help="store proprioceptive state (default: the config's env.proprio; on for baoding)")
    r.add_argument("--max-episode-steps", type=int, default=0, help="0: the env's default")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("expert_options", nargs="*", metavar="key=value",
                   help="expert options; --expert mpc takes horizon=10 (control steps) samples=100 kappa=20 "
                        "sigma=0.9 beta=0.6 threads=1 seed=0 timestep=0.005 (planning physics step; null: "
                        "the env's). Cost per step grows with samples x horizon")
    r.set_defaults(fn=cmd_demos_record)
    cv = demos.add_parser("convert", help="write demos at a smaller image size (area interpolation) and/or "
                                          "in grayscale, as loading does on the fly")
    cv.add_argument("dir")
    cv.add_argument("--image-size", type=int, required=True, help="square frame size (<= the demos' size)")
    cv.add_argument("--grayscale", action="store_true", help="one luminance channel")
    cv.add_argument("--out", required=True, help="new directory for the converted episodes")
    cv.set_defaults(fn=cmd_demos_convert)
    i = demos.add_parser("inspect", help="episodes, lengths, returns, shapes, actions, metadata")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_demos_inspect)

    s = sub.add_parser("expert", help="train state-based experts")
    expert = s.add_subparsers(dest="expert_command", metavar="{train}", parser_class=Parser, required=True)
    t = expert.add_parser("train", help="train a SAC expert on low-dimensional state (renders nothing); "
                                        "run it again with the same --out to resume")
    t.add_argument("--env", required=True)
    t.add_argument("--out", required=True, help="directory for the expert's checkpoint (expert.pt) and log")
    t.add_argument("--steps", type=int, default=500_000, help="agent steps (default 500000)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--action-repeat", type=int, default=None, help="default: the env family's usual one")
    t.add_argument("--eval-every", type=int, default=10_000)
    t.add_argument("--device", default="auto")
    t.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow store ('none': no tracking)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="SAC config overrides, e.g. lr=1e-4")
    t.set_defaults(fn=cmd_expert_train)

    t = sub.add_parser("train", help="train an imitation agent", description=f"Algorithms: {algos}.")
    t.add_argument("--algo", help=f"one of: {algos}")
    t.add_argument("--env", help="env id, e.g. dmc:cartpole_swingup (see `vmil envs`)")
    t.add_argument("--demos", help="demo directory (see `vmil demos record`)")
    t.add_argument("--preset", help="smoke, cpu (default) or paper")
    t.add_argument("--seed", type=int)
    t.add_argument("--run-dir", help="default: runs/<algo>-<env>-s<seed>-<time>")
    t.add_argument("--tracking-uri", help="MLflow store (default sqlite:///mlflow.db; 'none': no tracking)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run")
    t.add_argument("--learners", type=int, default=1,
                   help="on-policy algorithms (ppo, gail, gaifo, rm*): N learner processes with seeds seed..seed+N-1 "
                        "averaging their gradients at every update (torch.distributed; or launch with torchrun)")
    t.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="extra MLflow tag (repeatable); the preset is tagged always")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.env_steps=5000")
    t.set_defaults(fn=cmd_train)

    w = sub.add_parser("sweep", help="run a grid of training runs (algos x envs x presets x seeds) on Ray",
                       description="Runs every run of SPEC that is not done: new ones start, killed ones resume "
                                   "(vmil train --resume), failed ones are retried. Run it again at any time; "
                                   "the spec format is in vmil/sweep.py and the README.")
    w.add_argument("spec", metavar="SPEC.yaml")
    w.add_argument("--address", default=None, help="Ray cluster: auto, or ray://HOST:PORT (default: a local instance)")
    w.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all cores)")
    w.add_argument("--no-ray", action="store_true", help="run one at a time without Ray")
    w.add_argument("--status", action="store_true", help="print done / running / failed / stopped / pending and exit")
    w.add_argument("--dry-run", action="store_true", help="check the spec, print the runs and their commands")
    w.add_argument("--json", action="store_true")
    w.set_defaults(fn=cmd_sweep)

    v = sub.add_parser("eval", help="evaluate a run's last checkpoint with the deterministic policy")
    v.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    v.add_argument("--episodes", type=int, default=10)
    v.add_argument("--video", help="write the first episode to this .mp4")
    v.add_argument("--device", default="cpu")
    v.add_argument("--seed", type=int, default=None, help="env seed (default: one training never used)")
    v.add_argument("overrides", nargs="*", metavar="key=value",
                   help="acting settings only, e.g. agent.behavior.plan_candidates=64 (decision-time planning)")
    v.set_defaults(fn=cmd_eval)

    b = sub.add_parser("bench", help="timings (JSON on stdout)",
                       description="env: frames/s with default vs fast rendering and 2 workers; replay: bytes "
                                   "per frame and batches/s; vmil / patchail: update time and FLOP/s.")
    b.add_argument("what", choices=("env", "replay", "vmil", "patchail", "rm"))
    b.add_argument("--env", default=None, help="env: env id (default dmc:cheetah_run)")
    b.add_argument("--image-size", type=int, default=None,
                   help="env (default 84), replay, patchail, vmil (default: the preset's, 64)")
    b.add_argument("--steps", type=int, default=None, help="env: agent steps to time (default 300)")
    b.add_argument("--workers", type=int, default=None,
                   help="env: worker processes of the vectorised measurement (default 2, one env each)")
    b.add_argument("--preset", default=None, help="vmil: model size preset (default paper)")
    b.add_argument("--batch", type=int, default=None,
                   help="vmil: sequences in the world model's batch, agent + expert (default 16); patchail: batch size")
    b.add_argument("--expert-batch", type=int, default=None,
                   help="vmil: how many of the --batch world-model sequences are expert ones (default half)")
    b.add_argument("--seq", type=int, default=None, help="vmil: sequence length")
    b.add_argument("--algo", default=None, help="patchail: which variant (default patchail); rm: which RM "
                                                "configuration or gaifo / gail / ppo (default rm-nl-nl)")
    b.add_argument("--updates", type=int, default=None, help="vmil, patchail: timed updates")
    b.add_argument("--device", default=None, help="replay, vmil, patchail: cpu or cuda")
    b.add_argument("--threads", type=int, default=None, help="vmil, patchail: torch CPU threads")
    b.add_argument("--amp", default=None, choices=("none", "bf16"), help="vmil: bf16 autocast (GPU)")
    b.add_argument("--compile", action="store_true", default=None, help="vmil: torch.compile the update (GPU)")
    b.add_argument("--heap", default=None, choices=("retain", "default", "compare"),
                   help="vmil: reuse freed host memory as training does (retain, the default), leave the C "
                        "library's default, or time both in one process (compare)")
    b.add_argument("--dense", default=None, choices=("auto", "onednn", "blas", "compare"),
                   help="vmil: large dense layers as training does by default (auto: the BLAS on Intel CPUs, "
                        "oneDNN elsewhere), on oneDNN, on torch's BLAS, or time both in one process (compare)")
    b.set_defaults(fn=cmd_bench)

    z = sub.add_parser("viz", help="visualisations")
    viz = z.add_subparsers(dest="viz_command", metavar="{patch-rewards}", parser_class=Parser, required=True)
    pr = viz.add_parser("patch-rewards", help="patch-reward maps of a PatchAIL run on expert frames")
    pr.add_argument("run_dir")
    pr.add_argument("--demos", required=True)
    pr.add_argument("--out", required=True, help=".mp4 or .png")
    pr.set_defaults(fn=cmd_viz_patch_rewards)

    c = sub.add_parser("config", help="resolved configs and the keys they accept")
    config = c.add_subparsers(dest="config_command", metavar="{show,keys}", parser_class=Parser, required=True)
    cs = config.add_parser("show", help="print the resolved config as YAML")
    cs.add_argument("--algo", required=True)
    cs.add_argument("--env", default=None)
    cs.add_argument("--preset", default="cpu")
    cs.add_argument("overrides", nargs="*", metavar="key=value")
    cs.set_defaults(fn=cmd_config_show)
    ck = config.add_parser("keys", help="every config key with its type, default and meaning")
    ck.add_argument("--algo", default=None, help="also list this algorithm's agent.* keys")
    ck.set_defaults(fn=cmd_config_keys)

    m = sub.add_parser("compare", help="statistics of the methods' final scores from MLflow (IQM / mean / median "
                                       "with bootstrap CIs, aggregates, profiles, sample efficiency)",
                       description="Runs are grouped by (env, algo, preset, budget); runs of different presets or "
                                   "step budgets are never pooled. Statistics as in Agarwal et al. 2021 (rliable): "
                                   "stratified-bootstrap 95%% CIs.")
    m.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    m.add_argument("--experiment", default="vmil")
    m.add_argument("--env", action="append", help="only these envs (repeatable or comma-separated)")
    m.add_argument("--algo", action="append", help="only these algorithms (repeatable or comma-separated)")
    m.add_argument("--preset", action="append", help="only these presets (repeatable or comma-separated)")
    m.add_argument("--sweep", default=None, help="only the runs of this sweep (`vmil sweep`'s name)")
    m.add_argument("--metric", default="score", help="score (normalised by the demos' return; default) or return")
    m.add_argument("--budgets", default="10000,50000,100000",
                   help="step budgets for the sample-efficiency table (default 10000,50000,100000)")
    m.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    m.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    m.add_argument("--improvement-of", default=None,
                   help="the algorithm whose probability of improvement over each other one is reported "
                        "(default: vmil when present)")
    m.add_argument("--include-unfinished", action="store_true", help="also killed / failed / running runs")
    m.add_argument("--out", default=None, help="write compare.json and PNG figures here (and attach them to an "
                                               "MLflow run in the experiment vmil-comparisons)")
    m.add_argument("--no-mlflow", action="store_true", help="with --out: do not log the report to MLflow")
    m.add_argument("--json", action="store_true", help="print the whole result as JSON")
    m.add_argument("--ccdf", action="store_true",
                   help="also the complementary CDF of final returns over seeds per method and its area "
                        "(`ccdf` in the JSON, with `ccdf_area`), plotted to ccdf.png (in --out, else here)")
    m.set_defaults(fn=cmd_compare)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        # key=value overrides may sit between flags (`train k=v --run-dir D k2=v2`); argparse stops a
        # positional list at the first flag, so collect the stragglers here.
        args, extra = parser.parse_known_args(argv)
        if extra:
            if isinstance(getattr(args, "overrides", None), list) and all(
                    "=" in tok and not tok.startswith("-") for tok in extra):
                args.overrides = args.overrides + extra
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            build_parser().print_help()
            return 2
        return int(args.fn(args) or 0)
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0) if isinstance(exit_.code, int) or exit_.code is None else 1
    except KeyboardInterrupt:
        print("vmil: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        message = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
        print(message if isinstance(err, UsageError) else f"vmil: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
