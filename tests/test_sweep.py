"""Sweeps: vectorised results equal per-point predictions; workers and Dask give the same frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.cost.ops import RoutingOptions
from moesim.cost.routing import parse_routing
from moesim.engine import static as serving
from moesim.plan.scenario import build_plan, load_scenario
from moesim.plan.sweep import METRICS, read_results, run_plan, run_scenario
from moesim.spec.deployment import Layout

REPO = Path(__file__).resolve().parents[1]
SCENARIO = """\
name: mixed
models: [llama-3.1-8b, mixtral-8x7b]
hardware: [h100-sxm, h200]
layouts:
  - tp: [1, 2, 4]
    ep: [1, 2]
    pp: [1, 2]
    weight_dtype: [bf16, fp8]
  - label: offload
    tp: 2
    offload_fraction: [0.0, 0.5]
workloads:
  - batch: [1, 8, 64, 512]
    input_len: [512, 4096]
    output_len: 128
    routing: [uniform, "zipf:1.2"]
  - label: decode-pool
    phase: decode
    batch: [16, 128]
    context_len: [1024, 8192]
slo: {ttft_s: 1.0, tpot_s: 0.03}
"""


@pytest.fixture(scope="module")
def scenario_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "mixed.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def frame(scenario_path):
    return run_plan(build_plan(load_scenario(scenario_path)), chunk_rows=500)


def test_one_row_per_point_with_every_metric(frame, scenario_path):
    plan = build_plan(load_scenario(scenario_path))
    assert len(frame) == plan.size
    assert set(METRICS) | {
        "feasible",
        "reason",
        "meets_slo",
        "model",
        "hardware",
        "tp",
        "batch",
    } <= set(frame.columns)
    bad = frame[~frame["feasible"]]
    assert (
        len(bad) and (bad["reason"].astype(str) != "").all()
    )  # infeasible points are rows with a reason
    assert not frame.loc[frame["meets_slo"], "tpot_s"].gt(0.03).any()


def test_rows_equal_per_point_predict(frame, scenario_path):
    loaded = load_scenario(scenario_path)
    sample = frame.sample(40, random_state=1)
    for _, row in sample.iterrows():
        model = loaded.models[loaded.model_labels.index(row["model"])]
        hw = loaded.hardware[loaded.hardware_labels.index(row["hardware"])]
        layout = Layout(
            tp=int(row["tp"]),
            ep=int(row["ep"]),
            pp=int(row["pp"]),
            dp=int(row["dp"]),
            replicas=int(row["replicas"]),
            weight_dtype=row["weight_dtype"],
            offload_fraction=float(row["offload_fraction"]),
        )
        ropts = RoutingOptions(dist=parse_routing(row["routing"]), block_m=int(row["block_m"]))
        if row["phase"] == "both":
            ref = serving.predict(
                model,
                hw,
                layout,
                batch=int(row["batch"]),
                input_len=int(row["input_len"]),
                output_len=int(row["output_len"]),
                routing=ropts,
            )
        else:
            ref = serving.predict_phase(
                model,
                hw,
                layout,
                phase=row["phase"],
                batch=int(row["batch"]),
                input_len=int(row["input_len"]),
                context_len=float(row["context_len"]),
                routing=ropts,
            )
        for key in METRICS:
            if key in ref:
                assert row[key] == pytest.approx(float(ref[key]), rel=1e-9, nan_ok=True), (
                    key,
                    dict(row),
                )
        assert bool(row["feasible"]) == bool(ref["feasible"])
        assert str(row["reason"]) == str(ref["reason"])


def test_workers_and_dask_identical(scenario_path, frame):
    plan = build_plan(load_scenario(scenario_path))
    pooled = run_plan(plan, workers=2, chunk_rows=500)
    pd.testing.assert_frame_equal(pooled, frame)
    dask = run_plan(plan, scheduler="local", workers=2, chunk_rows=500)
    pd.testing.assert_frame_equal(dask, frame)


def test_limit_takes_the_first_points(scenario_path, frame):
    head = run_plan(build_plan(load_scenario(scenario_path)), limit=37, chunk_rows=500)
    pd.testing.assert_frame_equal(head, frame.iloc[:37], check_categorical=False)


def test_parquet_round_trip_with_metadata(tmp_path, scenario_path):
    df, manifest = run_scenario(scenario_path, tmp_path / "out")
    back, meta = read_results(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(back, df)
    assert meta["scenario"] == SCENARIO and meta["scenario_name"] == "mixed" and meta["version"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["points"] == len(df) == manifest["points"]
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(csv) == len(df) and list(csv.columns) == list(df.columns)
    np.testing.assert_allclose(csv["tpot_s"], df["tpot_s"], rtol=1e-12)


def test_cli_sweep_json(tmp_path, scenario_path):
    result = CliRunner().invoke(
        app, ["sweep", str(scenario_path), "--out", str(tmp_path / "o"), "--limit", "50", "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["points"] == 50 and manifest["points_in_scenario"] > 50
    assert (tmp_path / "o" / "results.parquet").stat().st_size > 0


@pytest.mark.parametrize(
    "name", ["mixtral-h100-vs-h200", "deepseek-v3-ep", "dense-vs-moe", "routing-skew"]
)
def test_broadcast_path_equals_grouped_rows(name, monkeypatch):
    """Dense sub-grids are evaluated with numeric axes as orthogonal numpy dimensions; the result
    must equal evaluating the flattened rows group by group."""
    from moesim.plan import sweep as sweep_mod
    from moesim.plan.scenario import build_plan, load_scenario

    plan = build_plan(load_scenario(REPO / "scenarios" / f"{name}.yaml"))
    fast = sweep_mod.run_plan(plan)
    monkeypatch.setattr(sweep_mod, "_aligned_block", lambda *args: None)
    slow = sweep_mod.run_plan(plan)
    metrics = list(sweep_mod.METRICS)
    np.testing.assert_allclose(
        fast[metrics].to_numpy(float), slow[metrics].to_numpy(float), rtol=1e-9, equal_nan=True
    )
    assert (fast["feasible"] == slow["feasible"]).all()
    assert (fast["reason"].astype(str) == slow["reason"].astype(str)).all()
