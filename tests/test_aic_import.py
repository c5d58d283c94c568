"""AIConfigurator's measured kernel tables as moesim rows: unit conversions checked by hand on real
rows, the relabelled-copy detector and the version-mismatch record on the real wheel data, the
subset committed for CI, the CLI's one-line errors, validate's JSON, the cross-check, and that no
import ever opens the wheel's end-to-end silicon_sample.csv.

Tests marked ``needs_aic`` read the installed aiconfigurator-core wheel and skip without it; the
rest use tests/data/aic/*.csv.gz only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.calibrate import aic
from moesim.calibrate.measurements import heldout_shapes
from moesim.cli import run
from moesim.errors import MoesimError

DATA = Path(__file__).parent / "data" / "aic"
SUBSET = {s: DATA / f"{s}_trtllm.csv.gz" for s in ("h100_sxm", "h200_sxm")}
OURS_H200 = Path(__file__).parent.parent / "hwprofiles" / "measurements" / "h200"


def _has_aic() -> bool:
    try:
        import aiconfigurator_core  # noqa: F401
    except ImportError:
        return False
    return True


needs_aic = pytest.mark.skipif(not _has_aic(), reason="aiconfigurator-core not installed")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = run(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def parquet(rel: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(str(aic.data_root() / rel)).to_pandas()


@pytest.fixture(scope="module")
def h100():
    if not _has_aic():
        pytest.skip("aiconfigurator-core not installed")
    return aic.read_rows("h100_sxm", "trtllm")


# --- the committed subset (no package needed) -----------------------------------------------


@pytest.mark.parametrize("system", list(SUBSET))
def test_subset_rows_follow_the_row_contract(system):
    df, prov = aic.read_rows_csv(SUBSET[system])
    assert set(df["kernel_class"]) >= {"gemm", "grouped_gemm", "attention_prefill",
                                       "attention_decode", "allreduce", "alltoall",
                                       "ep_dispatch", "ep_combine"}  # fmt: skip
    assert df.groupby("kernel_class").size().max() <= 1500
    assert df["shape_key"].is_unique
    assert (df["status"] == "ok").all() and (df["timing_method"] == "cuda_graph").all()
    assert (df["framework"] == "trtllm").all()
    assert df["source"].str.startswith(f"aiconfigurator-core 0.12.0 {system}/").all()
    assert (df["median_s"] > 0).all() and (df["median_s"] < 1.0).all()  # seconds, not ms
    g = df[df["kernel_class"] == "gemm"].iloc[0]
    m, n, k = float(g.m), float(g.n), float(g.k)
    assert g.flops == pytest.approx(2 * m * n * k)
    in_b = {"bf16": 2, "fp8": 1}[g["dtype"]]
    out_b = 2
    assert g.hbm_bytes == pytest.approx((m * k + k * n) * in_b + m * n * out_b)
    coll = df[df["impl"] == "nccl"]
    elems = coll["message_elements"].to_numpy(float)
    per = coll["format"].map({"half": 2, "int8": 1}).to_numpy(float)
    np.testing.assert_allclose(coll["message_bytes"].to_numpy(float), elems * per)
    assert aic.system_of_rows(df) == system
    assert prov["rows"]["gemm"] == int((df["kernel_class"] == "gemm").sum())


def test_subset_is_small():
    assert sum(p.stat().st_size for p in SUBSET.values()) < 1.5e6
    readme = (DATA / "README.md").read_text()
    assert "Apache-2.0" in readme and "aiconfigurator-core 0.12.0" in readme


def test_balanced_router_counts_match_brute_force():
    """AIC's balanced router (collector helper balanced_logits), enumerated token by token."""

    def brute(T, E, k, L):
        s = math.ceil(E / k)
        picks = []
        for i in range(T):
            for j in range(k):
                x = (i + j * s) if T >= s else (i * s / T + j * s)
                picks.append(int(x % E))
        local = [e for e in picks if e < L]
        return len(local), len(set(local))

    cases = [(1, 256, 8, 32), (4, 256, 8, 32), (40, 256, 8, 32), (64, 512, 22, 4),
             (2, 512, 22, 4), (16, 8, 2, 8), (7, 128, 8, 16), (300, 160, 6, 20)]  # fmt: skip
    from moesim.calibrate.aic_routing import rank0_routing

    def rank0(T, E, k, L):
        r = rank0_routing(T, E, k, E // L, "balanced")
        return r["assignments"], r["n_active_experts"]

    for T, E, k, L in cases:
        a, n = rank0(T, E, k, L)
        assert (float(a), float(n)) == brute(T, E, k, L), (T, E, k, L)
    # by hand: T=40 of 256 experts, top-8, stride 32: windows [32j, 32j+40) hit experts < 32
    # for j = 0 (32 of them) and j = 7 ([224, 264) wraps onto 0..7): 40 assignments, 32 active
    a, n = rank0(40, 256, 8, 32)
    assert (float(a), float(n)) == (40.0, 32.0)
    # rows padded per token tile, by hand: 100 tokens, top-2 of 8 balanced = 25 per expert;
    # rank 0 of EP 2 holds 4 experts: 4 x 32 rows at tiles of 16, 4 x 64 at 64
    r = rank0_routing(100, 8, 2, 2, "balanced", tiles=(16, 64))
    assert (r["sum_padded_tokens_t16"], r["sum_padded_tokens_t64"]) == (128.0, 256.0)
    assert r["sum_padded_tokens"] == 256.0  # block_m = 64


def test_training_subsample_keeps_every_heldout_row():
    df, _ = aic.read_rows_csv(SUBSET["h200_sxm"])
    frame, _ = aic.model_rows(df)
    held = aic.heldout_keys(frame)
    out, counts = aic.training_subsample(frame, held, 100)
    for cls in ("gemm", "attention_prefill", "attention_decode"):
        part = out[out["fit_class"] == cls]
        is_held = part["shape_key"].isin(set(held[cls]))
        assert is_held.sum() == len(held[cls])  # all held-out shapes kept
        assert (~is_held).sum() == 100 == counts[cls]["train_rows_used"]
    coll = out[out["fit_class"] == "collectives"]
    assert len(coll) == int((frame["fit_class"] == "collectives").sum())  # never subsampled
    again, _ = aic.training_subsample(frame.sample(frac=1.0, random_state=1), held, 100)
    assert set(again["shape_key"]) == set(out["shape_key"])  # by shape hash, not row order


def test_heldout_keys_are_a_fifth_of_each_class():
    df, _ = aic.read_rows_csv(SUBSET["h100_sxm"])
    frame, skipped = aic.model_rows(df)
    held = aic.heldout_keys(frame)
    for cls, keys in held.items():
        n = frame.loc[frame["fit_class"] == cls, "shape_key"].nunique()
        if cls == "collectives":
            n = frame.loc[(frame["fit_class"] == cls) & (frame["world_size"] > 1)].shape[0]
        assert len(keys) == int(math.floor(0.2 * n + 0.5))
    assert "allreduce custom" in skipped
    # power-law MoE rows carry rank 0's realised routing and are fitted and scored
    moe = frame[frame["fit_class"] == "grouped_gemm"]
    assert moe["routing"].astype(str).str.startswith("power_law").any()
    assert np.isfinite(pd.to_numeric(moe["assignments"], errors="coerce")).all()


def test_compact_fit_report_replaces_long_lists_by_a_digest():
    keys = [f"k{i}" for i in range(600)]
    report = {"classes": {"gemm": {"heldout_shape_keys": list(keys)},
                          "memory": {"heldout_shape_keys": ["a", "b"]}}}  # fmt: skip
    aic.compact_fit_report(report)
    g = report["classes"]["gemm"]
    assert g["heldout_shape_keys"] == [] and g["heldout_shape_keys_count"] == 600
    import hashlib

    assert (
        g["heldout_shape_keys_sha256"]
        == hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    )
    assert report["classes"]["memory"]["heldout_shape_keys"] == ["a", "b"]


def test_validate_from_rows_prints_the_keys_of_validate_dir(capsys):
    rc, out, err = cli(capsys, "validate", "--from", "aiconfigurator", "--rows",
                       str(SUBSET["h200_sxm"]), "--profile", "h200", "--json")  # fmt: skip
    assert rc == 0, err
    report = json.loads(out)
    rc, out_dir, err = cli(capsys, "validate", str(OURS_H200), "--profile", "h200", "--json")
    assert rc == 0, err
    ref = json.loads(out_dir)
    assert set(ref) - {"layers"} <= set(report)
    for cls in ("gemm", "grouped_gemm", "attention_prefill", "attention_decode", "collectives"):
        stats = report["classes"][cls]
        assert set(stats) == set(ref["classes"]["gemm"])
        assert stats["n"] > 0 and stats["median_abs_error"] <= stats["max_abs_error"]
    for kind in ("allgather", "reducescatter", "ep_dispatch", "ep_combine"):
        assert kind not in report["skipped"]  # priced by the fitted collective terms
    assert report["overall"]["n"] == sum(s["n"] for s in report["classes"].values())


def test_validate_heldout_only_scores_the_rule_split(capsys):
    df, _ = aic.read_rows_csv(SUBSET["h100_sxm"])
    frame, _ = aic.model_rows(df)
    rc, out, err = cli(capsys, "validate", "--from", "aiconfigurator", "--rows",
                       str(SUBSET["h100_sxm"]), "--profile", "h100-sxm", "--heldout-only",
                       "--json")  # fmt: skip
    assert rc == 0, err
    report = json.loads(out)
    assert report["heldout_only"] is True
    for cls in ("gemm", "attention_prefill", "attention_decode"):
        n_shapes = frame.loc[frame["fit_class"] == cls, "shape_key"].nunique()
        assert report["classes"][cls]["n"] == int(math.floor(0.2 * n_shapes + 0.5))
        keys = set(frame.loc[frame["fit_class"] == cls, "shape_key"])
        assert set(heldout_shapes(keys, 0.2, 0)) <= keys


def test_cross_check_by_hand():
    """Two measurements of the same GEMMs, one twice as slow: error 1.0, ratio 2, per shape."""
    ours = pd.read_csv(OURS_H200 / "gemm.csv")
    theirs = ours[ours["timing_method"] == "cuda_graph"].copy()
    theirs["median_s"] = theirs["median_s"] / 2.0
    theirs["source"] = "aiconfigurator-core 0.12.0 h200_sxm/gemm/trtllm/x/gemm_perf"
    report = aic.cross_check(OURS_H200, "h200_sxm", "trtllm", rows=theirs)
    g = report["classes"]["gemm"]
    graph = [v for k, v in g["by_impl"].items() if "cuda_graph" in k]
    assert sum(v["n"] for v in graph) == len(theirs)
    for v in graph:
        assert v["median_abs_error"] == pytest.approx(1.0) and v["median_ratio"] == pytest.approx(2)
    assert report["unmatched_ours"]["gemm"] == len(ours) - g["n"]


def test_validate_against_rows_json(capsys):
    rc, out, err = cli(capsys, "validate", str(OURS_H200), "--against", "aiconfigurator",
                       "--rows", str(SUBSET["h200_sxm"]), "--json")  # fmt: skip
    assert rc == 0, err
    report = json.loads(out)
    assert {"ours", "theirs", "classes", "unmatched_ours"} <= set(report)


# --- one-line errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["calibrate", "--from", "aiconfigurator", "--system", "h100_sxm", "--framework",
          "tensorrt", "--out", "x.yaml"], "unknown aiconfigurator framework 'tensorrt'"),
        (["calibrate", "--from", "elsewhere", "--out", "x.yaml"], "unknown --from source"),
        (["calibrate", str(OURS_H200), "--from", "aiconfigurator", "--out", "x.yaml"],
         "give one of a measurement directory, --published or --from"),
        (["calibrate", "--out", "x.yaml"], "missing measurement directory"),
        (["calibrate", "--from", "aiconfigurator", "--rows", str(SUBSET["h200_sxm"]),
          "--system", "h100_sxm", "--out", "x.yaml"], "rows of h200_sxm, not of --system h100_sxm"),
        (["validate", "--from", "aiconfigurator", "--rows", str(SUBSET["h200_sxm"])],
         "needs --profile"),
        (["validate", "--against", "aiconfigurator", "--rows", str(SUBSET["h200_sxm"])],
         "needs the measurement directory"),
        (["calibrate", "--from", "aiconfigurator", "--rows", "nowhere.csv.gz", "--out", "x.yaml"],
         "rows CSV not found"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(capsys, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, *args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err, err


def test_missing_package_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "aiconfigurator_core", None)
    with pytest.raises(MoesimError, match=r"pip install 'moesim\[aic\]'"):
        aic.data_root()
    rc, _, err = cli(capsys, "calibrate", "--from", "aiconfigurator", "--system", "h100_sxm",
                     "--out", str(tmp_path / "x.yaml"))  # fmt: skip
    assert (
        rc == 2
        and err == "error: aiconfigurator-core is not installed; pip install 'moesim[aic]'\n"
    )


def test_systems_without_a_moesim_profile_are_refused():
    from moesim.cli._aic import base_profile_for

    with pytest.raises(MoesimError, match="no moesim datasheet profile .*'gb200'.*h200_sxm"):
        base_profile_for("gb200")
    assert base_profile_for("h200_sxm") == "h200"


def test_version_pins_parse_and_refuse():
    assert aic.parse_version_pins(None) == {}
    assert aic.parse_version_pins("moe=1.3.0rc20,nccl=2.27.3") == {"moe": "1.3.0rc20",
                                                                   "nccl": "2.27.3"}  # fmt: skip
    assert set(aic.parse_version_pins("1.3.0rc20")) == {"gemm", "moe", "attention", "comm"}
    with pytest.raises(MoesimError, match="unknown version pin group 'mlp'"):
        aic.parse_version_pins("mlp=1")
    with pytest.raises(MoesimError, match="GROUP=VERSION"):
        aic.parse_version_pins("moe=")


# --- the installed wheel --------------------------------------------------------------------


@needs_aic
def test_unknown_system_is_one_line(capsys, tmp_path):
    rc, _, err = cli(capsys, "calibrate", "--from", "aiconfigurator", "--system", "h900_sxm",
                     "--out", str(tmp_path / "x.yaml"))  # fmt: skip
    assert rc == 2 and err.startswith("error: unknown aiconfigurator system 'h900_sxm'")
    assert err.count("\n") == 1 and "h200_sxm" in err


@needs_aic
def test_gemm_rows_by_hand(h100):
    df, prov = h100
    raw = parquet("h100_sxm/gemm/trtllm/1.3.0rc20/gemm_perf.parquet")
    r = raw.iloc[5000]  # fp8 768 x 51200 x 12288, 0.778955 ms
    assert (r.gemm_dtype, r.m, r.n, r.k) == ("fp8", 768, 51200, 12288)
    row = df[df["shape_key"] == "m768_n51200_k12288_fp8_torch_flow"].iloc[0]
    assert row.median_s == pytest.approx(r.latency / 1000.0)
    assert row.flops == 2 * 768 * 51200 * 12288
    assert row.hbm_bytes == (768 * 12288 + 12288 * 51200) * 1 + 768 * 51200 * 2  # fp8 in, bf16 out
    assert row["dtype"] == "fp8" and row["format"] == "fp8" and row.framework_version == "1.3.0rc20"
    assert row.source == "aiconfigurator-core 0.12.0 h100_sxm/gemm/trtllm/1.3.0rc20/gemm_perf"
    assert prov["tables"]["gemm_perf"]["rows_read"] == len(raw)


@needs_aic
def test_collective_and_ep_rows_by_hand(h100):
    df, _ = h100
    nccl = parquet("h100_sxm/comm/nccl/2.29.2/nccl_perf.parquet")
    r = nccl[(nccl.op_name == "all_reduce") & (nccl.num_gpus == 8) & (nccl.message_size == 1024)]
    for dtype, nbytes in (("half", 2048), ("int8", 1024)):  # 1024 elements
        src = r[r.nccl_dtype == dtype].iloc[0]
        row = df[df["shape_key"] == f"allreduce_w8_b{nbytes}_{dtype}_nccl"].iloc[0]
        assert row.message_bytes == nbytes and row.world_size == 8
        assert row.median_s == pytest.approx(src.latency * 1e-3)
    a2a = parquet("h100_sxm/comm/trtllm/1.3.0rc11/moe_a2a_perf.parquet").iloc[0]
    assert (a2a.phase, a2a.comm_backend, a2a.num_tokens) == ("combine", "trtllm_deepep_ht", 16)
    key = "ep_combine_deepep_normal_t16_h3072_k8_e256_ep8_n1_bfloat16_sms0"
    row = df[df["shape_key"] == key].iloc[0]
    assert row.median_s == pytest.approx(45.6216e-6)  # µs table
    assert (row.world_size, row.ep_size, row.tokens, row.global_experts) == (8, 8, 16, 256)


@needs_aic
def test_attention_and_moe_rows_by_hand(h100):
    df, prov = h100
    # prefill: b16, s8192, 96 heads, 1 kv head, d128, bf16: 53.49678 ms
    row = df[df["shape_key"] == "b16_s8192_h96_kv1_d128_bfloat16_kvbfloat16_torch_flow"].iloc[0]
    assert row.median_s == pytest.approx(53.49678e-3)
    assert row.flops == 4 * 16 * (8192 * 8193 / 2) * 96 * 128
    assert row.hbm_bytes == 16 * 8192 * 128 * (2 * 96 + 2 * 1) * 2
    # decode: b32, isl 1 + step 127 = 128 cached tokens, 64/64 heads, d64
    row = df[df["shape_key"] == "b32_c128_h64_kv64_d64_bfloat16_kvbfloat16_torch_flow"].iloc[0]
    assert row.median_s == pytest.approx(0.040896e-3)
    assert row.flops == 4 * 32 * 128 * 64 * 64
    assert row.hbm_bytes == 2 * 32 * 128 * 64 * 64 * 2 + 2 * 32 * 64 * 64 * 2
    # no sliding-window row came through
    assert prov["tables"]["context_attention_perf"]["dropped"]["window_size_nonzero"] > 0
    assert (pd.to_numeric(df["window_size"], errors="coerce").fillna(0) == 0).all()
    # MoE, balanced, 64 tokens, 512 experts / EP128 = 4 local, top-22, h1024, I 2688 / TP2,
    # non-gated: rank 0 gets 16 assignments on 4 active experts (windows j = 0, 19, 20, 21)
    key = "t64_e4of512_k22_h1024_i1344_tp2_ep128_balanced_bfloat16_moe_torch_flow_nongated"
    assert prov["tables"]["moe_perf"]["folder_version"] == "1.3.0rc20"  # the broad sweep
    moe, _ = aic.read_rows("h100_sxm", "trtllm", version="moe=1.3.0rc23", tables=["moe_perf"])
    row = moe[moe["shape_key"] == key].iloc[0]
    raw = parquet("h100_sxm/moe/trtllm/1.3.0rc23/moe_perf.parquet")
    src = raw[(raw.num_tokens == 64) & (raw.hidden_size == 1024) & (raw.moe_ep_size == 128)
              & (raw.moe_tp_size == 2) & (raw.distribution == "balanced")
              & (raw.moe_dtype == "bfloat16")]  # fmt: skip
    assert len(src) == 1 and row.median_s == pytest.approx(src.latency.iloc[0] * 1e-3)
    assert (row.assignments, row.n_active_experts, row.gated) == (16, 4, False)
    assert row.flops == 2 * 16 * 1024 * 1344 * 2
    assert row.hbm_bytes == 4 * 2 * 1024 * 1344 * 2 + 16 * (2 * 1024 + 1344 * 2 + 1344) * 2
    assert any(t["trap"] == "moe_single_rank" for t in prov["traps"])
    assert any(t["trap"] == "nccl_single_node" and t["world_sizes"] == [2, 4, 8]
               for t in prov["traps"])  # fmt: skip


@needs_aic
def test_deepep_copy_detector_on_the_real_tables():
    """h200_sxm's SGLang 0.5.6.post2 DeepEP tables repeat h100_sxm's latencies row for row."""
    for table in ("wideep_deepep_ll_perf", "wideep_deepep_normal_perf"):
        rel = f"comm/sglang/0.5.6.post2/{table}.parquet"
        h200, h100 = parquet(f"h200_sxm/{rel}"), parquet(f"h100_sxm/{rel}")
        assert sorted(h200["node_num"].unique()) == [1, 2, 4, 8]
        assert aic.find_copied_rows(h200, h100).all()
        nudged = h200.copy()
        lat = aic.latency_columns(h200.columns)[0]
        nudged.loc[nudged.index[nudged["node_num"] == 2][0], lat] *= 1.001
        flags = aic.find_copied_rows(nudged, h100)
        assert not flags[(nudged["node_num"] == 2).to_numpy()].any()  # one genuine row: kept
        assert flags[(nudged["node_num"] != 2).to_numpy()].all()
        own = parquet(f"h200_sxm/comm/sglang/0.5.12/{table}.parquet")
        assert not aic.find_copied_rows(
            own, parquet(f"h100_sxm/comm/sglang/0.5.12/{table}.parquet")
        ).any()
    df, prov = aic.read_rows(
        "h200_sxm", "sglang", version="comm=0.5.6.post2",
        tables=["wideep_deepep_ll_perf", "wideep_deepep_normal_perf"],
    )  # fmt: skip
    assert df.empty or not df["kernel_class"].str.startswith("ep_").any()
    copies = [t for t in prov["traps"] if t["trap"] == "relabelled_copy"]
    assert sorted(t["rows_dropped"] for t in copies) == [95, 437]
    assert prov["tables"]["wideep_deepep_ll_perf"]["dropped"] == {"copy_of_h100_sxm": 95}


@needs_aic
def test_folder_and_version_column_disagreement_is_recorded():
    """h100_sxm comm/nccl/2.27.3 holds rows whose version column says 2.29.2, each twice."""
    raw = parquet("h100_sxm/comm/nccl/2.27.3/nccl_perf.parquet")
    assert set(raw["version"]) == {"2.29.2"} and len(raw) == 1008
    df, prov = aic.read_rows("h100_sxm", "trtllm", version="nccl=2.27.3", tables=["nccl_perf"])
    trap = [t for t in prov["traps"] if t["trap"] == "version_mismatch"][0]
    assert trap["folder_version"] == "2.27.3" and trap["version_column"] == ["2.29.2"]
    assert set(df["framework_version"]) == {"2.29.2"}
    assert prov["tables"]["nccl_perf"]["dropped"] == {"duplicate_shape": 504}
    assert len(df) == 504
    key = raw.columns.drop(["latency"]).tolist()
    med = raw.groupby(key)["latency"].median()  # duplicates merged to their median
    r = med.reset_index().iloc[0]
    nbytes = r.message_size * {"half": 2, "int8": 1}[r.nccl_dtype]
    kind = aic.NCCL_CLASS[r.op_name]
    row = df[df["shape_key"] == f"{kind}_w{r.num_gpus}_b{nbytes}_{r.nccl_dtype}_nccl"].iloc[0]
    assert row.median_s == pytest.approx(r.latency * 1e-3)


@needs_aic
def test_version_choice_is_newest_and_pins_are_checked():
    assert aic.list_versions("h100_sxm", "comm", "sglang") == [
        "0.5.6.post2", "0.5.9", "0.5.10", "0.5.12", "0.5.14"]  # fmt: skip
    path, rec = aic.choose_folder("h100_sxm", "trtllm", "moe_a2a_perf", {})
    assert rec["folder_version"] == "1.3.0rc11"  # newest comm/trtllm folder holding the table
    with pytest.raises(MoesimError, match="has no version '9.9'"):
        aic.read_rows("h100_sxm", "trtllm", version="gemm=9.9")


@needs_aic
def test_reading_never_opens_the_silicon_sample(monkeypatch):
    import builtins
    import io
    import os

    import pyarrow.parquet as pq

    seen: list[str] = []

    def spy(real):
        def wrapped(*args, **kwargs):
            if args:
                seen.append(str(args[0]))
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    real_path_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: (seen.append(str(self)),
                                                               real_path_open(self, *a, **k))[1])  # fmt: skip
    for name in ("ParquetFile", "read_table", "read_metadata", "read_schema"):
        monkeypatch.setattr(pq, name, spy(getattr(pq, name)))
    monkeypatch.setattr(pd, "read_csv", spy(pd.read_csv))
    monkeypatch.setattr(pd, "read_parquet", spy(pd.read_parquet))
    for system in ("h100_sxm", "h200_sxm"):
        aic.read_rows(system, "trtllm")
    assert any(p.endswith("gemm_perf.parquet") for p in seen)
    assert any(p.endswith("collection_meta.yaml") for p in seen)
    assert not [p for p in seen if "silicon" in p.lower()]


@needs_aic
def test_every_supported_system_reads(h100):
    for system in aic.PROFILE_OF:
        if system in aic.list_systems():
            df, prov = aic.read_rows(system, "trtllm", tables=["gemm_perf", "nccl_perf"])
            assert len(df) and prov["tables"]


@pytest.mark.slow
def test_calibrate_from_rows_writes_a_loadable_profile(capsys, tmp_path):
    from moesim.spec.hardware import load_hardware

    out = tmp_path / "h200.sub.yaml"
    # the table output (not --json): per-format parameter blocks of the shape model
    rc, table, err = cli(capsys, "calibrate", "--from", "aiconfigurator", "--rows",
                         str(SUBSET["h200_sxm"]), "--out", str(out))  # fmt: skip
    assert rc == 0, err
    assert "wrote" in table and "held-out" in table and "bf16" in table
    assert "fitting gemm" in err and "fitted gemm in" in err
    hw = load_hardware(out)
    assert hw.measurement["base_profile"] == "h200"
    assert "aiconfigurator" in hw.measurement
    rc, o, err = cli(capsys, "validate", "--from", "aiconfigurator", "--rows",
                     str(SUBSET["h200_sxm"]), "--profile", str(out), "--heldout-only", "--json")  # fmt: skip
    assert rc == 0, err
    report = json.loads(o)
    fit = hw.efficiency.fit_report["classes"]
    for cls, stats in report["classes"].items():
        assert stats["n"] == fit[cls]["n_heldout"]
        assert stats["median_abs_error"] == pytest.approx(fit[cls]["heldout"]["median_abs_error"],
                                                          abs=1e-6)  # fmt: skip
    assert set(report["aiconfigurator"]["heldout"]["check_against_profile"].values()) == {
        "same split as the fit"
    }


def test_validate_notes_a_profile_fitted_on_another_moe_kernel(capsys):
    rc, out, err = cli(capsys, "validate", "--from", "aiconfigurator", "--rows",
                       str(SUBSET["h200_sxm"]), "--profile", "h200.measured", "--json")  # fmt: skip
    assert rc == 0, err
    report = json.loads(out)
    assert "grouped_gemm" not in report["classes"]
    assert "represents triton" in report["skipped"]["grouped_gemm"]


def test_the_engines_default_moe_kernel_is_fitted_per_format():
    """vLLM and SGLang run their fused Triton MoE by default (FlashInfer CUTLASS is opt-in),
    TensorRT-LLM its CUTLASS MoE: the block of each format represents that kernel; a format
    timed only with an opt-in backend is not fitted."""
    pick = aic.engine_default_moe_impl
    assert pick(["sglang_flashinfer_cutlass_moe", "sglang_fused_moe_triton"]) == (
        "sglang_fused_moe_triton"
    )
    assert pick(["vllm_fp8moe_flashinfer_cutlass_flashinferexperts",
                 "vllm_fp8moe_triton_tritonexperts"]) == "vllm_fp8moe_triton_tritonexperts"  # fmt: skip
    assert pick(["moe_torch_flow_cutlass", "moe_torch_flow_nongated"]) == "moe_torch_flow_cutlass"
    assert pick(["vllm_modeloptfp8moe_flashinfer_cutlass_flashinferexperts"]) is None
    assert pick(["moe_torch_flow"]) == "moe_torch_flow"  # TensorRT-LLM 1.0's name for it
    assert pick(["moe_torch_flow_nongated"]) is None
    assert pick([]) is None
