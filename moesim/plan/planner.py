"""Capacity planning: the cheapest layouts that serve an arrival rate within TTFT and TPOT SLOs.

For each hardware profile the candidate layouts (TP x EP x PP x DP, optionally with experts
offloaded to host memory) are numpy arrays, and every candidate batch is one more axis: the
serving model is called once for prefill ``[layouts]`` and once for decode ``[layouts, batches]``
per hardware, never per layout. Three ways to serve are then costed from those arrays:

aggregated (one pool does both phases: in-flight batching with chunked prefill)
    The engine model of :mod:`moesim.engine.inflight` (Sarathi-Serve's schedule under the
    engine's token budget, vLLM's by default): a replica with B running sequences per DP group
    completes up to λ_cap requests/s with TPOT_cap (decodes slowed by the mixed steps that carry
    prefill chunks). At λ < λ_cap the share of mixed steps falls in proportion, so
    TPOT(λ) = t_d + (TPOT_cap - t_d) λ / λ_cap (t_d: a decode-only step). Each scheduler (DP
    group x micro-batch) is an FCFS prefill queue with service S = a request's chunked prefill
    time, so TTFT = S + t_d / 2 (the step in flight) + the M/G/1 wait at λ / servers
    (:mod:`moesim.engine.queueing`).
offload
    aggregated, with a share of each GPU's experts in host memory (:mod:`moesim.cost.offload`).
disaggregated
    separate prefill and decode pools, possibly on different hardware (:mod:`moesim.engine.disagg`).

Replicas = ceil(rate / λ'), where λ' is the largest per-replica rate meeting capacity, TPOT and
TTFT; cost = replicas x GPUs x price. ``bound`` names what stops a plan from being cheaper:
``ttft-slo`` / ``tpot-slo`` (that SLO sets λ'), ``memory`` (the next batch up does not fit),
else ``comm`` or ``compute`` (the larger share of the decode step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moesim.errors import MoesimError
from moesim.spec.deployment import Layout, check_layout
from moesim.spec.dtypes import dtype_bytes

BATCHES_PER_GROUP = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
OFFLOAD_FRACTIONS = (0.25, 0.5, 0.75)
MODES = ("aggregated", "offload", "disaggregated")
PAIR_SHORTLIST = 24  # prefill and decode candidates crossed per hardware pair


@dataclass
class PlanResult:
    """``best``: cheapest SLO-feasible plans; ``pareto``: output tok/s/GPU vs tok/s/user frontier
    (memory-feasible plans sized for the rate, SLOs ignored); ``table``: every plan evaluated."""

    best: list[dict]
    pareto: list[dict]
    evaluated: int
    feasible: int
    elapsed_s: float
    table: pd.DataFrame = field(repr=False)
    request: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "request": self.request,
            "best": self.best,
            "pareto": self.pareto,
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "elapsed_s": self.elapsed_s,
        }


def powers_of_two(limit: int) -> np.ndarray:
    return 2 ** np.arange(int(math.log2(max(limit, 1))) + 1)


def layout_grid(model, hw, max_gpus: int, offload: bool = False) -> dict[str, np.ndarray]:
    """Candidate (tp, ep, pp, dp, offload_fraction) of one replica, as flat arrays.

    TP stays inside a node (gpus_per_node), as NVLink-bound all-reduces need; PP up to 16 stages;
    EP over any power of two dividing the stage; offload only on replicas of at most one node.
    Layouts the model cannot take (``check_layout``) are dropped here.
    """
    tp = powers_of_two(min(hw.gpus_per_node, max_gpus))
    dp = powers_of_two(max_gpus)
    pp = powers_of_two(min(16, max_gpus, model.num_hidden_layers))
    ep = powers_of_two(max_gpus) if model.is_moe else np.array([1])
    fracs = np.array((0.0, *OFFLOAD_FRACTIONS)) if offload and model.is_moe else np.array([0.0])
    T, D, P, X, F = (a.ravel() for a in np.meshgrid(tp, dp, pp, ep, fracs, indexing="ij"))
    gpus = T * D * P
    keep = (gpus <= max_gpus) & ((T * D) % X == 0)
    keep &= (F == 0) | (gpus <= hw.gpus_per_node)
    keep &= check_layout(model, Layout(tp=T, ep=X, pp=P, dp=D))[0]  # routing needs E % ep == 0
    return {
        "tp": T[keep],
        "dp": D[keep],
        "pp": P[keep],
        "ep": X[keep],
        "offload_fraction": F[keep].astype(float),
    }


def _layout(
    grid: dict, dtype: str, kv_dtype: str, axis: bool = False, memory_utilization: float = 0.90
) -> Layout:
    shape = (lambda a: a[:, None]) if axis else (lambda a: a)
    return Layout(
        tp=shape(grid["tp"]),
        ep=shape(grid["ep"]),
        pp=shape(grid["pp"]),
        dp=shape(grid["dp"]),
        offload_fraction=shape(grid["offload_fraction"]),
        weight_dtype=dtype,
        kv_dtype=kv_dtype,
        dispatch_dtype="fp8" if dtype_bytes(dtype) <= 1.0 + 1e-3 and dtype != "int8" else "bf16",
        memory_utilization=memory_utilization,
    )


def evaluate_hardware(
    model,
    hw,
    grid,
    *,
    dtype,
    kv_dtype,
    routing,
    input_len,
    output_len,
    batches=BATCHES_PER_GROUP,
    memory_utilization=0.90,
    engine=None,
) -> dict:
    """Prefill ``[N]``, decode ``[N, B]`` and in-flight ``[N, B]`` steady states of every
    candidate, vectorised. A prefill pool batches as many prompts per DP group as the engine's
    token budget holds (at least one)."""
    from moesim.cost.offload import host_memory_check, with_offload
    from moesim.engine import inflight
    from moesim.engine import static as serving
    from moesim.engine.presets import engine_preset

    if np.any(grid["offload_fraction"] > 0):
        routing = with_offload(routing, model)
    flat = _layout(grid, dtype, kv_dtype, memory_utilization=memory_utilization)
    if memory_utilization != 0.90:  # an explicit --gpu-memory-utilization sizes the KV cache
        engine = engine_preset(engine, hw).with_(
            memory_mode="gpu_memory_utilization", memory_fraction=memory_utilization
        )
    dp = grid["dp"].astype(float)
    prompts = max(1.0, float(np.floor(engine_preset(engine, hw).token_budget / input_len)))
    pre = serving.predict_phase(
        model, hw, flat, phase="prefill", batch=dp * prompts, input_len=input_len, routing=routing
    )
    grid2 = _layout(grid, dtype, kv_dtype, axis=True, memory_utilization=memory_utilization)
    b = np.asarray(batches, dtype=float)[None, :]
    ctx = input_len + output_len / 2.0  # mean context over a sequence's decode
    dec = serving.predict_phase(
        model,
        hw,
        grid2,
        phase="decode",
        batch=dp[:, None] * b,
        input_len=input_len,
        context_len=ctx,
        routing=routing,
    )
    agg = inflight.at_capacity(
        model, hw, grid2, running_per_group=b, input_len=input_len, output_len=output_len,
        routing=routing, engine=engine,
    )  # fmt: skip
    host_ok, _ = host_memory_check(model, hw, flat)
    return {
        "pre": pre,
        "dec": dec,
        "agg": agg,
        "prompts": prompts,
        "host_ok": host_ok,
        "seqs": b,
        "gpus": flat.gpus_per_replica,
        "memory_utilization": memory_utilization,
    }


def _bound_of_decode(dec_ok_mem, tpot_ok, comm_share) -> np.ndarray:
    """memory / tpot-slo when the next batch up fails on that, else the larger share of the step."""
    nxt_mem = np.concatenate([dec_ok_mem[:, 1:], np.zeros_like(dec_ok_mem[:, :1])], axis=1)
    nxt_tpot = np.concatenate([tpot_ok[:, 1:], np.zeros_like(tpot_ok[:, :1])], axis=1)
    return np.where(
        ~nxt_mem,
        "memory",
        np.where(~nxt_tpot, "tpot-slo", np.where(comm_share > 0.5, "comm", "compute")),
    )


def _max_rate_for_slos(t_p, t_d, service, ttft_slo, tpot_slo, ttft_extra=0.0):
    """Per-server rates (requests/s) at which TPOT = t_d / (1 - λS) and TTFT just meet their SLOs."""
    from moesim.engine.queueing import max_utilization_for_wait

    with np.errstate(divide="ignore", invalid="ignore"):
        tpot_rate = np.where(t_d < tpot_slo, (1.0 - t_d / tpot_slo) / service, 0.0)
        slack = ttft_slo - t_p - ttft_extra
        ttft_rate = np.where(slack > 0, max_utilization_for_wait(slack, service) / service, 0.0)
    return tpot_rate, ttft_rate


def _aggregated(
    model, hw, ev, grid, rate, input_len, output_len, ttft_slo, tpot_slo, max_gpus
) -> pd.DataFrame:
    from moesim.engine.queueing import erlang_c_wait_s, max_utilization_for_wait, pk_wait_s

    pre, dec, agg = ev["pre"], ev["dec"], ev["agg"]
    dp = grid["dp"].astype(float)[:, None]
    G = ev["gpus"][:, None]
    cap = np.asarray(agg["requests_per_s"])  # replica capacity, requests/s
    tpot_cap = np.asarray(agg["tpot_s"])
    t_d = np.asarray(agg["decode_step_s"])
    S = np.asarray(agg["prefill_s"])  # one request's chunked prefill
    servers = np.asarray(agg["prefill_servers"])
    B = dp * ev["seqs"]
    ok_mem = (
        np.asarray(agg["fits"])
        & np.asarray(dec["feasible"])
        & np.asarray(pre["feasible"])[:, None]
        & ev["host_ok"][:, None]
    )
    rise = np.maximum(tpot_cap - t_d, 0.0)  # TPOT(λ) = t_d + rise λ / cap (module docstring)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot_rate = np.where(
            t_d < tpot_slo, np.where(rise > 0, cap * (tpot_slo - t_d) / rise, np.inf), 0.0
        )
        slack = ttft_slo - S - t_d / 2.0
        ttft_rate = np.where(
            slack > 0, servers * max_utilization_for_wait(slack, S) / np.where(S > 0, S, 1.0), 0.0
        )
    lam_max = np.minimum(cap, np.minimum(tpot_rate, ttft_rate))

    def size(limit):
        with np.errstate(divide="ignore", invalid="ignore"):
            n = (
                np.where(limit > 0, np.ceil(rate / limit - 1e-9), np.inf)
                if rate
                else np.ones_like(limit)
            )
        lam = rate / n if rate else limit
        return n, lam

    n, lam = size(lam_max)
    n_cap, lam_cap = size(cap)
    slo_ok = ok_mem & np.isfinite(n) & (n * G <= max_gpus) & (lam_max > 0)

    def metrics(n, lam):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            tpot = t_d + rise * np.minimum(lam / cap, 1.0)
            ttft = S + t_d / 2.0 + pk_wait_s(lam / servers, S)
            # and the wait for a free sequence slot: B per replica, each held for a request's
            # life in the engine (M/M/c, conservative for the nearly constant hold times)
            slot_wait = erlang_c_wait_s(lam, B, ttft + (output_len - 1.0) * tpot)
            ttft = ttft + slot_wait
            gpus = n * G
            price_h = gpus * hw.price_usd_per_hour
            out_rate = (rate if rate else lam) * output_len
            return {
                "replicas": n,
                "gpus": gpus,
                "ttft_s": ttft,
                "slot_wait_s": slot_wait,
                "tpot_s": tpot,
                "e2e_latency_s": ttft + (output_len - 1.0) * tpot,
                "output_tokens_per_s_per_gpu": out_rate / gpus,
                "output_tokens_per_s_per_user": 1.0 / tpot,
                "usd_per_hour": price_h,
                "usd_per_million_output_tokens": price_h / 3600.0 / out_rate * 1e6,
                "usd_per_million_input_tokens": G
                * hw.price_usd_per_hour
                / 3600.0
                / cap
                / (input_len + output_len)
                * 1e6
                + 0.0 * n,
                "power_w": gpus * hw.tdp_w,
            }

    m = metrics(n, lam)
    # Replicas sized on the prefill queue and TPOT may still leave requests waiting for a slot
    # past the TTFT SLO: add replicas until the slot wait fits, or the GPU budget runs out.
    for _ in range(16):
        late = slo_ok & (np.asarray(m["ttft_s"]) > ttft_slo)
        if not rate or not np.any(late):
            break
        n = np.where(late, n + 1, n)
        lam = rate / n
        slo_ok = slo_ok & (n * G <= max_gpus)
        m = metrics(n, lam)
    slo_ok = slo_ok & (np.asarray(m["ttft_s"]) <= ttft_slo)
    mc = metrics(n_cap, lam_cap)
    cons = np.argmin(
        np.stack([np.broadcast_to(x, cap.shape) for x in (cap, tpot_rate, ttft_rate)]), axis=0
    )
    tpot_fits = ok_mem & (t_d < tpot_slo)
    bound = np.where(
        cons == 2,
        "ttft-slo",
        np.where(
            cons == 1,
            "tpot-slo",
            _bound_of_decode(
                ok_mem, tpot_fits, np.asarray(agg["decode_comm_share"]) * np.ones_like(t_d)
            ),
        ),
    )
    max_conc = np.broadcast_to(np.asarray(agg["max_concurrency"]), t_d.shape)
    frac = grid["offload_fraction"][:, None]
    shape = t_d.shape
    cols = {
        "hardware": hw.name,
        "mode": np.where(frac > 0, "offload", "aggregated"),
        "topology": np.broadcast_to(_topology(grid, hw)[:, None], shape),
        "tp": grid["tp"][:, None],
        "ep": grid["ep"][:, None],
        "pp": grid["pp"][:, None],
        "dp": grid["dp"][:, None],
        "offload_fraction": frac,
        "batch": B,
        "gpus_per_replica": G,
        "memory_bytes_per_gpu": np.asarray(agg["memory_bytes_per_gpu"]),
        "max_concurrency": max_conc,
        "decode_comm_share": np.asarray(agg["decode_comm_share"]),
        "fits": ok_mem,
        "slo_ok": slo_ok,
        "bound": bound,
        "reason": np.where(
            np.asarray(dec["reason"]) != "",
            dec["reason"],
            np.broadcast_to(np.asarray(pre["reason"], dtype=object)[:, None], shape),
        ),
    }
    cols.update(m)
    cols.update(
        {
            f"cap_{k}": v
            for k, v in mc.items()
            if k
            in (
                "gpus",
                "output_tokens_per_s_per_gpu",
                "output_tokens_per_s_per_user",
                "usd_per_million_output_tokens",
                "replicas",
            )
        }
    )
    return _frame(cols, shape)


def _topology(grid, hw) -> np.ndarray:
    """offload | ep | big-host (one node, all experts in HBM, no EP) | multi-node."""
    gpus = grid["tp"] * grid["dp"] * grid["pp"]
    return np.where(
        grid["offload_fraction"] > 0,
        "offload",
        np.where(
            grid["ep"] > 1, "ep", np.where(gpus <= hw.gpus_per_node, "big-host", "multi-node")
        ),
    )


def _frame(cols: dict, shape) -> pd.DataFrame:
    return pd.DataFrame({k: np.broadcast_to(np.asarray(v), shape).ravel() for k, v in cols.items()})


def _disaggregated(
    model,
    evals: dict,
    grids: dict,
    rate,
    input_len,
    output_len,
    ttft_slo,
    tpot_slo,
    max_gpus,
    kv_dtype,
) -> pd.DataFrame:
    """Cross the shortlisted prefill and decode pools of every hardware pair (vectorised)."""
    from moesim.cost.comm import Network
    from moesim.engine.queueing import max_utilization_for_wait, pk_wait_s
    from moesim.spec.dtypes import dtype_bytes

    if not rate:
        return pd.DataFrame()
    kv_bytes = input_len * model.kv_cache_bytes_per_token(dtype_bytes(kv_dtype))
    hold = max(output_len - 1.0, 1.0)
    frames = []
    for hp_name, evp in evals.items():
        hp, gp_grid = evp["hw"], grids[hp_name]
        pre = evp["pre"]
        okp = np.asarray(pre["feasible"]) & evp["host_ok"] & (gp_grid["offload_fraction"] == 0)
        t_p = np.asarray(pre["ttft_s"])
        S = t_p / (gp_grid["dp"] * evp["prompts"])  # one request's share of a prefill step
        Gp = evp["gpus"]
        est = np.where(
            okp & (t_p < ttft_slo), np.ceil(rate * S / 0.9) * Gp, np.inf
        )  # shortlist by GPUs
        pi = np.argsort(est, kind="stable")[:PAIR_SHORTLIST]
        pi = pi[np.isfinite(est[pi])]
        for hd_name, evd in evals.items():
            hd, gd_grid = evd["hw"], grids[hd_name]
            dec = evd["dec"]
            t_d = np.asarray(dec["tpot_s"])
            B = gd_grid["dp"][:, None] * evd["seqs"]
            okd = np.asarray(dec["feasible"]) & (gd_grid["offload_fraction"] == 0)[:, None]
            Gd = evd["gpus"][:, None]
            n_d = np.ceil(rate * hold * t_d / B - 1e-9)
            cost_d = np.where(okd & (t_d <= tpot_slo), n_d * Gd * hd.price_usd_per_hour, np.inf)
            flat = np.argsort(cost_d, axis=None, kind="stable")[:PAIR_SHORTLIST]
            flat = flat[np.isfinite(cost_d.ravel()[flat])]
            if not len(pi) or not len(flat):
                continue
            li, bi = np.unravel_index(flat, cost_d.shape)
            # [P, D] cross product
            lanes = np.minimum(Gp[pi][:, None], evd["gpus"][li][None, :])
            net_p, net_d = Network.from_hardware(hp), Network.from_hardware(hd)
            bw = min(net_p.scaleout_bytes_per_s, net_d.scaleout_bytes_per_s)
            same = (hp.name == hd.name) & (
                Gp[pi][:, None] + evd["gpus"][li][None, :] <= net_p.domain_size
            )
            kv_s = np.where(
                same,
                net_p.scaleup_latency_s + kv_bytes / (lanes * net_p.scaleup_bytes_per_s),
                max(net_p.scaleout_latency_s, net_d.scaleout_latency_s) + kv_bytes / (lanes * bw),
            )
            S_p, tp_p = S[pi][:, None], t_p[pi][:, None]
            rho_max = np.minimum(max_utilization_for_wait(ttft_slo - tp_p - kv_s, S_p), 0.999)
            with np.errstate(divide="ignore", invalid="ignore"):
                n_p = np.where(rho_max > 0, np.ceil(rate * S_p / rho_max - 1e-9), np.inf)
                n_p_cap = np.floor(rate * S_p) + 1.0
            td_sel = t_d[li, bi][None, :]
            nd_sel = n_d[li, bi][None, :]
            gd_sel = evd["gpus"][li][None, :]
            gp_sel = Gp[pi][:, None]

            price_p, price_d = hp.price_usd_per_hour, hd.price_usd_per_hour
            wait = pk_wait_s(rate / n_p, S_p)
            gpus = n_p * gp_sel + nd_sel * gd_sel
            usd_h = n_p * gp_sel * price_p + nd_sel * gd_sel * price_d
            gpus_cap = n_p_cap * gp_sel + nd_sel * gd_sel
            usd_cap = n_p_cap * gp_sel * price_p + nd_sel * gd_sel * price_d
            out_rate = rate * output_len
            shape = gpus.shape
            ttft = tp_p + kv_s + wait
            slo_ok = (
                np.isfinite(n_p) & (gpus <= max_gpus) & (ttft <= ttft_slo) & (td_sel <= tpot_slo)
            )
            share = np.asarray(dec["decode_comm_share"])
            ok_mem_d = np.asarray(dec["feasible"])
            bound_d = _bound_of_decode(
                ok_mem_d, ok_mem_d & (t_d <= tpot_slo), share * np.ones_like(t_d)
            )[li, bi][None, :]
            slack = (ttft_slo - ttft) / ttft_slo
            bound = np.where(slack < 0.05, "ttft-slo", bound_d)
            per_instance = np.broadcast_to(np.asarray(evd["agg"]["max_concurrency"]), t_d.shape)
            conc = per_instance[li, bi][None, :] * nd_sel
            cols = {
                "hardware": hd.name if hp.name == hd.name else f"{hp.name}+{hd.name}",
                "mode": "disaggregated",
                "topology": "disaggregated",
                "tp": gd_grid["tp"][li][None, :],
                "ep": gd_grid["ep"][li][None, :],
                "pp": gd_grid["pp"][li][None, :],
                "dp": gd_grid["dp"][li][None, :],
                "offload_fraction": 0.0,
                "batch": B[li, bi][None, :],
                "gpus_per_replica": gd_sel,
                "memory_bytes_per_gpu": np.asarray(dec["memory_bytes_per_gpu"])[li, bi][None, :],
                "max_concurrency": conc,
                "decode_comm_share": share[li, bi][None, :],
                "fits": True,
                "slo_ok": slo_ok,
                "bound": bound,
                "reason": "",
                "replicas": nd_sel,
                "gpus": gpus,
                "ttft_s": ttft,
                "tpot_s": td_sel,
                "e2e_latency_s": ttft + (output_len - 1.0) * td_sel,
                "output_tokens_per_s_per_gpu": out_rate / gpus,
                "output_tokens_per_s_per_user": 1.0 / td_sel,
                "usd_per_hour": usd_h,
                "usd_per_million_output_tokens": usd_h / 3600.0 / out_rate * 1e6,
                "usd_per_million_input_tokens": n_p
                * gp_sel
                * hp.price_usd_per_hour
                / 3600.0
                / (rate * input_len)
                * 1e6,
                "power_w": n_p * gp_sel * hp.tdp_w + nd_sel * gd_sel * hd.tdp_w,
                "kv_transfer_s": kv_s,
                "prefill_hardware": hp.name,
                "prefill_tp": gp_grid["tp"][pi][:, None],
                "prefill_ep": gp_grid["ep"][pi][:, None],
                "prefill_pp": gp_grid["pp"][pi][:, None],
                "prefill_dp": gp_grid["dp"][pi][:, None],
                "prefill_replicas": n_p,
                "prefill_gpus": n_p * gp_sel,
                "decode_gpus": nd_sel * gd_sel,
                "cap_replicas": nd_sel,
                "cap_gpus": gpus_cap,
                "cap_output_tokens_per_s_per_gpu": out_rate / gpus_cap,
                "cap_output_tokens_per_s_per_user": 1.0 / td_sel,
                "cap_usd_per_million_output_tokens": usd_cap / 3600.0 / out_rate * 1e6,
            }
            frames.append(_frame(cols, shape))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points not dominated in (x, y), both to be maximised; sorted by x."""
    order = np.lexsort((-y, -x))  # x descending, ties by y descending
    best = -np.inf
    keep = []
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return np.array(sorted(keep, key=lambda i: x[i]), dtype=int)


PLAN_KEYS = (
    "hardware",
    "mode",
    "topology",
    "tp",
    "ep",
    "pp",
    "dp",
    "offload_fraction",
    "batch",
    "gpus",
    "replicas",
    "gpus_per_replica",
    "ttft_s",
    "slot_wait_s",
    "tpot_s",
    "e2e_latency_s",
    "output_tokens_per_s_per_gpu",
    "output_tokens_per_s_per_user",
    "usd_per_million_output_tokens",
    "usd_per_million_input_tokens",
    "usd_per_hour",
    "power_w",
    "max_concurrency",
    "memory_bytes_per_gpu",
    "bound",
)
PREFILL_KEYS = (
    "prefill_hardware",
    "prefill_tp",
    "prefill_ep",
    "prefill_pp",
    "prefill_dp",
    "prefill_replicas",
    "prefill_gpus",
)


def _row_dict(row: pd.Series) -> dict:
    out = {k: _py(row[k]) for k in PLAN_KEYS}
    if row["mode"] == "disaggregated":
        out["prefill"] = {k.removeprefix("prefill_"): _py(row[k]) for k in PREFILL_KEYS}
        out.update(
            prefill_gpus=_py(row["prefill_gpus"]),
            decode_gpus=_py(row["decode_gpus"]),
            kv_transfer_s=_py(row["kv_transfer_s"]),
        )
    return out


def _py(v):
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _layout_text(row) -> str:
    return f"tp{int(row['tp'])}" + "".join(
        f"{k}{int(row[k])}" for k in ("ep", "pp", "dp") if int(row[k]) > 1
    )


def collapse_near_duplicates(
    ranked: pd.DataFrame, top: int, rel: float = 0.25, scan: int = 2000
) -> list[dict]:
    """The ``top`` first plans of ``ranked`` (cheapest first) with near-duplicates folded in.

    A plan is a near-duplicate of a kept one when it serves on the same hardware, in the same
    mode, with the same GPUs and batch, at a $/Mtok within 1% and a TTFT and TPOT within ``rel``
    (e.g. EP 2, 4 or 8 over the same DP group): the first, with the lowest TPOT, stands for
    them; listing each tells a planner nothing new. Folded layouts are kept in ``similar_layouts``.
    """
    kept: list[tuple[pd.Series, list[str]]] = []
    for _, row in ranked.head(scan).iterrows():
        for head, similar in kept:
            if _near(head, row, rel):
                similar.append(_layout_text(row))
                break
        else:
            if len(kept) < top:
                kept.append((row, []))
    out = []
    for row, similar in kept:
        d = _row_dict(row)
        d["similar_layouts"] = similar
        out.append(d)
    return out


def _near(a: pd.Series, b: pd.Series, rel: float) -> bool:
    if (a["hardware"], a["mode"], a["gpus"], a["batch"]) != (
        b["hardware"],
        b["mode"],
        b["gpus"],
        b["batch"],
    ):
        return False
    if a["mode"] == "disaggregated" and a.get("prefill_hardware") != b.get("prefill_hardware"):
        return False

    def close(key, tol):
        x, y = float(a[key]), float(b[key])
        return abs(x - y) <= tol * max(abs(x), abs(y), 1e-300)

    return (
        close("usd_per_million_output_tokens", 0.01)
        and close("tpot_s", rel)
        and close("ttft_s", rel)
    )


def plan(
    model,
    hardware,
    *,
    ttft_slo: float,
    tpot_slo: float,
    rate: float | None,
    input_len: int,
    output_len: int,
    max_gpus: int = 64,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    routing=None,
    top: int = 5,
    modes=MODES,
    memory_utilization: float = 0.90,
    engine=None,
) -> PlanResult:
    """Search layouts on every hardware profile for the cheapest SLO-feasible way to serve ``rate``.

    model, hardware : names or loaded specs (``hardware`` may be a list)
    ttft_slo, tpot_slo : seconds; rate : requests/s (None: one replica at its SLO capacity)
    max_gpus : bound on the whole fleet (all replicas and pools)
    engine : vllm (default) | sglang | trtllm: the token budget, running cap and memory rules of
        the in-flight engine model (:mod:`moesim.engine.presets`)
    """
    from moesim.cost.ops import routing_or_default
    from moesim.spec import resolve

    t0 = time.perf_counter()
    for name, value in (
        ("ttft_slo", ttft_slo),
        ("tpot_slo", tpot_slo),
        ("input_len", input_len),
        ("output_len", output_len),
        ("max_gpus", max_gpus),
    ):
        if not value > 0:
            raise MoesimError(f"{name} must be > 0, got {value}")
    if rate is not None and rate < 0:
        raise MoesimError(f"rate must be >= 0, got {rate}")
    bad = set(modes) - set(MODES)
    if bad:
        raise MoesimError(f"unknown planning mode {sorted(bad)[0]!r}; use {', '.join(MODES)}")
    kv_dtype = kv_dtype or dtype
    hardware = (
        [hardware]
        if isinstance(hardware, str) or not isinstance(hardware, (list, tuple))
        else list(hardware)
    )
    if not hardware:
        raise MoesimError("give at least one hardware profile")
    routing = routing_or_default(routing)
    frames, evals, grids = [], {}, {}
    for hw_item in hardware:
        m, hw = resolve(model, hw_item)
        grid = layout_grid(m, hw, max_gpus, offload="offload" in modes)
        if not len(grid["tp"]):
            continue
        ev = evaluate_hardware(
            m,
            hw,
            grid,
            dtype=dtype,
            kv_dtype=kv_dtype,
            routing=routing,
            input_len=float(input_len),
            output_len=float(output_len),
            memory_utilization=memory_utilization,
            engine=engine,
        )
        ev["hw"] = hw
        evals[hw.name], grids[hw.name] = ev, grid
        agg = _aggregated(
            m, hw, ev, grid, rate, float(input_len), float(output_len), ttft_slo, tpot_slo, max_gpus
        )
        if "aggregated" not in modes:
            agg = agg[agg["mode"] != "aggregated"]
        frames.append(agg)
    model_spec = m
    if "disaggregated" in modes and evals:
        frames.append(
            _disaggregated(
                model_spec,
                evals,
                grids,
                rate,
                float(input_len),
                float(output_len),
                ttft_slo,
                tpot_slo,
                max_gpus,
                kv_dtype,
            )
        )
    table = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if frames else pd.DataFrame()
    )
    if table.empty:
        raise MoesimError("no candidate layouts: raise --max-gpus or check the hardware")
    feasible = table[table["slo_ok"]].sort_values(
        ["usd_per_million_output_tokens", "gpus", "tpot_s", "ttft_s"], kind="stable"
    )
    # One plan per (hardware, mode, layout): the cheapest batch / prefill pool of each.
    distinct = feasible.drop_duplicates(
        ["hardware", "mode", "tp", "ep", "pp", "dp", "offload_fraction"]
    )
    best = collapse_near_duplicates(distinct, top)
    fits = table[table["fits"] & np.isfinite(table["cap_gpus"]) & (table["cap_gpus"] <= max_gpus)]
    front = (
        fits.iloc[
            pareto_front(
                fits["cap_output_tokens_per_s_per_user"].to_numpy(float),
                fits["cap_output_tokens_per_s_per_gpu"].to_numpy(float),
            )
        ]
        if len(fits)
        else fits
    )
    pareto = [
        {
            **_row_dict(r),
            "output_tokens_per_s_per_gpu": float(r["cap_output_tokens_per_s_per_gpu"]),
            "output_tokens_per_s_per_user": float(r["cap_output_tokens_per_s_per_user"]),
            "gpus": float(r["cap_gpus"]),
            "meets_slo": bool(r["slo_ok"]),
        }
        for _, r in front.iterrows()
    ]
    request = {
        "model": model_spec.name,
        "hardware": list(evals),
        "ttft_slo_s": ttft_slo,
        "tpot_slo_s": tpot_slo,
        "rate": rate,
        "input_len": input_len,
        "output_len": output_len,
        "max_gpus": max_gpus,
        "dtype": dtype,
        "kv_dtype": kv_dtype,
        "routing": getattr(routing.dist, "name", "uniform"),
        "engine": engine or "vllm",
    }
    return PlanResult(
        best,
        pareto,
        int(len(table)),
        int(table["slo_ok"].sum()),
        time.perf_counter() - t0,
        table,
        request,
    )
