"""Tracking: MLflow in a temporary sqlite store (read back with MLflow's own client), memory tracker."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vmil.tracking import MemoryTracker, MlflowTracker, TrackingError, make_tracker


def test_memory_tracker():
    t = MemoryTracker()
    t.log_metrics({"a": 1, "b": 2.5}, step=3)
    t.log_metrics({"a": 4}, step=5)
    assert t.history("a") == [(3, 1.0), (5, 4.0)]
    t.log_image(np.zeros((4, 5, 3), np.uint8), "img")
    with pytest.raises(ValueError, match=r"expected uint8 \[H, W, C\]"):
        t.log_image(np.zeros((3, 4, 5), np.float32), "bad")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        t.log_artifact("/nonexistent/file.txt")
    t.close("FINISHED")
    assert t.status == "FINISHED"
    assert isinstance(make_tracker("none"), MemoryTracker)


def test_mlflow_tracker_round_trip(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default artifact store is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, experiment="test", run_name="r1")
    tracker.log_params({"train.env_steps": 100, "agent.channels": [8, 16]})
    tracker.set_tags({"algo": "bc", "env": "toy:reach", "seed": "0"})
    for step in range(5):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "nan_is_dropped": float("nan")}, step=step)
    artifact = tmp_path / "summary.json"
    artifact.write_text('{"a": 1}')
    tracker.log_artifact(artifact)
    artifact.write_text('{"a": 2}')  # overwritten right away: the queued copy is what gets logged
    image = np.zeros((6, 7, 3), np.uint8)
    image[1, 2] = (255, 0, 0)
    tracker.log_image(image, "strips/step_00000010")
    tracker.close()
    run_id = tracker.run_id

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.env_steps": "100", "agent.channels": "[8, 16]"}
    assert run.data.tags["algo"] == "bc"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert client.get_metric_history(run_id, "nan_is_dropped") == []
    root = client.download_artifacts(run_id, "", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "summary.json").read_text() == '{"a": 1}', root
    import imageio.v3 as iio
    np.testing.assert_array_equal(iio.imread(tmp_path / "dl" / "images" / "strips" / "step_00000010.png"), image)

    # Resume: the same run continues.
    again = MlflowTracker(uri, experiment="test", run_id=run_id)
    again.log_metrics({"loss": 0.1}, step=5)
    again.close()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2, 3, 4, 5]

    with pytest.raises(TrackingError, match="cannot start an MLflow run"):
        MlflowTracker(uri, run_id="0123456789abcdef")

    # `vmil compare` reads the run back by its tags.
    from vmil.cli import main

    assert main(["compare", "--tracking-uri", uri, "--experiment", "test", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["per_task"]
    assert [(r["env"], r["algo"], r["runs"]) for r in rows] == [("toy:reach", "bc", 1)]
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "none.db").exists()



def test_compare_summary_against_hand_computed_values():
    from vmil.compare import format_table, mean_curve, summarize

    runs = [
        {"run_id": "a", "algo": "bc", "env": "toy:reach", "seed": 0, "metrics": {"eval/return_mean": 10.0, "eval/normalized_score": 0.5}},
        {"run_id": "b", "algo": "bc", "env": "toy:reach", "seed": 1, "metrics": {"eval/return_mean": 20.0, "eval/normalized_score": 1.0}},
        {"run_id": "c", "algo": "vmil", "env": "toy:reach", "seed": 0, "metrics": {"eval/return_mean": 30.0}},
        {"run_id": "d", "algo": "bc", "env": "dmc:cartpole_swingup", "seed": 0, "metrics": {}},
    ]
    rows = summarize(runs, env="toy:reach")
    assert [(r["algo"], r["runs"], r["seeds"]) for r in rows] == [("bc", 2, [0, 1]), ("vmil", 1, [0])]
    assert (rows[0]["return_mean"], rows[0]["return_std"], rows[0]["score_mean"]) == (15.0, 5.0, 0.75)
    assert rows[1]["score_mean"] is None
    table = format_table(rows).splitlines()
    assert table[2].split() == ["toy:reach", "bc", "?", "0", "2", "15.0", "±", "5.0", "0.75", "±", "0.25"]
    assert table[3].split()[-1] == "-"
    steps, mean, std = mean_curve([[(0, 1.0), (10, 3.0), (20, 5.0)], [(0, 3.0), (10, 5.0)]])
    assert steps.tolist() == [0, 10] and mean.tolist() == [2.0, 4.0] and std.tolist() == [1.0, 1.0]
