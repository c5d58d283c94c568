"""Speculative decoding (MTP heads, draft models): expected accepted tokens against Monte Carlo,
the cost of drafting and verifying, and the CLI / JSON contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moesim.cli import app
from moesim.cost import speculative as spec
from moesim.cost.ops import routing_or_default
from moesim.engine import static as serving
from moesim.errors import MoesimError
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

H100 = load_hardware("h100-sxm")
ROUTING = routing_or_default(None)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(1, 8))
def test_expected_tokens_against_monte_carlo(p, n):
    """Chained drafts stop at the first rejection; the target always adds its own token."""
    rng = np.random.default_rng(7)
    accept = rng.random((20000, n)) < p
    run = np.cumprod(accept, axis=1).sum(axis=1)  # accepted drafts before the first rejection
    mc = 1.0 + run.mean()
    assert float(spec.expected_tokens_per_step(p, n)) == pytest.approx(mc, abs=0.05)


def test_expected_tokens_edges_and_published_default():
    assert spec.expected_tokens_per_step(0.0, 3) == 1.0
    assert spec.expected_tokens_per_step(1.0, 3) == 4.0
    # one MTP token at DeepSeek-V3's 85-90 % second-token acceptance: 1.85-1.9 tokens per step
    assert 1.85 <= spec.expected_tokens_per_step(spec.MTP_ACCEPTANCE_RATE, 1) <= 1.9


def test_mtp_step_costs_draft_and_verify_and_speeds_up_small_batch():
    m = load_model("deepseek-v2-lite")
    lay = Layout(tp=2)
    plain = serving.predict_phase(m, H100, lay, phase="decode", batch=1, context_len=2048,
                                  routing=ROUTING)  # fmt: skip
    s = spec.Speculation("mtp", 3)
    step = spec.speculative_step(m, H100, lay, s, 1.0, 2048.0, ROUTING)
    assert step.verify_s > plain["tpot_s"]  # 4 tokens per sequence cost more than one
    assert step.draft_s > 0 and step.step_s == pytest.approx(step.verify_s + step.draft_s)
    # each draft pass is about one decoder layer + LM head: far less than a full step
    assert step.draft_s / 3 < plain["tpot_s"] / 4
    r = serving.predict_phase(m, H100, lay, phase="decode", batch=1, context_len=2048,
                              routing=ROUTING, speculation=s)  # fmt: skip
    assert r["accepted_tokens_per_step"] == pytest.approx(spec.expected_tokens_per_step(0.875, 3))
    assert r["tpot_s"] == pytest.approx(r["speculative_step_s"] / r["accepted_tokens_per_step"])
    assert r["output_tokens_per_s_per_user"] > plain["output_tokens_per_s_per_user"]
    assert r["tpot_s"] >= r["tpot_floor_s"]
    # no acceptance: every step yields one token and costs more than plain decoding
    none = serving.predict_phase(m, H100, lay, phase="decode", batch=1, context_len=2048,
                                 routing=ROUTING, speculation=spec.Speculation("mtp", 3, 0.0))  # fmt: skip
    assert none["tpot_s"] > plain["tpot_s"]


def test_verification_attends_causally_over_the_new_tokens():
    """Verifying N drafts reads the KV cache once but does (N+1) queries' attention work."""
    from moesim.cost.ops import step_ops

    m = load_model("llama-3.1-8b")
    ops1, _ = step_ops(m, H100, Layout(), "decode", 4, 1, 1000)
    ops4, _ = step_ops(m, H100, Layout(), "decode", 4, 4, 1000)
    core1 = next(o for o in ops1 if o.name == "attn.core")
    core4 = next(o for o in ops4 if o.name == "attn.core")
    assert float(core4.flops) == pytest.approx(float(core1.flops) * (1001 + 1002 + 1003 + 1004)
                                               / 1001)  # fmt: skip
    kv_read = lambda o: float(o.hbm_bytes)  # noqa: E731
    assert kv_read(core4) / kv_read(core1) < 1.05  # cache read once, not four times


def test_draft_model_speculation_and_errors():
    target, draft = load_model("llama-3.1-70b"), load_model("llama-3.1-8b")
    lay = Layout(tp=4)
    s = spec.Speculation("draft", 4, draft_model=draft)
    step = spec.speculative_step(target, H100, lay, s, 1.0, 1000.0)
    assert step.draft_s > 0 and float(step.tokens_per_step) == pytest.approx(
        spec.expected_tokens_per_step(spec.DRAFT_ACCEPTANCE_RATE, 4)
    )
    for bad in (dict(method="eagle", num_tokens=2), dict(method="mtp", num_tokens=0),
                dict(method="mtp", num_tokens=2, acceptance_rate=1.5),
                dict(method="draft", num_tokens=2)):  # fmt: skip
        with pytest.raises(MoesimError):
            spec.Speculation(**bad)


runner = CliRunner()
BASE = ["predict", "-m", "deepseek-v2-lite", "-H", "h100-sxm", "--tp", "2", "--batch", "1",
        "--input-len", "512", "--output-len", "128"]  # fmt: skip


def test_cli_mtp_json_keys():
    r = runner.invoke(app, BASE + ["--mtp", "2", "--acceptance-rate", "0.8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["accepted_tokens_per_step"] == pytest.approx(1 + 0.8 + 0.64)
    assert out["speculative_method"] == "mtp" and out["speculative_tokens"] == 2
    for key in ("speculative_step_s", "draft_s", "verify_s", "tpot_s"):
        assert out[key] > 0


@pytest.mark.parametrize(
    "extra",
    [
        ["--mtp", "2", "--spec-draft", "llama-3.1-8b"],
        ["--spec-tokens", "3"],
        ["--acceptance-rate", "0.5"],
        ["--spec-draft", "llama-3.1-8b"],
        ["--spec-draft", "llama-3.1-8b", "--spec-tokens", "2"],  # other tokenizer
        ["--mtp", "2", "--phase", "prefill"],
    ],
)
def test_cli_speculation_errors_are_one_line(extra):
    r = runner.invoke(app, BASE + extra)
    assert r.exit_code != 0
    assert "Traceback" not in r.output
