"""Communication tables of aiconfigurator-core as moesim measurement rows (see SCHEMA.md).

NVIDIA's aiconfigurator-core ships measured collective tables per system
(``systems/data/<system>/comm/<folder>/<version>/*.parquet``); this module turns the ones the
collective fits use into rows with the columns ``moesim profile`` writes:

- ``nccl/<ver>/nccl_perf``: NCCL all_reduce / all_gather / reduce_scatter / alltoall at 2-8 GPUs
  (nccl-tests convention: ``message_size`` is the whole buffer in *elements*, ``half`` = 2 bytes,
  ``int8`` = 1; latency in ms) -> kernel_class allreduce / allgather / reducescatter / alltoall,
  impl ``nccl``;
- ``<framework>/<ver>/custom_allreduce_perf``: the engine's own all-reduce (bf16 elements, ms);
  rows timed eagerly (``*_eager``: host launch included) are dropped, the graph-captured ones kept;
- ``trtllm/<ver>/moe_a2a_perf`` (µs) and ``sglang/<ver>/wideep_deepep_{ll,normal}_perf`` (µs):
  DeepEP dispatch / combine -> kernel_class ep_dispatch / ep_combine, impl deepep_ll /
  deepep_normal, with tokens per rank, hidden, top_k, global_experts, ep_size, nodes, comm_dtype.

Version choice: NCCL from the system's ``misc.nccl_version`` (``systems/<system>.yaml``) when that
folder exists, else the newest; framework tables from ``version`` when given, else for each table
(and, for DeepEP, each node count) the newest folder that measured it. A table whose measured
values equal, number for number, the same table of another system is a relabelled copy and is
dropped (:data:`RELABELLED_FROM`). aiconfigurator-core is imported only when this runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import MoesimError, unknown_name

FRAMEWORKS = ("trtllm", "vllm", "sglang")
NCCL_CLASS = {
    "all_reduce": "allreduce",
    "all_gather": "allgather",
    "reduce_scatter": "reducescatter",
    "alltoall": "alltoall",
}
NCCL_ELEMENT_BYTES = {"half": 2, "int8": 1, "float": 4, "bfloat16": 2}
NCCL_DTYPE = {"half": "fp16", "int8": "int8", "float": "fp32", "bfloat16": "bf16"}
AR_ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4}
AR_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"}
DEEPEP_BACKENDS = {
    "trtllm_deepep_ll": "deepep_ll",
    "trtllm_deepep_ht": "deepep_normal",
    "deepep_ll": "deepep_ll",
    "deepep_ht": "deepep_normal",
}
COMM_DTYPE = {"bfloat16": "bf16", "bf16": "bf16", "fp8": "fp8", "nvfp4": "fp4"}
# DeepEP normal kernels run with a chosen number of SMs: the tables sweep it; rows at DeepEP's
# default Buffer.num_sms = 20 (also aiconfigurator's default ``sms``) are kept, 0 = not applicable.
DEEPEP_SMS = (0, 20)
# (system, systems whose identical tables it carries under its own name). aiconfigurator-core
# 0.12.0: h200_sxm sglang/0.5.6.post2 wideep_deepep_{ll,normal}_perf equal the h100_sxm tables
# value for value (1, 2, 4 and 8 nodes), their `device` column relabelled to H200.
RELABELLED_FROM = {"h200_sxm": ("h100_sxm",)}
# Columns each table must have (aiconfigurator-core 0.12.0 layouts).
REQUIRED_COLUMNS = {
    "nccl_perf": ("op_name", "nccl_dtype", "num_gpus", "message_size", "latency"),
    "custom_allreduce_perf": ("allreduce_dtype", "num_gpus", "message_size", "latency"),
    "moe_a2a_perf": ("comm_backend", "phase", "comm_dtype", "ep_size", "node_num", "hidden_size",
                     "topk", "num_experts", "num_tokens", "latency"),
    "wideep_deepep_ll_perf": ("node_num", "hidden_size", "num_token", "num_topk", "num_experts",
                              "dispatch_avg_t_us", "combine_avg_t_us"),
    "wideep_deepep_normal_perf": ("node_num", "hidden_size", "num_token", "num_topk",
                                  "num_experts", "dispatch_sms", "combine_sms",
                                  "dispatch_transmit_us", "combine_transmit_us"),
}  # fmt: skip
TIMING = "cuda_graph"
US, MS = 1e-6, 1e-3


def _data_root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    try:
        import importlib.resources

        return Path(str(importlib.resources.files("aiconfigurator_core") / "systems" / "data"))
    except ModuleNotFoundError:
        raise MoesimError(
            "aiconfigurator-core is not installed (pip install aiconfigurator-core)"
        ) from None


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("aiconfigurator-core")
    except Exception:  # noqa: BLE001 (a source tree without metadata)
        return "unknown"


def _version_key(text: str):
    try:
        from packaging.version import Version

        return (0, Version(text))
    except Exception:  # noqa: BLE001
        return (1, tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+]", text)))


def _versions(folder: Path, table: str) -> list[str]:
    """Version folders under ``folder`` holding ``table``.parquet, newest first."""
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if (p / f"{table}.parquet").is_file()]
    return sorted(found, key=_version_key, reverse=True)


def _system_yaml(root: Path, system: str) -> dict[str, Any]:
    path = root.parent / f"{system}.yaml"
    if not path.is_file():
        return {}
    from ruamel.yaml import YAML

    try:
        return YAML(typ="safe", pure=True).load(path.read_text()) or {}
    except Exception:  # noqa: BLE001 (an unreadable system file only loses the defaults)
        return {}


class _Reader:
    def __init__(self, root: Path, system: str, framework: str):
        self.root, self.system, self.framework = root, system, framework
        self.package = _package_version()
        self.files: list[dict[str, Any]] = []
        self.drops: dict[str, int] = {}

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.drops[reason] = self.drops.get(reason, 0) + int(count)

    def read(self, folder: str, version: str, table: str) -> pd.DataFrame | None:
        rel = Path("comm") / folder / version / f"{table}.parquet"
        path = self.root / self.system / rel
        try:
            df = pd.read_parquet(path)
        except ImportError as exc:
            raise MoesimError(f"reading {path} needs pyarrow ({exc})") from None
        except Exception as exc:  # noqa: BLE001
            raise MoesimError(f"{path}: not a readable parquet table ({exc})") from None
        missing = [c for c in REQUIRED_COLUMNS.get(table, ()) if c not in df.columns]
        if missing:
            raise MoesimError(f"{path}: missing column(s) {', '.join(missing)}")
        entry = {"path": str(rel), "table": table, "folder": folder, "version": version,
                 "rows_read": len(df)}  # fmt: skip
        copy_of = self._copy_of(rel, df)
        if copy_of:
            entry["rows_kept"] = 0
            entry["dropped"] = f"relabelled copy of {copy_of}/{rel}"
            self.files.append(entry)
            self.drop(f"relabelled copy of {copy_of} ({table} {version})", len(df))
            return None
        self.files.append(entry)
        return df

    def _copy_of(self, rel: Path, df: pd.DataFrame) -> str | None:
        for other in RELABELLED_FROM.get(self.system, ()):
            path = self.root / other / rel
            if not path.is_file():
                continue
            theirs = pd.read_parquet(path)
            floats = [c for c in df.columns if df[c].dtype.kind == "f"]
            if (
                len(theirs) == len(df)
                and floats
                and all(c in theirs.columns for c in floats)
                and all(np.array_equal(df[c].to_numpy(), theirs[c].to_numpy()) for c in floats)
            ):
                return other
        return None

    def source(self, folder: str, version: str, table: str) -> str:
        return f"aiconfigurator-core {self.package} {self.system}/comm/{folder}/{version}/{table}"


def _common(df: pd.DataFrame, reader: _Reader, folder: str, version: str, table: str) -> dict:
    device = df["device"].astype(str) if "device" in df.columns else ""
    fw = df["framework"].astype(str).str.lower() if "framework" in df.columns else ""
    ver = df["version"].astype(str) if "version" in df.columns else version
    return {
        "status": "ok",
        "device_name": device,
        "timing_method": TIMING,
        "flops": 0.0,
        "hbm_bytes": np.nan,
        "source": reader.source(folder, version, table),
        "framework": fw,
        "framework_version": ver,
    }


def _nccl(reader: _Reader, version: str) -> pd.DataFrame:
    df = reader.read("nccl", version, "nccl_perf")
    if df is None or df.empty:
        return pd.DataFrame()
    known = df["op_name"].isin(list(NCCL_CLASS)) & df["nccl_dtype"].isin(list(NCCL_ELEMENT_BYTES))
    reader.drop("nccl: unknown op_name or nccl_dtype", int((~known).sum()))
    df = df[known & (df["latency"] > 0)].reset_index(drop=True)
    cls = df["op_name"].map(NCCL_CLASS)
    fmt = df["nccl_dtype"].astype(str)
    nbytes = df["message_size"].astype(np.int64) * fmt.map(NCCL_ELEMENT_BYTES).astype(np.int64)
    n = df["num_gpus"].astype(int)
    out = pd.DataFrame(
        {
            "kernel_class": cls,
            "impl": "nccl",
            "dtype": fmt.map(NCCL_DTYPE),
            "format": fmt,
            "shape_key": cls + "_nccl_" + fmt + "_w" + n.astype(str) + "_b" + nbytes.astype(str),
            "median_s": df["latency"].astype(float) * MS,
            "world_size": n,
            "message_bytes": nbytes.astype(float),
            **_common(df, reader, "nccl", version, "nccl_perf"),
        }
    )
    return out


def _custom_allreduce(reader: _Reader, version: str) -> pd.DataFrame:
    folder = reader.framework
    df = reader.read(folder, version, "custom_allreduce_perf")
    if df is None or df.empty:
        return pd.DataFrame()
    if "implementation" in df.columns:
        impl = df["implementation"].astype(str)
    elif "backend" in df.columns:
        impl = df["backend"].astype(str)
    else:
        impl = pd.Series([folder] * len(df))
    source = df["kernel_source"].astype(str) if "kernel_source" in df.columns else impl
    eager = impl.str.endswith("_eager") | source.str.lower().str.endswith("_eager")
    reader.drop("custom all-reduce timed eagerly (host launch included)", int(eager.sum()))
    known = df["allreduce_dtype"].isin(list(AR_ELEMENT_BYTES))
    reader.drop("custom all-reduce: unknown allreduce_dtype", int((~known & ~eager).sum()))
    keep = ~eager & known & (df["latency"] > 0)
    df, impl = df[keep].reset_index(drop=True), impl[keep].reset_index(drop=True)
    impl = impl.str.removesuffix("_graph")
    fmt = df["allreduce_dtype"].astype(str)
    nbytes = df["message_size"].astype(np.int64) * fmt.map(AR_ELEMENT_BYTES).astype(np.int64)
    n = df["num_gpus"].astype(int)
    return pd.DataFrame(
        {
            "kernel_class": "allreduce",
            "impl": impl,
            "dtype": fmt.map(AR_DTYPE),
            "format": fmt,
            "shape_key": "allreduce_" + impl + "_" + fmt + "_w" + n.astype(str) + "_b"
            + nbytes.astype(str),
            "median_s": df["latency"].astype(float) * MS,
            "world_size": n,
            "message_bytes": nbytes.astype(float),
            **_common(df, reader, folder, version, "custom_allreduce_perf"),
        }
    )  # fmt: skip


def _ep_frame(df, reader, folder, version, table, phase, impl, dtype, fmt, seconds, tokens,
              hidden, top_k, experts, ep, nodes) -> pd.DataFrame:  # fmt: skip
    cls = "ep_" + phase
    shape = (
        cls + "_" + impl + "_" + fmt + "_ep" + ep.astype(str) + "_nodes" + nodes.astype(str)
        + "_t" + tokens.astype(str) + "_h" + hidden.astype(str) + "_k" + top_k.astype(str)
        + "_e" + experts.astype(str)
    )  # fmt: skip
    return pd.DataFrame(
        {
            "kernel_class": cls,
            "impl": impl,
            "dtype": dtype,
            "format": fmt,
            "shape_key": shape,
            "median_s": seconds,
            "tokens": tokens,
            "hidden": hidden,
            "top_k": top_k,
            "global_experts": experts,
            "ep_size": ep,
            "nodes": nodes,
            "comm_dtype": dtype,
            "world_size": ep,
            **_common(df, reader, folder, version, table),
        }
    )


def _moe_a2a(reader: _Reader, version: str) -> pd.DataFrame:
    folder = reader.framework
    df = reader.read(folder, version, "moe_a2a_perf")
    if df is None or df.empty:
        return pd.DataFrame()
    impl = df["comm_backend"].astype(str).map(DEEPEP_BACKENDS)
    reader.drop("moe_a2a: backend other than DeepEP ll / ht", int(impl.isna().sum()))
    sms_ok = df["sms"].isin(DEEPEP_SMS) if "sms" in df.columns else True
    reader.drop("moe_a2a: sms other than 0 / 20", int((impl.notna() & ~sms_ok).sum()))
    raw = df["comm_dtype"].astype(str)
    known = raw.isin(list(COMM_DTYPE))
    # vLLM's table says "default": the payload dtype it sent is not recorded.
    reader.drop("moe_a2a: payload dtype not recorded", int((impl.notna() & sms_ok & ~known).sum()))
    keep = (
        impl.notna()
        & sms_ok
        & known
        & (df["latency"] > 0)
        & df["phase"].isin(["dispatch", "combine"])
    )
    df, impl, raw = (x[keep].reset_index(drop=True) for x in (df, impl, raw))
    phase = df["phase"].astype(str)
    # DeepEP combines in bf16 whatever the dispatch carried (DeepEP README: combine BF16).
    dtype = np.where(phase == "dispatch", raw.map(COMM_DTYPE), "bf16")
    ep = df["ep_size"].astype(int)
    frames = []
    for ph in ("dispatch", "combine"):
        sel = (phase == ph).to_numpy()
        part = df[sel].reset_index(drop=True)
        frames.append(
            _ep_frame(
                part,
                reader,
                folder,
                version,
                "moe_a2a_perf",
                ph,
                impl[sel].reset_index(drop=True),
                dtype[sel],
                raw[sel].reset_index(drop=True),
                part["latency"].astype(float) * US,
                part["num_tokens"].astype(int),
                part["hidden_size"].astype(int),
                part["topk"].astype(int),
                part["num_experts"].astype(int),
                ep[sel].reset_index(drop=True),
                part["node_num"].astype(int),
            )  # fmt: skip
        )
    return pd.concat(frames, ignore_index=True)


def _ll_dispatch_dtype(df: pd.DataFrame) -> str:
    """Payload of SGLang's low-latency dispatch, from the table's own bandwidth column: DeepEP's
    benchmark counts tokens * top_k * hidden * bytes per channel (fp8: 1 + 4/128 scale bytes)."""
    if "dispatch_bandwidth_gbps" not in df.columns or df.empty:
        return "fp8"
    pairs = df["num_token"] * df["num_topk"] * df["hidden_size"]
    per = df["dispatch_bandwidth_gbps"] * 1e9 * df["dispatch_avg_t_us"] * US / pairs
    return "bf16" if float(np.nanmedian(per)) > 1.5 else "fp8"


def _wideep(reader: _Reader, version: str, table: str, nodes: set[int] | None) -> pd.DataFrame:
    df = reader.read("sglang", version, table)
    if df is None or df.empty:
        return pd.DataFrame()
    if nodes is not None:
        df = df[df["node_num"].isin(sorted(nodes))].reset_index(drop=True)
    gpn = int(reader.gpus_per_node)
    frames = []
    if table == "wideep_deepep_ll_perf":
        impl, disp = "deepep_ll", _ll_dispatch_dtype(df)
        cols = {"dispatch": "dispatch_avg_t_us", "combine": "combine_avg_t_us"}
    else:
        # SGLang's normal-mode dispatch carries fp8 (its DeepEP path quantises before sending):
        # at bf16 the largest rows would move more than NVLink's 450 GB/s line rate.
        impl, disp = "deepep_normal", "fp8"
        cols = {"dispatch": "dispatch_transmit_us", "combine": "combine_transmit_us"}
    for ph, col in cols.items():
        part = df
        if table != "wideep_deepep_ll_perf":
            sms = part[f"{ph}_sms"]
            reader.drop(f"{table}: {ph} sms other than 20", int((~sms.isin(DEEPEP_SMS)).sum()))
            part = part[sms.isin(DEEPEP_SMS)]
        t = part[col].astype(float)
        notify = f"{ph}_notify_us"
        if notify in part.columns:
            t = t + part[notify].fillna(0.0).astype(float)
        ok = t > 0
        part, t = part[ok].reset_index(drop=True), t[ok].reset_index(drop=True)
        nodes_col = part["node_num"].astype(int)
        dtype = disp if ph == "dispatch" else "bf16"
        frames.append(
            _ep_frame(
                part,
                reader,
                "sglang",
                version,
                table,
                ph,
                impl,
                dtype,
                dtype,
                t * US,
                part["num_token"].astype(int),
                part["hidden_size"].astype(int),
                part["num_topk"].astype(int),
                part["num_experts"].astype(int),
                nodes_col * gpn,
                nodes_col,
            )  # fmt: skip
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _merge_repeats(rows: pd.DataFrame, reader: _Reader) -> pd.DataFrame:
    """One row per shape_key: a table that measured a shape more than once (NCCL 2.27.3 holds two
    runs of every shape) gives its median as ``median_s``, with ``min_s``, ``max_s``, ``repeats``."""
    g = rows.groupby("shape_key", sort=False)["median_s"]
    stats = pd.DataFrame(
        {"median_s": g.median(), "min_s": g.min(), "max_s": g.max(), "repeats": g.size()}
    )
    merged = int((stats["repeats"] - 1).sum())
    if merged:
        reader.merged = merged
    first = rows.drop_duplicates("shape_key", keep="first").set_index("shape_key")
    first = first.drop(columns=["median_s"]).join(stats).reset_index()
    order = [c for c in rows.columns if c in first.columns] + ["min_s", "max_s", "repeats"]
    return first[order]


def comm_rows(
    system: str,
    framework: str,
    version: str | None = None,
    *,
    nccl_version: str | None = None,
    root: str | Path | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Measurement rows of a system's communication tables, and their provenance.

    Parameters
    ----------
    system : aiconfigurator system folder, e.g. ``h200_sxm``.
    framework : trtllm | vllm | sglang (the engine whose own all-reduce and DeepEP tables are read).
    version : the framework's table folder; None = per table the newest that has it.
    nccl_version : the NCCL folder; None = the system's ``misc.nccl_version``, else the newest.
    root : the ``systems/data`` folder (default: the installed aiconfigurator-core's).

    Returns (rows, provenance): rows per SCHEMA.md; provenance {package, system, framework,
    files: [{path, table, version, rows_read, rows_kept | dropped}], versions, rows: {class: n},
    drops: {reason: n}}.
    """
    if framework not in FRAMEWORKS:
        raise unknown_name("framework", str(framework), FRAMEWORKS)
    base = _data_root(root)
    if not (base / system / "comm").is_dir():
        have = (
            sorted(p.name for p in base.iterdir() if (p / "comm").is_dir()) if base.is_dir() else []
        )
        raise unknown_name("aiconfigurator system (with comm tables)", str(system), have)
    reader = _Reader(base, system, framework)
    meta = _system_yaml(base, system)
    reader.gpus_per_node = int(((meta.get("node") or {}).get("num_gpus_per_node")) or 8)
    comm = base / system / "comm"
    frames, versions = [], {}

    nccl_versions = _versions(comm / "nccl", "nccl_perf")
    wanted = nccl_version or str((meta.get("misc") or {}).get("nccl_version") or "")
    if nccl_version and nccl_version not in nccl_versions:
        raise unknown_name(f"NCCL table version of {system}", nccl_version, nccl_versions)
    nv = wanted if wanted in nccl_versions else (nccl_versions[0] if nccl_versions else None)
    if nv:
        versions["nccl_perf"] = nv
        frames.append(_nccl(reader, nv))

    fw_dir = comm / framework
    if version is not None and not (fw_dir / version).is_dir():
        have = (
            sorted((p.name for p in fw_dir.iterdir()), key=_version_key) if fw_dir.is_dir() else []
        )
        raise unknown_name(f"{framework} table version of {system}", version, have)

    def pick(folder: Path, table: str) -> list[str]:
        found = _versions(folder, table)
        return [version] if version in found else ([] if version else found)

    ar = pick(fw_dir, "custom_allreduce_perf")
    if ar:
        versions["custom_allreduce_perf"] = ar[0]
        frames.append(_custom_allreduce(reader, ar[0]))
    if framework in ("trtllm", "vllm"):
        a2a = pick(fw_dir, "moe_a2a_perf")
        if a2a:
            versions["moe_a2a_perf"] = a2a[0]
            frames.append(_moe_a2a(reader, a2a[0]))
    else:
        for table in ("wideep_deepep_ll_perf", "wideep_deepep_normal_perf"):
            covered: set[int] = set()
            used = []
            for v in pick(fw_dir, table):
                # each node count from the newest folder that measured it
                probe = pd.read_parquet(fw_dir / v / f"{table}.parquet", columns=["node_num"])
                new = set(map(int, probe["node_num"].unique())) - covered
                if not new:
                    continue
                part = _wideep(reader, v, table, new)
                if part.empty and reader.files and reader.files[-1].get("dropped"):
                    continue  # a relabelled copy covers nothing
                covered |= new
                used.append(v)
                frames.append(part)
            if used:
                versions[table] = used if len(used) > 1 else used[0]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise MoesimError(f"no communication rows for {system} / {framework} ({version or 'any'})")
    rows = _merge_repeats(pd.concat(frames, ignore_index=True), reader)
    kept = rows.groupby("source").size().to_dict()
    for entry in reader.files:
        if "dropped" not in entry:
            entry["rows_kept"] = int(
                kept.get(reader.source(entry["folder"], entry["version"], entry["table"]), 0)
            )
    provenance = {
        "package": f"aiconfigurator-core {reader.package}",
        "system": system,
        "framework": framework,
        "files": reader.files,
        "versions": versions,
        "rows": {str(k): int(v) for k, v in rows.groupby("kernel_class").size().items()},
        "drops": dict(reader.drops),
        "repeats_merged": int(getattr(reader, "merged", 0)),
    }
    return rows, provenance
