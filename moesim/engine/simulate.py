"""Request-level simulation: replay traffic through a model of the engine's scheduler, step by
step, and report latency percentiles, goodput, throughput and KV occupancy.

    traffic (engine.traffic) ──► replicas (round robin) ──► run_instance (engine.sim.loop)
        each step's time from a StepTable (engine.sim.steptable) built once from the cost model
    ──► per-request frame + per-step log ──► summary (engine.sim.summary)

Disaggregated serving runs the prefill pool first (each request leaves after its first token),
ships each prompt's KV to the decode pool (:func:`moesim.engine.disagg.kv_transfer_s`), and runs
the decode pool on the arrival of those caches (DistServe, Zhong et al. OSDI'24; Splitwise,
Patel et al. ISCA'24): TTFT is the prefill pool's first token; the decode pool's queueing and the
transfer show in the second token's gap.

The simulator reaches the rest of moesim through four small functions, here at the top:
:func:`step_table`, :func:`kv_capacity_tokens`, :func:`kv_transfer_time_s` and
:func:`engine_defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.engine.sim.engines import EngineConfig, engine_config
from moesim.engine.sim.loop import InstanceRun, run_instance
from moesim.engine.sim.steptable import StepTable, build_step_table
from moesim.engine.sim.summary import occupancy, request_metrics, summarize
from moesim.engine.traffic import Traffic
from moesim.errors import MoesimError


# ---------------------------------------------------------------------------- interfaces
def step_table(
    model, hw, layout, routing, *, max_tokens: int, max_seqs: int, max_context: int
) -> StepTable:
    """Step time of one instance by batch composition, from moesim's step-cost model."""
    return build_step_table(
        model,
        hw,
        layout,
        routing,
        max_tokens=max_tokens,
        max_seqs=max_seqs,
        max_context=max_context,
    )


def kv_capacity_tokens(model, hw, layout, engine: EngineConfig) -> int:
    """KV-cache tokens one instance holds (the engine's override, or from memory)."""
    if engine.kv_cache_tokens is not None:
        return int(engine.kv_cache_tokens)
    from moesim.engine.sim.capacity import kv_cache_tokens

    return kv_cache_tokens(
        model, hw, layout,
        max_num_batched_tokens=engine.max_num_batched_tokens, max_num_seqs=engine.max_num_seqs,
    )  # fmt: skip


def kv_transfer_time_s(model, prefill_pool, decode_pool, input_tokens) -> np.ndarray:
    """Time to ship each prompt's KV cache from the prefill to the decode pool."""
    from moesim.engine.disagg import kv_transfer_s

    return np.asarray(kv_transfer_s(model, prefill_pool, decode_pool, input_tokens), dtype=float)


def engine_defaults(name: str, hw, **overrides) -> EngineConfig:
    """Scheduler settings of engine ``name`` on ``hw`` (see :mod:`moesim.engine.sim.engines`)."""
    return engine_config(name, hw, **overrides)


# ---------------------------------------------------------------------------- results
@dataclass
class SimResult:
    """A finished simulation.

    requests : per-request columns (numpy arrays, request order = traffic order)
    steps : per-instance step logs (dicts of arrays), with 'instance' and 'pool'
    summary : the reported numbers (see README, "Request-level simulation")
    """

    requests: dict
    steps: list[dict]
    summary: dict
    notes: list[str] = field(default_factory=list)

    def requests_frame(self):
        import pandas as pd

        return pd.DataFrame(self.requests)

    def steps_frame(self):
        import pandas as pd

        frames = [
            pd.DataFrame(
                {
                    "pool": s["pool"],
                    "instance": s["instance"],
                    "end_s": s["step_end_s"],
                    "step_s": s["step_s"],
                    "decode_seqs": s["step_decode_seqs"],
                    "prefill_tokens": s["step_prefill_tokens"],
                    "kv_blocks_used": s["step_kv_blocks"],
                    "kv_occupancy": s["step_kv_blocks"] / max(s["kv_blocks"], 1),
                }
            )
            for s in self.steps
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _run_pool(
    traffic: Traffic,
    instances: int,
    table,
    engine: EngineConfig,
    kv_blocks: int,
    pool: str,
    *,
    kv_ready=False,
):
    """Round-robin the requests over ``instances`` identical instances and run each."""
    n = traffic.num_requests
    runs: list[tuple[np.ndarray, InstanceRun]] = []
    for i in range(instances):
        idx = np.arange(i, n, instances)
        if idx.size == 0:
            continue
        conc = None
        if traffic.concurrency is not None:
            conc = traffic.concurrency // instances + (
                1 if i < traffic.concurrency % instances else 0
            )
            if conc == 0:
                raise MoesimError(
                    f"concurrency {traffic.concurrency} is below the {instances} instances"
                )
        run = run_instance(
            traffic.arrival_s[idx],
            traffic.input_tokens[idx],
            traffic.output_tokens[idx],
            table,
            max_num_batched_tokens=engine.max_num_batched_tokens,
            max_num_seqs=engine.max_num_seqs,
            block_size=engine.block_size,
            kv_blocks=kv_blocks,
            admission=engine.admission,
            schedule=engine.schedule,
            kv_ready=kv_ready,
            concurrency=conc,
            ramp_up_s=traffic.ramp_up_s,
        )
        runs.append((idx, run))
    requests = {
        "instance": np.zeros(n, dtype=np.int64),
        "arrival_s": np.zeros(n),
        "first_token_s": np.full(n, np.nan),
        "finish_s": np.zeros(n),
        "preemptions": np.zeros(n, dtype=np.int64),
        "rejected": np.zeros(n, dtype=bool),
    }
    steps = []
    for i, (idx, run) in enumerate(runs):
        requests["instance"][idx] = i
        for key in ("arrival_s", "first_token_s", "finish_s", "preemptions", "rejected"):
            requests[key][idx] = getattr(run, key)
        steps.append(
            {
                "pool": pool,
                "instance": i,
                "step_end_s": run.step_end_s,
                "step_s": run.step_s,
                "step_decode_seqs": run.step_decode_seqs,
                "step_prefill_tokens": run.step_prefill_tokens,
                "step_kv_blocks": run.step_kv_blocks,
                "resume_gaps_s": run.resume_gaps_s,
                "kv_blocks": run.kv_blocks,
            }
        )
    return requests, steps


def _routing(model, layout, routing):
    from moesim.cost.ops import routing_or_default

    routing = routing_or_default(routing)
    if model.is_moe and np.any(layout.arr("offload_fraction") > 0):
        from moesim.cost.offload import with_offload

        routing = with_offload(routing, model)
    return routing


def _engine(engine, hw) -> EngineConfig:
    if engine is None:
        return engine_defaults("vllm", hw)
    if isinstance(engine, str):
        return engine_defaults(engine, hw)
    return engine


def _blocks(model, hw, layout, engine: EngineConfig, label: str) -> tuple[int, int]:
    tokens = kv_capacity_tokens(model, hw, layout, engine)
    blocks = tokens // engine.block_size
    if blocks < 1:
        raise MoesimError(
            f"{label}: the weights and activations leave no memory for a KV cache "
            f"(use more GPUs per instance, a smaller dtype, or give kv_cache_tokens)"
        )
    return tokens, blocks


def _check_layout(model, layout, label: str) -> None:
    from moesim.spec.deployment import check_layout

    possible, reason = check_layout(model, layout)
    if not bool(np.all(possible)):
        raise MoesimError(f"{label}: {np.asarray(reason).ravel()[0]}")
    for name in ("tp", "ep", "pp", "dp", "replicas"):
        if np.asarray(getattr(layout, name)).size != 1:
            raise MoesimError(f"simulate takes one layout; {name} has several values")


# ---------------------------------------------------------------------------- entry points
def simulate(
    model,
    hw,
    layout,
    traffic: Traffic,
    *,
    engine: EngineConfig | str | None = None,
    routing=None,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    table: StepTable | None = None,
) -> SimResult:
    """Simulate ``traffic`` on ``layout.replicas`` instances of ``layout`` (requests dealt out
    round robin). ``table`` replaces the cost model's step times (tests, other engine models)."""
    from moesim.spec.deployment import Layout

    layout = layout or Layout()
    _check_layout(model, layout, "layout")
    engine = _engine(engine, hw)
    replicas = int(np.max(layout.arr("replicas")))
    if traffic.concurrency is not None and traffic.concurrency < replicas:
        raise MoesimError(f"concurrency {traffic.concurrency} is below the {replicas} replicas")
    instance = layout.with_(replicas=1)
    kv_tokens, blocks = _blocks(model, hw, instance, engine, "layout")
    if table is None:
        table = step_table(
            model, hw, instance, _routing(model, instance, routing),
            max_tokens=max(engine.max_num_batched_tokens, engine.max_num_seqs),
            max_seqs=engine.max_num_seqs, max_context=traffic.max_context_tokens,
        )  # fmt: skip
    requests, steps = _run_pool(traffic, replicas, table, engine, blocks, "engine")
    requests = _finish_requests(requests, traffic)
    num_gpus = float(np.max(layout.num_gpus))
    summary = summarize(
        requests, steps, num_gpus=num_gpus, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s
    )
    summary.update(_settings(engine, kv_tokens, blocks, replicas, traffic, table))
    notes = list(traffic.notes)
    if summary["rejected"]:
        notes.append(
            f"{summary['rejected']} requests need more KV than an instance holds ({kv_tokens:,} tokens) and were rejected"
        )
    return SimResult(requests, steps, summary, notes)


def simulate_disaggregated(
    model,
    hw,
    spec,
    traffic: Traffic,
    *,
    engine: EngineConfig | str | None = None,
    routing=None,
    base=None,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
) -> SimResult:
    """Simulate separate prefill and decode pools (spec as in :mod:`moesim.engine.disagg`, e.g.
    ``'prefill=tp8,x2;decode=tp8,x4'``). Open loop only: a closed loop would tie the pools'
    clocks together through the clients."""
    from moesim.engine.disagg import parse_spec

    if traffic.concurrency is not None:
        raise MoesimError(
            "disaggregated simulation takes an arrival rate or a trace, not a concurrency"
        )
    pools = parse_spec(spec, hw, base)
    p, d = pools["prefill"], pools["decode"]
    for label, pool in (("prefill pool", p), ("decode pool", d)):
        _check_layout(model, pool.layout, label)
    eng_p = _engine(engine, p.hw)
    eng_d = _engine(engine, d.hw)
    lmax = traffic.max_context_tokens
    tok_p, blk_p = _blocks(model, p.hw, p.layout, eng_p, "prefill pool")
    tok_d, blk_d = _blocks(model, d.hw, d.layout, eng_d, "decode pool")
    table_p = step_table(
        model, p.hw, p.layout, _routing(model, p.layout, routing),
        max_tokens=max(eng_p.max_num_batched_tokens, eng_p.max_num_seqs),
        max_seqs=eng_p.max_num_seqs, max_context=lmax,
    )  # fmt: skip
    table_d = step_table(
        model, d.hw, d.layout, _routing(model, d.layout, routing),
        max_tokens=max(eng_d.max_num_batched_tokens, eng_d.max_num_seqs),
        max_seqs=eng_d.max_num_seqs, max_context=lmax,
    )  # fmt: skip

    # Prefill pool: every request leaves with its first token.
    pre_traffic = Traffic(
        traffic.arrival_s,
        traffic.input_tokens,
        np.ones_like(traffic.output_tokens),
        source=traffic.source,
    )
    pre_req, pre_steps = _run_pool(pre_traffic, p.instances, table_p, eng_p, blk_p, "prefill")
    transfer = kv_transfer_time_s(model, p, d, traffic.input_tokens)
    ready = pre_req["finish_s"] + transfer
    # Decode pool: requests with more tokens to make arrive with their KV, in arrival order.
    go = np.flatnonzero((traffic.output_tokens > 1) & ~pre_req["rejected"])
    go = go[np.argsort(ready[go], kind="stable")]
    dec_traffic = Traffic(ready[go], traffic.input_tokens[go], traffic.output_tokens[go])
    dec_req, dec_steps = _run_pool(
        dec_traffic, d.instances, table_d, eng_d, blk_d, "decode", kv_ready=True
    )

    n = traffic.num_requests
    finish = pre_req["finish_s"].copy()  # one-token requests finish at prefill
    finish[go] = dec_req["finish_s"]
    rejected = pre_req["rejected"].copy()
    rejected[go] |= dec_req["rejected"]
    finish[rejected] = np.nan
    preempt = pre_req["preemptions"].copy()
    preempt[go] += dec_req["preemptions"]
    decode_instance = np.full(n, -1, dtype=np.int64)
    decode_instance[go] = dec_req["instance"]
    requests = {
        "instance": pre_req["instance"],
        "decode_instance": decode_instance,
        "arrival_s": traffic.arrival_s.astype(float),
        "first_token_s": np.where(rejected, np.nan, pre_req["finish_s"]),
        "finish_s": finish,
        "preemptions": preempt,
        "rejected": rejected,
        "kv_transfer_s": transfer,
    }
    requests = _finish_requests(requests, traffic)
    gpus = float(
        p.instances * np.max(p.layout.gpus_per_replica)
        + d.instances * np.max(d.layout.gpus_per_replica)
    )
    steps = pre_steps + dec_steps
    # The gap between a request's first token (prefill pool) and its second (the decode pool's
    # first step for it) spans the transfer and the decode queue; the decode steps' log leaves
    # those tokens out, and they count here with their whole gap.
    second = dec_req["first_token_s"]
    gaps = (second - pre_req["finish_s"][go])[np.isfinite(second)]
    summary = summarize(
        requests, steps, num_gpus=gpus, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
        extra_itl_s=gaps, occupancy_steps=dec_steps,
    )  # fmt: skip
    summary.update(_settings(eng_d, tok_d, blk_d, d.instances, traffic, table_d))
    summary.update(
        prefill_instances=p.instances,
        decode_instances=d.instances,
        prefill_kv_cache_tokens=tok_p,
        prefill_kv_occupancy_mean=occupancy(pre_steps)["kv_occupancy_mean"],
        kv_transfer_mean_s=float(np.mean(transfer)) if n else float("nan"),
    )
    return SimResult(requests, steps, summary, list(traffic.notes))


def _finish_requests(requests: dict, traffic: Traffic) -> dict:
    out = {"request_id": np.arange(traffic.num_requests, dtype=np.int64)} | requests
    out["input_tokens"] = traffic.input_tokens.astype(np.int64)
    out["output_tokens"] = traffic.output_tokens.astype(np.int64)
    for k in ("first_token_s", "finish_s"):
        out[k] = np.where(out["rejected"], np.nan, out[k])
    out.update(
        request_metrics(
            out["arrival_s"], out["first_token_s"], out["finish_s"], out["output_tokens"]
        )
    )
    return out


def _settings(
    engine: EngineConfig,
    kv_tokens: int,
    blocks: int,
    instances: int,
    traffic: Traffic,
    table: StepTable,
) -> dict:
    return {
        "engine": engine.name,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "max_num_seqs": engine.max_num_seqs,
        "block_size": engine.block_size,
        "admission": engine.admission,
        "schedule": engine.schedule,
        "kv_cache_tokens": int(kv_tokens),
        "kv_blocks": int(blocks),
        "instances": int(instances),
        "traffic": traffic.source,
        "concurrency": traffic.concurrency,
        "step_table": table.description,
    }
