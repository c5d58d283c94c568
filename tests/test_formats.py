"""Checkpoint-native number formats: bytes with their scales, where each format computes, what
is refused, and that a prediction with no --dtype uses the checkpoint's formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.cost.ops import step_ops
from moesim.errors import MoesimError
from moesim.spec.deployment import Layout
from moesim.spec.dtypes import canonical_dtype, compute_choice, dtype_bytes, resolve_formats
from moesim.spec.hardware import load_hardware
from moesim.spec.model import checkpoint_format, load_model

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def test_bytes_per_element_include_the_scales():
    # hand arithmetic from each format's layout
    assert dtype_bytes("mxfp4") == pytest.approx((4 + 8 / 32) / 8)  # e8m0 per 32 values
    assert dtype_bytes("nvfp4") == pytest.approx((4 + 8 / 16) / 8)  # e4m3 per 16 values
    assert dtype_bytes("fp8-block") == pytest.approx(1 + 4 / (128 * 128))  # fp32 per 128x128
    assert dtype_bytes("int4-awq") == pytest.approx((4 + (16 + 4) / 128) / 8)  # scale+zero/128
    assert dtype_bytes("int4-gptq") == dtype_bytes("int4-awq")
    assert canonical_dtype("AWQ") == "int4-awq" and canonical_dtype("bfloat16") == "bf16"


def test_presets_carry_their_checkpoint_formats():
    gpt = load_model("gpt-oss-120b").native_format
    assert gpt.weight_dtype == "mxfp4"
    assert set(gpt.unquantized) == {"attention", "router", "embedding", "lm_head"}
    ds = load_model("deepseek-v3").native_format
    assert (ds.weight_dtype, ds.kv_dtype) == ("fp8-block", "bf16")
    assert load_model("llama-2-7b").native_format.weight_dtype == "fp16"
    assert load_model("mixtral-8x7b").native_format.weight_dtype == "bf16"


@pytest.mark.parametrize(
    "model,published_gib",
    # gpt-oss model card (arXiv:2508.10925) Table 1: checkpoint sizes 60.8 and 12.8 GiB
    [("gpt-oss-120b", 60.8), ("gpt-oss-20b", 12.8)],
)
def test_checkpoint_size_matches_the_model_card(model, published_gib):
    size_gib = load_model(model).checkpoint_bytes / GIB
    err = abs(size_gib - published_gib) / published_gib
    print(f"{model}: {size_gib:.2f} GiB vs {published_gib} GiB published ({err:.1%})")
    assert err < 0.01


def test_quantization_configs_map_to_formats():
    assert checkpoint_format("bfloat16", {"quant_method": "awq", "bits": 4}).weight_dtype == (
        "int4-awq"
    )
    fp4 = checkpoint_format(
        None, {"quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}
    )
    assert (fp4.weight_dtype, fp4.kv_dtype) == ("nvfp4", "fp8")
    with pytest.raises(MoesimError, match="not modelled"):
        checkpoint_format(None, {"quant_method": "bitsandbytes"})
    with pytest.raises(MoesimError, match="not modelled"):
        checkpoint_format(None, {"quant_method": "fp8", "weight_block_size": [64, 64]})


@pytest.mark.parametrize(
    "fmt,hw,compute,weight_only",
    [
        ("mxfp4", "h100-sxm", "bf16", True),  # Hopper: no fp4 MMA, dequantised
        ("mxfp4", "b200", "fp8", False),  # Blackwell: MXFP4 x MXFP8 MMAs
        ("nvfp4", "b200", "fp4", False),  # W4A4
        ("nvfp4", "h200", "bf16", True),
        ("fp8-block", "h800", "fp8", False),
        ("fp8", "a100-sxm-80gb", "bf16", True),  # FP8 Marlin W8A16
        ("int4-awq", "h100-sxm", "bf16", False),  # W4A16 by design
        ("fp4", "b200", "fp4", False),
    ],
)
def test_where_each_format_computes(fmt, hw, compute, weight_only):
    choice = compute_choice(fmt, load_hardware(hw).peak_flops_per_s, hw)
    assert (choice.dtype, choice.weight_only) == (compute, weight_only)


def test_refused_combinations_say_why():
    with pytest.raises(MoesimError, match="needs fp4 tensor cores; h100-sxm has"):
        compute_choice("fp4", load_hardware("h100-sxm").peak_flops_per_s, "h100-sxm")
    with pytest.raises(MoesimError, match="not a KV-cache format"):
        Layout(kv_dtype="fp4")
    with pytest.raises(MoesimError, match="dispatch_dtype"):
        Layout(dispatch_dtype="mxfp4")


def test_kept_parts_read_bf16_and_experts_read_mxfp4():
    """gpt-oss in its own format: attention bytes as bf16, expert bytes at 4.25 bits."""
    m, hw = load_model("gpt-oss-120b"), load_hardware("b200")

    def bytes_of(layout, name):
        ops, _ = step_ops(m, hw, layout, "decode", seqs=1, new_tokens=1, context=128)
        return float(next(o for o in ops if o.name == name).hbm_bytes)

    native, bf16 = Layout(weight_dtype="mxfp4"), Layout(weight_dtype="bf16")
    assert bytes_of(native, "attn.qkv") == pytest.approx(bytes_of(bf16, "attn.qkv"))
    # one token, top-4: weights dominate the expert op; ratio of weight bytes 4.25 / 16
    ratio = bytes_of(native, "moe.experts") / bytes_of(bf16, "moe.experts")
    assert ratio == pytest.approx(4.25 / 16, rel=0.01)
    # another format chosen explicitly quantises attention too (online quantisation)
    fp8 = Layout(weight_dtype="fp8")
    assert bytes_of(fp8, "attn.qkv") < 0.6 * bytes_of(bf16, "attn.qkv")


def test_weight_only_int4_speeds_decode_not_prefill():
    from moesim.engine.static import predict_phase

    m, hw = load_model("llama-3.1-8b"), load_hardware("h100-sxm")
    dec = {
        d: float(predict_phase(m, hw, Layout(weight_dtype=d), phase="decode", batch=1)["tpot_s"])
        for d in ("bf16", "int4-awq")
    }
    pre = {
        d: float(
            predict_phase(m, hw, Layout(weight_dtype=d), phase="prefill", batch=8, input_len=4096)[
                "ttft_s"
            ]
        )
        for d in ("bf16", "int4-awq")
    }
    assert dec["int4-awq"] < 0.5 * dec["bf16"]  # reads ~0.26x the weight bytes
    assert pre["int4-awq"] == pytest.approx(pre["bf16"], rel=0.1)  # same bf16 MMAs


def test_resolve_formats_defaults_to_the_checkpoint():
    f = resolve_formats(load_model("gpt-oss-120b"), load_hardware("h100-sxm"))
    assert (f.weight_dtype, f.weight_origin, f.kv_dtype) == ("mxfp4", "checkpoint", "bf16")
    assert f.compute.weight_only
    g = resolve_formats(load_model("gpt-oss-120b"), load_hardware("h100-sxm"), "fp8", "fp8")
    assert (g.weight_origin, g.kv_origin, g.kept) == ("--dtype", "--kv-dtype", ())


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "moesim", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_predict_without_dtype_uses_and_reports_the_checkpoint_format():
    p = _cli("predict", "--model", "gpt-oss-120b", "--hardware", "h100-sxm", "--batch", "8",
             "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["formats"]["weight_dtype"] == "mxfp4"
    assert r["formats"]["weight_dtype_origin"] == "checkpoint"
    assert r["feasible"] and r["weights_bytes_per_gpu"] < 70e9  # one 80 GB H100 holds it
    table = _cli("predict", "--model", "gpt-oss-120b", "--hardware", "h100-sxm", "--batch", "8")
    assert "formats: weights mxfp4 (checkpoint" in table.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (("--kv-dtype", "fp4"), "error: kv_dtype 'fp4' is not a KV-cache format"),
        (("--dtype", "fp4"), "error: dtype fp4"),
        (("--dtype", "fp5"), "error: unknown dtype"),
    ],
)
def test_cli_refusals_are_one_line(args, message):
    p = _cli("predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--batch", "1", *args)
    assert p.returncode == 2
    assert p.stderr.startswith(message) and p.stderr.count("\n") == 1, p.stderr


def test_price_and_memory_overrides():
    base = json.loads(_cli("predict", "-m", "llama-3.1-8b", "-H", "h100-sxm", "-b", "8",
                           "--json").stdout)  # fmt: skip
    cheap = json.loads(_cli("predict", "-m", "llama-3.1-8b", "-H", "h100-sxm", "-b", "8",
                            "--price-usd-per-hour", "1.2", "--gpu-memory-utilization", "0.5",
                            "--json").stdout)  # fmt: skip
    assert cheap["price_usd_per_hour"] == 1.2
    ratio = cheap["usd_per_million_output_tokens"] / base["usd_per_million_output_tokens"]
    assert ratio == pytest.approx(1.2 / base["price_usd_per_hour"])
    assert cheap["layout"]["memory_utilization"] == 0.5
    assert cheap["max_concurrency"] < base["max_concurrency"]
    assert np.isfinite(cheap["tpot_s"]) and cheap["tpot_s"] == base["tpot_s"]


def test_dense_models_report_no_moe_fields():
    dense = json.loads(_cli("predict", "-m", "llama-3.1-8b", "-H", "h100-sxm", "-b", "8",
                            "--json").stdout)  # fmt: skip
    assert not {"max_load_ratio", "active_experts", "padding_waste", "drop_rate"} & set(dense)
    moe = json.loads(_cli("predict", "-m", "mixtral-8x7b", "-H", "h100-sxm", "--tp", "2", "-b",
                          "8", "--json").stdout)  # fmt: skip
    assert moe["padding_overhead"] == moe["padding_waste"]  # the old key still works
