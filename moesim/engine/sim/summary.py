"""From simulated requests and steps to the numbers a serving benchmark reports.

Definitions follow ``vllm bench serve`` (vllm/benchmarks/serve.py): TTFT = first token -
arrival; TPOT per request = (finish - first token) / (output tokens - 1), over requests with
more than one output token; ITL (the per-token TPOT) = every gap between consecutive tokens of
a request; end-to-end latency = finish - arrival; throughput over the whole run (first arrival
to last finish). Per-request percentiles interpolate linearly (numpy's default, as vLLM's
benchmark does); per-token ones are weighted (each step's duration counts once per decode token
it produced; method 'inverted_cdf'). Goodput: requests per second that meet every SLO given
(DistServe, Zhong et al. OSDI'24; vLLM ``--goodput``).
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 99)


def _stats(name: str, x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    out = {f"{name}_mean_s": float(np.mean(x)) if x.size else float("nan")}
    pct = np.percentile(x, PERCENTILES) if x.size else np.full(len(PERCENTILES), np.nan)
    for q, v in zip(PERCENTILES, pct, strict=True):
        out[f"{name}_p{q}_s"] = float(v)
    return out


def _weighted_stats(name: str, values: np.ndarray, weights: np.ndarray) -> dict:
    keep = weights > 0
    values, weights = values[keep], weights[keep].astype(float)
    total = float(weights.sum())
    out = {f"{name}_mean_s": float(np.dot(values, weights) / total) if total else float("nan")}
    if total:
        pct = np.percentile(values, PERCENTILES, weights=weights, method="inverted_cdf")
    else:
        pct = np.full(len(PERCENTILES), np.nan)
    for q, v in zip(PERCENTILES, pct, strict=True):
        out[f"{name}_p{q}_s"] = float(v)
    return out


def request_metrics(arrival_s, first_token_s, finish_s, output_tokens) -> dict[str, np.ndarray]:
    """Per-request ttft_s, tpot_s (NaN for one-token outputs) and e2e_latency_s."""
    out = np.asarray(output_tokens, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (finish_s - first_token_s) / (out - 1.0), np.nan)
    return {
        "ttft_s": first_token_s - arrival_s,
        "tpot_s": tpot,
        "e2e_latency_s": finish_s - arrival_s,
    }


def summarize(
    requests: dict,
    steps: list[dict],
    *,
    num_gpus: float,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    extra_itl_s: np.ndarray | None = None,
    occupancy_steps: list[dict] | None = None,
) -> dict:
    """Summary of a run.

    requests : arrays arrival_s, first_token_s, finish_s, input_tokens, output_tokens,
        preemptions, rejected (and ttft_s, tpot_s, e2e_latency_s)
    steps : one dict per instance with step_end_s, step_s, step_decode_seqs, kv_blocks,
        step_kv_blocks, resume_gaps_s
    extra_itl_s : token gaps not in any step log (each counts once)
    occupancy_steps : the instances whose KV occupancy and decode batch are reported (default
        all; a disaggregated run reports its decode pool)
    """
    rejected = np.asarray(requests["rejected"], dtype=bool)
    ok = ~rejected & np.isfinite(requests["finish_s"])
    n = int(rejected.size)
    arrival = np.asarray(requests["arrival_s"])[ok]
    finish = np.asarray(requests["finish_s"])[ok]
    out_tok = np.asarray(requests["output_tokens"])[ok]
    in_tok = np.asarray(requests["input_tokens"])[ok]
    duration = float(finish.max() - min(arrival.min(), 0.0)) if ok.any() else float("nan")
    res: dict = {
        "requests": n,
        "completed": int(ok.sum()),
        "rejected": int(rejected.sum()),
        "preemptions": int(np.sum(requests["preemptions"])),
        "preempted_requests": int(np.sum(np.asarray(requests["preemptions"]) > 0)),
        "duration_s": duration,
    }
    for key in ("ttft", "tpot", "e2e_latency"):
        res.update(_stats(key, np.asarray(requests[f"{key}_s"])[ok]))
    extra = [np.asarray(extra_itl_s, dtype=float)] if extra_itl_s is not None else []
    singles = [s["resume_gaps_s"] for s in steps] + extra
    dts = np.concatenate([s["step_s"] for s in steps] + singles)
    weights = np.concatenate(
        [s["step_decode_seqs"] for s in steps] + [np.ones(g.size, dtype=np.int64) for g in singles]
    )
    res.update(_weighted_stats("itl", dts, weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        res["request_throughput_per_s"] = res["completed"] / duration
        res["output_tokens_per_s"] = float(out_tok.sum()) / duration
        res["output_tokens_per_s_per_gpu"] = res["output_tokens_per_s"] / num_gpus
        res["total_tokens_per_s_per_gpu"] = (
            float(out_tok.sum() + in_tok.sum()) / duration / num_gpus
        )
    res["num_gpus"] = float(num_gpus)
    res["ttft_slo_s"], res["tpot_slo_s"] = ttft_slo_s, tpot_slo_s
    if ttft_slo_s is not None or tpot_slo_s is not None:
        good = ok.copy()
        if ttft_slo_s is not None:
            good &= np.asarray(requests["ttft_s"]) <= ttft_slo_s
        if tpot_slo_s is not None:
            tpot = np.asarray(requests["tpot_s"])
            good &= ~(tpot > tpot_slo_s)  # NaN (one-token output) has no TPOT to miss
        res["slo_attainment"] = float(good.sum()) / n if n else float("nan")
        res["goodput_requests_per_s"] = float(good.sum()) / duration
    else:
        res["slo_attainment"] = None
        res["goodput_requests_per_s"] = None
    res.update(occupancy(steps if occupancy_steps is None else occupancy_steps))
    # The same latencies grouped by metric: {"ttft_s": {"mean": .., "p50": .., ...}, ...}.
    res["percentiles"] = {
        f"{key}_s": {
            stat: res[f"{key}_{stat}_s"] for stat in ("mean", *(f"p{q}" for q in PERCENTILES))
        }
        for key in ("ttft", "tpot", "itl", "e2e_latency")
    }
    return res


def occupancy(steps: list[dict]) -> dict:
    """Time-weighted KV-cache occupancy (share of blocks in use) and decode batch, over all
    instances' busy steps."""
    used, total, dt, dec = [], [], [], []
    for s in steps:
        if s["step_s"].size == 0:
            continue
        used.append(s["step_kv_blocks"] / max(s["kv_blocks"], 1))
        dt.append(s["step_s"])
        dec.append(s["step_decode_seqs"])
        total.append(s["step_s"].size)
    if not dt:
        return {"kv_occupancy_mean": float("nan"), "kv_occupancy_max": float("nan"),
                "mean_decode_batch": float("nan"), "mean_step_s": float("nan"), "steps": 0}  # fmt: skip
    occ, w, d = np.concatenate(used), np.concatenate(dt), np.concatenate(dec)
    return {
        "kv_occupancy_mean": float(np.dot(occ, w) / w.sum()),
        "kv_occupancy_max": float(occ.max()),
        "mean_decode_batch": float(np.dot(d, w) / w.sum()),
        "mean_step_s": float(w.mean()),
        "steps": int(sum(total)),
    }
