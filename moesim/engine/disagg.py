"""Prefill/decode disaggregation: separate prefill and decode pools, each with its own layout and
hardware, with the prompt's KV cache shipped from one to the other (Splitwise, Patel et al.
ISCA'24; DistServe, Zhong et al. OSDI'24; Mooncake, Qin et al. FAST'25).

Per request: TTFT = queueing wait + prefill time + KV transfer; TPOT = the decode pool's step time.
Transfer moves input_len x KV bytes/token over the scale-out NICs (or NVLink when both instances
fit in one scale-up domain of the same hardware), striped over min(prefill GPUs, decode GPUs) of
one instance pair, one alpha-beta message (Hockney 1994), not overlapped with prefill.

Pool sizing for an arrival rate λ (requests/s):
- prefill: an instance prefills ``b_p`` prompts in ``ttft_p``, so it serves μ_p = b_p / ttft_p
  requests/s; ``n_p`` instances, the smallest count with λ / n_p < μ_p (queue stable; the wait
  follows from :mod:`moesim.engine.queueing`).
- decode: a sequence holds a decode slot for its output_len - 1 steps of TPOT, so by Little's law
  the pool holds N = λ (output_len - 1) TPOT sequences; an instance holds ``batch`` of them
  within its memory, so n_d = ceil(N / batch).

Spec string: ``"prefill=tp8;decode=tp1,dp16,ep16"``; tokens per pool: tpN epN ppN dpN, replicasN
or xN (instances), batchN (prefill prompts per instance), hw=NAME, dtype=D, kv=D, dispatch=D,
overlap=none|two-batch, offload=F.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from moesim.cost import comm
from moesim.cost.ops import routing_or_default
from moesim.errors import MoesimError
from moesim.spec.deployment import Layout
from moesim.spec.limits import MAX_BATCH, MAX_REPLICAS

POOLS = ("prefill", "decode")
_INT_KEYS = {
    "tp": "tp",
    "ep": "ep",
    "pp": "pp",
    "dp": "dp",
    "replicas": "replicas",
    "x": "replicas",
    "batch": "batch",
}
_STR_KEYS = {
    "hw": "hw",
    "dtype": "weight_dtype",
    "kv": "kv_dtype",
    "dispatch": "dispatch_dtype",
    "overlap": "overlap",
    "offload": "offload_fraction",
}
SPEC_SYNTAX = "use e.g. 'prefill=tp8;decode=tp1,dp16,ep16' with tokens tpN epN ppN dpN xN batchN hw=NAME dtype=D kv=D overlap=two-batch offload=F"


@dataclass(frozen=True)
class Pool:
    """One pool: the layout of one instance, its hardware, how many instances at least, and (for
    prefill) how many prompts an instance prefills together (None: one per DP group)."""

    layout: Layout
    hw: object
    instances: int = 1
    batch: int | None = None


def parse_pool(text: str, base: Layout) -> tuple[dict, str | None]:
    """Layout fields from ``'tp1,dp16,ep16,hw=h200'`` -> (fields, hardware name or None)."""
    fields: dict = {}
    hw_name = None
    for token in filter(None, (t.strip() for t in re.split(r"[,\s]+", text))):
        key, eq, value = token.partition("=")
        if eq:
            key = key.lower()
            if key not in _STR_KEYS:
                raise MoesimError(f"unknown pool option {key!r} in {text!r}; {SPEC_SYNTAX}")
            if key == "hw":
                hw_name = value
            elif key == "offload":
                try:
                    fields["offload_fraction"] = float(value)
                except ValueError:
                    raise MoesimError(f"offload={value!r} is not a number in {text!r}") from None
            else:
                fields[_STR_KEYS[key]] = value.lower()
            continue
        match = re.fullmatch(r"([a-z]+)(\d+)", token.lower())
        if not match or match.group(1) not in _INT_KEYS:
            raise MoesimError(f"bad pool token {token!r} in {text!r}; {SPEC_SYNTAX}")
        fields[_INT_KEYS[match.group(1)]] = int(match.group(2))
    return fields, hw_name


def parse_spec(spec, hw, base: Layout | None = None) -> dict[str, Pool]:
    """A disaggregation spec (string, dict of pool -> Layout / string / Pool, or (prefill, decode)
    pair) -> {'prefill': Pool, 'decode': Pool}. ``base`` supplies dtypes not named in the spec."""
    from moesim.spec.hardware import HardwareProfile, load_hardware

    base = base or Layout()
    base = base.with_(tp=1, ep=1, pp=1, dp=1, replicas=1, offload_fraction=0.0)
    if isinstance(spec, str):
        parts = {}
        for chunk in filter(None, (c.strip() for c in spec.split(";"))):
            name, eq, body = chunk.partition("=")
            name = name.strip().lower()
            if not eq or name not in POOLS:
                raise MoesimError(f"bad disaggregation spec {spec!r}; {SPEC_SYNTAX}")
            parts[name] = body
        spec = parts
    elif isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise MoesimError("a disaggregation pair is (prefill, decode)")
        spec = dict(zip(POOLS, spec, strict=True))
    if (
        not isinstance(spec, dict)
        or set(spec) - set(POOLS) - {"prefill_hw", "decode_hw"}
        or not set(POOLS) <= set(spec)
    ):
        raise MoesimError(
            f"a disaggregation spec needs both a prefill and a decode pool; {SPEC_SYNTAX}"
        )
    pools = {}
    for name in POOLS:
        item = spec[name]
        pool_hw = spec.get(f"{name}_hw", hw)
        if isinstance(item, Pool):
            pools[name] = item
            continue
        batch = None
        if isinstance(item, Layout):
            layout = item
            instances = int(np.max(layout.arr("replicas")))
            layout = layout.with_(replicas=1)
        else:
            fields, hw_name = parse_pool(str(item), base)
            instances = fields.pop("replicas", 1)
            batch = fields.pop("batch", None)
            # A pool of no instance serves nothing: refused, not reported as feasible.
            if instances < 1 or instances > MAX_REPLICAS:
                raise MoesimError(
                    f"{name} pool {item!r}: x{instances} instances; a pool needs 1 to "
                    f"{MAX_REPLICAS:,} instances"
                )
            if batch is not None and not 1 <= batch <= MAX_BATCH:
                raise MoesimError(
                    f"{name} pool {item!r}: batch{batch}; prefill batch must be 1 to {MAX_BATCH:,}"
                )
            try:
                layout = base.with_(**fields)
            except TypeError as exc:
                raise MoesimError(f"bad pool {item!r}: {exc}") from None
            if hw_name:
                pool_hw = hw_name
        if not isinstance(pool_hw, HardwareProfile):
            pool_hw = load_hardware(pool_hw)
        pools[name] = Pool(layout, pool_hw, instances, batch)
    return pools


def kv_transfer_s(model, prefill: Pool, decode: Pool, input_len) -> np.ndarray:
    """Time to ship one prompt's KV cache from its prefill instance to its decode instance."""
    from moesim.spec.dtypes import dtype_bytes

    kv_bytes = np.asarray(input_len, dtype=float) * model.kv_cache_bytes_per_token(
        dtype_bytes(prefill.layout.kv_dtype)
    )
    gp, gd = prefill.layout.gpus_per_replica, decode.layout.gpus_per_replica
    lanes = np.minimum(gp, gd)
    net_p, net_d = comm.Network.from_hardware(prefill.hw), comm.Network.from_hardware(decode.hw)
    same_domain = (prefill.hw.name == decode.hw.name) & (gp + gd <= net_p.domain_size)
    up = net_p.scaleup_latency_s + kv_bytes / (lanes * net_p.scaleup_bytes_per_s)
    out_bw = min(net_p.scaleout_bytes_per_s, net_d.scaleout_bytes_per_s)
    out = max(net_p.scaleout_latency_s, net_d.scaleout_latency_s) + kv_bytes / (lanes * out_bw)
    return np.where(same_domain, up, out)


def predict_disaggregated(
    model,
    hw,
    spec,
    *,
    batch,
    input_len,
    output_len,
    routing=None,
    rate=None,
    breakdown: bool = False,
    base: Layout | None = None,
    max_utilization: float = 0.8,
) -> dict:
    """Serve with separate prefill and decode pools. Returns the keys of ``serving.predict`` plus
    ``prefill_gpus``, ``decode_gpus``, ``prefill_instances``, ``decode_instances``, ``kv_transfer_s``
    (and the queueing keys of :func:`moesim.engine.queueing.add_queueing` when ``rate`` is given).

    batch : sequences one decode instance runs concurrently (its continuous batch)
    rate : requests/s; sizes both pools for it. None: the spec's instance counts, at capacity.
    max_utilization : prefill instances are added until each runs at most this busy (ρ), which
        bounds the P-K wait to ρ S / (2 (1 - ρ)) = 2 S at the default 0.8
    """
    from moesim.cost.offload import with_offload
    from moesim.engine import static as serving
    from moesim.engine.memory import max_concurrency
    from moesim.engine.queueing import UNSTABLE_REASON, pk_wait_s

    if not 0 < max_utilization < 1:
        raise MoesimError(f"max_utilization must be in (0, 1), got {max_utilization}")
    pools = parse_spec(spec, hw, base)
    routing = routing_or_default(routing)
    p, d = pools["prefill"], pools["decode"]
    batch = np.asarray(batch, dtype=float)
    input_len = np.asarray(input_len, dtype=float)
    output_len = np.asarray(output_len, dtype=float)
    groups_p = float(np.max(p.layout.arr("dp")))
    b_p = float(p.batch) if p.batch else groups_p
    ro_p = with_offload(routing, model) if np.any(p.layout.arr("offload_fraction") > 0) else routing
    ro_d = with_offload(routing, model) if np.any(d.layout.arr("offload_fraction") > 0) else routing
    pre = serving.predict_phase(
        model,
        p.hw,
        p.layout,
        phase="prefill",
        batch=b_p,
        input_len=input_len,
        routing=ro_p,
        breakdown=breakdown,
    )
    ctx = input_len + output_len / 2.0  # mean context of a sequence over its decode
    dec = serving.predict_phase(
        model,
        d.hw,
        d.layout,
        phase="decode",
        batch=batch,
        input_len=input_len,
        context_len=ctx,
        routing=ro_d,
        breakdown=breakdown,
    )

    kv_s = kv_transfer_s(model, p, d, input_len)
    ttft_p, tpot = np.asarray(pre["ttft_s"]), np.asarray(dec["tpot_s"])
    service = ttft_p / b_p  # one request's share of a prefill instance
    mu_p = 1.0 / service  # requests/s per prefill instance
    decode_hold_s = np.maximum(output_len - 1.0, 1.0) * tpot  # a sequence's time in the decode pool
    mu_d = batch / decode_hold_s  # requests/s per decode instance (Little's law)
    if rate is None:
        n_p = np.full(np.shape(mu_p), float(p.instances))
        n_d = np.full(np.shape(mu_d), float(d.instances))
        served = np.minimum(n_p * mu_p, n_d * mu_d)  # at capacity
        wait = np.zeros_like(ttft_p)
    else:
        lam = np.asarray(rate, dtype=float)
        n_p = np.maximum(np.ceil(lam * service / max_utilization - 1e-9), p.instances)
        n_d = np.maximum(np.ceil(lam / mu_d - 1e-9), d.instances)
        served = lam + 0.0 * (n_p + n_d)
        wait = pk_wait_s(lam / n_p, service)
    gp, gd = p.layout.gpus_per_replica, d.layout.gpus_per_replica
    prefill_gpus, decode_gpus = n_p * gp, n_d * gd
    gpus = prefill_gpus + decode_gpus
    usd_per_s = (
        prefill_gpus * p.hw.price_usd_per_hour + decode_gpus * d.hw.price_usd_per_hour
    ) / 3600.0
    ttft = ttft_p + kv_s + wait
    e2e = ttft + np.maximum(output_len - 1.0, 0.0) * tpot
    out_tps = served * output_len
    with np.errstate(divide="ignore", invalid="ignore"):
        res = {
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_latency_s": e2e,
            "output_tokens_per_s_per_gpu": out_tps / gpus,
            "output_tokens_per_s_per_user": 1.0 / tpot,
            "prefill_tokens_per_s_per_gpu": pre["prefill_tokens_per_s_per_gpu"],
            "decode_tokens_per_s_per_gpu": dec["decode_tokens_per_s_per_gpu"],
            "num_gpus": gpus,
            "prefill_gpus": prefill_gpus,
            "decode_gpus": decode_gpus,
            "prefill_instances": n_p,
            "decode_instances": n_d,
            "kv_transfer_s": kv_s,
            "prefill_s": ttft_p,
            "weights_bytes_per_gpu": dec["weights_bytes_per_gpu"],
            "kv_cache_bytes_per_gpu": dec["kv_cache_bytes_per_gpu"],
            "activation_bytes_per_gpu": dec["activation_bytes_per_gpu"],
            "memory_bytes_per_gpu": dec["memory_bytes_per_gpu"],
            "prefill_memory_bytes_per_gpu": pre["memory_bytes_per_gpu"],
            "memory_capacity_bytes_per_gpu": dec["memory_capacity_bytes_per_gpu"],
            "max_concurrency": max_concurrency(model, d.hw, d.layout, input_len, output_len) * n_d,
            "usd_per_million_output_tokens": usd_per_s / out_tps * 1e6,
            "usd_per_million_input_tokens": prefill_gpus
            * p.hw.price_usd_per_hour
            / 3600.0
            / (served * input_len)
            * 1e6,
            "usd_per_hour": usd_per_s * 3600.0,
            "power_w": prefill_gpus * p.hw.tdp_w + decode_gpus * d.hw.tdp_w,
            "ttft_floor_s": pre["ttft_floor_s"],
            "tpot_floor_s": dec["tpot_floor_s"],
            "prefill_comm_share": pre["prefill_comm_share"],
            "decode_comm_share": dec["decode_comm_share"],
            "prefill_hardware": p.hw.name,
            "decode_hardware": d.hw.name,
        }
    for key in ("max_load_ratio", "active_experts", "padding_waste", "drop_rate"):
        res[key] = dec[key]
    feasible, reason = _combine_reasons(model, pre, dec, p, d)
    if rate is not None:
        rho = np.asarray(rate, dtype=float) / n_p * service
        res.update(
            queue_delay_s=wait,
            ttft_with_queue_s=ttft,
            utilization=rho,
            stable=rho < 1.0,
            arrival_rate=np.asarray(rate, dtype=float),
        )
        shape = np.broadcast(reason, rho).shape
        reason = np.broadcast_to(reason, shape).copy()
        reason[np.broadcast_to(rho >= 1.0, shape) & (reason == "")] = UNSTABLE_REASON
        feasible = reason == ""
    res["feasible"], res["reason"] = feasible, reason
    if breakdown:
        res["breakdown"] = {
            "prefill": pre["breakdown"]["prefill"],
            "decode": dec["breakdown"]["decode"],
        }
    return res


def _combine_reasons(model, pre: dict, dec: dict, p: Pool, d: Pool):
    from moesim.cost.offload import host_memory_check

    shape = np.broadcast(pre["reason"], dec["reason"]).shape
    reason = np.full(shape, "", dtype=object)
    for label, res, pool in (("prefill", pre, p), ("decode", dec, d)):
        r = np.broadcast_to(np.asarray(res["reason"], dtype=object), shape)
        bad = (r != "") & (reason == "")
        reason[bad] = [f"{label} pool: {x}" for x in r[bad]]
        fits, _ = host_memory_check(model, pool.hw, pool.layout)
        reason[np.broadcast_to(~fits, shape) & (reason == "")] = (
            f"{label} pool: offloaded experts exceed host memory"
        )
    return reason == "", reason


def describe(pool: Pool) -> str:
    lay = pool.layout
    parts = [
        f"{k}{int(np.max(lay.arr(k)))}"
        for k in ("tp", "ep", "pp", "dp")
        if np.max(lay.arr(k)) > 1 or k == "tp"
    ]
    text = ",".join(parts) + f",hw={pool.hw.name}"
    if pool.instances > 1:
        text += f",x{pool.instances}"
    return text


__all__ = ["Pool", "describe", "kv_transfer_s", "parse_spec", "predict_disaggregated"]
