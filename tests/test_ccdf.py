"""Relational Mimic's evaluation in `vmil compare --ccdf`: the CCDF of final returns over seeds and its area."""
from __future__ import annotations

import numpy as np
import pytest

from vmil.compare import RETURN, ccdf, ccdf_area, ccdf_rows, plot_ccdf


def test_ccdf_of_a_hand_example():
    xs, frac = ccdf([3.0, 1.0, 6.0, 3.0, float("nan")])
    assert xs.tolist() == [1.0, 3.0, 6.0]
    assert frac.tolist() == [0.75, 0.25, 0.0]  # P(R > 1), P(R > 3), P(R > 6)


def test_area_is_the_integral_of_the_step_function():
    rng = np.random.default_rng(0)
    returns = rng.normal(100.0, 40.0, size=17)
    grid = np.linspace(-200.0, 400.0, 600_001)
    survival = (returns[None, :] > grid[:, None]).mean(1)
    for low in (0.0, 50.0):
        keep = grid >= low
        direct = np.trapezoid(survival[keep], grid[keep])
        assert ccdf_area(returns, low) == pytest.approx(direct, rel=1e-3)
    assert ccdf_area([1.0, 3.0, 3.0, 6.0]) == pytest.approx(3.25)  # 1 * 1 + 2 * 0.75 + 3 * 0.25
    assert ccdf_area([]) is None


def test_rows_group_runs_by_method_and_plot(tmp_path):
    def run(algo, seed, ret):
        return {"env": "toy:reach", "algo": algo, "preset": "cpu", "budget": 1000, "seed": seed,
                "start_time": seed, "metrics": {RETURN: ret}}

    runs = [run("rm-l-l", 0, 40.0), run("rm-l-l", 1, 20.0), run("gaifo", 0, 10.0), run("gaifo", 1, 30.0),
            run("gaifo", 2, -5.0)]
    rows = {r["algo"]: r for r in ccdf_rows(runs)}
    assert rows["rm-l-l"]["runs"] == 2 and rows["rm-l-l"]["ccdf_area"] == pytest.approx(30.0)
    assert rows["gaifo"]["ccdf_area"] == pytest.approx(40.0 / 3)  # the negative return counts as 0 above 0
    assert rows["gaifo"]["ccdf"]["fraction_above"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    plot_ccdf(list(rows.values())).savefig(tmp_path / "ccdf.png")
    assert (tmp_path / "ccdf.png").stat().st_size > 0
