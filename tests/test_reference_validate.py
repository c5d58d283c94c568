"""`moesim validate` against the real H200 measurements and hand arithmetic (complements
test_validate.py): the measured times obey the datasheet physics, validate's predictions never
claim to beat it, and its reported errors are the errors of the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.calibrate.validate import scored_rows, validate

ROOT = Path(__file__).resolve().parents[1]
H200_DIR = ROOT / "hwprofiles" / "measurements" / "h200"
PROFILE = ROOT / "hwprofiles" / "h200.measured.yaml"
# NVIDIA H200 datasheet (SXM): dense BF16 989.4 TFLOPS, FP8 1978.9 TFLOPS, HBM3e 4.8 TB/s
PEAK = {"bf16": 989.4e12, "fp8": 1978.9e12}
DTYPE_BYTES = {"bf16": 2, "fp8": 1}
HBM = 4.8e12

pytestmark = pytest.mark.skipif(not H200_DIR.is_dir(), reason="no H200 measurements here")


@pytest.fixture(scope="module")
def gemm_rows():
    df = scored_rows(H200_DIR, PROFILE)
    g = df[df["fit_class"] == "gemm"].copy()
    g["dt"] = g["dtype"].map(lambda d: "fp8" if str(d).startswith("fp8") else str(d))
    assert set(g["dt"]) == {"bf16", "fp8"} and len(g) > 100
    m, n, k = (g[c].astype(float).to_numpy() for c in ("m", "n", "k"))
    b = g["dt"].map(DTYPE_BYTES).to_numpy()
    flops = 2 * m * n * k  # [M, K] x [K, N]
    bytes_ = (m * k + k * n) * b + m * n * 2  # inputs in their dtype, bf16 output
    g["floor_s"] = np.maximum(flops / g["dt"].map(PEAK).to_numpy(), bytes_ / HBM)
    g["hand_flops"] = flops
    return g


def test_every_measured_gemm_is_slower_than_the_datasheet_floor(gemm_rows):
    ratio = gemm_rows["median_s"] / gemm_rows["floor_s"]
    print(f"measured / datasheet floor: min {ratio.min():.2f}, median {ratio.median():.2f}")
    assert ratio.min() >= 1.0  # a faster kernel than the datasheet allows is a measuring error


def test_validate_never_predicts_below_the_datasheet_floor(gemm_rows):
    assert (gemm_rows["predicted_s"] >= gemm_rows["floor_s"] * (1 - 1e-9)).all()


def test_recorded_flops_are_2mnk(gemm_rows):
    np.testing.assert_allclose(gemm_rows["flops"].astype(float), gemm_rows["hand_flops"], rtol=0)


def test_reported_errors_are_the_errors_of_the_rows():
    report = validate(H200_DIR, PROFILE, heldout_only=True)
    rows = scored_rows(H200_DIR, PROFILE, heldout_only=True)
    for cls, stats in report["classes"].items():
        sub = rows[rows["fit_class"] == cls]
        err = np.abs(sub["predicted_s"] - sub["median_s"]) / sub["median_s"]
        assert stats["n"] == len(sub)
        assert stats["median_abs_error"] == pytest.approx(float(np.median(err)), rel=1e-9)
        assert stats["max_abs_error"] == pytest.approx(float(np.max(err)), rel=1e-9)
