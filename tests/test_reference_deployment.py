"""Memory per GPU and fit against hand arithmetic and published deployment facts (complements
test_deployment.py, whose checks compare the model with itself)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.engine import static as serving
from moesim.spec.deployment import Layout, check_layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

H100, H200 = load_hardware("h100-sxm"), load_hardware("h200")
LLAMA2_70B_PARAMS = 68_976_648_192  # HF safetensors index: 137,953,296,384 bytes in bf16
GB = 1e9


def _predict(model, hw, batch=1, input_len=1024, output_len=256, **layout):
    return serving.predict(
        load_model(model), hw, Layout(**layout), batch=batch, input_len=input_len,
        output_len=output_len,
    )  # fmt: skip


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_weights_per_gpu_are_params_times_bytes_over_tp(tp):
    r = _predict("llama-2-70b", H100, tp=tp)
    hand = LLAMA2_70B_PARAMS * 2 / tp  # bf16; every matrix (and the vocab) split over TP
    assert float(r["weights_bytes_per_gpu"]) == pytest.approx(hand, rel=2e-4)  # norms replicate


def test_pipeline_stage_holds_its_layers_and_one_embedding_end():
    r = _predict("llama-2-70b", H100, pp=2)
    h, V, L = 8192, 32000, 80
    per_layer = 855_654_400  # q, k, v, o, gate, up, down, two norms (see test_reference_cost)
    lo = (L // 2) * per_layer * 2  # 40 layers
    hi = lo + 2 * V * h * 2 + 2 * h  # ... plus the embedding and the LM head at most
    assert lo <= float(r["weights_bytes_per_gpu"]) <= hi


@pytest.mark.parametrize(("batch", "ctx", "tp"), [(1, 4096, 1), (16, 2048, 2), (64, 1024, 8)])
def test_kv_cache_per_gpu_by_hand(batch, ctx, tp):
    r = _predict("llama-2-70b", H100, batch=batch, input_len=ctx - 256, output_len=256, tp=tp)
    kv_heads_per_gpu = 8 / tp  # 8 KV heads split over TP (tp <= 8)
    hand = batch * ctx * 2 * 80 * kv_heads_per_gpu * 128 * 2  # K and V, 80 layers, bf16
    assert float(r["kv_cache_bytes_per_gpu"]) == pytest.approx(hand, rel=1e-9)


@pytest.mark.parametrize(
    ("model", "hw", "layout", "dtype", "fits", "why"),
    [
        ("llama-2-70b", H100, {"tp": 1}, "bf16", False, "138 GB of bf16 weights > 80 GB"),
        ("llama-2-70b", H100, {"tp": 2}, "bf16", True, "69 GB per GPU < 72 GB usable"),
        ("mixtral-8x7b", H100, {"tp": 1}, "bf16", False, "93.4 GB > 80 GB"),
        ("mixtral-8x7b", H100, {"tp": 2}, "bf16", True, "46.7 GB per GPU"),
        # DeepSeek-V3: 671 B parameters, ~690 GB in fp8 with its bf16 parts; SGLang serves it on
        # one 8 x H200 node, while 8 x H100 (640 GB) needs a second node.
        ("deepseek-v3", H100, {"tp": 8}, "fp8", False, "~690 GB > 8 x 80 GB"),
        ("deepseek-v3", H200, {"tp": 8}, "fp8", True, "~690 GB < 8 x 141 GB"),
    ],
)
def test_published_fit_facts(model, hw, layout, dtype, fits, why):
    r = serving.predict(
        load_model(model), hw, Layout(weight_dtype=dtype, **layout), batch=1, input_len=1024,
        output_len=256,
    )  # fmt: skip
    assert bool(r["feasible"]) is fits, (why, r["reason"])


def test_max_concurrency_is_free_memory_over_kv_per_sequence():
    """Llama-3.1-8B on one H100: 90 % of the 79.11 GiB the CUDA runtime reports usable, 16.06 GB
    of weights, 131,072 KV bytes per token (32 layers x 8 KV heads x 128 x 2 x 2 B), 1,280
    tokens per sequence."""
    r = _predict("llama-3.1-8b", H100, batch=1, input_len=1024, output_len=256)
    params = 8_030_261_248  # meta-llama/Llama-3.1-8B model card / safetensors index
    free = 0.9 * 79.11 * 2**30 - params * 2  # cudaMemGetInfo total of an H100 80GB HBM3
    per_seq = 1280 * 32 * 8 * 128 * 2 * 2
    hand = free / per_seq  # ~333; activations of the running batch take a little more
    assert 0.9 * hand <= float(r["max_concurrency"]) <= hand


def test_divisibility_rules_as_engines_state_them():
    """vLLM: attention heads must split evenly over TP; KV heads split or replicate."""
    m = load_model("llama-2-70b")  # 64 heads, 8 KV heads
    ok, reason = check_layout(m, Layout(tp=np.array([1, 2, 3, 8, 16, 64, 128])))
    assert ok.tolist() == [True, True, False, True, True, True, False]
    assert "64 attention heads" in reason[2]
    mix = load_model("mixtral-8x7b")  # 8 experts
    ok, _ = check_layout(mix, Layout(tp=8, ep=np.array([1, 2, 4, 8, 3])))
    assert ok.tolist() == [True, True, True, True, False]
