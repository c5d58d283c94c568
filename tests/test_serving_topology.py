"""Three ways to hold DeepSeek-V3: one big-HBM node, expert parallel over nodes, experts offloaded
to host memory — each reports the serving metrics the planner ranks by."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost.offload import host_memory_check, with_offload
from moesim.engine import static as serving
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

M, HW = load_model("deepseek-v3"), load_hardware("h200")
TOPOLOGIES = {
    "big-host": Layout(tp=8, weight_dtype="fp8", kv_dtype="fp8"),
    "ep": Layout(tp=1, dp=16, ep=16, weight_dtype="fp8", kv_dtype="fp8", dispatch_dtype="fp8"),
    "offload": Layout(tp=4, weight_dtype="fp8", kv_dtype="fp8", offload_fraction=0.5),
}
METRICS = (
    "ttft_s",
    "tpot_s",
    "e2e_latency_s",
    "output_tokens_per_s_per_gpu",
    "output_tokens_per_s_per_user",
    "max_concurrency",
    "usd_per_million_input_tokens",
    "usd_per_million_output_tokens",
    "power_w",
)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_each_topology_reports_serving_metrics(name):
    lay = TOPOLOGIES[name]
    r = serving.predict(
        M, HW, lay, batch=64, input_len=1000, output_len=200, routing=with_offload(None, M)
    )
    assert bool(r["feasible"]), r["reason"]
    assert bool(host_memory_check(M, HW, lay)[0])
    for key in METRICS:
        assert np.isfinite(r[key]) and r[key] > 0, key


def test_offload_costs_host_link_time():
    routing = with_offload(None, M)
    per_gpu = {}
    for name, lay in TOPOLOGIES.items():
        r = serving.predict_phase(
            M, HW, lay, phase="decode", batch=32, context_len=1100, routing=routing
        )
        per_gpu[name] = float(r["tpot_s"])
    # Half the experts over PCIe is far slower per token than reading them from HBM.
    assert per_gpu["offload"] > 3 * per_gpu["big-host"]
    bd = serving.predict_phase(
        M,
        HW,
        TOPOLOGIES["offload"],
        phase="prefill",
        batch=1,
        input_len=4000,
        routing=routing,
        breakdown=True,
    )["breakdown"]["prefill"]
    fetch = [row for row in bd if row["op"] == "moe.offload_fetch"]
    assert fetch and float(fetch[0]["comm_bytes"]) > 0
