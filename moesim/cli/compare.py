"""``moesim compare``: several GPUs and layouts of one model and workload, side by side."""

from __future__ import annotations

import re
from enum import StrEnum

import typer

ORDER = 35

LAYOUT_RE = re.compile(r"^(?:(tp|ep|pp|dp)(\d+))+(?:x(\d+))?$")
PART_RE = re.compile(r"(tp|ep|pp|dp)(\d+)")

# (key, header, format) of the table columns; csv / markdown / json carry every key.
COLUMNS = (
    ("ttft_s", "TTFT", "s"),
    ("tpot_s", "TPOT", "s"),
    ("output_tokens_per_s_per_gpu", "tok/s/GPU", "rate"),
    ("output_tokens_per_s_per_user", "tok/s/user", "rate"),
    ("usd_per_million_output_tokens", "$/Mtok", "usd"),
    ("memory_bytes_per_gpu", "GB/GPU", "gb"),
    ("num_gpus", "GPUs", "int"),
)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


def parse_layout(text: str) -> dict[str, int]:
    """'tp2ep8dp4x2' -> {'tp': 2, 'ep': 8, 'dp': 4, 'pp': 1, 'replicas': 2}."""
    from moesim.errors import MoesimError

    spec = text.strip().lower().replace(" ", "")
    if not LAYOUT_RE.match(spec):
        raise MoesimError(
            f"layout {text!r} is not like tp2, tp1ep8dp8 or tp4pp2x2 "
            "(tp/ep/pp/dp followed by a size, optional xN copies)"
        )
    body, _, copies = spec.partition("x")
    parts = {"tp": 1, "ep": 1, "pp": 1, "dp": 1}
    seen = set()
    for key, value in PART_RE.findall(body):
        if key in seen:
            raise MoesimError(f"layout {text!r} gives {key} twice")
        seen.add(key)
        parts[key] = int(value)
    parts["replicas"] = int(copies) if copies else 1
    return parts


def register(app: typer.Typer) -> None:
    from moesim.cli.predict import DTYPE_HELP, KV_DTYPE_HELP, LAYOUT_HELP, PRICE_HELP

    @app.command(
        "compare",
        help="Predict one model and workload on several GPUs and layouts and show them side by "
        "side (every --hardware x every --layout). " + LAYOUT_HELP,
    )
    def compare_cmd(
        model: str = typer.Option(..., "--model", "-m", help="Preset name or config path."),
        hardware: list[str] = typer.Option(
            ..., "--hardware", "-H", help="Hardware profile; repeat to compare several."
        ),
        layout: list[str] = typer.Option(
            ["tp1"], "--layout", "-l", help="Layout like tp2, tp1ep8dp8, tp4pp2x2; repeat."
        ),
        batch: int = typer.Option(..., "--batch", "-b", min=1, help="Concurrent sequences."),
        input_len: int = typer.Option(1024, "--input-len", min=1, help="Prompt tokens."),
        output_len: int = typer.Option(256, "--output-len", min=1, help="Generated tokens."),
        dtype: list[str] = typer.Option(
            [], "--dtype", help=DTYPE_HELP + " Repeat to compare formats."
        ),
        kv_dtype: str | None = typer.Option(None, "--kv-dtype", help=KV_DTYPE_HELP),
        routing: str = typer.Option("uniform", "--routing", help="uniform | zipf:S | ..."),
        price_usd_per_hour: float | None = typer.Option(
            None, "--price-usd-per-hour", min=0.0, help=PRICE_HELP
        ),
        gpu_memory_utilization: float | None = typer.Option(
            None, "--gpu-memory-utilization", min=0.01, max=1.0, help="Usable share of memory."
        ),
        fmt: Format = typer.Option(Format.table, "--format", help="table, csv, markdown, json."),
        as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    ) -> None:
        rows = compare(
            model,
            hardware,
            [parse_layout(s) for s in layout],
            dtypes=dtype or [None],
            kv_dtype=kv_dtype,
            batch=batch,
            input_len=input_len,
            output_len=output_len,
            routing=routing,
            price_usd_per_hour=price_usd_per_hour,
            memory_utilization=gpu_memory_utilization,
        )
        render(rows, Format.json if as_json else fmt)


def compare(
    model,
    hardware,
    layouts,
    *,
    dtypes,
    kv_dtype,
    batch,
    input_len,
    output_len,
    routing,
    price_usd_per_hour=None,
    memory_utilization=None,
) -> list[dict]:
    """One prediction per (hardware, layout, dtype); infeasible ones are rows with the reason."""
    from moesim.api import build_layout, run_prediction
    from moesim.cli.predict import with_price
    from moesim.errors import MoesimError

    rows = []
    for hw_name in hardware:
        hw = with_price(hw_name, price_usd_per_hour)
        for lay in layouts:
            for dtype in dtypes:
                label = _label(lay)
                try:
                    layout, _ = build_layout(
                        model,
                        hw,
                        tp=lay["tp"],
                        ep=lay["ep"],
                        pp=lay["pp"],
                        dp=lay["dp"],
                        replicas=lay["replicas"],
                        dtype=dtype,
                        kv_dtype=kv_dtype,
                        dispatch_dtype="fp8" if dtype and dtype.startswith("fp8") else "bf16",
                    )
                    if memory_utilization is not None:
                        layout = layout.with_(memory_utilization=memory_utilization)
                    res = run_prediction(
                        model,
                        hw,
                        layout,
                        batch=batch,
                        input_len=input_len,
                        output_len=output_len,
                        routing=routing,
                    )
                except MoesimError as exc:  # a layout this model cannot take: say why
                    res = {"feasible": False, "reason": str(exc)}
                name = hw if isinstance(hw, str) else hw.name
                formats = res.get("formats") or {}
                rows.append(
                    {
                        "hardware": name,
                        "layout": label,
                        "weight_dtype": formats.get("weight_dtype", dtype),
                        "kv_dtype": formats.get("kv_dtype", kv_dtype),
                        "compute_dtype": formats.get("compute_dtype"),
                        **{k: v for k, v in res.items() if k not in ("layout", "formats")},
                    }
                )
    return rows


def _label(lay: dict) -> str:
    text = f"tp{lay['tp']}" + "".join(f"{k}{lay[k]}" for k in ("ep", "pp", "dp") if lay[k] > 1)
    return text + (f"x{lay['replicas']}" if lay["replicas"] > 1 else "")


def _cell(kind: str, value) -> str:
    from moesim.cli._common import si

    if value is None:
        return "-"
    v = float(value)
    return {
        "s": lambda: si(v, "s"),
        "rate": lambda: f"{v:,.0f}",
        "usd": lambda: f"${v:,.3f}",
        "gb": lambda: f"{v / 1e9:,.1f}",
        "int": lambda: f"{v:,.0f}",
    }[kind]()


def render(rows: list[dict], fmt: Format) -> None:
    from moesim.cli._common import print_json

    if fmt == Format.json:
        print_json(rows)
        return
    if fmt == Format.csv:
        import csv
        import sys

        keys = list(dict.fromkeys(k for r in rows for k in r if k != "notes"))
        writer = csv.DictWriter(sys.stdout, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in keys})
        return
    head = ["hardware", "layout", "dtype"] + [h for _, h, _ in COLUMNS] + ["fits"]
    body = []
    for r in rows:
        cells = [r["hardware"], r["layout"], f"{r['weight_dtype']}/{r['kv_dtype']}"]
        ok = bool(r.get("feasible"))
        for key, _, kind in COLUMNS:
            cells.append(_cell(kind, r.get(key)) if ok or key == "num_gpus" else "-")
        cells.append("yes" if ok else "no")
        body.append(cells)
    reasons = [(i + 1, r["reason"]) for i, r in enumerate(rows) if not r.get("feasible")]
    if fmt == Format.markdown:
        right = {h for _, h, _ in COLUMNS}
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---:" if h in right else "---" for h in head) + "|")
        for cells in body:
            print("| " + " | ".join(cells) + " |")
        for i, why in reasons:
            print(f"\nrow {i} does not fit: {why}")
        return
    from rich import box
    from rich.table import Table

    from moesim.cli._common import console

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for h in head:
        table.add_column(h, justify="left" if h in ("hardware", "layout", "dtype") else "right")
    for cells in body:
        table.add_row(*cells)
    console.print(table, width=100)
    for i, why in reasons:
        console.print(f"row {i} does not fit: {why}", width=100, soft_wrap=False)
