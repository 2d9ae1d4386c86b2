"""`vmil bench rm`: the networks' counts beside Table 2 of Relational Mimic, and the iteration timing."""
from __future__ import annotations

import pytest


def test_network_counts_sit_beside_table_2():
    from vmil.bench.rm import PAPER, network_table

    table = network_table(84, 4)
    assert set(PAPER) <= set(table) and {"reward_nonlocal", "reward_local"} <= set(table)
    for name in PAPER:
        row = table[name]
        assert row["conv_depth"] == row["paper_conv_depth"], name  # 3, 15, 13, 15 layers deep
        assert row["params_ratio"] == pytest.approx(row["params"] / row["paper_params"], abs=1e-3)
    # The paper's own agents: parameters within 10% of Table 2, the non-local block adds ~200 of them.
    assert table["local"]["params_ratio"] == pytest.approx(1.0, abs=0.1)
    extra = table["nonlocal"]["params"] - table["local"]["params"]
    assert 100 <= extra <= 300
    assert 0 < table["nonlocal"]["mflops"] - table["local"]["mflops"] < 0.3


def test_bench_rm_times_an_iteration_and_reports_its_rate():
    from vmil.bench.rm import bench_rm

    out = bench_rm("rm-l-l", 32, frame_stack=2, envs=2, steps=4, minibatches=2, peak_seconds=0.05, networks=False)
    update = out["update"]
    assert update["ms_per_update"] > 0 and update["gflop_per_update"] > 0
    assert 0 < update["peak_fraction"] and set(update["parts"]) == {"rewards", "advantages", "ppo"}
