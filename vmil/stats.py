"""Statistics for comparing methods over seeds and tasks (Agarwal et al. 2021, via ``rliable``).

Runs are grouped by (env, algo, preset, budget): runs of different presets or step budgets are
never pooled. For each group: mean, median and IQM of the final score with stratified-bootstrap 95%
confidence intervals. Across tasks, for each (preset, budget) setting: IQM, mean, median and
optimality gap over the tasks every algorithm of the setting has, performance profiles, and the
probability of improvement of one algorithm over each other. Sample efficiency: the score at fixed
step budgets and learning curves (IQM over runs) with CI bands.

Everything here works on plain run dicts (as :func:`vmil.compare.load_runs` returns them: ``env``,
``algo``, ``seed``, ``preset``, ``budget``, ``budget_unit``, ``metrics``) and on
``run_id -> [(step, value)]`` curves, so ``vmil compare``, the ``compare_methods`` notebook and the
tests share one code path. The bootstrap draws from numpy's global generator (as rliable does); it
is seeded here and restored afterwards, so results are reproducible for a given ``seed``.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

SCORE = "eval/normalized_score"
RETURN = "eval/return_mean"
METRIC_KEYS = {"score": SCORE, "return": RETURN}
PER_TASK = ("iqm", "mean", "median")
AGGREGATES = ("iqm", "mean", "median", "optimality_gap")
CONFIDENCE = 0.95


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation of two equally long 1-d sequences (arrays or tensors); NaN when either is
    constant (the correlation is undefined) or shorter than 2."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"pearson: sequences of different lengths {a.shape[0]} and {b.shape[0]}")
    if a.size < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if denom == 0.0:
        return math.nan
    return float((a * b).sum() / denom)


class StatsError(ValueError):
    """A comparison request that cannot be answered (unknown metric, nothing to compare)."""


# rliable's metric definitions, computed with plain numpy: the bootstrap calls them once per
# resample, and scipy's trim_mean / mannwhitneyu wrappers cost ~0.5 ms a call (a 2000-resample CI of
# six groups took 7 s instead of 0.5 s). tests/test_stats.py checks each against rliable's own.


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all runs and tasks: scipy.stats.trim_mean(scores, 0.25, axis=None)."""
    values = np.sort(np.asarray(scores, dtype=np.float64), axis=None)
    cut = int(0.25 * values.size)
    return float(values[cut:values.size - cut].mean())


def iqm_columns(values: np.ndarray) -> np.ndarray:
    """IQM over axis 0 of [n, k] (one IQM per column): sample-efficiency curves."""
    values = np.sort(values, axis=0)
    cut = int(0.25 * values.shape[0])
    return values[cut:values.shape[0] - cut].mean(axis=0)


def mean(scores: np.ndarray) -> float:
    """rliable's aggregate_mean: the mean over tasks of the per-task mean."""
    return float(np.mean(np.mean(scores, axis=0)))


def median(scores: np.ndarray) -> float:
    """rliable's aggregate_median: the median over tasks of the per-task mean."""
    return float(np.median(np.mean(scores, axis=0)))


def run_median(scores: np.ndarray) -> float:
    """The median over all runs (within one task: the median run)."""
    return float(np.median(scores))


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> float:
    """rliable's aggregate_optimality_gap: how far runs fall short of ``gamma`` (1 = the expert)."""
    return float(gamma - np.mean(np.minimum(scores, gamma)))


def improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's probability_of_improvement: per task P(X > Y) + P(X = Y) / 2 over all pairs of
    runs (Mann-Whitney U / (n_x n_y)), averaged over tasks."""
    x = np.asarray(x, dtype=np.float64)[:, None, :]
    y = np.asarray(y, dtype=np.float64)[None, :, :]
    return float(np.mean((x > y).mean(axis=(0, 1)) + 0.5 * (x == y).mean(axis=(0, 1))))


def _metric_funcs() -> dict[str, Callable[[np.ndarray], float]]:
    return {"iqm": iqm, "mean": mean, "median": median, "run_median": run_median,
            "optimality_gap": optimality_gap}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's StratifiedBootstrap draws indices from np.random's global state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def metric_key(metric: str) -> str:
    if metric not in METRIC_KEYS:
        import difflib

        near = difflib.get_close_matches(metric, list(METRIC_KEYS), n=1)
        raise StatsError(f"unknown metric '{metric}'" + (f"; did you mean {near[0]}?" if near else "")
                         + f" (valid: {', '.join(METRIC_KEYS)})")
    return METRIC_KEYS[metric]


def group_key(run: dict[str, Any]) -> tuple[str, str, str, int]:
    """(env, algo, preset, budget): the unit that is never pooled with another."""
    return (run["env"], run["algo"], str(run.get("preset", "?")), int(run.get("budget", 0)))


def group_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    return {k: sorted(v, key=lambda r: (r["seed"], r.get("start_time", 0))) for k, v in sorted(groups.items())}


def final_value(run: dict[str, Any], key: str) -> float | None:
    value = run["metrics"].get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def interval_estimates(scores: dict[str, np.ndarray], metrics: tuple[str, ...] = PER_TASK, *, reps: int = 2000,
                       seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """key -> metric -> {point, lo, hi}: point estimates over a (runs x tasks) score matrix and
    percentile stratified-bootstrap CIs (runs resampled within each task)."""
    from rliable import library

    funcs = _metric_funcs()
    func = lambda x: np.array([funcs[m](x) for m in metrics])  # noqa: E731
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, matrix in scores.items():
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] < 1:
            raise StatsError(f"{key}: scores must be a (runs x tasks) matrix with at least one run, got {matrix.shape}")
        if matrix.shape[0] == 1:  # one run: no spread to resample; the CI is the point itself
            point = func(matrix)
            out[key] = {m: {"point": float(p), "lo": float(p), "hi": float(p)} for m, p in zip(metrics, point)}
            continue
        with _seeded(seed):
            point, ci = library.get_interval_estimates({key: matrix}, func, reps=reps,
                                                       confidence_interval_size=CONFIDENCE)
        out[key] = {m: {"point": float(point[key][i]), "lo": float(ci[key][0, i]), "hi": float(ci[key][1, i])}
                    for i, m in enumerate(metrics)}
    return out


def per_task(runs: list[dict[str, Any]], metric: str = "score", *, reps: int = 2000,
             seed: int = 0) -> list[dict[str, Any]]:
    """One row per (env, algo, preset, budget): runs, seeds, and mean / median / IQM of the final
    ``metric`` with 95% CIs (None where no run logged it)."""
    key = metric_key(metric)
    rows = []
    for (env, algo, preset, budget), members in group_runs(runs).items():
        values = [v for v in (final_value(r, key) for r in members) if v is not None]
        row: dict[str, Any] = {"env": env, "algo": algo, "preset": preset, "budget": budget,
                               "budget_unit": members[0].get("budget_unit", "env_steps"), "runs": len(members),
                               "seeds": sorted({r["seed"] for r in members}), "scored_runs": len(values),
                               "values": values}
        if values:
            stats = interval_estimates({"x": np.array(values)[:, None]}, ("iqm", "mean", "run_median"),
                                       reps=reps, seed=seed)["x"]
            row.update(iqm=stats["iqm"], mean=stats["mean"], median=stats["run_median"])
        else:
            row.update({m: None for m in PER_TASK})
        rows.append(row)
    return rows


def _settings(runs: list[dict[str, Any]], key: str) -> dict[tuple[str, int, str], dict[str, dict[str, list[float]]]]:
    """(preset, budget, unit) -> algo -> env -> final values (by seed)."""
    out: dict[tuple[str, int, str], dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for (env, algo, preset, budget), members in group_runs(runs).items():
        values = [v for v in (final_value(r, key) for r in members) if v is not None]
        if values:
            out[(preset, budget, members[0].get("budget_unit", "env_steps"))][algo][env] = values
    return out


def score_matrices(by_algo: dict[str, dict[str, list[float]]]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """algo -> (runs x tasks) over the tasks every algorithm has (each algorithm keeps its first k
    runs, k = its fewest runs on one task, so the matrix is rectangular); the tasks used; the
    tasks dropped because some algorithm lacks them."""
    all_tasks = sorted({env for envs in by_algo.values() for env in envs})
    tasks = [t for t in all_tasks if all(t in envs for envs in by_algo.values())]
    matrices = {}
    for algo, envs in sorted(by_algo.items()):
        if tasks:
            k = min(len(envs[t]) for t in tasks)
            matrices[algo] = np.array([envs[t][:k] for t in tasks], dtype=np.float64).T
    return matrices, tasks, [t for t in all_tasks if t not in tasks]


def profile_taus(matrices: dict[str, np.ndarray], points: int = 41) -> np.ndarray:
    values = np.concatenate([m.ravel() for m in matrices.values()]) if matrices else np.zeros(1)
    return np.linspace(min(0.0, float(values.min())), max(1.0, float(values.max())), points)


def performance_profiles(matrices: dict[str, np.ndarray], taus: np.ndarray, *, reps: int = 2000,
                         seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """algo -> {point, lo, hi}: the fraction of runs (over all tasks) scoring above each tau."""
    from rliable import library

    taus = np.asarray(taus, dtype=np.float64)
    profile = lambda x: (np.asarray(x).reshape(-1, 1) > taus).mean(axis=0)  # noqa: E731  (rliable's score distribution)
    out = {}
    for algo, matrix in matrices.items():
        point = profile(matrix)
        if matrix.shape[0] == 1:
            lo = hi = point
        else:
            with _seeded(seed):
                _, ci = library.get_interval_estimates({algo: matrix}, profile, reps=reps,
                                                       confidence_interval_size=CONFIDENCE)
            lo, hi = ci[algo][0], ci[algo][1]
        out[algo] = {"point": point.tolist(), "lo": np.asarray(lo).tolist(), "hi": np.asarray(hi).tolist()}
    return out


def probability_of_improvement(x: np.ndarray, y: np.ndarray, *, reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """P(X > Y) averaged over tasks (Mann-Whitney U / (n_x n_y) per task; ties count half), with a
    stratified independent bootstrap CI over the runs of each."""
    from rliable import library

    point = improvement(x, y)
    if x.shape[0] == 1 and y.shape[0] == 1:
        return {"point": point, "lo": point, "hi": point}
    with _seeded(seed):
        _, ci = library.get_interval_estimates({"p": [x, y]}, lambda a, b: np.array([improvement(a, b)]),
                                               reps=reps, confidence_interval_size=CONFIDENCE)
    return {"point": point, "lo": float(ci["p"][0, 0]), "hi": float(ci["p"][1, 0])}


def aggregates(runs: list[dict[str, Any]], metric: str = "score", *, reps: int = 2000, seed: int = 0,
               improvement_of: str | None = None, profile: bool = True) -> list[dict[str, Any]]:
    """Per (preset, budget) setting: the aggregate metrics of every algorithm over the common tasks,
    performance profiles, and the probability of improvement of ``improvement_of`` (default: vmil
    when present, else the first algorithm) over each other algorithm."""
    key = metric_key(metric)
    out = []
    for (preset, budget, unit), by_algo in sorted(_settings(runs, key).items()):
        matrices, tasks, dropped = score_matrices(by_algo)
        entry: dict[str, Any] = {"preset": preset, "budget": budget, "budget_unit": unit, "tasks": tasks,
                                 "dropped_tasks": dropped, "algos": {}}
        if not matrices:
            out.append(entry)
            continue
        estimates = interval_estimates(matrices, AGGREGATES, reps=reps, seed=seed)
        for algo, matrix in matrices.items():
            entry["algos"][algo] = {"runs_per_task": int(matrix.shape[0]), **estimates[algo]}
        if profile:
            taus = profile_taus(matrices)
            entry["profiles"] = {"taus": taus.tolist(), **performance_profiles(matrices, taus, reps=reps, seed=seed)}
        algos = sorted(matrices)
        base = improvement_of if improvement_of in matrices else ("vmil" if "vmil" in matrices else algos[0])
        entry["improvement"] = [{"x": base, "y": other, **probability_of_improvement(
            matrices[base], matrices[other], reps=reps, seed=seed)} for other in algos if other != base]
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- sample efficiency


def value_at(curve: list[tuple[int, float]], step: int) -> float | None:
    """The last value logged at or before ``step``, provided the run got as far as ``step``."""
    if not curve or max(s for s, _ in curve) < step:
        return None
    before = [(s, v) for s, v in curve if s <= step]
    return float(before[-1][1]) if before else None


def at_budgets(runs: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], budgets: list[int], *,
               reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per group and fixed step budget B (at most the group's own budget): IQM and mean over runs
    of the last evaluation at or before B, with 95% CIs."""
    rows = []
    for (env, algo, preset, budget), members in group_runs(runs).items():
        for step in sorted(budgets):
            if budget and step > budget:
                continue
            values = [v for v in (value_at(curves.get(r["run_id"], []), step) for r in members) if v is not None]
            if not values:
                continue
            stats = interval_estimates({"x": np.array(values)[:, None]}, ("iqm", "mean"), reps=reps, seed=seed)["x"]
            rows.append({"env": env, "algo": algo, "preset": preset, "budget": budget, "step": step,
                         "unit": members[0].get("budget_unit", "env_steps"), "runs": len(values), **stats})
    return rows


def curve_bands(runs: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], *, reps: int = 500,
                seed: int = 0) -> list[dict[str, Any]]:
    """Per group: the steps every run evaluated at, and IQM over runs with a 95% CI band."""
    from rliable import library

    out = []
    for (env, algo, preset, budget), members in group_runs(runs).items():
        group = [curves[r["run_id"]] for r in members if curves.get(r["run_id"])]
        if not group:
            continue
        steps = sorted(set.intersection(*(set(s for s, _ in c) for c in group)))
        if not steps:
            continue
        values = np.array([[dict(c)[s] for s in steps] for c in group], dtype=np.float64)[:, None, :]
        per_step = lambda x: iqm_columns(x.reshape(-1, x.shape[-1]))  # noqa: E731
        if values.shape[0] == 1:
            point = lo = hi = values[0, 0]
        else:
            with _seeded(seed):
                p, ci = library.get_interval_estimates({"x": values}, per_step, reps=reps,
                                                       confidence_interval_size=CONFIDENCE)
            point, lo, hi = p["x"], ci["x"][0], ci["x"][1]
        out.append({"env": env, "algo": algo, "preset": preset, "budget": budget, "runs": len(group),
                    "steps": steps, "iqm": np.asarray(point).tolist(), "lo": np.asarray(lo).tolist(),
                    "hi": np.asarray(hi).tolist()})
    return out


# ----------------------------------------------------------------------------- the whole comparison


def compare(runs: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]] | None = None, *,
            metric: str = "score", budgets: tuple[int, ...] = (10_000, 50_000, 100_000), reps: int = 2000,
            seed: int = 0, improvement_of: str | None = None) -> dict[str, Any]:
    """Everything `vmil compare --json` prints: per-task rows, aggregates per setting, scores at
    fixed budgets and curve bands (the last two need ``curves`` of the same metric)."""
    if not runs:
        raise StatsError("no runs to compare (check --tracking-uri / --experiment and the filters)")
    result: dict[str, Any] = {"metric": metric_key(metric), "confidence": CONFIDENCE, "bootstrap_reps": reps,
                              "seed": seed, "per_task": per_task(runs, metric, reps=reps, seed=seed),
                              "aggregates": aggregates(runs, metric, reps=reps, seed=seed,
                                                       improvement_of=improvement_of)}
    if not any(final_value(r, metric_key(metric)) is not None for r in runs):
        result["note"] = (f"none of the {len(runs)} runs logged {metric_key(metric)}"
                          + ("; the score needs demos with a positive mean return: try --metric return"
                             if metric == "score" else ""))
    if curves is not None:
        result["at_budgets"] = at_budgets(runs, curves, list(budgets), reps=reps, seed=seed)
        result["curves"] = curve_bands(runs, curves, reps=min(reps, 500), seed=seed)
    return result


def _ci(stat: dict[str, float] | None, digits: int = 2) -> str:
    if stat is None:
        return "-"
    return f"{stat['point']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_comparison(result: dict[str, Any]) -> str:
    """The text report: per task, aggregates, improvement, sample efficiency."""
    digits = 2 if result["metric"] == SCORE else 1
    name = "normalised score" if result["metric"] == SCORE else "return"
    lines = [f"note: {result['note']}"] if result.get("note") else []
    lines += [f"Final {name} per (env, algo, preset, budget): point [95% stratified-bootstrap CI], "
              f"{result['bootstrap_reps']} resamples"]
    rows = [("env", "algo", "preset", "budget", "runs", "IQM", "mean", "median")]
    for r in result["per_task"]:
        runs = f"{r['scored_runs']}" if r["scored_runs"] == r["runs"] else f"{r['scored_runs']}/{r['runs']}"
        rows.append((r["env"], r["algo"], r["preset"], str(r["budget"]), runs,
                     *(_ci(r[m], digits) for m in PER_TASK)))
    lines += _table(rows)
    for agg in result["aggregates"]:
        if not agg["algos"]:
            continue
        lines += ["", f"Across tasks ({agg['preset']}, {agg['budget']} {agg['budget_unit']}): "
                      f"{', '.join(agg['tasks'])}" + (f"  (left out, not run by every algorithm: "
                                                       f"{', '.join(agg['dropped_tasks'])})" if agg["dropped_tasks"] else "")]
        rows = [("algo", "runs/task", "IQM", "mean", "median", "optimality gap")]
        for algo, a in agg["algos"].items():
            rows.append((algo, str(a["runs_per_task"]), *(_ci(a[m], digits) for m in AGGREGATES)))
        lines += _table(rows)
        for p in agg.get("improvement", []):
            lines.append(f"P({p['x']} > {p['y']}) = {_ci(p, 2)}")
    if result.get("at_budgets"):
        lines += ["", "At fixed step budgets (last evaluation at or before the step; updates for offline methods): "
                      "IQM / mean [95% CI]"]
        rows = [("env", "algo", "preset", "budget", "step", "runs", "IQM", "mean")]
        for r in result["at_budgets"]:
            step = f"{r['step']}" + (" upd" if r.get("unit") == "updates" else "")
            rows.append((r["env"], r["algo"], r["preset"], str(r["budget"]), step, str(r["runs"]),
                         _ci(r["iqm"], digits), _ci(r["mean"], digits)))
        lines += _table(rows)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def _label(r: dict[str, Any]) -> str:
    return f"{r['algo']} ({r['preset']}, {r['budget']})"


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """name -> matplotlib figure: per_task, aggregates, profiles, improvement, sample_efficiency."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    ylabel = "normalised score" if result["metric"] == SCORE else "return"

    def errbar(ax, labels: list[str], stats: list[dict[str, float]]) -> None:
        y = np.arange(len(labels))
        points = np.array([s["point"] for s in stats])
        err = np.array([[s["point"] - s["lo"] for s in stats], [s["hi"] - s["point"] for s in stats]])
        ax.errorbar(points, y, xerr=np.clip(err, 0, None), fmt="o", capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()

    envs = sorted({r["env"] for r in result["per_task"] if r["iqm"] is not None})
    if envs:
        fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 0.5 + 0.35 * max(
            sum(r["env"] == e for r in result["per_task"]) for e in envs) + 1), squeeze=False)
        for ax, env in zip(axes[0], envs):
            rows = [r for r in result["per_task"] if r["env"] == env and r["iqm"] is not None]
            errbar(ax, [f"{_label(r)} n={r['scored_runs']}" for r in rows], [r["iqm"] for r in rows])
            ax.set_title(env)
            ax.set_xlabel(f"IQM final {ylabel} (95% CI)")
        fig.tight_layout()
        figs["per_task"] = fig

    settings = [a for a in result["aggregates"] if a["algos"]]
    if settings:
        fig, axes = plt.subplots(len(settings), len(AGGREGATES), figsize=(3.2 * len(AGGREGATES),
                                 (0.6 + 0.35 * max(len(a["algos"]) for a in settings)) * len(settings) + 0.5),
                                 squeeze=False)
        for row, agg in zip(axes, settings):
            for ax, m in zip(row, AGGREGATES):
                algos = list(agg["algos"])
                errbar(ax, algos, [agg["algos"][a][m] for a in algos])
                ax.set_title(f"{m} ({agg['preset']}, {agg['budget']})", fontsize=9)
        fig.suptitle(f"{ylabel} across tasks (95% CIs)", fontsize=10)
        fig.tight_layout()
        figs["aggregates"] = fig

        profiled = [a for a in settings if "profiles" in a]
        if profiled:
            fig, axes = plt.subplots(1, len(profiled), figsize=(5 * len(profiled), 3.5), squeeze=False)
            for ax, agg in zip(axes[0], profiled):
                taus = agg["profiles"]["taus"]
                for algo in agg["algos"]:
                    p = agg["profiles"][algo]
                    ax.plot(taus, p["point"], label=algo)
                    ax.fill_between(taus, p["lo"], p["hi"], alpha=0.15)
                ax.set_xlabel(f"{ylabel} threshold τ")
                ax.set_ylabel("fraction of runs with score > τ")
                ax.set_title(f"performance profile ({agg['preset']}, {agg['budget']})", fontsize=9)
                ax.legend(fontsize=7)
            fig.tight_layout()
            figs["profiles"] = fig

        improved = [a for a in settings if a.get("improvement")]
        if improved:
            fig, axes = plt.subplots(1, len(improved), figsize=(5 * len(improved), 0.8 + 0.4 * max(
                len(a["improvement"]) for a in improved)), squeeze=False)
            for ax, agg in zip(axes[0], improved):
                errbar(ax, [f"P({p['x']} > {p['y']})" for p in agg["improvement"]], agg["improvement"])
                ax.axvline(0.5, color="grey", lw=0.8, ls="--")
                ax.set_xlim(0, 1)
                ax.set_title(f"probability of improvement ({agg['preset']}, {agg['budget']})", fontsize=9)
            fig.tight_layout()
            figs["improvement"] = fig

    bands = result.get("curves") or []
    curve_envs = sorted({b["env"] for b in bands})
    if curve_envs:
        fig, axes = plt.subplots(1, len(curve_envs), figsize=(5 * len(curve_envs), 3.5), squeeze=False)
        for ax, env in zip(axes[0], curve_envs):
            for b in (b for b in bands if b["env"] == env):
                ax.plot(b["steps"], b["iqm"], label=f"{_label(b)} n={b['runs']}")
                ax.fill_between(b["steps"], b["lo"], b["hi"], alpha=0.2)
            ax.set_title(env)
            ax.set_xlabel("step (env steps; updates for offline methods)")
            ax.set_ylabel(f"IQM {ylabel} (95% CI)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        figs["sample_efficiency"] = fig
    return figs


def write_report(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """compare.json and one PNG per figure in ``out_dir``; returns the files written."""
    import json

    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare.json"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    for name, fig in figures(result).items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
