"""Prefill/decode disaggregation: spec parsing, KV transfer, pool sizing, and the predict CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.engine.disagg import parse_spec, predict_disaggregated
from moesim.errors import MoesimError
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

M, HW = load_model("deepseek-v3"), load_hardware("h800")
SPEC = "prefill=tp8,pp2,dtype=fp8,kv=fp8;decode=tp1,dp16,ep16,dtype=fp8,kv=fp8"
runner = CliRunner()


def test_parse_spec_tokens_and_hardware():
    pools = parse_spec(
        "prefill=tp8,pp2,x3;decode=tp1,dp16,ep16,hw=h200,kv=fp8,overlap=two-batch", HW
    )
    p, d = pools["prefill"], pools["decode"]
    assert (p.layout.tp, p.layout.pp, p.instances, p.hw.name) == (8, 2, 3, "h800")
    assert (d.layout.dp, d.layout.ep, d.hw.name, d.layout.kv_dtype, d.layout.overlap) == (
        16,
        16,
        "h200",
        "fp8",
        "two-batch",
    )
    pair = parse_spec((Layout(tp=8), Layout(tp=1, dp=8, ep=8)), HW)
    assert pair["decode"].layout.ep == 8


@pytest.mark.parametrize(
    "bad",
    ["prefill=tp8", "prefill=tp8;decode=zz3", "prefill=tp8;decode=tp1,foo=1", "x=tp1;decode=tp1"],
)
def test_bad_spec_is_a_user_error(bad):
    with pytest.raises(MoesimError):
        parse_spec(bad, HW)


def test_rate_sizes_pools():
    rates = np.array([5.0, 20.0, 80.0])
    r = predict_disaggregated(M, HW, SPEC, batch=256, input_len=2000, output_len=500, rate=rates)
    assert np.all(np.diff(r["prefill_gpus"]) >= 0) and np.all(np.diff(r["decode_gpus"]) >= 0)
    assert np.allclose(r["num_gpus"], r["prefill_gpus"] + r["decode_gpus"])
    # Little's law: the decode pool holds rate x (output_len - 1) x TPOT sequences
    held = rates * 499 * r["tpot_s"]
    assert np.all(r["decode_instances"] * 256 >= held - 1e-6)
    assert np.all(r["utilization"] < 1) and np.all(r["stable"])
    assert np.all(r["ttft_s"] >= r["prefill_s"] + r["kv_transfer_s"])
    for key in (
        "tpot_s",
        "e2e_latency_s",
        "output_tokens_per_s_per_gpu",
        "usd_per_million_output_tokens",
        "kv_transfer_s",
    ):
        assert key in r


def test_kv_transfer_is_prompt_kv_over_the_link():
    r1 = predict_disaggregated(M, HW, SPEC, batch=64, input_len=1000, output_len=100)
    r2 = predict_disaggregated(M, HW, SPEC, batch=64, input_len=4000, output_len=100)
    assert r2["kv_transfer_s"] > r1["kv_transfer_s"] > 0
    lanes = 16  # min(prefill 16 GPUs, decode 16 GPUs)
    net_bytes = 1000 * M.kv_cache_bytes_per_token(1)
    assert r1["kv_transfer_s"] >= net_bytes / (lanes * HW.scaleout_bandwidth_bytes_per_s)


def _moesim(*args):
    code = "import sys; from moesim.cli import main; sys.argv = ['moesim', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_predict_cli_disaggregate_and_rate():
    res = runner.invoke(
        app,
        [
            "predict",
            "-m",
            "deepseek-v3",
            "-H",
            "h800",
            "--batch",
            "256",
            "--input-len",
            "2000",
            "--output-len",
            "500",
            "--disaggregate",
            SPEC,
            "--rate",
            "20",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["prefill_gpus"] > 0 and out["decode_gpus"] > 0 and out["kv_transfer_s"] > 0
    assert out["queue_delay_s"] >= 0


def test_predict_cli_rate_adds_queueing():
    res = runner.invoke(
        app,
        [
            "predict",
            "-m",
            "mixtral-8x7b",
            "-H",
            "h100-sxm",
            "--tp",
            "2",
            "--batch",
            "16",
            "--rate",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ttft_with_queue_s"] >= out["ttft_s"] and "utilization" in out


def test_predict_cli_bad_spec_is_one_line_error():
    proc = _moesim(
        "predict",
        "-m",
        "mixtral-8x7b",
        "-H",
        "h100-sxm",
        "--batch",
        "8",
        "--disaggregate",
        "prefill=tp2",
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
