"""Helpers shared by the CLI modules: JSON output, tables, one-line errors."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rich.table import Table

_CONSOLE = None


def __getattr__(name: str) -> Any:
    # ``console`` is built on first use: rich costs ~50 ms to import, and --json output,
    # errors and most tests never print a table.
    if name == "console":
        return get_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_console():
    """The shared rich console (piped output (files, CI logs) gets 100 columns: tables are laid out to fit that width)."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(width=None if sys.stdout.isatty() else 100)
    return _CONSOLE


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays, tuples and NaN/inf turned into plain JSON values (NaN/inf -> null)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.item() if obj.ndim == 0 else obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump())
    return obj


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout (plain print: no rich markup or wrapping)."""
    print(json.dumps(to_jsonable(obj), indent=2))


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A two-column table of name/value pairs."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="cyan")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, fmt(value))
    return table


def fmt(value: Any) -> str:
    """Human formatting of a number for tables (JSON keeps full precision)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.4g}"
        return f"{v:,.4g}"
    return str(value)


def si(value: float, unit: str) -> str:
    """Format with an SI prefix: si(3.2e-5, 's') -> '32 µs'."""
    if value == 0 or not math.isfinite(value):
        return f"{value} {unit}"
    prefixes = [
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
        (1, ""),
        (1e-3, "m"),
        (1e-6, "µ"),
        (1e-9, "n"),
    ]
    for scale, p in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {p}{unit}"
    return f"{value:.3g} {unit}"
