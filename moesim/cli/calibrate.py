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
    "Published figures instead of a directory: moesim calibrate --published h800 --out hwprofiles/h800.published.yaml\n\n"
    "AIConfigurator's measured kernel tables (pip install 'moesim\\[aic]'): moesim calibrate --from aiconfigurator "
    "--system h100_sxm --framework trtllm --out hwprofiles/h100-sxm.trtllm.yaml"
)
VALIDATE_HELP = (
    "Compare a profile's predictions with a measurement directory: error per kernel class, "
    "overall, the worst shapes, and (with layer.csv) whole decoder layers.\n\n"
    "Example: moesim validate hwprofiles/measurements/h100-sxm --profile hwprofiles/h100-sxm.measured.yaml --heldout-only\n\n"
    "AIConfigurator's tables: moesim validate --from aiconfigurator --system h100_sxm --framework trtllm "
    "--profile h100-sxm.trtllm --heldout-only; our measurements against them: moesim validate "
    "hwprofiles/measurements/h200 --against aiconfigurator --system h200_sxm --framework trtllm"
)

_FROM_HELP = "Import measured kernel tables instead of a directory: 'aiconfigurator' (the aiconfigurator-core wheel)."
_SYSTEM_HELP = (
    "AIConfigurator system (h100_sxm, h200_sxm, a100_sxm, b200_sxm, l40s, h100_pcie, ...)."
)
_FRAMEWORK_HELP = "AIConfigurator framework whose tables to read: trtllm, vllm or sglang."
_AIC_VERSION_HELP = (
    "Version folder to read (default: per table the newest holding it): one version for the "
    "framework's op groups, or per group, e.g. 'moe=1.3.0rc20,nccl=2.27.3' (gemm, moe, attention, comm, nccl)."
)
_ROWS_HELP = "Converted rows CSV (.csv or .csv.gz, e.g. tests/data/aic/h100_sxm_trtllm.csv.gz) instead of the installed wheel."


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
    source: str | None = typer.Option(None, "--from", help=_FROM_HELP),
    system: str | None = typer.Option(None, "--system", help=_SYSTEM_HELP),
    framework: str = typer.Option("trtllm", "--framework", help=_FRAMEWORK_HELP),
    aic_version: str | None = typer.Option(None, "--version", help=_AIC_VERSION_HELP),
    rows: Path | None = typer.Option(None, "--rows", help=_ROWS_HELP),
    model: str = typer.Option(
        "roofline",
        "--model",
        help="Kernel model a measurement directory is fitted with: 'roofline' (one efficiency "
        "per dtype and one tile; small sweeps) or 'shape' (tiles, K-loop, per-format blocks; "
        "the model --from aiconfigurator always fits).",
    ),
    max_rows_per_class: int = typer.Option(
        20000,
        "--max-rows-per-class",
        min=0,
        help="With --from: fit each kernel class on at most this many training rows (a "
        "deterministic sample by shape hash; every held-out shape is still scored; 0: all).",
    ),
) -> None:
    from moesim.calibrate import Calibration, calibrate_published
    from moesim.errors import MoesimError

    given = [what for what, v in (("a measurement directory", directory),
             ("--published", published), ("--from", source)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise MoesimError(
            f"give one of a measurement directory, --published or --from, not {' and '.join(given)}"
        )
    if source is not None:
        from moesim.cli._aic import check_source, run_calibrate

        check_source(source)
        return run_calibrate(out, system, framework, aic_version, rows, base, heldout_fraction,
                             seed, max_rows_per_class, as_json)  # fmt: skip
    if rows is not None or system is not None or aic_version is not None:
        raise MoesimError("--system, --version and --rows go with --from aiconfigurator")
    if published:
        cal, profile = calibrate_published(published, heldout_fraction=heldout_fraction, seed=seed)
    else:
        if directory is None:
            raise MoesimError(
                "missing measurement directory (or --published GPU, or --from aiconfigurator)"
            )
        cal = Calibration(base, heldout_fraction=heldout_fraction, seed=seed, model=model).fit(
            directory
        )
        profile = cal.to_profile(name=out.name.removesuffix(".yaml"))
    path = save_profile(profile, out)
    _print_fit(cal, profile, path, as_json)


def save_profile(profile, out: Path) -> Path:
    """Write ``profile`` as YAML through a temporary file and a rename (never half a file)."""
    import io

    from ruamel.yaml import YAML

    from moesim.outdir import atomic_write_text

    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.width = 4096
    buf = io.StringIO()
    yaml.dump(profile.to_yaml_dict(), buf)
    return atomic_write_text(out, buf.getvalue())


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
        fitted = r.get("params")
        if fitted is None:  # the shape model: one parameter block per format
            fitted = {
                f"{fmt}.{k}": v
                for fmt, block in r.get("formats", {}).items()
                for k, v in block.get("params", {}).items()
                if k in _SHAPE_SUMMARY
            }
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in fitted.items()
            if not isinstance(v, dict | list)
        )
        by_dtype = fitted.get("compute_efficiency_by_dtype")
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


# the parameters of each format's block shown in the table (--json has them all)
_SHAPE_SUMMARY = (
    "compute_efficiency",
    "memory_efficiency",
    "launch_overhead_us",
    "wave_overhead_us",
)


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
    source: str | None = typer.Option(
        None, "--from", help="Score AIConfigurator's measured kernel tables: 'aiconfigurator'."
    ),
    against: str | None = typer.Option(
        None,
        "--against",
        help="Compare the measurement directory with another measurement of the same GPU, shape "
        "by shape: 'aiconfigurator' (no profile involved).",
    ),
    system: str | None = typer.Option(None, "--system", help=_SYSTEM_HELP),
    framework: str = typer.Option("trtllm", "--framework", help=_FRAMEWORK_HELP),
    aic_version: str | None = typer.Option(None, "--version", help=_AIC_VERSION_HELP),
    rows: Path | None = typer.Option(None, "--rows", help=_ROWS_HELP),
) -> None:
    from moesim.errors import MoesimError

    if source is not None or against is not None:
        from moesim.cli import _aic

        if source is not None and against is not None:
            raise MoesimError("give --from (score a profile) or --against (compare), not both")
        if e2e is not None:
            raise MoesimError("--e2e scores deployments; it does not go with --from / --against")
        if against is not None:
            _aic.check_source(against)
            if directory is None:
                raise MoesimError("--against needs the measurement directory to compare")
            return _aic.run_cross_check(directory, system, framework, aic_version, rows, as_json)
        _aic.check_source(source)
        if directory is not None:
            raise MoesimError("give a measurement directory or --from aiconfigurator, not both")
        if profile is None:
            raise MoesimError("validate --from aiconfigurator needs --profile")
        return _aic.run_validate(
            profile, system, framework, aic_version, rows, heldout_only, as_json
        )
    if rows is not None or system is not None or aic_version is not None:
        raise MoesimError(
            "--system, --version and --rows go with --from / --against aiconfigurator"
        )
    if e2e is not None:
        from moesim.cli._e2e import run_e2e

        return run_e2e(e2e, profile, e2e_import_out, chart, as_json)
    from moesim.calibrate.validate import scored_rows
    from moesim.calibrate.validate import validate as run_validate
    from moesim.cli._common import print_json
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
