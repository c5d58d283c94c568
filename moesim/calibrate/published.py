"""Published kernel tables as measurement rows, so the same calibrator fits them.

``moesim/data/published_points.csv`` (rows R001-R058 for the H800) quotes throughputs, not
times; each row is turned into the measurement-frame schema with the time its own definition
implies:

- DeepGEMM dense fp8 GEMMs (R011-R028): t = 2·M·N·K / TFLOPS (DeepGEMM README: "TFLOPS =
  2·M·N·K / t"). R029 ("up to 1550 TFLOPS", no shape) has no time and is left out.
- DeepGEMM m-grouped fp8 GEMMs (R001-R010) come in pairs at the DeepSeek-V3 expert shapes:
  gate/up (N = 4096 = 2·I, K = 7168 = h) and down (N = 7168, K = 2048 = I) for the same
  groups G and rows per group M. A pair is one MoE expert layer of G experts with M tokens each
  (top-1, no padding: every group full), t = t_gate_up + t_down with t = 2·G·M·N·K / TFLOPS;
  the activation kernel between them is not in the tables.
- FlashMLA decode (R030, R031): "3000 GB/s memory-bound, 660 TFLOPS compute-bound". Each
  becomes one attention_decode row at FlashMLA's benchmark shape (batch 128, 4096 cached tokens,
  one 576-wide latent KV head: 512 + 64 rope, d_v = 512). ``attention_cost`` has no MLA path
  (it counts K and V separately), so the rows use head_dim chosen to keep the quantity the
  figure measures exact: R030 (h_q = 16) head_dim 288 -> KV bytes 2·288 = 576 per token,
  t = bytes / 3000 GB/s; R031 (h_q = 128, two query tokens as in MTP decoding -> 256 query
  heads) head_dim 544 -> FLOPs 4·544 = 2·(576 + 512) per head and key, t = FLOPs / 660 TFLOPS.
- DeepEP normal kernels (R051-R058): "bottleneck bandwidth" = bytes on the bottleneck link /
  time. Each row becomes one all-to-all of 4096 tokens per rank (hidden 7168, top-8 of 256
  experts, uniform routing) over EP8 (NVLink bottleneck) or EP16/32/64 (RDMA bottleneck);
  bytes per level are the model's own (:func:`moesim.cost.comm.alltoall_bytes`, remote GPUs per
  token from :func:`moesim.cost.routing.routing_stats`; fp8 dispatch with 1x128 scales, bf16
  combine) and t = bottleneck-level bytes / published bandwidth.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pandas as pd

from moesim.errors import MoesimError, unknown_name

PUBLISHED = {"h800": {"gpu": "H800 SXM5", "base": "h800"}}
DSV3_HIDDEN, DSV3_EXPERT_I, DSV3_EXPERTS, DSV3_TOP_K = 7168, 2048, 256, 8
DEEPEP_TOKENS_PER_RANK = 4096


def published_points() -> pd.DataFrame:
    """The shipped table of published figures (``moesim/data/published_points.csv``)."""
    with resources.files("moesim").joinpath("data/published_points.csv").open() as f:
        return pd.read_csv(f)


def _ints(text: str, *names: str) -> dict[str, int]:
    out = {}
    for name in names:
        m = re.search(rf"{re.escape(name)}=(\d+)", text)
        if not m:
            raise MoesimError(f"published row has no {name}= in {text!r}")
        out[name] = int(m.group(1))
    return out


def published_frame(gpu: str = "h800") -> pd.DataFrame:
    """Measurement-schema rows (plus ``source_ids``) converted from the published figures."""
    if gpu not in PUBLISHED:
        raise unknown_name("published calibration", gpu, PUBLISHED)
    pts = published_points()
    pts = pts[pts["gpu"].astype(str).str.startswith(PUBLISHED[gpu]["gpu"])]
    rows = _dense_gemm(pts) + _grouped(pts) + _flashmla(pts) + _deepep(pts)
    df = pd.DataFrame(rows)
    df["status"] = "ok"
    df["device_name"] = f"NVIDIA {PUBLISHED[gpu]['gpu']} (published)"
    return df


def _dense_gemm(pts: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in pts[pts["category"] == "kernel_dense_gemm"].iterrows():
        if "M=" not in str(r["model_or_shape"]):
            continue  # R029: a peak over shapes, no time
        d = _ints(r["model_or_shape"], "M", "N", "K")
        m, n, k = d["M"], d["N"], d["K"]
        flops = 2.0 * m * n * k
        rows.append({
            "kernel_class": "gemm", "impl": "deepgemm", "dtype": "fp8", "shape_key": f"m{m}_n{n}_k{k}",
            "m": m, "n": n, "k": k, "flops": flops, "hbm_bytes": (m * k + k * n) * 1.0 + m * n * 2.0,
            "median_s": flops / (float(r["value"]) * 1e12), "source_ids": r["id"],
        })  # fmt: skip
    return rows


def _grouped(pts: pd.DataFrame) -> list[dict]:
    pairs: dict[tuple[str, int, int], dict] = {}
    for _, r in pts[pts["category"] == "kernel_grouped_gemm"].iterrows():
        text = str(r["model_or_shape"])
        d = _ints(text, "groups", "M/group", "N", "K")
        g, m = d["groups"], d["M/group"]
        layout = "masked" if "masked" in text else "contiguous"
        t = 2.0 * g * m * d["N"] * d["K"] / (float(r["value"]) * 1e12)
        entry = pairs.setdefault((layout, g, m), {"t": 0.0, "ids": [], "parts": set()})
        entry["t"] += t
        entry["ids"].append(str(r["id"]))
        entry["parts"].add((d["N"], d["K"]))
    rows = []
    want = {(2 * DSV3_EXPERT_I, DSV3_HIDDEN), (DSV3_HIDDEN, DSV3_EXPERT_I)}
    for (layout, g, m), e in sorted(pairs.items()):
        if e["parts"] != want:
            continue  # not a full gate/up + down pair
        tokens = g * m
        rows.append({
            "kernel_class": "grouped_gemm", "impl": "deepgemm", "dtype": "fp8", "shape_key": f"{layout}_g{g}_m{m}",
            "tokens": tokens, "experts": g, "top_k": 1, "hidden": DSV3_HIDDEN, "intermediate": DSV3_EXPERT_I,
            "routing": layout, "block_m": m, "n_active_experts": g, "max_expert_tokens": m,
            "sum_padded_tokens": tokens, "flops": 2.0 * tokens * DSV3_HIDDEN * DSV3_EXPERT_I * 3,
            "median_s": e["t"], "source_ids": "+".join(sorted(e["ids"])),
        })  # fmt: skip
    return rows


def _flashmla(pts: pd.DataFrame) -> list[dict]:
    rows = []
    batch, ctx = 128, 4096
    for _, r in pts[pts["category"] == "kernel_attention"].iterrows():
        if "FlashMLA dense MLA decode" not in str(r["model_or_shape"]):
            continue  # R032 is the sparse (DSA) kernel with an fp8 cache: another kernel
        unit = str(r["unit"])
        if unit == "GB/s":  # memory-bound: 16 query heads, one latent KV head of 576
            heads, head_dim = 16, 288
            hbm = 2.0 * batch * ctx * head_dim * 2 + 2.0 * batch * heads * head_dim * 2
            t = hbm / (float(r["value"]) * 1e9)
        elif unit == "TFLOPS":  # compute-bound: 128 heads x 2 query tokens
            heads, head_dim = 256, 544
            t = 4.0 * batch * ctx * heads * head_dim / (float(r["value"]) * 1e12)
        else:
            continue
        rows.append({
            "kernel_class": "attention_decode", "impl": "flashmla", "dtype": "bf16",
            "shape_key": f"mla_b{batch}_ctx{ctx}_hq{heads}", "batch": batch, "seq_len": 1, "context_len": ctx,
            "num_heads": heads, "num_kv_heads": 1, "head_dim": head_dim, "causal": True,
            "median_s": t, "source_ids": r["id"],
        })  # fmt: skip
    return rows


def _deepep(pts: pd.DataFrame) -> list[dict]:
    from moesim.cost.comm import alltoall_bytes
    from moesim.cost.ops import FP8_SCALE_BYTES_PER_CHANNEL
    from moesim.cost.routing import routing_stats

    rows = []
    for _, r in pts[pts["category"] == "comm_ep_alltoall"].iterrows():
        text = str(r["model_or_shape"])
        m = re.search(r"DeepEP normal (dispatch|combine), EP(\d+)", text)
        if not m:
            continue
        op, ep = m.group(1), int(m.group(2))
        per_token = (
            DSV3_HIDDEN * (1.0 + FP8_SCALE_BYTES_PER_CHANNEL)
            if op == "dispatch"
            else DSV3_HIDDEN * 2.0
        )
        stats = routing_stats(DEEPEP_TOKENS_PER_RANK * ep, DSV3_TOP_K, DSV3_EXPERTS, ep=ep)
        intra, inter = alltoall_bytes(
            DEEPEP_TOKENS_PER_RANK, stats.remote_gpus_per_token, per_token, ep, 8
        )
        intra, inter = float(np.asarray(intra)), float(np.asarray(inter))
        bottleneck = inter if "RDMA" in str(r["notes"]) or ep > 8 else intra
        rows.append({
            "kernel_class": "alltoall", "impl": f"deepep_normal_{op}", "dtype": "fp8" if op == "dispatch" else "bf16",
            "shape_key": f"ep{ep}_{op}", "world_size": ep, "backend": "deepep",
            "message_bytes": intra + inter, "intra_bytes": intra, "inter_bytes": inter,
            "median_s": bottleneck / (float(r["value"]) * 1e9), "source_ids": r["id"],
        })  # fmt: skip
    return rows


def source_ids(df: pd.DataFrame) -> dict[str, str]:
    """Row ids used per calibration block, e.g. {"gemm": "R011-R028"}."""
    from moesim.calibrate.measurements import FIT_CLASS_OF

    out: dict[str, list[str]] = {}
    for cls, ids in zip(df["kernel_class"].map(FIT_CLASS_OF), df["source_ids"], strict=True):
        out.setdefault(cls, []).extend(str(ids).split("+"))
    return {cls: _ranges(sorted(set(ids))) for cls, ids in out.items()}


def _ranges(ids: list[str]) -> str:
    nums = sorted(int(i[1:]) for i in ids)
    parts, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"R{start:03d}" if start == prev else f"R{start:03d}-R{prev:03d}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def calibrate_published(gpu: str = "h800", heldout_fraction: float = 0.2, seed: int = 0):
    """Fit the ``gpu`` datasheet profile to its published kernel figures; returns (Calibration, profile)."""
    from moesim.calibrate.calibration import Calibration

    df = published_frame(gpu)
    base = PUBLISHED[gpu]["base"]
    cal = Calibration(base, heldout_fraction=heldout_fraction, seed=seed).fit(df, meta={})
    ids = source_ids(df)
    all_ids = _ranges(sorted({i for s in df["source_ids"] for i in str(s).split("+")}))
    source = (
        f"published: {PUBLISHED[gpu]['gpu']} kernel tables in moesim/data/published_points.csv "
        f"(rows {all_ids}: DeepGEMM, FlashMLA, DeepEP), fitted by "
        f"'moesim calibrate --published {gpu}'"
    )
    profile = cal.to_profile(name=f"{base}.published", source=source)
    provenance = dict(profile.provenance)
    for cls, rng in ids.items():
        report = cal.report_["classes"].get(cls)
        if report is None:
            continue
        provenance[f"efficiency.{cls}"] = (
            f"fitted to published rows {rng} (moesim/data/published_points.csv; impl {report['impl']}); "
            f"train median error {_pct(report['train']['median_abs_error'])}, held-out "
            f"{_pct(report['heldout']['median_abs_error'])} on {report['n_heldout']} rows"
        )
    measurement = {
        "source": source,
        "published_rows": ids,
        "base_profile": base,
        "table": "moesim/data/published_points.csv",
    }
    profile = profile.model_copy(update={
        "provenance": provenance,
        "measurement": measurement,
        "description": f"{profile.description}; efficiencies fitted to published kernel figures",
    })  # fmt: skip
    return cal, profile


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"
