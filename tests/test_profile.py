"""The profiler: timing harness, CSV writing and resume, telemetry, the CLI end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT, check=False,
    )  # fmt: skip


# -- import hygiene ----------------------------------------------------------------------------


def test_import_moesim_and_profile_modules_do_not_import_torch():
    code = (
        "import sys, moesim, moesim.profile, moesim.kernels, moesim.kernels.configs, "
        "moesim.profile.command, moesim.profile.results, moesim.profile.telemetry, "
        "moesim.cli.profile\n"
        "bad = [m for m in ('torch', 'triton', 'pynvml') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr


def test_profile_help_works_without_torch():
    # A finder that refuses torch, triton and pynvml, as on a machine without them.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'triton', 'pynvml'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['moesim-profile', '--help']\n"
        "from moesim.profile.__main__ import main\n"
        "main()\n"
    )
    proc = run_py(code)
    assert proc.returncode == 0, proc.stderr
    assert "--resume" in proc.stdout and "--only" in proc.stdout


# -- harness -----------------------------------------------------------------------------------


def cpu_settings(**overrides):
    from moesim.profile.harness import default_settings

    s = default_settings("cpu", quick=True)
    return type(s)(**{**s.__dict__, **overrides})


def test_summarize_median_min_max():
    from moesim.profile.harness import summarize

    assert summarize([3.0, 1.0, 2.0, 10.0, 4.0]) == (3.0, 1.0, 10.0)
    with pytest.raises(ValueError):
        summarize([])


def test_bench_times_and_rotates_buffers():
    import torch

    from moesim.profile.harness import bench

    seen = []

    def make_inputs():
        return (torch.randn(2**18),)  # 1 MB per set

    def fn(x):
        seen.append(x.data_ptr())
        return x * 2

    timing = bench(
        fn, make_inputs, cpu_settings(rotate_bytes=4 * 2**20, max_sets=8, min_repeats=6),
        check=lambda out, inputs: float((out - 2 * inputs[0]).abs().max()),
    )  # fmt: skip
    assert timing.buffer_sets == 4
    assert len(set(seen)) == 4  # every set was used
    assert timing.min_s <= timing.median_s <= timing.max_s
    assert timing.repeats >= 6 and timing.timing_method == "perf_counter"
    assert timing.rel_err == 0.0


@pytest.mark.parametrize("bad", [0.5, float("nan")])
def test_bench_raises_on_wrong_results_and_does_not_time(bad):
    import torch

    from moesim.profile.harness import KernelCheckError, bench

    calls = []

    def fn(x):
        calls.append(1)
        return x

    with pytest.raises(KernelCheckError):
        bench(fn, lambda: (torch.randn(8),), cpu_settings(), check=lambda o, i: bad, tol=1e-3)
    assert len(calls) == 1  # the check run only


# -- CSV sink and resume -----------------------------------------------------------------------


def test_csv_sink_appends_flushes_and_resumes(tmp_path):
    from moesim.profile.results import COMMON_COLUMNS, CsvSink, read_rows

    row = {"kernel_class": "memory", "impl": "copy", "dtype": "fp32", "shape_key": "b1",
           "bytes": 1, "hbm_bytes": 2e9, "median_s": 1.0, "status": "ok"}  # fmt: skip
    sink = CsvSink(tmp_path, "memory", resume=False)
    sink.write(row)
    # Flushed: readable before close.
    rows = read_rows(tmp_path / "memory.csv")
    assert len(rows) == 1 and rows[0]["achieved_gbps"] == "2.0"
    sink.close()
    with open(tmp_path / "memory.csv") as f:
        header = next(csv.reader(f))
    assert header[: len(COMMON_COLUMNS)] == COMMON_COLUMNS
    resumed = CsvSink(tmp_path, "memory", resume=True)
    assert resumed.has(("memory", "copy", "b1", "fp32"))
    resumed.close()
    CsvSink(tmp_path, "memory", resume=False).close()  # fresh run: old file moved aside
    assert read_rows(tmp_path / "memory.csv") == []
    assert len(read_rows(tmp_path / "memory.csv.bak")) == 1


def test_interrupted_run_keeps_rows_and_resume_completes_without_duplicates(tmp_path, monkeypatch):
    from moesim.profile import memory
    from moesim.profile.results import read_rows, row_key
    from moesim.profile.runner import run_profile

    original = memory._run
    calls = []

    def flaky(case, ctx):
        calls.append(case.shape_key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if Ctrl-C / a kill arrived mid-run
        return original(case, ctx)

    monkeypatch.setattr(memory, "_run", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_profile("cpu", tmp_path, quick=True, only="memory", show_progress=False)
    kept = read_rows(tmp_path / "memory.csv")
    assert len(kept) == 2 and all(r["status"] == "ok" for r in kept)

    monkeypatch.setattr(memory, "_run", original)
    run = run_profile("cpu", tmp_path, quick=True, only="memory", resume=True, show_progress=False)
    rows = read_rows(tmp_path / "memory.csv")
    n_cases = len(memory.sizes_bytes(types.SimpleNamespace(device="cpu", quick=True)))
    assert len(rows) == n_cases
    assert len({row_key(r) for r in rows}) == n_cases
    assert run["classes"]["memory"]["already_present"] == 2
    assert run["classes"]["memory"]["ok"] == n_cases - 2


def test_unknown_class_is_a_user_error(tmp_path):
    from moesim.errors import MoesimError
    from moesim.profile.runner import run_profile

    with pytest.raises(MoesimError, match="did you mean 'gemm'"):
        run_profile("cpu", tmp_path, only="gemn", show_progress=False)


def test_failing_case_becomes_an_error_row(tmp_path, monkeypatch):
    from moesim.profile import memory
    from moesim.profile.results import read_rows
    from moesim.profile.runner import run_profile

    def broken(case, ctx):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(memory, "_run", broken)
    run_profile("cpu", tmp_path, quick=True, only="memory", show_progress=False)
    rows = read_rows(tmp_path / "memory.csv")
    assert rows and all(r["status"] == "error" and "exploded" in r["error"] for r in rows)
    assert all(r["median_s"] == "" for r in rows)


# -- end to end ------------------------------------------------------------------------------


def test_cli_quick_gemm_memory_end_to_end(tmp_path):
    from moesim.profile.results import CLASS_COLUMNS, COMMON_COLUMNS, read_rows

    code = "import sys; from moesim.cli import main; sys.argv[0] = 'moesim'; main()"
    proc = run_py(
        code, "profile", "--device", "cpu", "--quick", "--only", "gemm,memory", "--quiet",
        "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for cls in ("gemm", "memory"):
        rows = read_rows(tmp_path / f"{cls}.csv")
        assert rows, cls
        assert set(COMMON_COLUMNS + CLASS_COLUMNS[cls]) <= set(rows[0])
        assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
        assert all(float(r["min_s"]) <= float(r["median_s"]) <= float(r["max_s"]) for r in rows)
    gemm = read_rows(tmp_path / "gemm.csv")
    assert {r["kernel_class"] for r in gemm} == {"gemm"} and gemm[0]["dtype"] == "fp32"
    assert all(float(r["flops"]) == 2 * int(r["m"]) * int(r["n"]) * int(r["k"]) for r in gemm)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["device"] == "cpu" and run["end"] and set(run["classes"]) == {"gemm", "memory"}
    telemetry = json.loads((tmp_path / "telemetry.json").read_text())
    assert telemetry["cpu"]["cpu_cores"] >= 1 and len(telemetry["samples"]) == 4


@pytest.mark.slow
def test_moe_attention_permute_layer_quick_on_cpu(tmp_path):
    from moesim.profile.results import read_rows
    from moesim.profile.runner import run_profile

    run_profile(
        "cpu", tmp_path, quick=True, only="moe,attention,permute,layer", show_progress=False
    )
    moe = read_rows(tmp_path / "moe.csv")
    assert {r["impl"] for r in moe} == {"loop", "grouped_mm", "triton"}
    assert all(r["status"] == "skipped" for r in moe if r["impl"] == "triton")
    ok = [r for r in moe if r["impl"] != "triton"]
    assert all(r["status"] == "ok" for r in ok), [r["error"] for r in ok]
    assert all(r["impl_path"] for r in ok)
    for r in ok:
        assert int(r["sum_padded_tokens"]) >= int(r["assignments"]) >= int(r["max_expert_tokens"])
        assert int(r["sum_padded_tokens"]) % int(r["block_m"]) == 0
    dsv3 = [r for r in ok if r["model"].startswith("deepseek")]
    assert all(r["experts"] == "32" and r["global_experts"] == "256" for r in dsv3)
    for cls in ("attention", "permute", "layer"):
        rows = read_rows(tmp_path / f"{cls}.csv")
        assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    attn = read_rows(tmp_path / "attention.csv")
    assert {r["kernel_class"] for r in attn} == {"attention_prefill", "attention_decode"}
    assert all(r["backend"] for r in attn)


@pytest.mark.slow
def test_collectives_gloo_two_processes(tmp_path):
    from moesim.profile.results import read_rows
    from moesim.profile.runner import run_profile

    run_profile("cpu", tmp_path, quick=True, only="collectives", nproc=2, show_progress=False)
    rows = read_rows(tmp_path / "collectives.csv")
    assert {r["kernel_class"] for r in rows} == {"allreduce", "alltoall"}
    assert all(
        r["status"] == "ok" and r["world_size"] == "2" and r["backend"] == "gloo" for r in rows
    )
    assert all(float(r["busbw_gbps"]) > 0 for r in rows)


# -- telemetry and the layer -------------------------------------------------------------------


def test_telemetry_on_cpu_does_not_crash():
    from moesim.profile import telemetry

    snap = telemetry.snapshot("cpu")
    assert snap["cpu"]["cpu_cores"] >= 1 and snap["versions"]["python"]
    assert telemetry.device_name(snap)
    # Without a GPU, NVML fails to load: the sample still comes back, with no GPU fields.
    sample = telemetry.sample("cuda", "probe")
    assert sample["when"] == "probe"
    assert telemetry.decode_throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert telemetry.decode_throttle_reasons(None) == []


def test_layer_dims_from_hf_named_spec():
    from moesim.profile.layer import LayerDims

    spec = types.SimpleNamespace(
        hidden_size=7168, num_attention_heads=128, num_key_value_heads=2, head_dim=128,
        n_routed_experts=256, num_experts_per_tok=8, moe_intermediate_size=2048,
        intermediate_size=18432, n_shared_experts=1,
    )  # fmt: skip
    dims = LayerDims.from_spec(spec, ep=8)
    assert (dims.experts, dims.local_experts, dims.intermediate) == (256, 32, 2048)
    assert dims.shared_intermediate == 2048


def test_decoder_layer_grouped_mm_matches_loop_on_cpu():
    import torch

    from moesim.kernels.reference import moe_loop, relative_error
    from moesim.profile.layer import LayerDims, decoder_layer, make_weights

    dims = LayerDims(hidden=64, num_heads=4, num_kv_heads=2, head_dim=16, experts=16,
                     local_experts=4, top_k=4, intermediate=32, shared_intermediate=32)  # fmt: skip
    w = make_weights(dims, torch.float32, "cpu")
    x = torch.randn(3, 1, 64)
    kv = (torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16))
    from moesim.kernels.grouped import moe_grouped_mm

    out = decoder_layer(x, w, kv, dims, moe_grouped_mm)
    ref = decoder_layer(x, w, kv, dims, moe_loop)
    assert out.shape == (3, 1, 64) and relative_error(out, ref) < 1e-5
    prefill = decoder_layer(torch.randn(2, 5, 64), w, None, dims, moe_loop)
    assert torch.isfinite(prefill).all()
