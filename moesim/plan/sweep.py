"""Evaluate a scenario: every point, vectorised, into one tidy DataFrame.

The points of a :class:`~moesim.plan.scenario.Plan` are cut into fixed-size chunks (row ranges, so
the cut never depends on how many workers run them). Within a chunk the rows are grouped by
the inputs the cost path takes as scalars — model, hardware, dtypes, overlap, phase, routing,
capacity factor, block M, redundant experts — and by which optional operators a point has
(EP all-to-all, pipeline sends, host offload), and each group is ONE call of
:func:`moesim.engine.static.predict` on arrays. Chunks run in this process, in a local process pool
(``workers``) or on a Dask cluster (``scheduler``); the frame is the same either way.

    plan --chunks--> evaluate_chunk (per group: serving.predict on arrays) --concat--> DataFrame
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from moesim.errors import MoesimError
from moesim.plan.scenario import (
    CATEGORICAL,
    LoadedScenario,
    Plan,
    build_plan,
    check_points,
    load_scenario,
)
from moesim.spec.limits import DEFAULT_MAX_POINTS

CHUNK_ROWS = 1 << 17  # rows per chunk: large enough to amortise per-call overhead

# Metric columns in output order; every one carries its unit in its name or is a count/share.
METRICS = (
    "ttft_s",
    "tpot_s",
    "e2e_latency_s",
    "output_tokens_per_s_per_gpu",
    "output_tokens_per_s_per_user",
    "prefill_tokens_per_s_per_gpu",
    "decode_tokens_per_s_per_gpu",
    "num_gpus",
    "weights_bytes_per_gpu",
    "kv_cache_bytes_per_gpu",
    "activation_bytes_per_gpu",
    "memory_bytes_per_gpu",
    "memory_capacity_bytes_per_gpu",
    "max_concurrency",
    "usd_per_million_output_tokens",
    "usd_per_million_input_tokens",
    "power_w",
    "ttft_floor_s",
    "tpot_floor_s",
    "prefill_comm_share",
    "decode_comm_share",
    "max_load_ratio",
    "active_experts",
    "padding_waste",
    "drop_rate",
    "concurrency",
    "token_budget",
)
INT_INPUTS = (
    "tp",
    "ep",
    "pp",
    "dp",
    "replicas",
    "redundant_experts",
    "batch",
    "input_len",
    "output_len",
)
# Numeric inputs the cost path needs as one value per call (routing_stats takes a scalar).
SCALAR_NUMERIC = ("redundant_experts",)
UNITS = {
    "_s": "s",
    "_bytes_per_gpu": "B",
    "_per_s_per_gpu": "tokens/s",
    "_per_s_per_user": "tokens/s",
    "_tokens": "USD per 1e6 tokens",
    "_w": "W",
    "_share": "fraction",
    "_rate": "fraction",
    "_waste": "fraction",
}


# ---------------------------------------------------------------------------- one chunk
def evaluate_chunk(plan: Plan, start: int, stop: int) -> dict[str, np.ndarray]:
    """Inputs (categorical ones as codes) and metrics of points ``start .. stop-1``."""
    cols = plan.rows(start, stop)
    n = stop - start
    # One 2-D block for every metric: rows are views, and the frame adopts it without a copy.
    block_2d = np.full((len(METRICS), n), np.nan)
    out: dict = {name: block_2d[i] for i, name in enumerate(METRICS)}
    out["_metrics"] = block_2d
    out["feasible"] = np.zeros(n, dtype=bool)
    out["reason"] = np.full(n, "", dtype=object)
    found = _aligned_block(plan, start, stop)
    if found is not None:
        _evaluate_broadcast(plan, found, start, stop, out)
    else:
        for key_rows in _groups(cols):
            _evaluate_group(plan, cols, key_rows, out)
    _refuse_impossible_numbers(plan, cols, out)
    return cols | out


# Metrics each phase defines; the others are NaN for it (e.g. no TTFT for a decode pool).
_DEFINED = {
    "both": ("ttft_s", "tpot_s", "e2e_latency_s", "output_tokens_per_s_per_gpu"),
    "decode": ("tpot_s",),
    "prefill": ("ttft_s",),
}


def _refuse_impossible_numbers(plan: Plan, cols: dict, out: dict) -> None:
    """A feasible point with an infinite or negative metric, or a NaN where its phase defines
    the metric, is a result the model cannot stand behind: marked infeasible, with the reason,
    instead of being reported (never a silent wrong number)."""
    block = out["_metrics"]
    with np.errstate(invalid="ignore"):
        bad = np.any(np.isinf(block) | (block < 0), axis=0)
    phases = np.asarray(plan.categories["phase"], dtype=object)[cols["phase"]]
    for phase, names in _DEFINED.items():
        rows = phases == phase
        if np.any(rows):
            idx = [METRICS.index(n) for n in names]
            bad |= rows & np.any(np.isnan(block[idx]), axis=0)
    bad &= out["feasible"]
    if np.any(bad):
        out["feasible"][bad] = False
        out["reason"][bad] = "the model gives a non-finite or negative number here (out of range)"


def _aligned_block(plan: Plan, start: int, stop: int):
    """(block, geometry) if rows ``start..stop-1`` are a dense sub-grid of one block (see
    :func:`_sub_grid`), else None."""
    for b in plan.blocks:
        if b.offset <= start and stop <= b.offset + b.size:
            geometry = _sub_grid(b.shape, start - b.offset, stop - b.offset)
            return None if geometry is None else (b, geometry)
    return None


def _sub_grid(shape: tuple[int, ...], lo: int, hi: int):
    """Rows ``lo..hi-1`` (row-major in ``shape``) as ``(d, prefix, a, c)``: a fixed index on
    every axis before ``d``, indices ``a..c-1`` on axis ``d``, every index of the axes after it.
    None if the rows are not such a sub-grid. A block of one point is ``(0, (), 0, 1)``."""
    if not shape:
        return (0, (), 0, 1) if (lo, hi) == (0, 1) else None
    for d in range(len(shape)):
        inner = math.prod(shape[d + 1 :])
        span = inner * shape[d]
        if lo % inner == 0 and hi % inner == 0 and lo // span == (hi - 1) // span:
            prefix = tuple(int(i) for i in np.unravel_index(lo // span, shape[:d])) if d else ()
            a = (lo % span) // inner
            return d, prefix, a, a + (hi - lo) // inner
    return None


def block_chunks(plan: Plan, total: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``chunk_rows`` rows that never cross a block and are dense
    sub-grids of it: cut along the first axis whose trailing axes fit in ``chunk_rows``, with the
    axes before it fixed, so a chunk is bounded whatever the block's shape (deterministic: it
    depends on the plan alone). Rows past ``total`` (a --limit) end the last chunk early."""
    chunk_rows = max(int(chunk_rows), 1)
    chunks = []
    for b in plan.blocks:
        if b.offset >= total:
            break
        end = min(b.offset + b.size, total)
        shape = b.shape or (1,)
        d = next(i for i in range(len(shape)) if math.prod(shape[i + 1 :]) <= chunk_rows)
        inner = math.prod(shape[d + 1 :])
        span = inner * shape[d]
        step = max(1, chunk_rows // inner) * inner
        for first in range(b.offset, end, span):  # one fixed index on the axes before d
            last = min(first + span, end)
            chunks += [(s, min(s + step, last)) for s in range(first, last, step)]
    return chunks


def _evaluate_broadcast(plan: Plan, found, start: int, stop: int, out: dict) -> None:
    """Evaluate a dense sub-grid with its numeric axes as orthogonal numpy dimensions.

    Each operator's cost then depends only on the axes it involves (a GEMM on tp and batch is
    computed over tp x batch, not over every output length); numpy broadcasting assembles the
    full grid at the end. Dimensions holding categorical or scalar-only inputs (model, dtype,
    routing, redundant experts, ...) are looped over: the cost path takes those as scalars.
    Axes before the chunk's cut axis hold one value each (see :func:`_sub_grid`); a block of
    one point is a grid of shape (1,).
    """
    b, (d0, prefix, a, c) = found
    cat = plan.categories
    shape = ((c - a),) + tuple(b.shape[d0 + 1 :]) if b.shape else (1,)
    nd = len(shape)
    where: dict[str, tuple[int | None, np.ndarray]] = {}
    for d, names in enumerate(b.dims):
        for name in names:
            values = b.axes[name]
            if d < d0:
                where[name] = (None, values[prefix[d] : prefix[d] + 1])
            elif d == d0:
                where[name] = (0, values[a:c])
            else:
                where[name] = (d - d0, values)
    for name, values in b.axes.items():
        where.setdefault(name, (None, values[:1]))
    scalar_only = set(CATEGORICAL) | set(SCALAR_NUMERIC)
    outer = sorted({d for name, (d, _) in where.items() if d is not None and name in scalar_only})
    full = {name: out[name].reshape(shape) for name in METRICS}  # views into the chunk's block
    feasible = out["feasible"].reshape(shape)
    reason = out["reason"].reshape(shape)
    for combo in itertools.product(*(range(shape[d]) for d in outer)):
        pick = dict(zip(outer, combo, strict=True))

        def value(name, pick=pick):
            d, values = where[name]
            if d is None:
                return values[0]
            if d in pick:
                return values[pick[d]]
            dims = [1] * nd
            dims[d] = len(values)
            return values.reshape(dims)

        def code(name, value=value):
            return cat[name][int(value(name))]

        if b.ep_spans_stage:
            base_value = value

            def value(name, base_value=base_value):
                return base_value("tp") * base_value("dp") if name == "ep" else base_value(name)

        res = _predict(plan, b.layout_index, value, code)
        index = tuple(slice(pick[d], pick[d] + 1) if d in pick else slice(None) for d in range(nd))
        target = tuple(1 if d in pick else shape[d] for d in range(nd))
        for name in METRICS:
            if name in res:
                full[name][index] = np.broadcast_to(np.asarray(res[name], dtype=float), target)
            else:
                full[name][index] = np.nan
        feasible[index] = np.broadcast_to(res["feasible"], target)
        reason[(*index, ...)] = np.broadcast_to(res["reason"], target)  # [..]: 0-d blocks too


def _groups(cols: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Row indices of each group of rows that share every scalar-only input."""
    keys = [cols[name].astype(np.int64) for name in CATEGORICAL] + [cols["layout_index"]]
    keys += [cols[name].astype(np.int64) for name in SCALAR_NUMERIC]
    # Which optional operators a row has; one call mixing rows with and without them would
    # give the rows without them the others' zero-byte operators (and their launch latency).
    keys += [
        (cols["ep"] > 1).astype(np.int64),
        (cols["pp"] > 1).astype(np.int64),
        (cols["offload_fraction"] > 0).astype(np.int64),
    ]
    key = np.zeros(len(keys[0]), dtype=np.int64)
    for k in keys:
        key = key * (int(k.max()) + 1) + k
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return np.split(order, bounds)


def _predict(plan: Plan, layout_index: int, value, code) -> dict:
    """One ``serving.predict`` (or ``predict_phase``) call. ``value(name)`` gives an input as a
    scalar or an array (flat rows, or an axis of a broadcast grid); ``code(name)`` gives the value
    of a categorical input. Both evaluation paths build their call here."""
    from moesim.cost.ops import RoutingOptions
    from moesim.engine import static as serving
    from moesim.spec.deployment import Layout

    loaded = plan.loaded
    lay = loaded.scenario.layouts[layout_index]
    layout = Layout(
        tp=value("tp"),
        ep=value("ep"),
        pp=value("pp"),
        dp=value("dp"),
        replicas=value("replicas"),
        weight_dtype=code("weight_dtype"),
        kv_dtype=code("kv_dtype"),
        act_dtype=code("act_dtype"),
        dispatch_dtype=code("dispatch_dtype"),
        overlap=code("overlap"),
        redundant_experts=int(np.max(value("redundant_experts"))),
        offload_fraction=value("offload_fraction"),
        memory_utilization=lay.memory_utilization,
        gpus_per_node=lay.gpus_per_node,
    )
    routing = RoutingOptions(
        dist=loaded.routing[code("routing")],
        block_m=int(code("block_m")),
        capacity_factor=code("capacity_factor"),
    )
    model = loaded.models[int(np.max(value("model")))]
    hw = loaded.hardware[int(np.max(value("hardware")))]
    phase = code("phase")
    conc = value("concurrency")
    if not np.all(np.isnan(conc)):  # in-flight batching (the workload family sets concurrency)
        from moesim.engine.inflight import predict_inflight

        def optional(name):
            v = value(name)
            return None if np.all(np.isnan(v)) else v

        return predict_inflight(
            model, hw, layout, concurrency=conc, input_len=value("input_len"),
            output_len=value("output_len"), engine=code("engine"), routing=routing,
            token_budget=optional("token_budget"), max_batch=optional("max_batch"),
        )  # fmt: skip
    kw = dict(batch=value("batch"), input_len=value("input_len"), routing=routing)
    kw["engine"] = code("engine")
    if phase == "both":
        return serving.predict(model, hw, layout, output_len=value("output_len"), **kw)
    ctx = value("context_len")
    ctx = np.where(np.isnan(ctx), value("input_len") + value("output_len") / 2.0, ctx)
    return serving.predict_phase(model, hw, layout, phase=phase, context_len=ctx, **kw)


def _evaluate_group(plan: Plan, cols, rows: np.ndarray, out: dict) -> None:
    first = rows[0]

    def code(name):
        return plan.categories[name][int(cols[name][first])]

    def value(name):
        return cols[name][rows]

    res = _predict(plan, int(cols["layout_index"][first]), value, code)
    m = len(rows)
    for name in METRICS:
        if name in res:
            out[name][rows] = np.broadcast_to(np.asarray(res[name], dtype=float), (m,))
    out["feasible"][rows] = np.broadcast_to(res["feasible"], (m,))
    out["reason"][rows] = np.broadcast_to(res["reason"], (m,))


# ---------------------------------------------------------------------------- runners
def run_plan(
    plan: Plan,
    *,
    limit: int | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Evaluate the first ``limit`` points (all by default) of ``plan`` as a tidy frame."""
    total = plan.size if limit is None else min(plan.size, int(limit))
    chunks = block_chunks(plan, total, chunk_rows)
    if scheduler:
        parts = _run_dask(plan, chunks, scheduler, workers, progress)
    elif workers > 1 and len(chunks) > 1:
        # no more processes than chunks, nor than a few per core: each one imports the package
        workers = min(workers, len(chunks), 4 * (os.cpu_count() or 1))
        parts = _run_pool(plan, chunks, workers, progress)
    else:
        parts = []
        for s, e in chunks:
            parts.append(evaluate_chunk(plan, s, e))
            if progress:
                progress(e - s)
    return to_frame(plan, parts)


_WORKER_PLAN: Plan | None = None


def _init_worker(plan: Plan) -> None:
    global _WORKER_PLAN
    _WORKER_PLAN = plan


def _pool_chunk(bounds: tuple[int, int]) -> dict:
    return evaluate_chunk(_WORKER_PLAN, *bounds)


def _run_pool(plan, chunks, workers, progress) -> list[dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (rich, dask)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(plan,)
    ) as pool:
        parts = []
        for (s, e), part in zip(chunks, pool.map(_pool_chunk, chunks), strict=True):
            parts.append(part)
            if progress:
                progress(e - s)
    return parts


def _run_dask(plan, chunks, scheduler, workers, progress) -> list[dict]:
    import logging

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise MoesimError(
            "--scheduler needs dask[distributed]: pip install 'moesim[dask]'"
        ) from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=max(workers, 1),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise MoesimError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        [plan_future] = client.scatter([plan], broadcast=True)
        futures = [client.submit(evaluate_chunk, plan_future, s, e, pure=False) for s, e in chunks]
        parts = []
        for (s, e), fut in zip(chunks, futures, strict=True):
            parts.append(fut.result())  # in chunk order: the frame does not depend on timing
            if progress:
                progress(e - s)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return parts


# ---------------------------------------------------------------------------- the frame
def to_frame(plan: Plan, parts: list[dict]) -> pd.DataFrame:
    """Tidy frame: inputs, metrics, feasible, reason, meets_slo (one row per point)."""
    sc = plan.loaded.scenario
    if not parts:
        return pd.DataFrame(
            columns=["model", "hardware", *METRICS, "feasible", "reason", "meets_slo"]
        )
    block_2d = np.concatenate([p["_metrics"] for p in parts], axis=1)
    cols = {
        k: np.concatenate([p[k] for p in parts])
        for k in parts[0]
        if k not in METRICS and k != "_metrics"
    }
    cols |= {name: block_2d[i] for i, name in enumerate(METRICS)}
    data: dict[str, object] = {}
    for name in ("model", "hardware"):
        data[name] = pd.Categorical.from_codes(cols[name], categories=plan.categories[name])
    data["layout"] = layout_names(cols)
    data["layout_family"] = _labels([lay.label for lay in sc.layouts], cols["layout_index"])
    data["workload"] = _labels([w.label for w in sc.workloads], cols["workload_index"])
    for name in ("tp", "ep", "pp", "dp", "replicas", "redundant_experts"):
        data[name] = cols[name].astype(np.int64)
    data["offload_fraction"] = cols["offload_fraction"]
    for name in ("weight_dtype", "kv_dtype", "act_dtype", "dispatch_dtype", "overlap"):
        data[name] = pd.Categorical.from_codes(cols[name], categories=plan.categories[name])
    for name in ("batch", "input_len", "output_len"):
        data[name] = cols[name].astype(np.int64)
    if any(w.context_len is not None for w in sc.workloads):
        data["context_len"] = cols["context_len"]
    for name in ("phase", "routing", "engine"):
        data[name] = pd.Categorical.from_codes(cols[name], categories=plan.categories[name])
    caps = np.array([np.nan if c is None else float(c) for c in plan.categories["capacity_factor"]])
    data["capacity_factor"] = caps[cols["capacity_factor"]]
    data["block_m"] = np.asarray(plan.categories["block_m"], dtype=np.int64)[cols["block_m"]]
    cut = METRICS.index("num_gpus")
    tail = {
        "feasible": cols["feasible"],
        "reason": pd.Categorical(cols["reason"]),
        "meets_slo": meets_slo(cols, sc.slo),
    }
    frames = [
        pd.DataFrame(data),
        pd.DataFrame(block_2d[:cut].T, columns=list(METRICS[:cut]), copy=False),
        pd.DataFrame({"num_gpus": np.rint(cols["num_gpus"]).astype(np.int64)}),
        pd.DataFrame(block_2d[cut + 1 :].T, columns=list(METRICS[cut + 1 :]), copy=False),
        pd.DataFrame(tail),
    ]
    return pd.concat(frames, axis=1)


def layout_names(cols) -> pd.Categorical:
    """'tp2 ep8 dp4'-style names (parts equal to 1 left out, tp always shown)."""
    names = ("tp", "ep", "pp", "dp", "replicas")
    values = [np.asarray(cols[n], dtype=np.int64) for n in names]
    key = np.zeros(len(values[0]), dtype=np.int64)
    for v in values:
        key = key * (int(v.max()) + 1) + v
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    labels = []
    for combo in (tuple(int(v[i]) for v in values) for i in first):
        parts = [f"{n}{v}" for n, v in zip(names, combo, strict=True) if n == "tp" or v > 1]
        labels.append(" ".join(parts).replace("replicas", "x"))
    return pd.Categorical.from_codes(inverse.ravel(), categories=labels)


def _labels(labels: list[str | None], index: np.ndarray) -> pd.Categorical:
    names = [label or f"#{i}" for i, label in enumerate(labels)]
    return pd.Categorical.from_codes(index, categories=names)


def meets_slo(cols, slo) -> np.ndarray:
    """Feasible and under every SLO maximum (a metric that is NaN for the phase never meets it)."""
    ok = np.asarray(cols["feasible"], dtype=bool).copy()
    for name in ("ttft_s", "tpot_s", "e2e_latency_s"):
        limit = getattr(slo, name)
        if limit is not None:
            with np.errstate(invalid="ignore"):
                ok &= np.asarray(cols[name]) <= limit
    return ok


def unit_of(column: str) -> str:
    for suffix, unit in UNITS.items():
        if column.endswith(suffix):
            return unit
    return ""


# ---------------------------------------------------------------------------- writing
# Without an explicit ``outputs.formats``, CSV is written up to this many points (pandas-free,
# through Arrow, but still ~8x slower than Parquet); larger sweeps write Parquet only, unless
# the scenario lists csv or ``--csv`` asks for it.
CSV_AUTO_MAX_POINTS = 250_000
SWEEP_FILES = ("results.parquet", "results.csv", "manifest.json", "scenario.yaml", "charts")


def chosen_formats(loaded: LoadedScenario, points: int, csv: bool | None = None) -> list[str]:
    """Result tables to write: the scenario's ``outputs.formats``, else Parquet and (for sweeps
    of at most CSV_AUTO_MAX_POINTS points) CSV; ``csv`` True/False forces CSV on or off."""
    formats = loaded.scenario.outputs.formats
    if formats is None:
        formats = ["parquet"] + (["csv"] if points <= CSV_AUTO_MAX_POINTS else [])
    formats = list(dict.fromkeys(formats))
    if csv is True and "csv" not in formats:
        formats.append("csv")
    if csv is False and "csv" in formats:
        formats.remove("csv")
    return formats


def _arrow_table(df: pd.DataFrame, loaded: LoadedScenario):
    import pyarrow as pa

    from moesim import __version__

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update(
        {
            b"moesim.version": __version__.encode(),
            b"moesim.scenario_name": loaded.scenario.name.encode(),
            b"moesim.scenario": loaded.text.encode(),
        }
    )
    return table.replace_schema_metadata(meta)


def write_results(
    df: pd.DataFrame,
    out_dir: Path,
    loaded: LoadedScenario,
    formats=("parquet", "csv"),
    chunk_rows: int = CHUNK_ROWS,
) -> list[Path]:
    """Write ``results.parquet`` (scenario text and version in its key-value metadata) and/or
    ``results.csv`` under ``out_dir``, each in row groups / batches of ``chunk_rows`` rows to a
    temporary name that is renamed when the file is complete (a killed run never leaves a
    truncated file that reads as valid)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _arrow_table(df, loaded)
    written = []
    if "parquet" in formats:
        path = out_dir / "results.parquet"
        tmp = out_dir / f".results.parquet.tmp-{os.getpid()}"
        with pq.ParquetWriter(tmp, table.schema) as writer:
            for start in range(0, max(table.num_rows, 1), chunk_rows):
                writer.write_table(table.slice(start, chunk_rows), row_group_size=chunk_rows)
        os.replace(tmp, path)
        written.append(path)
    if "csv" in formats:
        # Categorical columns as their text; floats with Arrow's shortest round-trip repr.
        fields = [
            pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
            for f in table.schema
        ]
        plain = table.cast(pa.schema(fields))
        path = out_dir / "results.csv"
        tmp = out_dir / f".results.csv.tmp-{os.getpid()}"
        with pa_csv.CSVWriter(tmp, plain.schema) as writer:
            for batch in plain.to_batches(max_chunksize=chunk_rows):
                writer.write_batch(batch)
        os.replace(tmp, path)
        written.append(path)
    return written


def read_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A results Parquet file and its moesim metadata (version, scenario_name, scenario)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {
        k.decode().removeprefix("moesim."): v.decode()
        for k, v in (table.schema.metadata or {}).items()
        if k.startswith(b"moesim.")
    }
    return table.to_pandas(), meta


def is_sweep_folder(path: Path) -> bool:
    """True if ``path`` holds an earlier ``moesim sweep`` output and nothing else."""
    names = {p.name for p in Path(path).iterdir()}
    return bool(names & {"manifest.json", "results.parquet", "results.csv"}) and names <= set(
        SWEEP_FILES
    )


def run_scenario(
    path: str | Path,
    out_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
    charts: bool = True,
    max_points: int | None = DEFAULT_MAX_POINTS,
    overwrite: bool = False,
    csv: bool | None = None,
    overrides: dict | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Load, evaluate and (with ``out_dir``) write a scenario. Returns (frame, manifest).

    Before anything is evaluated: the scenario is validated, the points to evaluate are counted
    and refused above ``max_points`` (None: no limit), and ``out_dir`` is checked (a file, an
    unwritable place, a folder of other files, or an earlier run without ``overwrite`` are
    refused). The output folder is built under a hidden name beside ``out_dir`` and renamed into
    place when complete, replacing an earlier run whole.

    ``progress`` draws a progress bar with an ETA on stderr when it is a terminal.
    ``overrides`` may set ``price_usd_per_hour`` (every hardware) and ``memory_utilization``
    (every layout); the manifest records them.
    """
    loaded = _apply_overrides(load_scenario(path), overrides or {})
    plan = build_plan(loaded)
    total = plan.size if limit is None else min(plan.size, limit)
    if max_points is not None and total > max_points:
        check_points(plan, max_points)  # the message names the scenario, count and limit
    run = dict(path=path, limit=limit, workers=workers, scheduler=scheduler, csv=csv)
    run |= dict(overrides=overrides or {})
    run |= dict(progress=progress and total > CHUNK_ROWS, charts=charts, total=total)
    if out_dir is None:
        return _evaluate_and_write(loaded, plan, None, **run)
    from moesim.outdir import StagedDir

    staged = StagedDir(out_dir, is_previous_run=is_sweep_folder, overwrite=overwrite)
    with staged as stage:  # the staging folder exists before any work: a bad --out fails now
        return _evaluate_and_write(loaded, plan, stage, **run)


def _evaluate_and_write(
    loaded,
    plan,
    stage,
    *,
    path,
    limit,
    workers,
    scheduler,
    csv,
    progress,
    charts,
    total,
    overrides,
) -> tuple[pd.DataFrame, dict]:
    import hashlib

    from moesim import __version__

    t0 = time.perf_counter()
    if progress and _stderr_is_terminal():
        df = _with_progress(plan, total, limit=limit, workers=workers, scheduler=scheduler)
    else:
        df = run_plan(plan, limit=limit, workers=workers, scheduler=scheduler)
    eval_s = time.perf_counter() - t0
    formats = chosen_formats(loaded, len(df), csv)
    manifest = {
        "scenario": loaded.scenario.name,
        "scenario_file": str(path),
        "scenario_sha256": hashlib.sha256(loaded.text.encode()).hexdigest(),
        "moesim_version": __version__,
        "points": len(df),
        "points_in_scenario": plan.size,
        "feasible": int(df["feasible"].sum()) if len(df) else 0,
        "meets_slo": int(df["meets_slo"].sum()) if len(df) else 0,
        "evaluation_s": round(eval_s, 4),
        "configs_per_s": round(len(df) / eval_s) if eval_s > 0 else None,
        "workers": workers,
        "scheduler": scheduler,
        "limit": limit,
        "formats": formats,
        "slo": loaded.scenario.slo.model_dump(),
        "overrides": overrides,
        "units": {c: unit_of(c) for c in df.columns if unit_of(c)},
        "files": [],
        "charts": [],
    }
    if loaded.scenario.outputs.formats is None and "csv" not in formats and csv is None:
        manifest["note"] = (
            f"results.csv not written: {len(df):,} points > {CSV_AUTO_MAX_POINTS:,}; list csv in "
            "outputs.formats or pass --csv to write it"
        )
    if stage is not None:
        from moesim.outdir import atomic_write_text

        files = write_results(df, stage, loaded, formats)
        atomic_write_text(stage / "scenario.yaml", loaded.text)
        manifest["files"] = [p.name for p in files] + ["scenario.yaml", "manifest.json"]
        if charts and loaded.scenario.outputs.charts:
            from moesim.plots.charts import sweep_charts

            written = sweep_charts(df, loaded, stage / "charts")
            manifest["charts"] = [str(p.relative_to(stage)) for p in written]
        atomic_write_text(
            stage / "manifest.json", json.dumps(manifest, indent=2, default=_json_default) + "\n"
        )
    return df, manifest


def _json_default(obj):
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


def _apply_overrides(loaded: LoadedScenario, overrides: dict) -> LoadedScenario:
    """The scenario with every hardware's price and every layout's memory share replaced."""
    import dataclasses

    if not overrides:
        return loaded
    hardware = loaded.hardware
    if overrides.get("price_usd_per_hour") is not None:
        price = float(overrides["price_usd_per_hour"])
        hardware = [h.model_copy(update={"price_usd_per_hour": price}) for h in hardware]
    scenario = loaded.scenario
    if overrides.get("memory_utilization") is not None:
        share = float(overrides["memory_utilization"])
        layouts = [lay.model_copy(update={"memory_utilization": share}) for lay in scenario.layouts]
        scenario = scenario.model_copy(update={"layouts": layouts})
    return dataclasses.replace(loaded, hardware=hardware, scenario=scenario)


def _stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal


def _with_progress(plan, total, **kw) -> pd.DataFrame:
    """run_plan with a rich progress bar (points done, rate, elapsed, ETA) on stderr; chunks
    are cut smaller (about 1/50 of the sweep) so the bar moves, at little cost per call."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    chunk_rows = int(min(CHUNK_ROWS, max(1024, total // 50)))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("points", total=total)
        return run_plan(plan, progress=lambda n: bar.advance(task, n), chunk_rows=chunk_rows, **kw)


# ---------------------------------------------------------------------------- simulations
# Point inputs a request-level simulation depends on (batch, phase and context_len do not).
SIM_POINT_AXES = (
    "model",
    "hardware",
    "layout_index",
    "workload_index",
    "tp",
    "ep",
    "pp",
    "dp",
    "replicas",
    "redundant_experts",
    "offload_fraction",
    "weight_dtype",
    "kv_dtype",
    "act_dtype",
    "dispatch_dtype",
    "overlap",
    "input_len",
    "output_len",
    "routing",
    "capacity_factor",
    "block_m",
)
MAX_SIM_POINTS = 100_000
SIM_METRICS = (
    "ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
    "tpot_mean_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
    "itl_mean_s", "itl_p50_s", "itl_p90_s", "itl_p99_s",
    "e2e_latency_mean_s", "e2e_latency_p50_s", "e2e_latency_p90_s", "e2e_latency_p99_s",
    "request_throughput_per_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu",
    "total_tokens_per_s_per_gpu", "goodput_requests_per_s", "slo_attainment",
    "kv_occupancy_mean", "kv_occupancy_max", "mean_decode_batch", "duration_s",
    "completed", "rejected", "preemptions", "kv_cache_tokens", "num_gpus",
)  # fmt: skip


def simulation_points(loaded: LoadedScenario) -> list[dict]:
    """The simulations a scenario's ``simulate:`` section asks for, in a fixed order: each
    distinct point of the plan (batch, phase, context_len aside) x rates or concurrencies x
    token budgets x sequence caps."""
    sim = loaded.scenario.simulate
    if sim is None:
        return []
    plan = build_plan(loaded)
    if plan.size > MAX_SIM_POINTS:
        raise MoesimError(
            f"{plan.size:,} points are too many to simulate one by one (at most {MAX_SIM_POINTS:,})"
        )
    cols = plan.rows(0, plan.size)
    keys = np.stack([np.asarray(cols[k], dtype=float) for k in SIM_POINT_AXES], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    loads = [
        {
            "rate_per_s": None if r is None else float(r),
            "concurrency": None if c is None else int(c),
        }
        for r, c in itertools.product(sim.rate_per_s or (None,), sim.concurrency or (None,))
    ]
    points = []
    for i in np.sort(first):
        base = {}
        for k in SIM_POINT_AXES:
            v = cols[k][i]
            base[k] = plan.categories[k][int(v)] if k in CATEGORICAL else v.item()
        for load, budget, cap in itertools.product(
            loads, sim.max_num_batched_tokens or (None,), sim.max_num_seqs or (None,)
        ):
            points.append(base | load | {"max_num_batched_tokens": budget, "max_num_seqs": cap})
    return points


def simulate_point(loaded: LoadedScenario, point: dict) -> dict:
    """One simulation of a scenario point: the point's inputs and the summary metrics (a point
    that cannot run is a row with feasible=False and the reason)."""
    from moesim.cost.ops import RoutingOptions
    from moesim.engine import traffic as tr
    from moesim.engine.simulate import engine_defaults, simulate
    from moesim.spec.deployment import Layout

    sc = loaded.scenario
    sim = sc.simulate
    lay = sc.layouts[int(point["layout_index"])]
    model = loaded.models[loaded.model_labels.index(point["model"])]
    hw = loaded.hardware[loaded.hardware_labels.index(point["hardware"])]
    row = dict(point)
    try:
        layout = Layout(
            tp=int(point["tp"]), ep=int(point["ep"]), pp=int(point["pp"]), dp=int(point["dp"]),
            replicas=int(point["replicas"]), weight_dtype=point["weight_dtype"],
            kv_dtype=point["kv_dtype"], act_dtype=point["act_dtype"],
            dispatch_dtype=point["dispatch_dtype"], overlap=point["overlap"],
            redundant_experts=int(point["redundant_experts"]),
            offload_fraction=float(point["offload_fraction"]),
            memory_utilization=lay.memory_utilization, gpus_per_node=lay.gpus_per_node,
        )  # fmt: skip
        routing = RoutingOptions(
            dist=loaded.routing[point["routing"]],
            block_m=int(point["block_m"]),
            capacity_factor=point["capacity_factor"],
        )
        kw = dict(rate_per_s=point["rate_per_s"], concurrency=point["concurrency"],
                  arrival=sim.arrival, cv=sim.cv, seed=sim.seed)  # fmt: skip
        if sim.trace is not None:
            trace = Path(sim.trace)
            trace = trace if trace.is_absolute() else loaded.base_dir / trace
            traffic = tr.from_trace(trace, num_requests=sim.num_requests, **kw)
        else:
            traffic = tr.synthetic(
                sim.num_requests,
                input_len=sim.input_len or int(point["input_len"]),
                output_len=sim.output_len or int(point["output_len"]),
                **kw,
            )
        engine = engine_defaults(
            sim.engine, hw, max_num_batched_tokens=point["max_num_batched_tokens"],
            max_num_seqs=point["max_num_seqs"],
        )  # fmt: skip
        res = simulate(
            model, hw, layout, traffic, engine=engine, routing=routing,
            ttft_slo_s=sim.ttft_slo_s or sc.slo.ttft_s, tpot_slo_s=sim.tpot_slo_s or sc.slo.tpot_s,
        )  # fmt: skip
    except MoesimError as exc:
        return row | {"engine": sim.engine, "feasible": False, "reason": str(exc)}
    s = res.summary
    row.update(engine=s["engine"], max_num_batched_tokens=s["max_num_batched_tokens"],
               max_num_seqs=s["max_num_seqs"])  # fmt: skip
    row |= {k: (np.nan if s.get(k) is None else s[k]) for k in SIM_METRICS}
    return row | {"feasible": True, "reason": ""}


def run_simulations(
    loaded: LoadedScenario, *, workers: int = 1, scheduler: str | None = None
) -> pd.DataFrame:
    """Every simulation of the scenario's ``simulate:`` section as one tidy frame (one row per
    simulation, in :func:`simulation_points` order). Simulations run in this process, in a local
    process pool (``workers``) or on a Dask cluster (``scheduler``); the frame is the same."""
    points = simulation_points(loaded)
    if scheduler:
        rows = _simulate_dask(loaded, points, scheduler, workers)
    elif workers > 1 and len(points) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            rows = list(pool.map(simulate_point, [loaded] * len(points), points))
    else:
        rows = [simulate_point(loaded, p) for p in points]
    return simulation_frame(rows)


def _simulate_dask(loaded, points, scheduler, workers) -> list[dict]:
    import logging

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise MoesimError(
            "--scheduler needs dask[distributed]: pip install 'moesim[dask]'"
        ) from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=max(workers, 1), threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        )  # fmt: skip
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise MoesimError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        [scenario] = client.scatter([loaded], broadcast=True)
        futures = [client.submit(simulate_point, scenario, p, pure=False) for p in points]
        return [f.result() for f in futures]  # in point order, whatever finished first
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def simulation_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of :func:`simulate_point` as a frame with a fixed column order and dtypes."""
    if not rows:
        return pd.DataFrame(
            columns=["model", "hardware", "layout", *SIM_METRICS, "feasible", "reason"]
        )
    df = pd.DataFrame(rows)
    df["rate_per_s"] = pd.to_numeric(df["rate_per_s"]).astype(float)
    df["concurrency"] = pd.array(df["concurrency"], dtype="Int64")
    for k in SIM_METRICS:
        if k not in df.columns:
            df[k] = np.nan
    df["layout"] = layout_names({k: df[k].to_numpy() for k in ("tp", "ep", "pp", "dp", "replicas")})
    for k in ("tp", "ep", "pp", "dp", "replicas", "redundant_experts", "input_len", "output_len"):
        df[k] = df[k].astype(np.int64)
    inputs = [c for c in df.columns if c not in SIM_METRICS and c not in ("feasible", "reason")]
    order = ["model", "hardware", "layout"] + [
        c for c in inputs if c not in ("model", "hardware", "layout")
    ]
    return df[order + list(SIM_METRICS) + ["feasible", "reason"]].reset_index(drop=True)
