"""The table printed at the end of ``moesim profile``: rows per class and status, best rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from moesim.profile.results import read_rows


def _best(rows: list[dict[str, str]], column: str) -> float | None:
    values = []
    for r in rows:
        try:
            values.append(float(r.get(column) or "nan"))
        except ValueError:
            continue
    values = [v for v in values if v == v]
    return max(values) if values else None


def print_summary(run: dict[str, Any], out: Path, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"moesim profile — {run['device_name']} ({run['device']})")
    for col in ("class", "ok", "error", "skipped", "left", "time", "best TFLOP/s", "best GB/s"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls, info in run["classes"].items():
        if "error" in info and "ok" not in info:
            table.add_row(cls, "-", "-", "-", "-", "-", "-", f"[red]{info['error'][:40]}[/]")
            continue
        rows = [r for r in read_rows(Path(out) / f"{cls}.csv") if r.get("status") == "ok"]
        tf, gb = _best(rows, "achieved_tflops"), _best(rows, "achieved_gbps")
        table.add_row(
            cls,
            str(info.get("ok", 0)),
            str(info.get("error", 0)),
            str(info.get("skipped", 0)),
            str(info.get("left_over_budget", 0)),
            f"{info.get('elapsed_s', 0):.0f} s",
            f"{tf:.3g}" if tf else "",
            f"{gb:.4g}" if gb else "",
        )
    console.print(table)
    left = sum(i.get("left_over_budget", 0) for i in run["classes"].values())
    if left:
        console.print(f"{left} cases left over budget: rerun with --resume to measure them.")
    console.print(f"results in {out}")
