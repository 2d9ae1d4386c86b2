"""Statistics of `vmil compare` against hand computations and exact bootstrap distributions."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from vmil import stats


def _run(env, algo, seed, value, preset="cpu", budget=20000, key=stats.SCORE):
    return {"run_id": f"{env}-{algo}-{preset}-{budget}-{seed}", "env": env, "algo": algo, "seed": seed,
            "preset": preset, "budget": budget, "budget_unit": "env_steps", "metrics": {key: value}}


def test_point_estimates_by_hand():
    x = np.array([0, 1, 2, 3, 4, 5, 6, 100], dtype=float)[:, None]
    assert stats.iqm(x) == pytest.approx(3.5)  # mean of the middle four: 2, 3, 4, 5
    assert stats.mean(x) == pytest.approx(15.125)
    assert stats.run_median(x) == pytest.approx(3.5)
    two_tasks = np.array([[0.5, 1.2], [0.5, 1.2]])
    assert stats.optimality_gap(two_tasks) == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert stats.median(np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]])) == pytest.approx(2.0)  # task means 1, 2, 5
    # P(X > Y) with ties counted half: 2>1, 2=2, 3>1, 3>2 -> 3.5 / 4
    assert stats.improvement(np.array([[2.0], [3.0]]), np.array([[1.0], [2.0]])) == pytest.approx(0.875)
    assert stats.improvement(np.array([[1.0], [2.0]]), np.array([[1.0], [2.0]])) == pytest.approx(0.5)


def test_fast_metrics_equal_rlibles_definitions():
    from rliable import metrics

    rng = np.random.default_rng(0)
    for shape in [(5, 1), (7, 3), (4, 4), (10, 2)]:
        m = rng.normal(size=shape)
        m[0, 0] = m[1, 0]  # a tie
        assert stats.iqm(m) == pytest.approx(metrics.aggregate_iqm(m))
        assert stats.mean(m) == pytest.approx(metrics.aggregate_mean(m))
        assert stats.median(m) == pytest.approx(metrics.aggregate_median(m))
        assert stats.optimality_gap(m) == pytest.approx(metrics.aggregate_optimality_gap(m))
        other = rng.normal(size=(shape[0] + 2, shape[1]))
        other[0, 0] = m[0, 0]
        assert stats.improvement(m, other) == pytest.approx(metrics.probability_of_improvement(m, other))


def _exact_percentiles(columns: list[list[float]], func) -> tuple[float, float]:
    """The 2.5 / 97.5 percentiles of the exact stratified-bootstrap distribution: every way of
    resampling each task's runs with replacement, all equally likely."""
    per_task = [list(itertools.product(col, repeat=len(col))) for col in columns]
    values = [func(np.array(combo).T) for combo in itertools.product(*per_task)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


@pytest.mark.parametrize("metric,columns", [
    ("mean", [[0.0, 1.0, 3.0, 8.0]]),
    ("iqm", [[0.0, 1.0, 3.0, 8.0]]),
    # two tasks: runs are resampled within each task (a row-wise bootstrap gives other bounds)
    ("mean", [[0.0, 1.0, 4.0], [10.0, 30.0, 31.0]]),
])
def test_bootstrap_ci_matches_the_exact_stratified_distribution(metric, columns):
    matrix = np.array(columns).T
    func = {"mean": stats.mean, "iqm": stats.iqm}[metric]
    lo, hi = _exact_percentiles(columns, func)
    est = stats.interval_estimates({"x": matrix}, (metric,), reps=20000, seed=0)["x"][metric]
    assert est["point"] == pytest.approx(func(matrix))
    spread = hi - lo
    assert abs(est["lo"] - lo) < 0.05 * spread and abs(est["hi"] - hi) < 0.05 * spread, (est, lo, hi)
    if len(columns) == 2:  # the row-wise (unstratified) bootstrap is measurably different here
        rows = [func(matrix[list(idx)]) for idx in itertools.product(range(3), repeat=3)]
        assert abs(np.percentile(rows, 2.5) - lo) > 0.1 * spread
    again = stats.interval_estimates({"x": matrix}, (metric,), reps=20000, seed=0)["x"][metric]
    assert again == est  # seeded: reproducible


def test_grouping_never_pools_presets_or_budgets():
    runs = [_run("toy:reach", "bc", 0, 0.1, "smoke", 120), _run("toy:reach", "bc", 1, 0.2, "smoke", 120),
            _run("toy:reach", "bc", 0, 0.9, "cpu", 20000), _run("toy:reach", "bc", 1, 0.7, "cpu", 20000),
            _run("toy:reach", "bc", 0, 0.5, "cpu", 10000)]
    rows = stats.per_task(runs, reps=200)
    assert [(r["preset"], r["budget"], r["runs"]) for r in rows] == [("cpu", 10000, 1), ("cpu", 20000, 2),
                                                                      ("smoke", 120, 2)]
    assert rows[1]["mean"]["point"] == pytest.approx(0.8) and rows[2]["mean"]["point"] == pytest.approx(0.15)
    assert rows[0]["iqm"] == {"point": 0.5, "lo": 0.5, "hi": 0.5}  # one run: no interval
    aggs = stats.aggregates(runs, reps=200)
    assert [(a["preset"], a["budget"]) for a in aggs] == [("cpu", 10000), ("cpu", 20000), ("smoke", 120)]


def test_aggregates_use_common_tasks_and_rectangular_matrices():
    runs = [_run("a", "vmil", s, v) for s, v in enumerate([0.2, 0.4, 0.6])]
    runs += [_run("b", "vmil", s, v) for s, v in enumerate([1.0, 0.8])]
    runs += [_run("a", "bc", s, v) for s, v in enumerate([0.1, 0.3])]
    runs += [_run("b", "bc", s, v) for s, v in enumerate([0.5, 0.7])]
    runs += [_run("c", "bc", 0, 0.9)]  # only bc ran task c
    (agg,) = stats.aggregates(runs, reps=500)
    assert agg["tasks"] == ["a", "b"] and agg["dropped_tasks"] == ["c"]
    assert agg["algos"]["vmil"]["runs_per_task"] == 2  # task b has two vmil runs: the first two of a are kept
    assert agg["algos"]["vmil"]["mean"]["point"] == pytest.approx((0.3 + 0.9) / 2)
    assert agg["algos"]["bc"]["optimality_gap"]["point"] == pytest.approx(1 - 0.4)
    (poi,) = agg["improvement"]
    assert (poi["x"], poi["y"]) == ("vmil", "bc")
    # task a: vmil (0.2, 0.4) vs bc (0.1, 0.3): 3 of 4 pairs; task b: (1.0, 0.8) vs (0.5, 0.7): 4 of 4
    assert poi["point"] == pytest.approx((0.75 + 1.0) / 2)
    assert poi["lo"] <= poi["point"] <= poi["hi"]
    profile = agg["profiles"]["vmil"]
    taus = np.array(agg["profiles"]["taus"])
    expected = [(np.array([0.2, 0.4, 1.0, 0.8]) > t).mean() for t in taus]
    np.testing.assert_allclose(profile["point"], expected)
    assert all(lo <= p + 1e-12 and p <= hi + 1e-12 for lo, p, hi in zip(profile["lo"], profile["point"], profile["hi"]))


def test_scores_at_fixed_budgets_and_curve_bands():
    curve = [(0, 0.1), (5000, 0.3), (10000, 0.5), (20000, 0.9)]
    assert stats.value_at(curve, 7000) == 0.3
    assert stats.value_at(curve, 10000) == 0.5
    assert stats.value_at(curve, 30000) is None  # the run never got there
    runs = [_run("a", "vmil", s, 0.0) for s in range(3)]
    curves = {r["run_id"]: [(0, 0.0), (10000, 0.1 * (i + 1)), (20000, 0.5)] for i, r in enumerate(runs)}
    rows = stats.at_budgets(runs, curves, [10000, 50000], reps=200)
    assert [(r["step"], r["runs"]) for r in rows] == [(10000, 3)]  # 50k is past the runs' 20k budget
    assert rows[0]["mean"]["point"] == pytest.approx(0.2)
    (band,) = stats.curve_bands(runs, curves, reps=200)
    assert band["steps"] == [0, 10000, 20000]
    np.testing.assert_allclose(band["iqm"], [0.0, 0.2, 0.5])  # IQM of 3 runs is their middle value
    assert band["lo"][1] <= 0.2 <= band["hi"][1]


def test_compare_report_json_and_figures(tmp_path):
    import json

    runs = [_run(env, algo, s, 0.1 * s + (0.3 if algo == "vmil" else 0)) for env in ("a", "b")
            for algo in ("vmil", "bc") for s in range(3)]
    curves = {r["run_id"]: [(0, 0.0), (10000, r["metrics"][stats.SCORE])] for r in runs}
    result = stats.compare(runs, curves, budgets=(10000,), reps=200)
    json.dumps(result)  # plain JSON types throughout
    text = stats.format_comparison(result)
    assert "P(vmil > bc)" in text and "Across tasks (cpu, 20000 env_steps): a, b" in text
    figs = stats.figures(result)
    assert set(figs) == {"per_task", "aggregates", "profiles", "improvement", "sample_efficiency"}
    for name, fig in figs.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    with pytest.raises(stats.StatsError, match="unknown metric 'scor'; did you mean score"):
        stats.compare(runs, metric="scor")
    unscored = stats.compare(runs, metric="return", reps=10)
    assert unscored["note"] == "none of the 12 runs logged eval/return_mean"
    assert stats.format_comparison(unscored).startswith("note: none of the 12 runs logged eval/return_mean")
    assert all(r["iqm"] is None for r in unscored["per_task"]) and "note" not in result
