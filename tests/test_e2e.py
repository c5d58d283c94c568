"""moesim validate --e2e: measured deployments read, imported from AIConfigurator's silicon sample,
predicted, scored per row and per group (a report: nothing is fitted to these rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from moesim.calibrate import e2e
from moesim.cli import app

SAMPLE = Path(__file__).parent / "data" / "e2e_sample.csv"
runner = CliRunner()


@pytest.fixture(scope="module")
def scored():
    rep, df = e2e.validate_e2e(SAMPLE)
    return rep, df


def test_sample_rows_are_all_predicted(scored):
    rep, df = scored
    assert rep["rows_total"] == len(pd.read_csv(SAMPLE)) == 30
    assert rep["rows_scored"] == rep["rows_total"], rep["not_predicted"]
    for m in e2e.METRICS:
        assert np.all(np.isfinite(df[f"predicted_{m}"])) and np.all(df[f"predicted_{m}"] > 0)


def test_errors_and_group_statistics_by_hand(scored):
    rep, df = scored
    row = df.iloc[0]
    assert row["error_tpot_s"] == pytest.approx(
        row["predicted_tpot_s"] / row["measured_tpot_s"] - 1
    )
    # closed loop: C requests in flight complete C / e2e per second
    e2e_s = row["measured_ttft_s"] + (row["osl"] - 1) * row["measured_tpot_s"]
    gpus = row["tp"] * row["dp"] * row["pp"]
    assert row["measured_output_tokens_per_s_per_gpu"] == pytest.approx(
        row["concurrency"] * row["osl"] / e2e_s / gpus
    )
    assert bool(row["throughput_derived"])
    g = rep["groups"][0]
    part = df[(df["model"] == g["model"]) & (df["hardware"] == g["hardware"])
              & (df["engine"] == g["engine"])]  # fmt: skip
    errs = np.abs(part["error_ttft_s"].to_numpy())
    assert g["ttft_s"]["median"] == pytest.approx(np.median(errs))
    assert g["ttft_s"]["max"] == pytest.approx(errs.max())
    assert g["ttft_s"]["p90"] == pytest.approx(np.percentile(errs, 90))
    groups = {(x["model"], x["hardware"], x["engine"]) for x in rep["groups"]}
    assert len(groups) == len(df.groupby(list(e2e.GROUP)))


def test_import_keeps_shipped_models_on_h100_h200():
    df, skipped = e2e.import_aiconfigurator()
    assert set(df["hardware"]) <= {"h100-sxm", "h200"}
    assert set(df["model"]) <= set(e2e.AIC_MODELS.values())
    assert (df["mode"] == "agg").all() and len(df) > 500
    assert skipped["disaggregated deployment"] > 0
    gpus = df["tp"] * df["dp"] * df["pp"]
    assert (gpus >= df["ep"]).all()
    assert df["measured_tpot_s"].between(1e-4, 1.0).all()


def test_cli_e2e_json_and_chart(tmp_path):
    stem = tmp_path / "e2e"
    res = runner.invoke(app, ["validate", "--e2e", str(SAMPLE), "--json", "--chart", str(stem)])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["rows_scored"] == 30 and rep["groups"] and "overall" in rep
    assert (tmp_path / "e2e.png").stat().st_size > 10_000
    res = runner.invoke(app, ["validate", "--e2e", str(SAMPLE)])
    assert res.exit_code == 0 and "overall" in res.output


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", "from moesim.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_bad_e2e_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,hardware\nllama-3.1-8b,h100-sxm\n")
    for args, fragment in (
        (["--e2e", str(bad)], "missing column"),
        (["--e2e", str(tmp_path / "none.csv")], "not found"),
        ([], "--e2e"),
    ):
        p = _cli("validate", *args)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert fragment in p.stderr + p.stdout
