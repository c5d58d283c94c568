"""Pipeline parallelism: an unsplit prompt crosses the stages one after another, a static batch
fills the pipeline in micro-batches (GPipe), decode keeps every stage busy."""

from __future__ import annotations

import pytest

from moesim.cost.ops import routing_or_default
from moesim.cost.step import step
from moesim.engine import static
from moesim.engine.inflight import predict_inflight
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

HW, RO = load_hardware("h100-sxm"), routing_or_default(None)


@pytest.mark.parametrize(
    "name, tp", [("llama-2-70b", 2), ("mixtral-8x7b", 2), ("qwen3-30b-a3b", 1)]
)
def test_single_request_ttft_never_falls_as_pp_rises(name, tp):
    m = load_model(name)
    last_static = last_inflight = 0.0
    for pp in (1, 2, 4, 8):
        lay = Layout(tp=tp, pp=pp, ep=tp if m.is_moe else 1)
        s = float(
            static.predict(m, HW, lay, batch=1, input_len=8192, output_len=2, routing=RO)["ttft_s"]
        )
        i = float(predict_inflight(m, HW, lay, concurrency=1, input_len=8192, output_len=2,
                                   routing=RO)["ttft_s"])  # fmt: skip
        assert s >= last_static * (1 - 1e-9) and i >= last_inflight * (1 - 1e-9), (pp, s, i)
        last_static, last_inflight = s, i


def test_static_batch_fills_the_pipeline_like_gpipe():
    """m = pp = 4 micro-batches of one prompt each: the last first token at (pp + m - 1) stage
    cycles, a cycle being a quarter of the unsplit model's time for one prompt (plus the sends and
    the per-step LM head, a few per cent here)."""
    m = load_model("llama-2-70b")
    one = step(m, HW, Layout(tp=2), "prefill", 1.0, 2048, 0.0, RO, 1.0).time_s
    got = static.predict(m, HW, Layout(tp=2, pp=4), batch=4, input_len=2048, output_len=2,
                         routing=RO)["ttft_s"]  # fmt: skip
    assert float(got) == pytest.approx((4 + 4 - 1) / 4 * float(one), rel=0.03)


def test_decode_keeps_every_stage_busy():
    """Decode throughput with pp stages: each of pp micro-batches advances once per pipeline
    latency, so tokens/s per GPU is close to pp=1's at the same sequences per stage."""
    m = load_model("llama-2-70b")
    one = static.predict_phase(m, HW, Layout(tp=2), phase="decode", batch=64, context_len=1024)
    four = static.predict_phase(m, HW, Layout(tp=2, pp=4), phase="decode", batch=256,
                                context_len=1024)  # fmt: skip
    ratio = float(four["decode_tokens_per_s_per_gpu"]) / float(one["decode_tokens_per_s_per_gpu"])
    assert 0.8 < ratio <= 1.0


def test_chunked_prompt_pipelines_through_the_stages():
    """An 8192-token prompt in 1024-token chunks (c = 8) on 4 stages: (pp + c - 1) = 11 stage
    cycles, a cycle being a quarter of one chunk's time on one stage group (pp = 1)."""
    m = load_model("llama-2-70b")
    one = predict_inflight(m, HW, Layout(tp=2), concurrency=1, input_len=8192, output_len=2,
                           token_budget=1024, routing=RO)["ttft_s"]  # fmt: skip
    four = predict_inflight(m, HW, Layout(tp=2, pp=4), concurrency=1, input_len=8192,
                            output_len=2, token_budget=1024, routing=RO)["ttft_s"]  # fmt: skip
    assert float(four) == pytest.approx((4 + 8 - 1) / 4 * float(one) / 8, rel=0.03)
