"""NVIDIA AIConfigurator's measured kernel tables as moesim measurement rows.

The ``aiconfigurator-core`` wheel (Apache-2.0) ships, per system, kernel timings collected with
TensorRT-LLM, vLLM and SGLang under ``aiconfigurator_core/systems/data/<system>/<op_group>/
<framework>/<version>/<table>.parquet`` (NCCL tables under ``comm/nccl/<nccl version>``).
:func:`read_rows` turns the tables moesim has a kernel class for into the rows ``moesim profile``
writes (the row contract: GEMM, MoE, prefill and decode attention, NCCL and engine all-reduce,
DeepEP / moe_a2a dispatch and combine), so :class:`~moesim.calibrate.Calibration`,
:func:`~moesim.calibrate.predict.predict_rows` and :func:`~moesim.calibrate.validate.validate`
take them unchanged. Only these kernel tables are opened: the wheel's end-to-end
``silicon_sample.csv`` is never read here (a fit must not see end-to-end numbers).

Units: latencies in ms (``latency`` columns) become seconds x 1e-3; DeepEP / moe_a2a columns in
µs (``*_us``) x 1e-6; NCCL and custom all-reduce ``message_size`` counts elements (x 2 bytes for
half / bfloat16, x 1 for int8: read as elements, the largest 8-GPU H100 half all-reduce of
2^28 elements in 2.11 ms is 445 GB/s of bus bandwidth, NVLink SHARP's range; read as bytes it
would be half that). FLOPs and ideal HBM bytes are counted as
:mod:`moesim.cost.kernel_cost` counts them (formulas repeated below, each with its source).

Version choice: per table, the newest version folder that holds it (PEP 440 ordering), unless
pinned (``version=``). Known traps of the data are handled explicitly and listed in the
provenance under ``traps``: a relabelled copy of another system's table (the h200_sxm multi-node
DeepEP tables are the h100_sxm ones), a folder version that differs from the ``version`` column,
MoE rows that time one EP rank with synthetic routing and no communication, and NCCL tables that
are single-node, 2-8 GPUs.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import MoesimError, unknown_name

PACKAGE = "aiconfigurator-core"
MODULE = "aiconfigurator_core"
MISSING = "aiconfigurator-core is not installed; pip install 'moesim[aic]'"
FRAMEWORKS = ("trtllm", "vllm", "sglang")
# AIC system -> the moesim datasheet profile of the same GPU (the base a fit scales).
PROFILE_OF = {
    "h100_sxm": "h100-sxm",
    "h200_sxm": "h200",
    "a100_sxm": "a100-sxm-80gb",
    "b200_sxm": "b200",
    "l40s": "l40s",
    "h100_pcie": "h100-pcie",
}
# Systems whose tables may be relabelled copies of another system's (suspect -> donor). The
# h200_sxm SGLang 0.5.6.post2 DeepEP tables (1, 2, 4, 8 nodes) repeat the h100_sxm latencies to
# the last digit under an "NVIDIA H200" device label; every table read for a suspect system is
# compared with the donor's table at the same path (:func:`find_copied_rows`).
COPY_DONORS = {"h200_sxm": "h100_sxm"}
# Nodes of 8 GPUs (HGX): the SGLang DeepEP tables give node_num, not the EP size (AIC
# operations/moe_comm.nodes_for is the inverse, ceil(ep / gpus_per_node)).
GPUS_PER_NODE = 8
MAX_TABLE_ROWS = 2_000_000  # the largest table in 0.12.0 has ~130k rows
MAX_ROWS_CSV_BYTES = 256 << 20  # decompressed size of a --rows CSV
MS, US = 1e-3, 1e-6

# table -> (op group folder, framework folder or None for the requested framework, key group)
TABLES: dict[str, tuple[str, str | None]] = {
    "gemm_perf": ("gemm", None),
    "moe_perf": ("moe", None),
    "context_attention_perf": ("attention", None),
    "generation_attention_perf": ("attention", None),
    "generation_mla_perf": ("mla", None),
    "nccl_perf": ("comm", "nccl"),
    "custom_allreduce_perf": ("comm", None),
    "moe_a2a_perf": ("comm", None),
    "wideep_deepep_ll_perf": ("comm", None),
    "wideep_deepep_normal_perf": ("comm", None),
}
PIN_GROUPS = ("gemm", "moe", "attention", "mla", "comm", "nccl")
# Columns read per table (those present; pyarrow reads nothing else).
COMMON_COLS = ["framework", "version", "device", "kernel_source"]
COLUMNS = {
    "gemm_perf": ["gemm_dtype", "m", "n", "k", "latency"],
    "moe_perf": ["moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
                 "moe_tp_size", "moe_ep_size", "distribution", "latency"],
    "context_attention_perf": ["batch_size", "isl", "num_heads", "num_key_value_heads",
                               "head_dim", "window_size", "beam_width", "attn_dtype",
                               "kv_cache_dtype", "step", "latency"],
    "nccl_perf": ["op_name", "nccl_dtype", "num_gpus", "message_size", "latency"],
    "custom_allreduce_perf": ["op_name", "allreduce_dtype", "num_gpus", "message_size",
                              "latency", "implementation", "backend"],
    "moe_a2a_perf": ["comm_backend", "phase", "comm_dtype", "ep_size", "node_num", "hidden_size",
                     "topk", "num_experts", "num_tokens", "sms", "transmit_us", "notify_us",
                     "latency"],
    "wideep_deepep_ll_perf": ["node_num", "hidden_size", "num_token", "num_topk", "num_experts",
                              "dispatch_avg_t_us", "combine_avg_t_us"],
    "wideep_deepep_normal_perf": ["node_num", "hidden_size", "num_token", "num_topk",
                                  "num_experts", "dispatch_sms", "dispatch_transmit_us",
                                  "dispatch_notify_us", "combine_sms", "combine_transmit_us",
                                  "combine_notify_us"],
}  # fmt: skip
COLUMNS["generation_attention_perf"] = COLUMNS["context_attention_perf"]
COLUMNS["generation_mla_perf"] = ["mla_dtype", "kv_cache_dtype", "num_heads", "batch_size", "isl",
                                  "step", "latency"]  # fmt: skip
# DeepSeek-V2/V3 latent attention (config.json kv_lora_rank, qk_rope_head_dim): the only MLA
# geometry AIC's generation_mla_perf tables time.
MLA_KV_LORA_RANK, MLA_ROPE_DIM = 512, 64

# AIC dtype strings -> the dtype moesim computes in. Formats whose weights and math differ
# (weight-only int4/int8, W4A16 / W4A8 MXFP4) have no single moesim dtype and are left out.
COMPUTE_DTYPE = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp8": "fp8",
    "fp8_block": "fp8",
    "nvfp4": "fp4",
    "sq": "int8",  # SmoothQuant W8A8 (int8 tensor cores)
    "int8": "int8",
}
ELEMENT_BYTES = {"half": 2, "float16": 2, "bfloat16": 2, "int8": 1, "float": 4, "float32": 4}
NCCL_CLASS = {
    "all_reduce": "allreduce",
    "all_gather": "allgather",
    "reduce_scatter": "reducescatter",
    "alltoall": "alltoall",
}
EP_IMPL = {
    "trtllm_deepep_ll": "deepep_ll",
    "trtllm_deepep_ht": "deepep_normal",
    "deepep_ll": "deepep_ll",
    "deepep_ht": "deepep_normal",
}
NOTE_MOE = (
    "moe_perf rows time the expert compute of ONE EP rank on one GPU (moe_ep_size and "
    "moe_tp_size only shrink the local experts and width), with AIC's synthetic router logits "
    "(balanced: token i takes experts (i + j*ceil(E/k)) mod E, collector helper "
    "balanced_logits; power_law_<a>: sampled skew) and no dispatch/combine communication. "
    "Balanced rows count assignments and active experts of rank 0 (experts 0..E/ep-1) exactly; "
    "power-law rows carry rank 0's expected counts over 32 draws of the collector's generator "
    "and rounding fix-up of the table's collection (moesim.calibrate.aic_routing: 2025 "
    "collections top up the largest experts; 2026-04-19 on, clamp at num_tokens and one unit "
    "per EP rank per round; the collector averages 5 draws per row)"
)
NOTE_NCCL = (
    "nccl_perf rows are single-node NCCL collectives on 2-8 GPUs (NVLink/NVSwitch only): they "
    "say nothing about the scale-out network"
)
HELDOUT_LIST_MAX = 500  # fit_report keeps held-out key lists up to this; longer ones a digest


# --- where the tables are ---------------------------------------------------------------------


def data_root() -> Path:
    """``aiconfigurator_core/systems/data`` of the installed wheel (MoesimError if absent)."""
    try:
        from importlib import resources

        root = resources.files(MODULE) / "systems" / "data"
    except ImportError:
        raise MoesimError(MISSING) from None
    path = Path(str(root))
    if not path.is_dir():
        raise MoesimError(f"{MISSING} (the installed package has no {path})")
    return path


def package_version() -> str:
    """Version of the installed ``aiconfigurator-core`` distribution."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise MoesimError(MISSING) from None


def list_systems() -> list[str]:
    """Systems with measured tables in the installed wheel (e.g. ``h100_sxm``)."""
    root = data_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*/*/*/*.parquet")))


def check_system(system: str) -> str:
    """``system`` if the wheel has tables for it, else a one-line error listing those it has."""
    systems = list_systems()
    if system not in systems:
        raise unknown_name("aiconfigurator system", system, systems)
    return system


def check_framework(framework: str) -> str:
    """``framework`` if it is one of :data:`FRAMEWORKS`, else a one-line error."""
    if framework not in FRAMEWORKS:
        raise unknown_name("aiconfigurator framework", framework, FRAMEWORKS)
    return framework


def version_key(text: str) -> tuple:
    """Sort key of a version folder: PEP 440 order (packaging), unparseable names first."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging comes with aiconfigurator-core; natural order otherwise
        return (0, tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)))
    try:
        return (1, Version(text))
    except InvalidVersion:
        return (0, text)


def list_versions(system: str, op_group: str, framework: str) -> list[str]:
    """Version folders of ``<system>/<op_group>/<framework>``, oldest first (``nccl`` allowed)."""
    check_system(system)
    if framework != "nccl":
        check_framework(framework)
    folder = data_root() / system / op_group / framework
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir()]
    return sorted(names, key=lambda v: (version_key(v), v))


def parse_version_pins(version: str | dict[str, str] | None) -> dict[str, str]:
    """``None`` -> {}; ``"1.3.0rc20"`` -> that version for gemm, moe, attention and comm;
    ``"moe=1.3.0rc20,nccl=2.27.3"`` -> per op group (gemm, moe, attention, comm, nccl)."""
    if version is None or version == "":
        return {}
    if isinstance(version, dict):
        pins = {str(k): str(v) for k, v in version.items()}
    elif "=" in str(version):
        pins = {}
        for part in str(version).split(","):
            group, sep, value = part.partition("=")
            if not sep or not group.strip() or not value.strip():
                raise MoesimError(
                    f"version pin {part!r}: expected GROUP=VERSION (groups: {', '.join(PIN_GROUPS)})"
                )
            pins[group.strip()] = value.strip()
    else:
        return {g: str(version) for g in ("gemm", "moe", "attention", "comm")}
    for group in pins:
        if group not in PIN_GROUPS:
            raise unknown_name("version pin group", group, PIN_GROUPS)
    return pins


def _pin_group(table: str) -> str:
    op_group, shared = TABLES[table]
    return "nccl" if shared == "nccl" else op_group


def choose_folder(
    system: str, framework: str, table: str, pins: dict[str, str]
) -> tuple[Path | None, dict[str, Any]]:
    """(parquet path or None, choice record) of ``table`` for this system and framework."""
    op_group, shared = TABLES[table]
    fw_dir = shared or framework
    versions = list_versions(system, op_group, fw_dir)
    base = data_root() / system / op_group / fw_dir
    group = _pin_group(table)
    record: dict[str, Any] = {"op_group": f"{op_group}/{fw_dir}", "versions_available": versions}
    pin = pins.get(group)
    if pin is not None:
        if pin not in versions:
            have = ", ".join(versions) or "none"
            raise MoesimError(
                f"{system}/{op_group}/{fw_dir} has no version {pin!r} (have: {have}); "
                f"pin one op group at a time, e.g. --version {group}={versions[-1] if versions else 'V'}"
            )
        path = base / pin / f"{table}.parquet"
        record |= {"folder_version": pin, "choice": f"pinned ({group}={pin})"}
        return (path if path.is_file() else None), record
    # The newest folder, unless it is a narrow re-collection holding under half the rows of
    # the broadest one (trtllm 1.3.0rc23 moe_perf: two models, 10,692 rows, beside rc20's
    # 126,360-row sweep), which would leave most shapes unmeasured.
    import pyarrow.parquet as pq

    found = []
    for v in reversed(versions):
        path = base / v / f"{table}.parquet"
        if path.is_file():
            found.append((pq.ParquetFile(str(path)).metadata.num_rows, v, path))
    if not found:
        return None, record
    newest = found[0]
    broadest = max(found, key=lambda f: f[0])
    pick, why = newest, "newest folder holding the table"
    if newest[0] < 0.5 * broadest[0]:
        pick = broadest
        why = (
            f"the broadest folder ({broadest[0]:,} rows): the newest, {newest[1]}, holds "
            f"only {newest[0]:,}"
        )
    record |= {"folder_version": pick[1], "choice": why}
    return pick[2], record


# --- reading ----------------------------------------------------------------------------------


def _read_parquet(path: Path, table: str) -> pd.DataFrame:
    """The needed columns of one parquet table (bounded by its row count)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    n = pf.metadata.num_rows
    if n > MAX_TABLE_ROWS:
        raise MoesimError(f"{path}: {n:,} rows; an imported table holds at most {MAX_TABLE_ROWS:,}")
    names = set(pf.schema_arrow.names)
    cols = [c for c in COMMON_COLS + COLUMNS[table] if c in names]
    return pf.read(columns=cols).to_pandas()


def _read_meta(folder: Path) -> dict[str, Any]:
    """``collection_meta.yaml`` of a version folder (empty if absent)."""
    from moesim.spec.safe_io import load_yaml_file

    path = folder / "collection_meta.yaml"
    if not path.is_file():
        return {}
    plain, _ = load_yaml_file(path, what="collection_meta.yaml")
    return _plain(plain)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    return obj


def latency_columns(columns: Iterable[str]) -> list[str]:
    """Measured-time columns of a raw AIC table (``latency`` and ``*_us``)."""
    return [c for c in columns if c == "latency" or c.endswith("_us")]


def find_copied_rows(suspect: pd.DataFrame, donor: pd.DataFrame) -> np.ndarray:
    """Rows of ``suspect`` that are a copy of ``donor`` (mask over ``suspect``'s rows).

    A row is identical when the donor table has a row with the same configuration (every column
    but framework / version / device labels, latency columns and ``*_gbps`` figures derived from
    them) and exactly the same latency columns. A group of rows (per ``node_num`` where the
    table has one, else the whole table) is a copy when ALL its rows are identical: independent
    timings of two GPUs never agree to the last bit on every row, while single coincidences
    (small messages, same rounding) do happen and are not flagged.
    """
    lat = [c for c in latency_columns(suspect.columns) if c in donor.columns]
    if suspect.empty or donor.empty or not lat:
        return np.zeros(len(suspect), bool)
    ignore = {"framework", "version", "device", *lat}
    keys = [
        c
        for c in suspect.columns
        if c not in ignore and not c.endswith("_gbps") and c in donor.columns
    ]
    on = keys + lat
    left = suspect[on].reset_index(drop=True).assign(_row=np.arange(len(suspect)))
    right = donor[on].drop_duplicates()
    hit = left.merge(right, on=on, how="inner")["_row"].to_numpy()
    identical = np.zeros(len(suspect), bool)
    identical[hit] = True
    groups = (
        suspect["node_num"].to_numpy() if "node_num" in suspect.columns else np.zeros(len(suspect))
    )
    copied = np.zeros(len(suspect), bool)
    for g in np.unique(groups):
        sel = groups == g
        if identical[sel].all():
            copied |= sel
    return copied


def copy_check(system: str, path: Path, raw: pd.DataFrame) -> dict[str, Any] | None:
    """Compare a table of a suspect system with the donor's table at the same path."""
    donor = COPY_DONORS.get(system)
    if donor is None:
        return None
    root = data_root()
    rel = path.relative_to(root / system)
    donor_path = root / donor / rel
    out: dict[str, Any] = {"donor": donor, "donor_table": f"{donor}/{rel.as_posix()}"}
    if not donor_path.is_file():
        return out | {"checked": False, "copied_rows": 0, "mask": np.zeros(len(raw), bool)}
    table = path.stem
    mask = find_copied_rows(raw, _read_parquet(donor_path, table))
    return out | {"checked": True, "copied_rows": int(mask.sum()), "mask": mask}


def read_rows(
    system: str,
    framework: str,
    version: str | dict[str, str] | None = None,
    tables: Iterable[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measurement rows of one AIC system and framework, and their provenance.

    Parameters
    ----------
    system : AIC system folder (``h100_sxm``, ``h200_sxm``, ...; :func:`list_systems`).
    framework : ``trtllm``, ``vllm`` or ``sglang`` (NCCL tables are shared by all three).
    version : None (per table, the newest folder that holds it), one version for the
        framework's op groups, or per op group pins (:func:`parse_version_pins`).
    tables : the table names to read (default: every one in :data:`TABLES`).

    Returns (rows, provenance): rows in the measurement-row contract, provenance with, per
    table, the folder, versions, row counts read / imported / dropped per reason and the
    ``collection_meta.yaml`` contents, and the ``traps`` met.
    """
    check_framework(framework)
    check_system(system)
    pins = parse_version_pins(version)
    wanted = list(TABLES) if tables is None else list(tables)
    for t in wanted:
        if t not in TABLES:
            raise unknown_name("aiconfigurator table", t, TABLES)
    pkg = package_version()
    root = data_root()
    prov: dict[str, Any] = {
        "package": PACKAGE,
        "package_version": pkg,
        "system": system,
        "framework": framework,
        "version_request": version if isinstance(version, (str, type(None))) else dict(version),
        "units": "latency ms x 1e-3, *_us x 1e-6 -> seconds; message_size elements x dtype bytes",
        "tables": {},
        "not_read": {},
        "traps": [],
    }
    frames = []
    for table in wanted:
        path, record = choose_folder(system, framework, table, pins)
        if path is None:
            prov["not_read"][table] = f"no {table}.parquet in {record['op_group']}" + (
                f"/{record['folder_version']}" if "folder_version" in record else ""
            )
            continue
        raw = _read_parquet(path, table)
        folder_version = record["folder_version"]
        op_group, fw_dir = record["op_group"].split("/")
        source = f"{PACKAGE} {pkg} {system}/{op_group}/{fw_dir}/{folder_version}/{table}"
        entry = record | {
            "file": f"{system}/{op_group}/{fw_dir}/{folder_version}/{table}.parquet",
            "rows_read": int(len(raw)),
            "collection_meta": _read_meta(path.parent),
        }
        dropped: dict[str, int] = {}
        # (a) relabelled copies of another system's table
        check = copy_check(system, path, raw)
        if check is not None:
            mask = check.pop("mask")
            entry["copy_check"] = check
            if check["copied_rows"]:
                dropped[f"copy_of_{check['donor']}"] = int(mask.sum())
                prov["traps"].append(
                    {
                        "trap": "relabelled_copy",
                        "table": entry["file"],
                        "donor": check["donor_table"],
                        "rows_dropped": int(mask.sum()),
                        "note": f"every latency of these rows equals {check['donor']}'s "
                        "same-named table to the last digit: another GPU's measurement under "
                        f"this system's label; dropped",
                    }
                )
                raw = raw[~mask].reset_index(drop=True)
        # (b) the version column vs the folder name
        col_versions = (
            sorted(map(str, raw["version"].dropna().unique())) if "version" in raw else []
        )
        entry["version_column"] = col_versions
        if "version" not in raw.columns:
            raw["version"] = folder_version
            entry["version_note"] = "no version column; framework_version = folder version"
        elif col_versions and col_versions != [folder_version]:
            prov["traps"].append(
                {
                    "trap": "version_mismatch",
                    "table": entry["file"],
                    "folder_version": folder_version,
                    "version_column": col_versions,
                    "note": "framework_version is taken from the version column",
                }
            )
        raw.attrs["framework"] = framework  # the collector generation of MoE routing
        rows, why = CONVERTERS[table](raw)
        dropped |= why
        rows = _finish(rows, dropped)
        entry["rows_imported"] = int(len(rows))
        entry["dropped"] = {k: int(v) for k, v in dropped.items() if v}
        entry["kernel_classes"] = {
            str(k): int(v) for k, v in rows["kernel_class"].value_counts().sort_index().items()
        }
        rows["source"] = source
        rows["framework"] = framework
        rows["status"] = "ok"
        rows["timing_method"] = "cuda_graph"
        if table == "moe_perf":
            prov["traps"].append(
                {"trap": "moe_single_rank", "table": entry["file"], "note": NOTE_MOE}
            )
        if table == "nccl_perf":
            worlds = sorted(int(w) for w in rows["world_size"].unique())
            prov["traps"].append(
                {"trap": "nccl_single_node", "table": entry["file"], "world_sizes": worlds,
                 "note": NOTE_NCCL}
            )  # fmt: skip
        prov["tables"][table] = entry
        frames.append(rows)
    if not frames:
        raise MoesimError(
            f"no table read for {system}/{framework}: "
            + "; ".join(f"{k}: {v}" for k, v in prov["not_read"].items())
        )
    df = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    df = _order_columns(df)
    prov["rows"] = {
        str(k): int(v) for k, v in df["kernel_class"].value_counts().sort_index().items()
    }
    prov["data_root"] = str(root)
    return df, prov


def _finish(rows: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """Drop non-finite / non-positive latencies, then merge duplicate shapes (median time)."""
    t = pd.to_numeric(rows["median_s"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(t) & (t > 0))
    dropped["non_finite_or_non_positive_latency"] = int(bad.sum())
    rows = rows[~bad].reset_index(drop=True)
    if rows.empty:
        dropped["duplicate_shape"] = 0
        return rows
    med = rows.groupby("shape_key", sort=False)["median_s"].transform("median")
    n_per = rows.groupby("shape_key", sort=False)["median_s"].transform("size")
    rows = rows.assign(median_s=med, repeats=n_per)
    out = rows.drop_duplicates("shape_key", keep="first").reset_index(drop=True)
    dropped["duplicate_shape"] = int(len(rows) - len(out))
    return out


FIRST_COLUMNS = ["kernel_class", "impl", "dtype", "format", "shape_key", "flops", "hbm_bytes",
                 "median_s", "repeats", "status", "device_name", "timing_method", "framework",
                 "framework_version", "source"]  # fmt: skip


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in FIRST_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


# --- converters (raw table -> rows, {reason: dropped}) -----------------------------------------


def _base(raw: pd.DataFrame, kernel_class, impl, fmt) -> pd.DataFrame:
    out = pd.DataFrame(index=raw.index)
    out["kernel_class"] = kernel_class
    out["impl"] = impl
    out["format"] = fmt
    out["device_name"] = raw["device"].astype(str) if "device" in raw else ""
    out["framework_version"] = raw["version"].astype(str)
    return out


def _s(series) -> pd.Series:
    return pd.Series(series).astype(str)


def _i(series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype("Int64").astype(str)


def _supported(raw: pd.DataFrame, col: str, why: dict[str, int]) -> pd.DataFrame:
    """Rows whose format maps to one moesim compute dtype (counts the others by format)."""
    fmt = raw[col].astype(str)
    ok = fmt.isin(list(COMPUTE_DTYPE))
    for f, n in fmt[~ok].value_counts().items():
        why[f"format_{f}_has_no_single_moesim_dtype"] = int(n)
    return raw[ok].reset_index(drop=True)


def _dtype_bytes(dtype: pd.Series) -> np.ndarray:
    from moesim.spec.dtypes import dtype_bytes

    table = {d: dtype_bytes(d) for d in pd.unique(dtype)}
    return dtype.map(table).to_numpy(dtype=float)


def convert_gemm(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    why: dict[str, int] = {}
    raw = _supported(raw, "gemm_dtype", why)
    fmt = raw["gemm_dtype"].astype(str)
    out = _base(raw, "gemm", raw["kernel_source"].astype(str), fmt)
    out["dtype"] = fmt.map(COMPUTE_DTYPE)
    m, n, k = (pd.to_numeric(raw[c]).to_numpy(dtype=float) for c in ("m", "n", "k"))
    out["m"], out["n"], out["k"] = raw["m"], raw["n"], raw["k"]
    # moesim.cost.kernel_cost.gemm_cost: 2mnk FLOPs; A and B read once, C written once, the
    # output in bf16 for fp8 / fp4 inputs.
    ib = _dtype_bytes(out["dtype"])
    ob = _dtype_bytes(out["dtype"].where(~out["dtype"].isin(["fp8", "fp4"]), "bf16"))
    out["flops"] = 2.0 * m * n * k
    out["hbm_bytes"] = (m * k + k * n) * ib + m * n * ob
    out["median_s"] = pd.to_numeric(raw["latency"]).to_numpy(dtype=float) * MS
    # The collector times the engine's fp8 linear as called in the model (torch_flow): the
    # activations are quantised inside the timed call (KernelEfficiency.act_quant_*).
    out["includes_act_quant"] = out["dtype"].isin(["fp8", "fp4"]).to_numpy()
    out["shape_key"] = (
        "m"
        + _i(raw["m"])
        + "_n"
        + _i(raw["n"])
        + "_k"
        + _i(raw["k"])
        + "_"
        + fmt
        + "_"
        + out["impl"]
    )
    return out, why


MOE_BLOCK_M = 64


def _rank0_routing(T, E, k, ep, dist, gen) -> dict[str, np.ndarray]:
    """Rank 0's assignments, active experts and rows padded to MOE_BLOCK_M and to each engine
    token tile (``sum_padded_tokens_t<b>``) per row, for AIC's balanced and power-law
    collector routing (:func:`moesim.calibrate.aic_routing.rank0_routing`) of the collector
    generation ``gen`` of each row."""
    from moesim.calibrate.aic_routing import rank0_routing
    from moesim.cost.kernel_cost import ENGINE_TOKEN_TILES

    names = ["assignments", "n_active_experts", "sum_padded_tokens"] + [
        f"sum_padded_tokens_t{b}" for b in ENGINE_TOKEN_TILES
    ]
    cache: dict[tuple, dict[str, float]] = {}
    out = np.full((len(T), len(names)), np.nan)
    for i, key in enumerate(
        zip(T.tolist(), E.tolist(), k.tolist(), ep.tolist(), dist, gen, strict=True)
    ):
        if key not in cache:
            try:
                cache[key] = rank0_routing(
                    *key[:5], block_m=MOE_BLOCK_M, generation=int(key[5]),
                    tiles=ENGINE_TOKEN_TILES,
                )  # fmt: skip
            except ValueError:
                cache[key] = {}
        r = cache[key]
        if r:
            out[i] = [r[n] for n in names]
    return {n: out[:, j] for j, n in enumerate(names)}


def convert_moe(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    why: dict[str, int] = {}
    raw = _supported(raw, "moe_dtype", why)
    fmt = raw["moe_dtype"].astype(str)
    impl = raw["kernel_source"].astype(str)
    out = _base(raw, "grouped_gemm", impl, fmt)
    out["dtype"] = fmt.map(COMPUTE_DTYPE)
    T = pd.to_numeric(raw["num_tokens"]).to_numpy(dtype=np.int64)
    E = pd.to_numeric(raw["num_experts"]).to_numpy(dtype=np.int64)
    k = pd.to_numeric(raw["topk"]).to_numpy(dtype=np.int64)
    tp = pd.to_numeric(raw["moe_tp_size"]).to_numpy(dtype=np.int64)
    ep = pd.to_numeric(raw["moe_ep_size"]).to_numpy(dtype=np.int64)
    h = pd.to_numeric(raw["hidden_size"]).to_numpy(dtype=float)
    inter = pd.to_numeric(raw["inter_size"]).to_numpy(dtype=np.int64) // tp
    local = E // ep
    dist = raw["distribution"].astype(str)
    routing = dist.where(dist != "balanced", "uniform")
    alpha = pd.to_numeric(dist.str.extract(r"^power_law_([0-9.]+)", expand=False), errors="coerce")
    gated = ~impl.str.contains("nongated", regex=False)
    out["tokens"], out["experts"], out["global_experts"], out["top_k"] = T, local, E, k
    out["hidden"], out["intermediate"] = h.astype(np.int64), inter
    out["moe_tp"], out["moe_ep"] = tp, ep
    out["routing"], out["power_law_alpha"] = routing, alpha
    out["gated"] = gated
    # Grouped GEMMs tile each expert's rows (CUTLASS / Triton M tiles): padded rows per expert
    # to MOE_BLOCK_M, the fragmentation routing causes (moesim.calibrate.aic_routing).
    out["block_m"] = MOE_BLOCK_M
    from moesim.calibrate.aic_routing import collector_generation

    framework = str(raw.attrs.get("framework", ""))
    versions = raw["version"].astype(str) if "version" in raw.columns else pd.Series("", raw.index)
    gen = versions.map({v: collector_generation(framework, v) for v in versions.unique()})
    gen = gen.to_numpy(dtype=int)
    routed = _rank0_routing(T, E, k, ep, dist.to_numpy(), gen)
    for name, col in routed.items():
        out[name] = col
    assign, active = routed["assignments"], routed["n_active_experts"]
    # moesim.cost.kernel_cost.moe_cost with the realised routing of rank 0: FLOPs = 2 x
    # assignments x h x I x (3 gated | 2 plain); weights of the active experts read once;
    # activations of every assignment in and out (bf16 for fp8 / fp4 experts).
    n_mat = np.where(gated, 3.0, 2.0)
    wb = _dtype_bytes(out["dtype"])
    ab = _dtype_bytes(out["dtype"].where(~out["dtype"].isin(["fp8", "fp4"]), "bf16"))
    out["flops"] = 2.0 * assign * h * inter * n_mat
    weights = active * n_mat * h * inter * wb
    act_io = assign * (2.0 * h + (n_mat - 1.0) * inter * 2.0 + inter) * ab
    out["hbm_bytes"] = weights + act_io
    out["weight_bytes_read"] = weights
    out["median_s"] = pd.to_numeric(raw["latency"]).to_numpy(dtype=float) * MS
    out["shape_key"] = (
        "t" + _s(T) + "_e" + _s(local) + "of" + _s(E) + "_k" + _s(k) + "_h" + _i(raw["hidden_size"])
        + "_i" + _s(inter) + "_tp" + _s(tp) + "_ep" + _s(ep) + "_" + dist + "_" + fmt + "_" + impl
    )  # fmt: skip
    return out, why


def _attention(raw: pd.DataFrame, phase: str) -> tuple[pd.DataFrame, dict[str, int]]:
    why: dict[str, int] = {}
    win = pd.to_numeric(raw["window_size"], errors="coerce").fillna(0).to_numpy()
    why["window_size_nonzero"] = int((win != 0).sum())  # moesim attention has no sliding window
    keep = win == 0
    if "beam_width" in raw.columns:
        beam = pd.to_numeric(raw["beam_width"], errors="coerce").fillna(1).to_numpy()
        why["beam_width_not_1"] = int(((beam != 1) & keep).sum())
        keep &= beam == 1
    raw = raw[keep].reset_index(drop=True)
    fmt_kv = raw["kv_cache_dtype"].astype(str)
    kv_ok = fmt_kv.isin(list(COMPUTE_DTYPE))
    for f, n in fmt_kv[~kv_ok].value_counts().items():
        why[f"kv_format_{f}_unknown"] = int(n)
    raw = raw[kv_ok].reset_index(drop=True)
    raw = _supported(raw, "attn_dtype", why)
    fmt, fmt_kv = raw["attn_dtype"].astype(str), raw["kv_cache_dtype"].astype(str)
    kind = "attention_prefill" if phase == "prefill" else "attention_decode"
    # A decode kernel per KV-cache format (TensorRT-LLM XQA: GMMA over e4m3 K/V on Hopper, HMMA
    # over bf16), so decode rows carry the cache format: one fitted block per cache format.
    out = _base(raw, kind, raw["kernel_source"].astype(str), fmt if phase == "prefill" else fmt_kv)
    out["dtype"] = fmt.map(COMPUTE_DTYPE)
    out["kv_dtype"] = fmt_kv.map(COMPUTE_DTYPE)
    b = pd.to_numeric(raw["batch_size"]).to_numpy(dtype=float)
    isl = pd.to_numeric(raw["isl"]).to_numpy(dtype=np.int64)
    step = pd.to_numeric(raw["step"], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
    nh = pd.to_numeric(raw["num_heads"]).to_numpy(dtype=float)
    nkv = pd.to_numeric(raw["num_key_value_heads"]).to_numpy(dtype=float)
    d = pd.to_numeric(raw["head_dim"]).to_numpy(dtype=float)
    ab, kvb = _dtype_bytes(out["dtype"]), _dtype_bytes(out["kv_dtype"])
    out["batch"], out["num_heads"] = raw["batch_size"], raw["num_heads"]
    out["num_kv_heads"], out["head_dim"] = raw["num_key_value_heads"], raw["head_dim"]
    out["window_size"] = raw["window_size"]
    dims = (
        "_h" + _i(raw["num_heads"]) + "_kv" + _i(raw["num_key_value_heads"])
        + "_d" + _i(raw["head_dim"]) + "_" + fmt + "_kv" + fmt_kv + "_" + out["impl"]
    )  # fmt: skip
    # moesim.cost.kernel_cost.attention_cost (FlashAttention, Dao et al. 2022).
    if phase == "prefill":
        s = isl.astype(float)
        out["seq_len"], out["causal"] = isl, True
        pairs = b * s * (s + 1.0) / 2.0  # causal
        out["flops"] = 4.0 * pairs * nh * d
        out["hbm_bytes"] = b * s * d * (2.0 * nh + 2.0 * nkv) * ab
        out["shape_key"] = "b" + _i(raw["batch_size"]) + "_s" + _s(isl) + dims
    else:
        ctx = isl + step  # tokens in the KV cache when the step's query attends
        out["seq_len"], out["context_len"], out["causal"] = 1, ctx, False
        pairs = b * ctx.astype(float)
        out["flops"] = 4.0 * pairs * nh * d
        out["hbm_bytes"] = 2.0 * pairs * nkv * d * kvb + 2.0 * b * nh * d * ab
        out["shape_key"] = "b" + _i(raw["batch_size"]) + "_c" + _s(ctx) + dims
    out["median_s"] = pd.to_numeric(raw["latency"]).to_numpy(dtype=float) * MS
    return out, why


def convert_context_attention(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    return _attention(raw, "prefill")


def convert_generation_attention(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    return _attention(raw, "decode")


def convert_generation_mla(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """MLA decode core rows (one new token per sequence; ``num_heads`` are one GPU's heads).

    Each cache format is its own kernel, so the row's ``format`` is the KV-cache format (one
    fitted block per cache format); FLOPs and bytes are :func:`moesim.cost.kernel_cost.mla_decode_cost`'s.
    """
    why: dict[str, int] = {}
    fmt_kv = raw["kv_cache_dtype"].astype(str)
    kv_ok = fmt_kv.isin(list(COMPUTE_DTYPE))
    for f, n in fmt_kv[~kv_ok].value_counts().items():
        why[f"kv_format_{f}_unknown"] = int(n)
    raw = _supported(raw[kv_ok].reset_index(drop=True), "mla_dtype", why)
    fmt, fmt_kv = raw["mla_dtype"].astype(str), raw["kv_cache_dtype"].astype(str)
    out = _base(raw, "attention_decode_mla", raw["kernel_source"].astype(str), fmt_kv)
    out["dtype"] = fmt.map(COMPUTE_DTYPE)
    out["kv_dtype"] = fmt_kv.map(COMPUTE_DTYPE)
    b = pd.to_numeric(raw["batch_size"]).to_numpy(dtype=float)
    isl = pd.to_numeric(raw["isl"]).to_numpy(dtype=np.int64)
    step = pd.to_numeric(raw["step"], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
    ctx = isl + step  # tokens in the cache when the step's query attends
    h = pd.to_numeric(raw["num_heads"]).to_numpy(dtype=float)
    ab, kvb = _dtype_bytes(out["dtype"]), _dtype_bytes(out["kv_dtype"])
    r, rope = MLA_KV_LORA_RANK, MLA_ROPE_DIM
    out["batch"], out["num_heads"], out["context_len"] = raw["batch_size"], raw["num_heads"], ctx
    out["seq_len"], out["causal"] = 1, False
    out["flops"] = 2.0 * b * ctx * h * (2 * r + rope)
    out["hbm_bytes"] = b * ctx * (r + rope) * kvb + b * h * (2 * r + rope) * ab
    out["shape_key"] = (
        "mla_b" + _i(raw["batch_size"]) + "_c" + _s(ctx) + "_h" + _i(raw["num_heads"]) + "_"
        + fmt + "_kv" + fmt_kv + "_" + out["impl"]
    )  # fmt: skip
    out["median_s"] = pd.to_numeric(raw["latency"]).to_numpy(dtype=float) * MS
    return out, why


def _collective(raw, kind, impl, dtype_col) -> tuple[pd.DataFrame, dict[str, int]]:
    why: dict[str, int] = {}
    fmt = raw[dtype_col].astype(str)
    ok = fmt.isin(list(ELEMENT_BYTES))
    for f, n in fmt[~ok].value_counts().items():
        why[f"element_type_{f}_unknown"] = int(n)
    raw, fmt = raw[ok].reset_index(drop=True), fmt[ok].reset_index(drop=True)
    kind = kind[ok.to_numpy()].reset_index(drop=True) if isinstance(kind, pd.Series) else kind
    impl = impl[ok.to_numpy()].reset_index(drop=True) if isinstance(impl, pd.Series) else impl
    out = _base(raw, kind, impl, fmt)
    out["dtype"] = fmt.map(lambda f: COMPUTE_DTYPE.get(f, f))
    elem = fmt.map(ELEMENT_BYTES).to_numpy(dtype=float)
    size = pd.to_numeric(raw["message_size"]).to_numpy(dtype=float)
    out["message_bytes"] = size * elem  # message_size counts elements
    out["message_elements"] = raw["message_size"]
    out["world_size"] = raw["num_gpus"]
    out["flops"] = 0.0
    out["hbm_bytes"] = np.nan
    out["median_s"] = pd.to_numeric(raw["latency"]).to_numpy(dtype=float) * MS
    out["shape_key"] = (
        out["kernel_class"] + "_w" + _i(raw["num_gpus"]) + "_b"
        + pd.Series(out["message_bytes"]).map(lambda x: f"{x:.0f}") + "_" + fmt + "_" + out["impl"]
    )  # fmt: skip
    return out, why


def convert_nccl(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    op = raw["op_name"].astype(str)
    known = op.isin(list(NCCL_CLASS))
    why = {f"op_{o}_unknown": int(n) for o, n in op[~known].value_counts().items()}
    raw = raw[known].reset_index(drop=True)
    out, w = _collective(raw, raw["op_name"].astype(str).map(NCCL_CLASS), "nccl", "nccl_dtype")
    return out, why | w


def convert_custom_allreduce(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    why: dict[str, int] = {}
    if "implementation" in raw.columns:
        impl = raw["implementation"].astype(str)
    elif "backend" in raw.columns:
        impl = raw["backend"].astype(str)
    else:
        impl = raw["kernel_source"].astype(str).str.lower()
    eager = impl.str.endswith("eager") | raw["kernel_source"].astype(str).str.endswith("eager")
    why["eager_variant"] = int(eager.sum())  # serving captures CUDA graphs; these are not
    raw, impl = raw[~eager].reset_index(drop=True), impl[~eager].reset_index(drop=True)
    out, w = _collective(raw, "allreduce", impl, "allreduce_dtype")
    return out, why | w


def _ep_rows(raw, phase, impl, latency_us, tokens, top_k, ep, sms, comm_dtype):
    out = _base(raw, "ep_" + phase, impl, comm_dtype)
    out["dtype"] = comm_dtype.map(lambda f: COMPUTE_DTYPE.get(f, f))
    out["comm_dtype"] = comm_dtype
    out["tokens"], out["hidden"], out["top_k"] = tokens, raw["hidden_size"], top_k
    out["global_experts"], out["ep_size"], out["nodes"] = raw["num_experts"], ep, raw["node_num"]
    out["world_size"] = ep
    out["sms"] = sms
    out["flops"] = 0.0
    out["hbm_bytes"] = np.nan
    out["median_s"] = np.asarray(latency_us, dtype=float) * US
    out["shape_key"] = (
        out["kernel_class"] + "_" + pd.Series(impl, index=raw.index).astype(str) + "_t" + _i(tokens)
        + "_h" + _i(raw["hidden_size"]) + "_k" + _i(top_k) + "_e" + _i(raw["num_experts"])
        + "_ep" + _i(ep) + "_n" + _i(raw["node_num"]) + "_" + comm_dtype + "_sms" + _i(sms)
    )  # fmt: skip
    return out


def convert_moe_a2a(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    phase = raw["phase"].astype(str)
    known = phase.isin(["dispatch", "combine"])
    why = {f"phase_{p}_not_modelled": int(n) for p, n in phase[~known].value_counts().items()}
    raw = raw[known].reset_index(drop=True)
    # vLLM's table records no payload format ("default"): its bytes, and so its model, are
    # unknown; the rows are dropped and counted.
    unknown = raw["comm_dtype"].astype(str).isin(["default", "", "nan"]).to_numpy()
    if unknown.any():
        why["comm_dtype_not_recorded"] = int(unknown.sum())
        raw = raw[~unknown].reset_index(drop=True)
    impl = raw["comm_backend"].astype(str).map(lambda b: EP_IMPL.get(b, b))
    lat = pd.to_numeric(raw["latency"], errors="coerce")
    if "transmit_us" in raw.columns:  # latency = transmit + notify (both µs)
        parts = pd.to_numeric(raw["transmit_us"], errors="coerce") + pd.to_numeric(
            raw.get("notify_us", 0.0), errors="coerce"
        ).fillna(0.0)
        lat = lat.fillna(parts)
    frames = []
    for p in ("dispatch", "combine"):
        sel = (raw["phase"].astype(str) == p).to_numpy()
        part = raw[sel].reset_index(drop=True)
        frames.append(
            _ep_rows(part, p, impl[sel].reset_index(drop=True), lat[sel].to_numpy(),
                     part["num_tokens"], part["topk"], part["ep_size"], part["sms"],
                     part["comm_dtype"].astype(str))
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True), why


def _deepep_legacy(raw: pd.DataFrame, impl: str, columns) -> tuple[pd.DataFrame, dict[str, int]]:
    ep = pd.to_numeric(raw["node_num"]).astype("int64") * GPUS_PER_NODE
    frames = []
    for phase, (lat_cols, sms_col) in columns.items():
        lat = sum(pd.to_numeric(raw[c], errors="coerce").fillna(0.0) for c in lat_cols[1:])
        lat = pd.to_numeric(raw[lat_cols[0]], errors="coerce") + lat
        sms = raw[sms_col] if sms_col in raw.columns else pd.Series(0, index=raw.index)
        # SGLang's tables do not name the payload format: combine sends bf16; low-latency
        # dispatch's format follows from the table's own bandwidth column; normal-mode dispatch
        # sends fp8 (at bf16 its largest rows would exceed NVLink's line rate); see
        # moesim.calibrate.aic_comm.
        if phase == "combine":
            payload = "bfloat16"
        elif impl == "deepep_ll":
            from moesim.calibrate.aic_comm import _ll_dispatch_dtype

            payload = "bfloat16" if _ll_dispatch_dtype(raw) == "bf16" else "fp8"
        else:
            payload = "fp8"
        frames.append(
            _ep_rows(raw, phase, impl, lat.to_numpy(), raw["num_token"], raw["num_topk"], ep, sms,
                     pd.Series(payload, index=raw.index))
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True), {}


def convert_deepep_ll(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    cols = {"dispatch": (("dispatch_avg_t_us",), ""), "combine": (("combine_avg_t_us",), "")}
    return _deepep_legacy(raw, "deepep_ll", cols)


def convert_deepep_normal(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    cols = {
        "dispatch": (("dispatch_transmit_us", "dispatch_notify_us"), "dispatch_sms"),
        "combine": (("combine_transmit_us", "combine_notify_us"), "combine_sms"),
    }
    return _deepep_legacy(raw, "deepep_normal", cols)


CONVERTERS = {
    "gemm_perf": convert_gemm,
    "moe_perf": convert_moe,
    "context_attention_perf": convert_context_attention,
    "generation_attention_perf": convert_generation_attention,
    "generation_mla_perf": convert_generation_mla,
    "nccl_perf": convert_nccl,
    "custom_allreduce_perf": convert_custom_allreduce,
    "moe_a2a_perf": convert_moe_a2a,
    "wideep_deepep_ll_perf": convert_deepep_ll,
    "wideep_deepep_normal_perf": convert_deepep_normal,
}


# --- converted rows on disk (the committed CI subset) -------------------------------------------


def read_rows_csv(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Converted rows written by :func:`write_rows_csv` (``.csv`` or ``.csv.gz``), bounded."""
    import io

    from moesim.calibrate.measurements import MAX_ROWS_PER_CSV, REQUIRED_COLUMNS
    from moesim.spec.safe_io import MAX_CSV_BYTES, read_bytes

    p = Path(path)
    data = read_bytes(p, what="rows CSV", max_bytes=MAX_CSV_BYTES)
    if p.name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                data = fh.read(MAX_ROWS_CSV_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise MoesimError(f"{p}: not a gzip file ({exc})") from None
        if len(data) > MAX_ROWS_CSV_BYTES:
            raise MoesimError(f"{p}: more than {MAX_ROWS_CSV_BYTES:,} bytes once decompressed")
    if data.count(b"\n") > MAX_ROWS_PER_CSV + 1:
        raise MoesimError(f"{p}: more than {MAX_ROWS_PER_CSV:,} rows")
    try:
        df = pd.read_csv(io.BytesIO(data), low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoesimError(f"{p}: not a readable rows CSV ({first})") from None
    missing = [c for c in (*REQUIRED_COLUMNS, "source") if c not in df.columns]
    if missing:
        raise MoesimError(
            f"{p}: missing column(s) {', '.join(missing)}; is it an imported rows CSV?"
        )
    sources = sorted(map(str, df["source"].dropna().unique()))
    prov = {
        "rows_file": str(p),
        "sources": sources,
        "rows": {str(k): int(v) for k, v in df["kernel_class"].value_counts().sort_index().items()},
    }
    return df, prov


def write_rows_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write converted rows as CSV (gzip for ``.gz``, fixed mtime: same rows, same bytes)."""
    import io

    from moesim.outdir import atomic_write_bytes

    p = Path(path)
    text = df.to_csv(index=False, float_format="%.10g").encode()
    if p.name.endswith(".gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as fh:
            fh.write(text)
        text = buf.getvalue()
    return atomic_write_bytes(p, text)


def system_of_rows(df: pd.DataFrame) -> str | None:
    """The AIC system named in the rows' ``source`` column (None if absent or mixed)."""
    if "source" not in df.columns:
        return None
    found = set(df["source"].astype(str).str.extract(r"^\S+ \S+ ([^/\s]+)/", expand=False).dropna())
    return found.pop() if len(found) == 1 else None


# --- which rows the model prices, the held-out split, the training subsample --------------------

NOTE_POWER_LAW = (
    "MoE rows whose collector routing moesim.calibrate.aic_routing does not reproduce (no "
    "realised per-expert counts), so the model cannot price the same work"
)
NOTE_CUSTOM_AR = (
    "engine custom all-reduce rows: the collectives model has one (NCCL) all-reduce; scored and "
    "fitted on NCCL rows only"
)


# The MoE kernels engines run by default on Hopper, in AIC's implementation names: vLLM's and
# SGLang's fused Triton MoE (vLLM fused_moe / TritonExperts, also for FP8 unless
# VLLM_USE_FLASHINFER_MOE_FP8 is set; SGLang --moe-runner-backend auto -> triton), TensorRT-LLM's
# CUTLASS MoE (its PyTorch-flow default; TensorRT-LLM 1.0 tables name it plain
# "moe_torch_flow"); FlashInfer CUTLASS backends are opt-in.
DEFAULT_MOE_IMPL_MARKERS = ("triton", "moe_torch_flow_cutlass")
DEFAULT_MOE_IMPL_NAMES = ("moe_torch_flow",)


def engine_default_moe_impl(impls: list[str]) -> str | None:
    """The implementation an engine runs by default among one format's MoE tables; None when
    the format was timed only with opt-in backends (its rows are left out: the format is then
    priced with the class's default block, the engine's default kernel in another format)."""
    for marker in DEFAULT_MOE_IMPL_MARKERS:
        for impl in sorted(impls):
            if marker in impl:
                return impl
    return next((i for i in sorted(impls) if i in DEFAULT_MOE_IMPL_NAMES), None)


def model_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows a fit and a validation use, and {what: why} for the rows left out.

    Left out: MoE rows with power-law routing, MoE implementations other than the one a
    grouped_gemm block represents (:func:`~moesim.calibrate.measurements.choose_grouped_impl`),
    and engine custom all-reduce rows (see the NOTE_* texts).
    """
    from moesim.calibrate.measurements import usable_rows

    df = usable_rows(df)
    skipped: dict[str, str] = {}
    keep = np.ones(len(df), bool)
    moe = (df["fit_class"] == "grouped_gemm").to_numpy()
    if moe.any():
        # Power-law rows carry rank 0's expected realised routing (aic_routing); rows whose
        # routing could not be reproduced have no assignments and are left out.
        assigned = pd.to_numeric(
            df.get("assignments", pd.Series(np.nan, index=df.index)), errors="coerce"
        )
        skew = moe & ~np.isfinite(assigned.to_numpy(dtype=float))
        if skew.any():
            skipped["grouped_gemm power-law"] = f"{int(skew.sum())} rows: {NOTE_POWER_LAW}"
        keep &= ~skew
        fmts = df["format"].fillna("").astype(str).to_numpy()
        impl = df["impl"].astype(str).to_numpy()
        chosen = {}
        for f in sorted(set(fmts[moe & keep])):
            chosen[f] = engine_default_moe_impl(sorted(set(impl[moe & keep & (fmts == f)])))
        picked = np.array([chosen.get(f) == i for f, i in zip(fmts, impl, strict=True)])
        other = moe & keep & ~picked
        if other.any():
            names = ", ".join(sorted(set(df.loc[other, "impl"])))
            which = ", ".join(f"{i} ({f})" for f, i in chosen.items() if i)
            skipped["grouped_gemm other impls"] = (
                f"{int(other.sum())} rows of {names}: a grouped_gemm block represents the "
                f"engine's default MoE kernel per format ({which})"
            )
        keep &= ~other
    custom = (df["kernel_class"] == "allreduce").to_numpy() & (df["impl"] != "nccl").to_numpy()
    if custom.any():
        skipped["allreduce custom"] = f"{int(custom.sum())} rows: {NOTE_CUSTOM_AR}"
    keep &= ~custom
    return df[keep].reset_index(drop=True), skipped


def heldout_keys(df: pd.DataFrame, fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """Held-out shape_keys per fit class: :func:`~moesim.calibrate.measurements.heldout_shapes`
    over the class's rows (collectives: those with world_size > 1, as the calibrator splits)."""
    from moesim.calibrate.measurements import heldout_shapes

    out = {}
    for cls, part in df.groupby("fit_class", sort=True):
        if cls == "collectives":
            world = pd.to_numeric(part.get("world_size", 1), errors="coerce").fillna(1)
            part = part[world > 1]
        if len(part):
            out[str(cls)] = heldout_shapes(part["shape_key"], fraction, seed)
    return out


def _sample_hash(key: str) -> int:
    return int(hashlib.sha256(f"subsample:{key}".encode()).hexdigest()[:16], 16)


def training_subsample(
    df: pd.DataFrame, held: dict[str, list[str]], max_rows_per_class: int | None
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Every held-out row plus at most ``max_rows_per_class`` training rows per kernel class
    (the training shapes with the smallest sha256('subsample:<shape_key>'); collectives are
    never subsampled). Returns (rows, {class: {train_rows, train_rows_used, heldout_rows}})."""
    from moesim.calibrate.measurements import KERNEL_FIT_CLASSES

    df = df.reset_index(drop=True)
    keep = np.ones(len(df), bool)
    counts = {}
    for cls, idx in df.groupby("fit_class", sort=True).indices.items():
        keys = df["shape_key"].iloc[idx].astype(str)
        out = keys.isin(set(held.get(str(cls), []))).to_numpy()
        train_idx = idx[~out]
        n_train = len(train_idx)
        used = n_train
        if max_rows_per_class and cls in KERNEL_FIT_CLASSES and n_train > max_rows_per_class:
            shapes = sorted(set(keys[~out]), key=lambda s: (_sample_hash(s), s))
            chosen, total = set(), 0
            per_shape = keys[~out].value_counts()
            for s in shapes:
                if total + per_shape[s] > max_rows_per_class:
                    break
                chosen.add(s)
                total += per_shape[s]
            drop = train_idx[~keys[~out].isin(chosen).to_numpy()]
            keep[drop] = False
            used = total
        counts[str(cls)] = {"train_rows": int(n_train), "train_rows_used": int(used),
                            "heldout_rows": int(out.sum())}  # fmt: skip
    return df[keep].reset_index(drop=True), counts


def keys_digest(keys: Iterable[str]) -> str:
    """sha256 of the sorted, newline-joined shape_keys (a compact record of a split)."""
    return hashlib.sha256("\n".join(sorted(map(str, keys))).encode()).hexdigest()


def compact_fit_report(report: dict[str, Any], limit: int = HELDOUT_LIST_MAX) -> None:
    """Replace held-out key lists longer than ``limit`` by their count and digest (in place).

    A profile stays small enough to load (a YAML profile is bounded at 1 MiB): the split is
    recomputed from the rows by the rule (:func:`heldout_keys`) and checked against the digest.
    """
    for entry in (report.get("classes") or {}).values():
        keys = entry.get("heldout_shape_keys")
        if keys is not None and len(keys) > limit:
            entry["heldout_shape_keys"] = []
            entry["heldout_shape_keys_count"] = len(keys)
            entry["heldout_shape_keys_sha256"] = keys_digest(keys)
            entry["heldout_shape_keys_rule"] = (
                "recompute: moesim.calibrate.aic.heldout_keys over moesim.calibrate.aic.model_rows "
                "of the same import"
            )


def priceable_classes(hw, df: pd.DataFrame) -> tuple[set[str], dict[str, str]]:
    """kernel_classes of ``df`` the current model prices (a finite time for a sample row)."""
    from moesim.calibrate.measurements import FIT_CLASSES
    from moesim.calibrate.predict import predict_rows

    ok, skipped = set(), {}
    for kind, part in df.groupby("kernel_class", sort=True):
        fit_class = str(part["fit_class"].iloc[0])
        why = None
        if fit_class not in FIT_CLASSES:
            why = "no model for this kernel class yet"
        else:
            try:
                t = predict_rows(hw, part.head(8).reset_index(drop=True))
                if not np.all(np.isfinite(t)):
                    why = "the model returns no finite time for these rows"
            except MoesimError as exc:
                why = f"the model cannot price these rows ({exc})"
        if why:
            skipped[str(kind)] = f"{len(part)} rows: {why}"
        else:
            ok.add(str(kind))
    return ok, skipped


# --- cross-check with our own measurements -----------------------------------------------------

MATCH_KEYS = {
    "gemm": ["m", "n", "k", "dtype"],
    "attention_prefill": ["batch", "seq_len", "num_heads", "num_kv_heads", "head_dim", "dtype",
                          "kv_dtype"],
    "attention_decode": ["batch", "context_len", "num_heads", "num_kv_heads", "head_dim",
                         "kv_dtype"],
    "grouped_gemm": ["tokens", "experts", "global_experts", "top_k", "hidden", "intermediate",
                     "dtype", "routing"],
}  # fmt: skip


def _match_frame(df: pd.DataFrame, cls: str) -> pd.DataFrame:
    from moesim.calibrate.predict import _dtype

    part = df[df["fit_class"] == cls].copy()
    if part.empty:
        return part
    part["dtype"] = part["dtype"].astype(str).map(_dtype)
    if "kv_dtype" in MATCH_KEYS[cls]:
        kv = part["kv_dtype"] if "kv_dtype" in part.columns else part["dtype"]
        part["kv_dtype"] = kv.fillna(part["dtype"]).astype(str).map(_dtype)
    if cls == "grouped_gemm":
        part["routing"] = part.get("routing", "uniform")
        part["routing"] = part["routing"].fillna("uniform").astype(str)
        if "global_experts" not in part.columns:
            part["global_experts"] = part["experts"]
        part["global_experts"] = part["global_experts"].fillna(part["experts"])
    for c in MATCH_KEYS[cls]:
        if c not in part.columns:
            return part.iloc[:0]
        if c not in ("dtype", "kv_dtype", "routing"):
            part[c] = pd.to_numeric(part[c], errors="coerce")
    return part.dropna(subset=MATCH_KEYS[cls])


def cross_check(
    measure_dir: str | Path,
    system: str,
    framework: str,
    version: str | dict[str, str] | None = None,
    rows: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Our own measurements of a GPU against AIC's rows of the same silicon, shape by shape.

    Matched exactly: GEMMs on (m, n, k, dtype) — AIC's per-tensor ``fp8`` rows against ours, not
    its ``fp8_block`` ones; prefill attention on (batch, seq, heads, kv heads, head_dim, dtypes);
    decode on (batch, context, heads, kv heads, head_dim, kv dtype); MoE on (tokens, local and
    global experts, top_k, hidden, intermediate, dtype, routing; AIC's balanced = our uniform).
    Per class (and per our implementation): n and median / max of |ours - theirs| / theirs, and
    the median signed ratio ours / theirs. ``rows``: AIC rows already read (else :func:`read_rows`).
    """
    from moesim.calibrate.measurements import read_measurements, usable_rows

    ours = read_measurements(measure_dir)
    if rows is None:
        rows, prov = read_rows(system, framework, version)
        theirs_src = {"system": system, "framework": framework,
                      "tables": {t: e["file"] for t, e in prov["tables"].items()}}  # fmt: skip
    else:
        theirs_src = {"sources": sorted(map(str, rows.get("source", pd.Series()).unique()))}
    theirs = usable_rows(rows)
    if "format" in theirs.columns:  # per-tensor fp8 only: block-scaled GEMMs are another kernel
        theirs = theirs[~theirs["format"].astype(str).str.contains("block")]
    report: dict[str, Any] = {
        "ours": str(measure_dir),
        "theirs": theirs_src,
        "metric": "|ours - theirs| / theirs per matched shape; ratio = ours / theirs",
        "classes": {},
        "unmatched_ours": {},
    }
    for cls, keys in MATCH_KEYS.items():
        a, b = _match_frame(ours, cls), _match_frame(theirs, cls)
        if a.empty:
            continue
        if b.empty:
            report["unmatched_ours"][cls] = len(a)
            continue
        b = b.groupby(keys, as_index=False)["median_s"].median()
        m = a.merge(b, on=keys, how="left", suffixes=("", "_theirs"))
        hit = m["median_s_theirs"].notna()
        report["unmatched_ours"][cls] = int((~hit).sum())
        m = m[hit]
        if m.empty:
            continue
        entry = _cross_stats(m)
        entry["by_impl"] = {
            f"{impl} ({method})": _cross_stats(p)
            for (impl, method), p in m.groupby(
                [m["impl"].astype(str), m.get("timing_method", pd.Series("", index=m.index))]
            )
        }
        entry["shapes"] = int(m[keys].drop_duplicates().shape[0])
        report["classes"][cls] = entry
    return report


def _cross_stats(m: pd.DataFrame) -> dict[str, Any]:
    ours, theirs = m["median_s"].to_numpy(float), m["median_s_theirs"].to_numpy(float)
    err = np.abs(ours - theirs) / theirs
    return {
        "n": int(err.size),
        "median_abs_error": float(np.median(err)),
        "max_abs_error": float(np.max(err)),
        "median_ratio": float(np.median(ours / theirs)),
    }
