"""MLA decode (DeepSeek-V3's latent attention) as its own kernel class: FLOPs and bytes by hand
from config.json, the importer's rows, the split-KV CTA grid, and the fallback for profiles
that do not calibrate the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.calibrate.aic import convert_generation_mla
from moesim.cost import kernel_cost
from moesim.cost.roofline import RooflineParams, mla_decode_rows
from moesim.spec.hardware import load_hardware

# DeepSeek-V3 config.json: kv_lora_rank 512, qk_rope_head_dim 64
R, ROPE = 512, 64


def test_mla_decode_flops_and_bytes_by_hand():
    hw = load_hardware("h100-sxm")
    res = kernel_cost.mla_decode_cost(hw, 2, 1000, 16, "bf16")
    # scores over the 576-wide latent and a 512-wide value sum: 2 x 2 x 1000 x 16 x (576 + 512)
    assert res["flops"] == pytest.approx(2 * 2 * 1000 * 16 * (576 + 512))
    # the latent cache read once (2 seqs x 1000 keys x 576 x 2 bytes) + queries / outputs
    assert res["hbm_bytes"] == pytest.approx(2 * 1000 * 576 * 2 + 2 * 16 * (2 * R + ROPE) * 2)
    fp8 = kernel_cost.mla_decode_cost(hw, 2, 1000, 16, "fp8")
    assert fp8["hbm_bytes"] == pytest.approx(2 * 1000 * 576 * 1 + 2 * 16 * (2 * R + ROPE) * 2)


def test_importer_rows_by_hand():
    raw = pd.DataFrame(
        {
            "framework": ["TRTLLM"] * 2, "version": ["1.3.0rc20"] * 2, "device": ["H100"] * 2,
            "kernel_source": ["default"] * 2, "mla_dtype": ["bfloat16"] * 2,
            "kv_cache_dtype": ["bfloat16", "fp8"], "num_heads": [128, 16],
            "batch_size": [64, 1], "isl": [1, 1], "step": [4095, 0], "latency": [0.25, 0.012],
        }
    )  # fmt: skip
    out, why = convert_generation_mla(raw)
    assert why == {}
    assert list(out["kernel_class"]) == ["attention_decode_mla"] * 2
    assert list(out["context_len"]) == [4096, 1]  # isl + step tokens in the cache
    assert list(out["format"]) == ["bfloat16", "fp8"]  # one block per cache format
    assert out["flops"].iloc[0] == pytest.approx(2 * 64 * 4096 * 128 * (2 * R + ROPE))
    assert out["hbm_bytes"].iloc[1] == pytest.approx(1 * 1 * 576 * 1 + 1 * 16 * 1088 * 2)
    assert out["median_s"].iloc[0] == pytest.approx(0.25e-3)  # AIC latency is in ms


def test_split_kv_grid_by_hand():
    params = RooflineParams(
        compute_efficiency=1.0, memory_efficiency=1.0, launch_overhead_s=0.0,
        decode_split_kv_tokens=128, decode_split_kv_target_waves=8.0,
    )  # fmt: skip
    # 1 sequence, 128 heads (2 CTAs of 64), 4096 keys: 32 chunks; 2 x 32 / 132 < 8 waves
    assert mla_decode_rows(1, 128, 4096, params, 132) == 32
    # 256 sequences x 2 x 32 = 16384 CTAs = 124 waves; /8 = 15.5 -> floor(32 / 15.5) = 2 chunks
    assert mla_decode_rows(256, 128, 4096, params, 132) == 256 * 2


def test_profile_without_an_mla_block_prices_it_as_decode_attention():
    hw = load_hardware("h100-sxm")
    assert hw.efficiency.attention_decode_mla is None
    assert hw.efficiency.for_class("attention_decode_mla") is hw.efficiency.attention_decode


def test_deepseek_decode_step_prices_attention_as_mla_by_hand():
    """The step model's MLA decode core: the hand FLOPs of 32 sequences x 2,048 keys at TP8
    (16 heads per GPU), in the MLA class."""
    from moesim.cost.ops import routing_options
    from moesim.cost.step import step
    from moesim.spec.deployment import Layout
    from moesim.spec.model import load_model

    hw = load_hardware("h100-sxm.trtllm")
    res = step(load_model("deepseek-v3"), hw, Layout(tp=8), "decode", 32, 1, 2048,
               routing_options())  # fmt: skip
    core = next(t for t in res.ops if t.name == "attn.core")
    assert core.kernel_class == "attention_decode_mla"
    per_layer = 2 * 32 * (2048 + 1) * 16 * (2 * R + ROPE)  # the new token attends to itself too
    assert float(core.flops) == pytest.approx(per_layer * 61)  # 61 layers, one stage
    alone = kernel_cost.mla_decode_cost(hw, 32, 2048 + 1, 16, "bf16")["latency_s"]
    assert float(core.time_s) == pytest.approx(float(alone) * 61, rel=1e-3)


def test_fitted_mla_block_beats_the_datasheet_and_the_gqa_block():
    """On the committed subset's held-out MLA rows the fitted class is closer to the
    measurements than the datasheet profile and than pricing MLA with the GQA decode block."""
    from moesim.calibrate.aic import model_rows, read_rows_csv
    from moesim.calibrate.predict import predict_rows

    raw, _ = read_rows_csv(Path(__file__).parent / "data" / "aic" / "h100_sxm_trtllm.csv.gz")
    df, _ = model_rows(raw)
    part = df[(df["fit_class"] == "attention_decode_mla") & df["heldout"].astype(str).eq("True")]
    part = part.reset_index(drop=True)
    assert len(part) >= 50
    meas = part["median_s"].to_numpy()
    fitted = load_hardware("h100-sxm.trtllm")
    assert fitted.efficiency.attention_decode_mla is not None
    gqa = fitted.with_efficiency(
        fitted.efficiency.model_copy(update={"attention_decode_mla": None}).model_dump()
    )
    errs = {
        name: float(np.median(np.abs(predict_rows(hw, part) / meas - 1.0)))
        for name, hw in (
            ("fitted", fitted), ("gqa", gqa), ("datasheet", load_hardware("h100-sxm"))
        )
    }  # fmt: skip
    assert errs["fitted"] < errs["gqa"] and errs["fitted"] < errs["datasheet"], errs
