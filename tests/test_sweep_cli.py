"""`moesim sweep` output: the cheapest-point summary, progress only on a terminal, overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moesim.cli.sweep import cheapest_summary
from moesim.plan.scenario import build_plan, load_scenario
from moesim.plan.sweep import run_plan, run_scenario

ROOT = Path(__file__).resolve().parents[1]
DSV3 = ROOT / "scenarios" / "deepseek-v3-ep.yaml"


@pytest.fixture(scope="module")
def dsv3():
    return run_scenario(DSV3, None, charts=False)


def test_cheapest_point_meets_every_slo_set_and_names_every_axis(dsv3):
    df, manifest = dsv3
    slo = manifest["slo"]
    assert slo["ttft_s"] and slo["tpot_s"]
    lines = cheapest_summary(df, slo)
    text = " ".join(lines)
    ok = df[df["meets_slo"]]
    row = ok.loc[ok["usd_per_million_output_tokens"].idxmin()]
    assert row["ttft_s"] <= slo["ttft_s"] and row["tpot_s"] <= slo["tpot_s"]
    for words in ("TTFT <= 10 s", "TPOT <= 0.1 s", "weights fp8", "KV fp8", "dispatch fp8",
                  "overlap", "batch", "in 2048 / out 512", "redundant experts", "routing",
                  str(row["hardware"]), str(row["layout"])):  # fmt: skip
        assert words in text, words


def test_no_point_meeting_the_slo_is_said_not_hidden(dsv3):
    df, _ = dsv3
    strict = df.assign(meets_slo=False)
    lines = cheapest_summary(strict, {"ttft_s": 1e-6})
    assert "no point meets the SLO (TTFT <= 1e-06 s)" in lines[0]


def test_no_slo_says_so(dsv3):
    df, _ = dsv3
    assert "sets no SLO" in cheapest_summary(df, {})[0]


def test_small_chunks_give_the_same_results():
    plan = build_plan(load_scenario(ROOT / "scenarios" / "routing-skew.yaml"))
    whole = run_plan(plan)
    pieces = run_plan(plan, chunk_rows=4)
    pd.testing.assert_frame_equal(whole, pieces)


def test_price_and_memory_overrides(tmp_path):
    path = ROOT / "scenarios" / "routing-skew.yaml"
    base, _ = run_scenario(path, None, charts=False)
    df, manifest = run_scenario(
        path,
        None,
        charts=False,
        overrides={"price_usd_per_hour": 4.8, "memory_utilization": 0.5},
    )
    assert manifest["overrides"] == {"price_usd_per_hour": 4.8, "memory_utilization": 0.5}
    ratio = df["usd_per_million_output_tokens"] / base["usd_per_million_output_tokens"]
    assert ratio.dropna().round(9).unique().tolist() == [2.0]  # h100-sxm profile: $2.4
    assert df["feasible"].sum() < base["feasible"].sum()  # half the memory fits fewer


def test_piped_output_has_no_progress_bar_and_json_stays_json(tmp_path):
    args = [sys.executable, "-m", "moesim", "sweep", str(ROOT / "scenarios" / "routing-skew.yaml"),
            "--out", str(tmp_path / "o"), "--no-charts"]  # fmt: skip
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "━" not in p.stderr and "ETA" not in p.stderr
    assert "cheapest feasible point" in p.stdout
    j = subprocess.run(args + ["--json", "--overwrite"], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(j.stdout)["points"] == 64
