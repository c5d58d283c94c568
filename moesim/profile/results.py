"""Measurement CSVs: the column schema, and a writer that appends and flushes row by row.

One file per kernel class in the output directory (``gemm.csv``, ``memory.csv``, ``moe.csv``,
``attention.csv``, ``permute.csv``, ``collectives.csv``, ``layer.csv``). Every row is flushed as
it is written, so an interrupted run keeps what it measured; with ``resume`` a key already in
the file (kernel_class, impl, shape_key, dtype) is not measured again, whatever its status, and a
row torn by the interruption is dropped and measured again. Existing files are never deleted
or overwritten: a fresh run moves them to the next free ``.bak`` name.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Read by the calibrator: do not rename.
COMMON_COLUMNS = [
    "kernel_class",  # gemm|memory|grouped_gemm|attention_prefill|attention_decode|permute|allreduce|alltoall|layer
    "impl",
    "dtype",
    "shape_key",  # stable id of the shape (held-out splits group by it)
    "flops",
    "hbm_bytes",
    "median_s",
    "min_s",
    "max_s",
    "repeats",
    "status",  # ok | error | skipped
    "error",
    "device_name",
]
DERIVED_COLUMNS = ["achieved_tflops", "achieved_gbps"]
META_COLUMNS = [
    "timing_method",  # cuda_event | cuda_graph | perf_counter | torch.distributed
    "buffer_sets",  # rotating input sets the timed calls cycled through
    "rel_err",  # ‖out − ref‖ / ‖ref‖ of the correctness check
    "sm_clock_mhz",
    "mem_clock_mhz",
    "power_w",
    "temp_c",
    "timestamp",
]
CLASS_COLUMNS: dict[str, list[str]] = {
    "gemm": ["m", "n", "k", "family", "scaling"],
    "memory": ["bytes"],
    "moe": [
        "tokens", "experts", "top_k", "hidden", "intermediate", "routing", "block_m",
        "n_active_experts", "max_expert_tokens", "sum_padded_tokens", "weight_bytes_read",
        "model", "global_experts", "assignments", "local_tokens", "impl_path", "tile_config",
    ],
    "attention": [
        "batch", "seq_len", "context_len", "num_heads", "num_kv_heads", "head_dim", "causal",
        "backend",
    ],
    "permute": ["tokens", "hidden", "top_k", "experts"],
    "collectives": ["message_bytes", "world_size", "backend", "algbw_gbps", "busbw_gbps", "note"],
    "layer": [
        "model", "phase", "batch", "seq_len", "context_len", "tokens", "hidden", "experts",
        "local_experts", "top_k", "intermediate", "num_heads", "num_kv_heads", "head_dim",
        "impl_path",
    ],
}  # fmt: skip
CLASSES = tuple(CLASS_COLUMNS)


def columns_for(cls: str) -> list[str]:
    return COMMON_COLUMNS + CLASS_COLUMNS[cls] + DERIVED_COLUMNS + META_COLUMNS


def row_key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """Identity of a measurement: (kernel_class, impl, shape_key, dtype)."""
    return tuple(str(row.get(c, "")) for c in ("kernel_class", "impl", "shape_key", "dtype"))


def add_derived(row: dict[str, Any]) -> dict[str, Any]:
    """achieved_tflops = flops / median_s / 1e12 and achieved_gbps = hbm_bytes / median_s / 1e9."""
    median = _number(row.get("median_s"))
    flops, hbm = _number(row.get("flops")), _number(row.get("hbm_bytes"))
    ok = row.get("status") == "ok" and median is not None and median > 0
    if ok and flops:
        row["achieved_tflops"] = flops / median / 1e12
    if ok and hbm:
        row["achieved_gbps"] = hbm / median / 1e9
    return row


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class CsvSink:
    """Append rows to ``DIR/<cls>.csv``, flushing each; remembers keys for ``--resume``.

    Without ``resume`` an existing file is moved aside to ``<cls>.csv.bak`` — or ``.bak.2``,
    ``.bak.3``, ... when that exists: a backup is never overwritten, so no run's data is lost.
    With ``resume`` the file is first repaired (:func:`repair_csv`: a row torn by a power loss or
    a full disk is dropped, to be measured again, the damaged original kept as a backup) and its
    header checked: a file without the key columns of a measurement CSV is refused, never
    appended to.
    """

    def __init__(self, out_dir: Path, cls: str, *, resume: bool) -> None:
        from moesim.errors import MoesimError

        self.path = Path(out_dir) / f"{cls}.csv"
        self.done: set[tuple[str, str, str, str]] = set()
        self.repaired: dict[str, Any] | None = None
        columns = columns_for(cls)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and resume:
            self.repaired = repair_csv(self.path)
            exists = self.path.stat().st_size > 0
        if exists and resume:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                found = list(reader.fieldnames or [])
                missing = [c for c in KEY_COLUMNS if c not in found]
                if missing:
                    raise MoesimError(
                        f"{self.path}: its header lacks {', '.join(missing)}: not a moesim "
                        f"measurement CSV, so --resume will not append to it; move it away"
                    )
                columns = found
                self.done = {row_key(r) for r in reader}
        elif exists:
            os.replace(self.path, backup_path(self.path))
            exists = False
        self.columns = columns
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(
            self._file, fieldnames=columns, restval="", extrasaction="ignore"
        )
        if not exists:
            self._writer.writeheader()
            self._file.flush()

    def has(self, key: tuple[str, str, str, str]) -> bool:
        return key in self.done

    def write(self, row: dict[str, Any]) -> None:
        row = add_derived(dict(row))
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()
        self.done.add(row_key(row))

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> CsvSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


KEY_COLUMNS = ("kernel_class", "impl", "dtype", "shape_key", "median_s", "status")


def backup_path(path: Path) -> Path:
    """``<path>.bak``, or the first of ``<path>.bak.2``, ``.bak.3``, ... that does not exist."""
    candidate = path.with_name(path.name + ".bak")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak.{n}")
        n += 1
    return candidate


def repair_csv(path: Path) -> dict[str, Any] | None:
    """Make a measurement CSV safe to append to; returns what was done (None: nothing).

    A run killed by a power loss or a full disk leaves a last line without its newline (or a
    tail of NUL bytes); appending would glue the next row onto it and the calibrator would then
    reject the whole file. The file is cut after its last complete line, and every row whose
    field count differs from the header's is dropped (its key is then missing, so --resume
    measures it again). The damaged original is kept as a backup (never overwritten).
    """
    data = Path(path).read_bytes()
    clean = data.rstrip(b"\x00")
    cut = clean.rfind(b"\n") + 1  # 0 when not even the header line is complete
    clean = clean[:cut]
    lines = clean.decode("utf-8", errors="replace").splitlines(keepends=True)
    kept: list[str] = []
    dropped = 0
    width = None
    for line in lines:
        fields = next(csv.reader([line]), [])
        if width is None:
            width = len(fields)
            kept.append(line)
        elif len(fields) == width:
            kept.append(line)
        else:
            dropped += 1
    repaired = "".join(kept).encode("utf-8")
    if repaired == data:
        return None
    backup = backup_path(Path(path))
    os.replace(path, backup)
    from moesim.outdir import atomic_write_bytes

    atomic_write_bytes(path, repaired)
    return {
        "file": str(path),
        "backup": str(backup),
        "torn_bytes_removed": len(data) - len(clean),
        "rows_dropped": dropped,
    }


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return value


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of one measurement CSV, as strings (empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
