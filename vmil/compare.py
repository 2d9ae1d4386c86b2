"""Method comparison from MLflow: final scores per (env, algorithm) over seeds, and learning curves.

Used by ``vmil compare`` and ``notebooks/compare_methods.ipynb``. Runs are found by the tags the
runner sets (``algo``, ``env``, ``seed``); the final score of a run is its last logged
``eval/return_mean`` (and ``eval/normalized_score`` when the demos' return is positive).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from vmil.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, TrackingError

RETURN = "eval/return_mean"
SCORE = "eval/normalized_score"


def _client(uri: str):
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise TrackingError(f"no MLflow store at {uri} (the file does not exist); train something first "
                            "or pass --tracking-uri")

    return MlflowClient(tracking_uri=uri)


def load_runs(uri: str = DEFAULT_URI, experiment: str = DEFAULT_EXPERIMENT,
              finished_only: bool = False) -> list[dict[str, Any]]:
    """One dict per run of ``experiment``: run_id, algo, env, seed, status, and its latest metrics."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no MLflow experiment '{experiment}' at {uri}; train something first "
                            "(`vmil train ...`) or pass --tracking-uri/--experiment")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for run in runs:
        tags = run.data.tags
        if "algo" not in tags or "env" not in tags:
            continue  # not a vmil training run (e.g. an expert)
        if finished_only and run.info.status != "FINISHED":
            continue
        metrics = dict(run.data.metrics)
        preset, budget, unit = run_setting(tags, dict(run.data.params), metrics)
        out.append({"run_id": run.info.run_id, "algo": tags["algo"], "env": tags["env"],
                    "seed": int(tags.get("seed", -1)), "status": run.info.status,
                    "start_time": run.info.start_time, "metrics": metrics,
                    "preset": preset, "budget": budget, "budget_unit": unit, "sweep": tags.get("sweep")})
    return sorted(out, key=lambda r: (r["env"], r["algo"], r["seed"], r["start_time"]))


def _size_presets() -> dict[str, dict[str, Any]]:
    """configs/size/<preset>.yaml, flattened: what tells the presets apart in a run's params."""
    import yaml

    from vmil.config import configs_root, flatten

    root = configs_root() / "size"
    return {path.stem: flatten(yaml.safe_load(path.read_text()) or {}) for path in sorted(root.glob("*.yaml"))}


def run_setting(tags: dict[str, str], params: dict[str, str], metrics: dict[str, float]) -> tuple[str, int, str]:
    """(preset, budget, budget unit) of a run: from the tags the runner sets; for runs logged before
    those tags, the budget from the params and the preset whose size file the params match best
    ("?" when none matches more than half its keys), marked with a trailing "?"."""
    if "budget" in tags:
        budget, unit = int(float(tags["budget"])), tags.get("budget_unit", "env_steps")
    elif metrics.get("env_steps", 0) > 0 or float(params.get("train.offline_updates", 0) or 0) == 0:
        budget, unit = int(float(params.get("train.env_steps", 0) or 0)), "env_steps"
    else:
        budget, unit = int(float(params.get("train.offline_updates", 0) or 0)), "updates"
    if "preset" in tags:
        return tags["preset"], budget, unit
    best, best_hits = "?", 0.0
    for name, keys in _size_presets().items():
        hits = sum(str(params.get(k)) == str(v) for k, v in keys.items()) / max(len(keys), 1)
        if hits > 0.5 and hits > best_hits:
            best, best_hits = f"{name}?", hits
    return best, budget, unit


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def summarize(runs: list[dict[str, Any]], env: str | None = None) -> list[dict[str, Any]]:
    """Per (env, algo, preset, budget) (never pooling presets or budgets): seeds, final eval return
    mean/std over seeds, normalised score mean/std. `vmil compare` reports intervals (vmil.stats)."""
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if env is None or run["env"] == env:
            groups[(run["env"], run["algo"], str(run.get("preset", "?")), int(run.get("budget", 0)))].append(run)
    rows = []
    for (env_id, algo, preset, budget), members in sorted(groups.items()):
        ret_mean, ret_std = _mean_std([r["metrics"].get(RETURN) for r in members])
        score_mean, score_std = _mean_std([r["metrics"].get(SCORE) for r in members])
        rows.append({"env": env_id, "algo": algo, "preset": preset, "budget": budget, "runs": len(members),
                     "seeds": sorted({r["seed"] for r in members}),
                     "return_mean": ret_mean, "return_std": ret_std,
                     "score_mean": score_mean, "score_std": score_std,
                     "env_steps": max((r["metrics"].get("env_steps", 0) for r in members), default=0)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs"

    def fmt(mean: float | None, std: float | None, digits: int) -> str:
        return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"

    table = [("env", "algo", "preset", "budget", "runs", "final return", "normalised score")]
    table += [(r["env"], r["algo"], str(r.get("preset", "?")), str(r.get("budget", "?")), str(r["runs"]),
               fmt(r["return_mean"], r["return_std"], 1),
               fmt(r["score_mean"], r["score_std"], 2)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def learning_curves(runs: list[dict[str, Any]], uri: str = DEFAULT_URI,
                    key: str = RETURN) -> dict[str, list[tuple[int, float]]]:
    """run_id -> [(step, value)] of one metric."""
    client = _client(uri)
    return {r["run_id"]: [(m.step, m.value) for m in sorted(client.get_metric_history(r["run_id"], key),
                                                            key=lambda m: (m.step, m.timestamp))]
            for r in runs}


def mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs at the steps every run logged (runs evaluated on one schedule)."""
    if not curves:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    values = np.array([[dict(c)[s] for s in common] for c in curves], dtype=np.float64)
    return np.array(common), values.mean(0), values.std(0)


def plot_curves(runs: list[dict[str, Any]], uri: str = DEFAULT_URI, key: str = RETURN):
    """One panel per env, one line (mean ± std over seeds) per algorithm. Returns the figure."""
    import matplotlib.pyplot as plt

    curves = learning_curves(runs, uri, key)
    envs = sorted({r["env"] for r in runs})
    fig, axes = plt.subplots(1, max(len(envs), 1), figsize=(5 * max(len(envs), 1), 3.5), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        by_algo: dict[str, list] = defaultdict(list)
        for r in runs:
            if r["env"] == env_id and curves[r["run_id"]]:
                by_algo[r["algo"]].append(curves[r["run_id"]])
        for algo, group in sorted(by_algo.items()):
            steps, mean, std = mean_curve(group)
            ax.plot(steps, mean, label=f"{algo} ({len(group)})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(env_id)
        ax.set_xlabel("step (env steps; updates for offline methods)")
        ax.set_ylabel(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def filter_runs(runs: list[dict[str, Any]], *, envs: list[str] | None = None, algos: list[str] | None = None,
                presets: list[str] | None = None, sweep: str | None = None) -> list[dict[str, Any]]:
    """The runs matching every filter given; a filter value no run has fails with the valid ones."""
    import difflib

    def check(name: str, wanted: list[str] | None, have: set[str]) -> None:
        for value in wanted or []:
            if value not in have:
                near = difflib.get_close_matches(value, sorted(have), n=1)
                raise TrackingError(f"no runs with {name} '{value}'" + (f"; did you mean {near[0]}?" if near else "")
                                    + f" (the store has: {', '.join(sorted(have)) or 'none'})")

    if sweep is not None:
        check("sweep", [sweep], {r["sweep"] for r in runs if r.get("sweep")})
        runs = [r for r in runs if r.get("sweep") == sweep]
    for name, wanted in (("env", envs), ("algo", algos), ("preset", presets)):
        check(name, wanted, {str(r[name]) for r in runs})
        if wanted:
            runs = [r for r in runs if str(r[name]) in wanted]
    return runs


def log_report(uri: str, files: list, tags: dict[str, str] | None = None,
               experiment: str = "vmil-comparisons") -> str:
    """Attach a comparison's files (compare.json, figures) to a new MLflow run of ``experiment``
    (kept apart from the training runs it compares); returns the run id."""
    import time

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"kind": "comparison", **(tags or {})})
    try:
        for path in files:
            client.log_artifact(run.info.run_id, str(path), "comparison")
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def has_runs(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> bool:
    """Whether the store holds finished vmil training runs."""
    try:
        return bool(load_runs(uri, experiment, finished_only=True))
    except TrackingError:
        return False


def example_store(directory: str, algos: tuple[str, ...] = ("bc",), seeds: tuple[int, ...] = (0, 1),
                  env_id: str = "toy:reach", preset: str = "smoke") -> str:
    """A small MLflow store to compare in (scripted toy:reach demos with actions, one short run per
    algorithm and seed), for when there is nothing trained yet. Returns its tracking URI."""
    from pathlib import Path

    from vmil.config import resolve
    from vmil.demos import record
    from vmil.registry import algo_module
    from vmil.runner import build_run

    root = Path(directory).resolve()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    demos = root / "demos"
    for algo in algos:
        for seed in seeds:
            cfg = resolve(algo, algo_module(algo).Config, env_id, preset, [f"seed={seed}", "train.video=false"])
            if not demos.exists():
                record(env_id, "scripted", 4, demos, keep_actions=True, image_size=cfg.env.image_size,
                       action_repeat=cfg.env.action_repeat, quiet=True)
            runner = build_run(cfg, demos, root / "runs" / f"{algo}-s{seed}", uri, quiet=True)
            try:
                runner.run()
            finally:
                runner.close()
    return uri


# ---------------------------------------------------------------------------------------------
# Relational Mimic's evaluation: the complementary CDF of returns over seeds and its area


def ccdf(returns: list[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical complementary CDF (survival function) of ``returns``: the sorted distinct
    returns x and the fraction of returns strictly above each, P(R > x). Non-finite values are dropped."""
    r = np.asarray([v for v in returns if v is not None and math.isfinite(v)], dtype=np.float64)
    if r.size == 0:
        return np.zeros(0), np.zeros(0)
    r.sort()
    xs = np.unique(r)
    return xs, 1.0 - np.searchsorted(r, xs, side="right") / r.size


def ccdf_area(returns: list[float] | np.ndarray, low: float = 0.0) -> float | None:
    """Area under the CCDF from ``low``: the integral of P(R > x) dx over x >= low, which is
    mean(max(R - low, 0)). The paper's areas (hundreds of thousands) are not normalised by the number
    of returns; this one is, so methods with different seed counts compare."""
    r = np.asarray([v for v in returns if v is not None and math.isfinite(v)], dtype=np.float64)
    if r.size == 0:
        return None
    return float(np.maximum(r - low, 0.0).mean())


def ccdf_rows(runs: list[dict[str, Any]], key: str = RETURN, low: float = 0.0) -> list[dict[str, Any]]:
    """Per (env, algo, preset, budget): the final ``key`` of every run (seed), their CCDF and its area."""
    from vmil import stats

    rows = []
    for (env_id, algo, preset, budget), members in stats.group_runs(runs).items():
        values = [v for v in (stats.final_value(r, key) for r in members) if v is not None]
        xs, frac = ccdf(values)
        rows.append({"env": env_id, "algo": algo, "preset": preset, "budget": budget, "runs": len(values),
                     "ccdf_area": ccdf_area(values, low), "ccdf_low": low,
                     "ccdf": {"return": xs.tolist(), "fraction_above": frac.tolist()}})
    return rows


def plot_ccdf(rows: list[dict[str, Any]], key: str = RETURN):
    """One panel per env, one step curve P(R > x) per algorithm (area in the legend). Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in rows})
    fig, axes = plt.subplots(1, max(len(envs), 1), figsize=(5 * max(len(envs), 1), 3.5), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        for r in rows:
            if r["env"] != env_id or not r["ccdf"]["return"]:
                continue
            xs = [r["ccdf"]["return"][0]] + r["ccdf"]["return"]
            ys = [1.0] + r["ccdf"]["fraction_above"]
            ax.step(xs, ys, where="post",
                    label=f"{r['algo']} {r['preset']} ({r['runs']} seeds, area {r['ccdf_area']:.3g})")
        ax.set_title(env_id)
        ax.set_xlabel(f"final {key}")
        ax.set_ylabel("fraction of seeds above")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def format_ccdf(rows: list[dict[str, Any]]) -> str:
    lines = ["CCDF of final returns over seeds (area = mean of max(return - low, 0)):"]
    for r in rows:
        area = "-" if r["ccdf_area"] is None else f"{r['ccdf_area']:.4g}"
        lines.append(f"  {r['env']}  {r['algo']}  {r['preset']}  runs {r['runs']}  ccdf_area {area}")
    return "\n".join(lines)
