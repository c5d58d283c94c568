"""``moesim validate --e2e``: print or write the end-to-end accuracy report."""

from __future__ import annotations

from pathlib import Path


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def run_e2e(source: str, profile, import_out: Path | None, chart: Path | None, as_json: bool):
    from moesim.calibrate.e2e import validate_e2e
    from moesim.cli._common import console, print_json

    report, scored = validate_e2e(source, profile=profile, import_out=import_out)
    if chart is not None:
        from moesim.plots import save_chart
        from moesim.plots.e2e import e2e_chart

        report["charts"] = [str(p) for p in save_chart(e2e_chart(scored), chart)]
    if as_json:
        print_json(report)
        return
    _print(report, console)


def _print(report: dict, console) -> None:
    from rich.table import Table

    title = (
        f"{report['source']}: {report['rows_scored']} of {report['rows_total']} rows predicted; "
        "|predicted / measured - 1| (median, p90, max; signed median)"
    )
    table = Table(title=title, title_justify="left")
    for col in ("model", "hardware", "engine", "n", "TTFT", "TPOT", "out tok/s/GPU"):
        table.add_column(col, justify="left" if col in ("model", "hardware", "engine") else "right")

    def cell(s):
        if not s["n"]:
            return "-"
        return (f"{_pct(s['median'])} / {_pct(s['p90'])} / {_pct(s['max'])} "
                f"({'+' if s['signed_median'] >= 0 else ''}{_pct(s['signed_median'])})")  # fmt: skip

    for g in report["groups"]:
        table.add_row(g["model"], g["hardware"], g["engine"], str(g["predicted"]),
                      cell(g["ttft_s"]), cell(g["tpot_s"]),
                      cell(g["output_tokens_per_s_per_gpu"]))  # fmt: skip
    o = report["overall"]
    table.add_row("overall", "", "", str(report["rows_scored"]), cell(o["ttft_s"]),
                  cell(o["tpot_s"]), cell(o["output_tokens_per_s_per_gpu"]))  # fmt: skip
    console.print(table)
    for why, n in report.get("skipped_on_import", {}).items():
        console.print(f"[yellow]not imported ({n} rows):[/yellow] {why}")
    for why, n in report.get("not_predicted", {}).items():
        console.print(f"[yellow]not predicted ({n} rows):[/yellow] {why}")
    console.print("throughput where not measured: C x OSL / (TTFT + (OSL - 1) TPOT) / GPUs")
    for path in report.get("charts", []):
        console.print(f"wrote {path}")
