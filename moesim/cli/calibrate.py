"""``moesim calibrate`` (fit a measured profile) and ``moesim validate`` (score a profile)."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 70


def register(app: typer.Typer) -> None:
    app.command("calibrate", help=CALIBRATE_HELP)(calibrate)
    app.command("validate", help=VALIDATE_HELP)(validate)


CALIBRATE_HELP = (
    "Fit a hardware profile's efficiency terms to kernel measurements (from `moesim profile`) "
    "and write a measured profile.\n\n"
    "Per kernel class, scipy least squares on log time fits achievable peak per dtype, achievable "
    "bandwidth, launch overhead, tile quantisation and ridge sharpness; collectives get α-β terms. "
    "A fixed fraction of shapes is held out and the error on them reported.\n\n"
    "Example: moesim calibrate hwprofiles/measurements/h100-sxm --out hwprofiles/h100-sxm.measured.yaml\n\n"
    "Published figures instead of a directory: moesim calibrate --published h800 --out hwprofiles/h800.published.yaml"
)
VALIDATE_HELP = (
    "Compare a profile's predictions with a measurement directory: error per kernel class, "
    "overall, the worst shapes, and (with layer.csv) whole decoder layers.\n\n"
    "Example: moesim validate hwprofiles/measurements/h100-sxm --profile hwprofiles/h100-sxm.measured.yaml --heldout-only"
)


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def calibrate(
    directory: Path | None = typer.Argument(
        None, help="Measurement directory written by `moesim profile`."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the measured profile YAML."),
    base: str | None = typer.Option(
        None, "--base", help="Base (datasheet) profile; default: from run.json's device name."
    ),
    heldout_fraction: float = typer.Option(
        0.2, "--heldout-fraction", min=0.0, max=0.95, help="Fraction of shapes held out."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out shape hash."),
    published: str | None = typer.Option(
        None,
        "--published",
        help="Fit published kernel figures of this GPU (h800) instead of a directory.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the fit report as JSON."),
) -> None:
    from moesim.calibrate import Calibration, calibrate_published
    from moesim.errors import MoesimError

    if published:
        if directory is not None:
            raise MoesimError("give a measurement directory or --published, not both")
        cal, profile = calibrate_published(published, heldout_fraction=heldout_fraction, seed=seed)
    else:
        if directory is None:
            raise MoesimError("missing measurement directory (or --published GPU)")
        cal = Calibration(base, heldout_fraction=heldout_fraction, seed=seed).fit(directory)
        profile = cal.to_profile(name=out.name.removesuffix(".yaml"))
    path = profile.save_yaml(out)
    _print_fit(cal, profile, path, as_json)


def _print_fit(cal, profile, path: Path, as_json: bool) -> None:
    from rich.table import Table

    from moesim.cli._common import console, print_json

    report = profile.efficiency.fit_report
    if as_json:
        print_json(
            {
                "profile": str(path),
                "name": profile.name,
                "source": profile.efficiency.source,
                "fit_report": report,
            }
        )
        return
    table = Table(
        title=f"{profile.name}: fitted on {cal.device_} (base {cal.hardware_.name})",
        title_justify="left",
    )
    for col in (
        "class",
        "impl",
        "train",
        "held-out",
        "train median",
        "train max",
        "held-out median",
        "held-out max",
        "parameters",
    ):
        table.add_column(col, justify="left" if col in ("class", "impl", "parameters") else "right")
    for cls, r in report["classes"].items():
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if not isinstance(v, dict))
        by_dtype = r["params"].get("compute_efficiency_by_dtype")
        if by_dtype:
            params += ", " + ", ".join(f"eta_c[{d}]={v}" for d, v in by_dtype.items())
        table.add_row(
            cls, str(r["impl"]), str(r["n_train"]), str(r["n_heldout"]),
            _pct(r["train"]["median_abs_error"]), _pct(r["train"]["max_abs_error"]),
            _pct(r["heldout"]["median_abs_error"]), _pct(r["heldout"]["max_abs_error"]), params,
        )  # fmt: skip
    console.print(table)
    for cls, why in report.get("skipped", {}).items():
        console.print(f"[yellow]skipped {cls}:[/yellow] {why}")
    console.print(f"wrote {path}  ({profile.efficiency.source})")


def validate(
    directory: Path | None = typer.Argument(
        None, help="Measurement directory written by `moesim profile`."
    ),
    profile: str | None = typer.Option(
        None, "--profile", "-p", help="Profile to score (name or YAML path)."
    ),
    e2e: str | None = typer.Option(
        None,
        "--e2e",
        help="Score serving predictions against measured deployments: an e2e CSV (see README), "
        "or 'aiconfigurator' for the silicon sample in the installed aiconfigurator-core wheel.",
    ),
    e2e_import_out: Path | None = typer.Option(
        None, "--e2e-import-out", help="With --e2e: also write the rows read, as an e2e CSV."
    ),
    heldout_only: bool = typer.Option(
        False, "--heldout-only", help="Only the shapes the profile's fit held out."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    chart: Path | None = typer.Option(
        None,
        "--chart",
        help="Write roofline and predicted-vs-measured charts to PATH_STEM.{html,svg,png}.",
    ),
) -> None:
    if e2e is not None:
        from moesim.cli._e2e import run_e2e

        return run_e2e(e2e, profile, e2e_import_out, chart, as_json)
    from moesim.calibrate.validate import scored_rows
    from moesim.calibrate.validate import validate as run_validate
    from moesim.cli._common import print_json
    from moesim.errors import MoesimError
    from moesim.spec.hardware import load_hardware

    if directory is None or profile is None:
        raise MoesimError("validate needs a measurement directory and --profile (or --e2e FILE)")
    hw = load_hardware(profile)
    report = run_validate(directory, hw, heldout_only)
    if chart is not None:
        from moesim.plots import save_chart
        from moesim.plots.calibration import validation_chart

        report["charts"] = [
            str(p)
            for p in save_chart(
                validation_chart(scored_rows(directory, hw, heldout_only), hw), chart
            )
        ]
    if as_json:
        print_json(report)
        return
    _print_validation(report)


def _print_validation(report: dict) -> None:
    from rich.table import Table

    from moesim.cli._common import console, si

    title = f"{report['profile']} ({report['calibration']})" + (
        "  held-out shapes only" if report["heldout_only"] else ""
    )
    table = Table(title=title, title_justify="left")
    for col in ("class", "n", "median |err|", "mean |err|", "max |err|"):
        table.add_column(col, justify="left" if col == "class" else "right")
    rows = list(report["classes"].items()) + [("overall", report["overall"])]
    if "layers" in report:
        rows.append((f"layers ({report['layers']['impl']})", report["layers"]))
    for name, s in rows:
        table.add_row(
            name,
            str(s["n"]),
            _pct(s["median_abs_error"]),
            _pct(s["mean_abs_error"]),
            _pct(s["max_abs_error"]),
        )
    console.print(table)
    worst = Table(title="worst shapes", title_justify="left")
    for col in ("class", "shape_key", "impl", "dtype", "measured", "predicted", "error"):
        worst.add_column(
            col, justify="right" if col in ("measured", "predicted", "error") else "left"
        )
    for w in report["worst"]:
        worst.add_row(
            w["class"],
            w["shape_key"],
            w["impl"],
            w["dtype"],
            si(w["measured_s"], "s"),
            si(w["predicted_s"], "s"),
            _pct(w["error"]),
        )
    console.print(worst)
    for path in report.get("charts", []):
        console.print(f"wrote {path}")
