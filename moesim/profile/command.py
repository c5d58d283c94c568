"""The ``profile`` command, shared by ``moesim profile`` and ``python -m moesim.profile``.

Only typer and rich at import time, so the CLI can list it without PyTorch installed.
"""

from __future__ import annotations

from pathlib import Path

import typer

CLASS_HELP = "memory, gemm, moe, attention, permute, collectives, layer"


def profile(
    device: str = typer.Option(
        "cuda",
        "--device",
        "-d",
        help="Where to measure: [bold]cuda[/] (first GPU) or [bold]cpu[/].",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output directory for the CSVs, run.json and telemetry.json."
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Small sweep: a few minutes on a laptop CPU, under a minute on a GPU.",
    ),
    only: str = typer.Option(
        "", "--only", help=f"Comma-separated kernel classes to run (default: all): {CLASS_HELP}."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Keep existing CSVs and skip rows already in them (same class, impl, shape, dtype). "
        "Without it, existing CSVs are moved aside to *.csv.bak.",
    ),
    nproc: int = typer.Option(
        0,
        "--nproc",
        min=0,
        max=1024,
        help="Processes for the collectives (torchrun). Default: GPUs visible on cuda, 2 on cpu.",
    ),
    budget_scale: float = typer.Option(
        1.0,
        "--budget-scale",
        help="Multiply every class's time budget (cases past it are left for --resume).",
        min=0.01,
        max=1000.0,
    ),  # fmt: skip
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Measure kernels on this machine for calibrating the cost model.

    Writes one CSV per kernel class to OUT ([cyan]gemm.csv memory.csv moe.csv attention.csv permute.csv collectives.csv layer.csv[/]), one row per kernel call, flushed as it is measured; plus [cyan]run.json[/] (device, arguments, versions, per-class counts) and [cyan]telemetry.json[/] (GPU clocks, power, temperature and throttling before and after each class).

    Every kernel is checked against a reference before it is timed; a failure becomes a row with status=error and the run goes on. Each class has a time budget; cases past it are left for --resume.

    Example: [bold]moesim profile --device cuda --out hwprofiles/measurements/h100-sxm[/]
    """
    from moesim.profile.runner import run_profile
    from moesim.profile.summary import print_summary
    from moesim.spec.limits import check_real

    check_real("--budget-scale", budget_scale, 0.01, 1000.0)

    run = run_profile(
        device,
        out,
        quick=quick,
        only=only or None,
        resume=resume,
        nproc=nproc or None,
        budget_scale=budget_scale,
        show_progress=not quiet,
    )
    print_summary(run, out)
