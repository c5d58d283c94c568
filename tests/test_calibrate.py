"""Calibration: synthetic measurements from known terms are recovered; the held-out split is
fixed and grouped by shape; residuals are in log space; the measured CPU set and the published
H800 tables go through the same calibrator; malformed inputs fail with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from moesim.calibrate import (
    Calibration,
    CollectiveCalibrator,
    KernelCalibrator,
    calibrate_published,
    heldout_shapes,
    predict_rows,
)
from moesim.cli import app
from moesim.cost.kernel_cost import gemm_cost
from moesim.errors import MoesimError
from moesim.spec.hardware import CollectiveEfficiency, KernelEfficiency, load_hardware

CPU_DIR = Path(__file__).parent / "data" / "measurements_cpu"
REPO = Path(__file__).parent.parent
runner = CliRunner()

TRUE = {
    "gemm": KernelEfficiency(compute_efficiency=0.72, memory_efficiency=0.80, launch_overhead_s=5e-6, tile_m=128, tile_n=128, ridge_sharpness=4.0, compute_efficiency_by_dtype={"fp8": 0.60}),
    "memory": KernelEfficiency(compute_efficiency=0.8, memory_efficiency=0.88, launch_overhead_s=3e-6),
    "grouped_gemm": KernelEfficiency(compute_efficiency=0.55, memory_efficiency=0.70, launch_overhead_s=12e-6, tile_m=64, tile_n=128, ridge_sharpness=6.0),
    "collectives": CollectiveEfficiency(scaleup_bandwidth_efficiency=0.7, scaleup_latency_s=8e-6),
}  # fmt: skip


def synthetic_rows() -> pd.DataFrame:
    """GEMMs (bf16 + fp8), copies, MoE layers and all-reduces at real-model shapes."""
    rows = []
    for dt, impl in (("bf16", "matmul"), ("fp8_e4m3", "scaled_mm")):
        for m in (1, 16, 64, 128, 512, 1024, 4096, 16384):
            for n, k in (
                (4096, 7168),
                (7168, 2048),
                (1280, 8192),
                (57344, 8192),
                (576, 7168),
                (24576, 1536),
            ):
                rows.append(
                    {
                        "kernel_class": "gemm",
                        "impl": impl,
                        "dtype": dt,
                        "shape_key": f"m{m}_n{n}_k{k}",
                        "m": m,
                        "n": n,
                        "k": k,
                    }
                )
    for b in (2**i for i in range(20, 32)):
        rows.append(
            {
                "kernel_class": "memory",
                "impl": "copy",
                "dtype": "bf16",
                "shape_key": f"b{b}",
                "bytes": b,
            }
        )
    for t in (1, 4, 16, 64, 256, 1024, 4096, 16384):
        for e, k, h, i in ((8, 2, 4096, 14336), (32, 8, 7168, 2048), (128, 8, 2048, 768)):
            active = min(e, t * k) if t < 64 else e
            padded = active * 64 * np.ceil(t * k / active / 64)
            rows.append(
                {
                    "kernel_class": "grouped_gemm",
                    "impl": "triton",
                    "dtype": "bf16",
                    "shape_key": f"t{t}_e{e}_k{k}_h{h}_i{i}",
                    "tokens": t,
                    "experts": e,
                    "top_k": k,
                    "hidden": h,
                    "intermediate": i,
                    "n_active_experts": active,
                    "sum_padded_tokens": padded,
                }
            )
            rows.append(
                {**rows[-1], "impl": "loop"}
            )  # another impl: the triton rows are the ones fitted
    for size in (2**i for i in range(12, 31, 2)):
        for op in ("allreduce", "alltoall"):
            rows.append(
                {
                    "kernel_class": op,
                    "impl": "nccl",
                    "dtype": "bf16",
                    "shape_key": f"b{size}_w8",
                    "message_bytes": size,
                    "world_size": 8,
                }
            )
    rows.append(
        {
            "kernel_class": "allreduce",
            "impl": "nccl",
            "dtype": "bf16",
            "shape_key": "b4096_w1",
            "message_bytes": 4096,
            "world_size": 1,
        }
    )
    df = pd.DataFrame(rows)
    df["status"] = "ok"
    return df


@pytest.fixture(scope="module")
def h100():
    return load_hardware("h100-sxm")


@pytest.fixture(scope="module")
def synthetic(h100):
    df = synthetic_rows()
    true = h100.efficiency.model_copy(update=TRUE)
    noise = np.exp(
        np.random.default_rng(0).normal(0.0, 0.02, len(df))
    )  # 2 % log-normal timing noise
    df["median_s"] = predict_rows(h100, df, true) * noise
    df.loc[df["world_size"] == 1, "median_s"] = 1e-5
    return df


@pytest.fixture(scope="module")
def synthetic_fit(synthetic, h100):
    return Calibration(h100).fit(synthetic)


def test_fit_recovers_known_terms(synthetic_fit):
    gemm = synthetic_fit.calibrators_["gemm"]
    assert gemm.compute_efficiency_by_dtype_["bf16"] == pytest.approx(0.72, rel=0.03)
    assert gemm.compute_efficiency_by_dtype_["fp8"] == pytest.approx(0.60, rel=0.03)
    assert gemm.compute_efficiency_ == gemm.compute_efficiency_by_dtype_["bf16"]
    assert gemm.mem_efficiency_ == pytest.approx(0.80, rel=0.03)
    assert gemm.launch_overhead_s_ == pytest.approx(5e-6, rel=0.1)
    assert (gemm.tile_m_, gemm.tile_n_) == (128, 128)
    mem = synthetic_fit.calibrators_["memory"]
    assert mem.mem_efficiency_ == pytest.approx(0.88, rel=0.03)
    moe = synthetic_fit.calibrators_["grouped_gemm"]
    assert moe.impl_ == "triton"
    assert moe.compute_efficiency_ == pytest.approx(0.55, rel=0.05)
    assert moe.mem_efficiency_ == pytest.approx(0.70, rel=0.05)
    coll = synthetic_fit.calibrators_["collectives"]
    assert coll.collectives_.scaleup_bandwidth_efficiency == pytest.approx(0.7, rel=0.03)
    assert coll.collectives_.scaleup_latency_s == pytest.approx(8e-6, rel=0.15)
    assert coll.n_skipped_world1_ == 1
    for cls, cal in synthetic_fit.calibrators_.items():
        print(
            f"synthetic {cls}: train median {cal.train_errors_['median_abs_error']:.2%}, "
            f"held-out median {cal.heldout_errors_['median_abs_error']:.2%} (n={cal.n_heldout_})"
        )
        assert cal.heldout_errors_["median_abs_error"] < 0.04, cls
        assert cal.n_heldout_ > 0


def test_sklearn_contract(synthetic, h100):
    cal = KernelCalibrator("memory", heldout_fraction=0.25, seed=3, base=h100)
    assert not hasattr(cal, "mem_efficiency_")
    with pytest.raises(MoesimError):
        cal.predict(synthetic)
    assert cal.fit(synthetic) is cal
    rows = synthetic[synthetic["kernel_class"] == "memory"]
    pred = cal.predict(rows)
    assert pred.shape == (len(rows),) and np.all(pred > 0)
    for attr in (
        "compute_efficiency_",
        "mem_efficiency_",
        "launch_overhead_s_",
        "tile_m_",
        "train_mape_",
        "heldout_mape_",
    ):
        assert hasattr(cal, attr)


def test_heldout_split_is_fixed_and_grouped_by_shape(synthetic, h100):
    keys = synthetic.loc[synthetic["kernel_class"] == "gemm", "shape_key"]
    held = heldout_shapes(keys, 0.2, seed=0)
    assert held == heldout_shapes(list(reversed(keys.tolist())), 0.2, seed=0)  # order-free
    assert len(held) == int(np.floor(0.2 * keys.nunique() + 0.5))
    assert held != heldout_shapes(keys, 0.2, seed=1)
    cal = KernelCalibrator("gemm", base=h100).fit(synthetic)
    assert cal.heldout_shapes_ == held
    rows = synthetic[synthetic["kernel_class"] == "gemm"]
    # both dtypes (and impls) of a held-out shape are held out together
    assert cal.n_heldout_ == 2 * len(held) and cal.n_train_ == len(rows) - 2 * len(held)


def test_residuals_are_log_time(synthetic, h100):
    """Doubling every time halves the efficiencies and doubles the overhead: only ratios matter."""
    rows = synthetic[synthetic["kernel_class"] == "memory"].copy()
    one = KernelCalibrator("memory", base=h100).fit(rows)
    rows["median_s"] *= 2.0
    two = KernelCalibrator("memory", base=h100).fit(rows)
    assert two.mem_efficiency_ == pytest.approx(one.mem_efficiency_ / 2, rel=0.02)
    assert two.launch_overhead_s_ == pytest.approx(one.launch_overhead_s_ * 2, rel=0.1)
    assert two.train_errors_["median_abs_error"] == pytest.approx(
        one.train_errors_["median_abs_error"], abs=0.005
    )


def test_measured_profile_loads_and_changes_predictions(synthetic_fit, h100, tmp_path):
    path = synthetic_fit.to_profile(name="h100-synthetic").save_yaml(
        tmp_path / "h100-synthetic.measured.yaml"
    )
    hw = load_hardware(path)
    assert hw.efficiency.source.startswith("measured: ")
    assert hw.efficiency.gemm.compute_eff("fp8") == pytest.approx(0.60, rel=0.03)
    report = hw.efficiency.fit_report["classes"]
    for cls in ("gemm", "grouped_gemm", "memory", "collectives"):
        r = report[cls]
        assert {
            "n_train",
            "n_heldout",
            "train",
            "heldout",
            "params",
            "impl",
            "heldout_shape_keys",
        } <= set(r)
        assert set(r["train"]) == {"median_abs_error", "mean_abs_error", "max_abs_error", "n"}
    before = float(gemm_cost(h100, 4096, 4096, 4096, "bf16")["latency_s"])
    after = float(gemm_cost(hw, 4096, 4096, 4096, "bf16")["latency_s"])
    assert after == pytest.approx(before * 0.80 / 0.72, rel=0.05)  # datasheet 0.80 -> fitted 0.72


def test_collective_calibrator_skips_world_size_one(synthetic, h100):
    rows = synthetic[synthetic["world_size"] == 1]
    with pytest.raises(MoesimError, match="world_size"):
        CollectiveCalibrator(base=h100).fit(rows)
    cal = Calibration(h100).fit(pd.concat([rows, synthetic[synthetic["kernel_class"] == "memory"]]))
    assert "world_size" in cal.skipped_["collectives"]


# --- the measured CPU set ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "cpu.measured.yaml"
    result = runner.invoke(app, ["calibrate", str(CPU_DIR), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_cpu_calibration_uses_a_generic_base(cpu_profile):
    path, report = cpu_profile
    hw = load_hardware(path)
    assert "generic base" in hw.description and "fp32" in hw.peak_flops_per_s
    assert "measured envelope" in hw.provenance["peak_flops_per_s.fp32"]
    assert hw.efficiency.source.startswith("measured: Intel")
    classes = report["fit_report"]["classes"]
    assert classes["grouped_gemm"]["impl"] == "grouped_mm"  # no Triton timings on CPU
    for cls, r in classes.items():
        print(
            f"CPU {cls}: train median {r['train']['median_abs_error']}, held-out median {r['heldout']['median_abs_error']}"
        )


def test_cpu_gemm_heldout_error(cpu_profile):
    path, _ = cpu_profile
    result = runner.invoke(
        app, ["validate", str(CPU_DIR), "--profile", str(path), "--heldout-only", "--json"]
    )
    assert result.exit_code == 0, result.output
    gemm = json.loads(result.stdout)["classes"]["gemm"]
    assert gemm["n"] >= 5
    assert gemm["median_abs_error"] < 0.15


def test_cpu_moe_heldout_error(cpu_profile):
    """The MoE expert kernels on CPU, held-out shapes, each implementation's kernel launches
    counted (kernel_cost.MOE_IMPL_KERNELS): median error under 15 %."""
    path, _ = cpu_profile
    result = runner.invoke(
        app, ["validate", str(CPU_DIR), "--profile", str(path), "--heldout-only", "--json"]
    )
    report = json.loads(result.stdout)
    print("cpu grouped_gemm held-out", report["classes"]["grouped_gemm"])
    assert report["classes"]["grouped_gemm"]["median_abs_error"] < 0.15


@pytest.mark.xfail(
    strict=True,
    reason="eager CPU decoder layers on a shared 2-core machine: the layer check is 40-47 % off "
    "(the kernels alone are within 3-9 %); the ~70 eager torch ops per layer are not yet modelled "
    "one by one",
)
def test_cpu_layer_check_error(cpu_profile):
    path, _ = cpu_profile
    result = runner.invoke(
        app, ["validate", str(CPU_DIR), "--profile", str(path), "--heldout-only", "--json"]
    )
    report = json.loads(result.stdout)
    assert report["layers"]["median_abs_error"] < 0.15


# --- published H800 -------------------------------------------------------------------------


def test_published_h800_fit():
    cal, profile = calibrate_published("h800")
    report = cal.report_["classes"]
    assert set(report) == {"gemm", "grouped_gemm", "attention_decode", "collectives"}
    for cls, r in report.items():
        print(
            f"published h800 {cls}: train median {r['train']['median_abs_error']}, held-out median {r['heldout']['median_abs_error']}"
        )
        assert r["train"]["median_abs_error"] < 0.1, cls
    assert report["gemm"]["n_train"] + report["gemm"]["n_heldout"] == 18  # R011-R028
    assert (
        report["grouped_gemm"]["n_train"] + report["grouped_gemm"]["n_heldout"] == 5
    )  # R001-R010 in pairs
    assert 0.6 < profile.efficiency.gemm.compute_eff("fp8") < 0.85  # DeepGEMM: 1550 of 1979 at best
    assert (
        0.85 < profile.efficiency.attention_decode.memory_efficiency < 0.95
    )  # FlashMLA 3000 of 3350 GB/s
    assert "R011" in profile.provenance["efficiency.gemm"]


def test_shipped_published_profile_matches_regeneration():
    shipped = load_hardware(REPO / "hwprofiles" / "h800.published.yaml")
    assert shipped.efficiency.source.startswith("published: ")
    assert "moesim calibrate --published h800" in shipped.efficiency.source
    _, fresh = calibrate_published("h800")
    assert shipped.efficiency.gemm.compute_eff("fp8") == pytest.approx(
        fresh.efficiency.gemm.compute_eff("fp8"), rel=1e-3
    )


# --- malformed inputs ------------------------------------------------------------------------


def test_malformed_directories(tmp_path):
    with pytest.raises(MoesimError, match="not found"):
        Calibration().fit(tmp_path / "nope")
    with pytest.raises(MoesimError, match="no measurement CSV"):
        Calibration().fit(tmp_path)
    (tmp_path / "gemm.csv").write_text("kernel_class,shape_key\n")
    with pytest.raises(MoesimError, match="median_s"):
        Calibration().fit(tmp_path)
    (tmp_path / "gemm.csv").write_text('kernel_class,shape_key,median_s\n"gemm,"x\n')
    with pytest.raises(MoesimError):
        Calibration().fit(tmp_path)
    (tmp_path / "gemm.csv").write_text(
        "kernel_class,shape_key,median_s,status\ngemm,m1,0.1,error\n"
    )
    with pytest.raises(MoesimError, match="no usable"):
        Calibration().fit(tmp_path)


def test_cli_error_is_one_line(tmp_path):
    code = "import sys; from moesim.cli import main; sys.argv = ['moesim', *sys.argv[1:]]; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "calibrate", str(tmp_path), "--out", str(tmp_path / "x.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
