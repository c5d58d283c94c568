"""``moesim validate``: report keys, held-out filtering, the layer check and the charts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moesim.calibrate.validate import validate
from moesim.cli import app
from moesim.errors import MoesimError

CPU_DIR = Path(__file__).parent / "data" / "measurements_cpu"
STATS = {"median_abs_error", "mean_abs_error", "max_abs_error", "n"}
runner = CliRunner()


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "cpu.measured.yaml"
    result = runner.invoke(app, ["calibrate", str(CPU_DIR), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _json(*args: str) -> dict:
    result = runner.invoke(app, ["validate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_keys(cpu_profile):
    report = _json(str(CPU_DIR), "--profile", str(cpu_profile))
    assert set(report["overall"]) == STATS
    assert set(report["classes"]) == {
        "gemm",
        "grouped_gemm",
        "attention_prefill",
        "attention_decode",
        "memory",
        "collectives",
    }
    for stats in report["classes"].values():
        assert set(stats) == STATS
    assert report["overall"]["n"] == sum(s["n"] for s in report["classes"].values())
    worst = report["worst"][0]
    assert set(worst) == {
        "class",
        "shape_key",
        "impl",
        "dtype",
        "measured_s",
        "predicted_s",
        "error",
    }
    assert worst["error"] == report["overall"]["max_abs_error"]


def test_heldout_only_scores_the_recorded_shapes(cpu_profile):
    from moesim.spec.hardware import load_hardware

    every = _json(str(CPU_DIR), "--profile", str(cpu_profile))
    held = _json(str(CPU_DIR), "--profile", str(cpu_profile), "--heldout-only")
    assert held["heldout_only"] and 0 < held["overall"]["n"] < every["overall"]["n"]
    report = load_hardware(cpu_profile).efficiency.fit_report["classes"]
    assert held["classes"]["gemm"]["n"] == report["gemm"]["n_heldout"]
    for cls, stats in held["classes"].items():
        assert stats["median_abs_error"] == pytest.approx(
            report[cls]["heldout"]["median_abs_error"], abs=1e-5
        )


def test_heldout_only_needs_a_fit_report():
    with pytest.raises(MoesimError, match="fit_report"):
        validate(CPU_DIR, "h100-sxm", heldout_only=True)


def test_layer_check(cpu_profile):
    layers = _json(str(CPU_DIR), "--profile", str(cpu_profile))["layers"]
    assert STATS <= set(layers)
    assert layers["impl"] == "grouped_mm" and layers["n"] == 9
    assert {r["impl"] for r in layers["rows"]} == {"grouped_mm", "loop"}
    for row in layers["rows"]:
        assert row["predicted_s"] > 0 and row["error"] == pytest.approx(
            abs(row["predicted_s"] - row["measured_s"]) / row["measured_s"]
        )
    print(
        f"CPU layers ({layers['impl']}): median {layers['median_abs_error']:.1%}, max {layers['max_abs_error']:.1%}"
    )


def test_table_and_chart(cpu_profile, tmp_path):
    stem = tmp_path / "validation"
    result = runner.invoke(
        app, ["validate", str(CPU_DIR), "--profile", str(cpu_profile), "--chart", str(stem)]
    )
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "worst shapes" in result.output
    png = stem.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert stem.with_suffix(".svg").exists() and stem.with_suffix(".html").exists()


def test_missing_directory(cpu_profile, tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope"), "--profile", str(cpu_profile)])
    assert isinstance(result.exception, MoesimError)


H200_DIR = Path(__file__).resolve().parents[1] / "hwprofiles" / "measurements" / "h200"


@pytest.mark.skipif(not H200_DIR.is_dir(), reason="no H200 measurements in this checkout")
def test_h200_measured_profile_heldout_errors():
    """Real H200 kernels (quick profile): the committed measured profile predicts the held-out
    shapes. Measured when fitted: GEMM 6.7 %, fused MoE (Triton) 9.6 %, copies 8.2 % median;
    whole layers 16 % (eager host launches counted). Bounds sit just above those figures so a
    regression in the model or the fit shows."""
    from moesim.calibrate.validate import validate

    profile = H200_DIR.parents[1] / "h200.measured.yaml"
    report = validate(H200_DIR, profile, heldout_only=True)
    classes = report["classes"]
    print(
        {k: round(v["median_abs_error"], 3) for k, v in classes.items()},
        report.get("layers", {}).get("median_abs_error"),
    )
    assert classes["gemm"]["median_abs_error"] < 0.08
    assert classes["grouped_gemm"]["median_abs_error"] < 0.12
    assert report["layers"]["median_abs_error"] < 0.2
