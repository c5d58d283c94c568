"""``moesim hw``: list and show hardware profiles."""

from __future__ import annotations

import typer

ORDER = 20


def register(app: typer.Typer) -> None:
    """Add the ``hw`` command group."""
    hw = typer.Typer(help="Hardware profiles: peaks, bandwidths, price, calibration, sources.")
    app.add_typer(hw, name="hw")

    @hw.command("list")
    def list_cmd(
        json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List the hardware profiles with their headline numbers."""
        from moesim.spec.hardware import list_hardware, load_hardware

        rows = [_summary(load_hardware(name)) for name in list_hardware()]
        if json:
            from moesim.cli._common import print_json

            print_json(rows)
            return
        from rich.table import Table

        from moesim.cli._common import console, fmt

        table = Table(title="hardware profiles", title_justify="left")
        headers = (
            "name",
            "bf16 TF/s",
            "fp8 TF/s",
            "HBM TB/s",
            "HBM GB",
            "up GB/s",
            "dom",
            "$/GPU-h",
            "calib.",
        )
        table.add_column(headers[0], no_wrap=True, min_width=13)
        for header in headers[1:]:
            table.add_column(header, justify="left" if header == "calib." else "right")
        for r in rows:
            fp8 = r["fp8_dense_TFLOPS"]
            table.add_row(
                r["name"], fmt(r["bf16_dense_TFLOPS"]), "-" if fp8 is None else fmt(fp8),
                fmt(r["hbm_bandwidth_TBps"]), fmt(r["hbm_capacity_GB"]),
                fmt(r["scaleup_bandwidth_GBps"]), fmt(r["scaleup_domain_size"]),
                fmt(r["price_usd_per_hour"]), _calibration_kind(r["efficiency_source"]),
            )  # fmt: skip
        console.print(table)

    @hw.command("show")
    def show_cmd(
        name: str = typer.Argument(..., help="Profile name (see `moesim hw list`) or YAML path."),
        json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        """Show every number of a profile in human and SI units, its calibration and sources."""
        from moesim.spec.hardware import load_hardware

        profile = load_hardware(name)
        if json:
            from moesim.cli._common import print_json

            print_json(
                {
                    "name": profile.name,
                    "description": profile.description,
                    "vendor": profile.vendor,
                    "fields": profile.field_rows(),
                    "si": profile.model_dump(exclude={"provenance"}),
                    "yaml": profile.to_yaml_dict(),
                    "provenance": profile.provenance,
                }
            )
            return
        _print_profile(profile)


def _calibration_kind(source: str) -> str:
    """``"published: ..."`` -> ``"published"``; ``"datasheet defaults (...)"`` -> ``"datasheet"``."""
    return source.split(":")[0].split()[0]


def _summary(profile) -> dict:
    """The headline numbers of one profile (human units)."""
    fp8 = profile.peak_flops_per_s.get("fp8")
    return {
        "name": profile.name,
        "description": profile.description,
        "bf16_dense_TFLOPS": profile.peak("bf16") / 1e12,
        "fp8_dense_TFLOPS": None if fp8 is None else fp8 / 1e12,
        "hbm_bandwidth_TBps": profile.hbm_bandwidth_bytes_per_s / 1e12,
        "hbm_capacity_GB": profile.hbm_capacity_bytes / 1e9,
        "scaleup_bandwidth_GBps": profile.scaleup_bandwidth_bytes_per_s / 1e9,
        "scaleup_domain_size": profile.scaleup_domain_size,
        "price_usd_per_hour": profile.price_usd_per_hour,
        "efficiency_source": profile.efficiency.source,
    }


def _print_profile(profile) -> None:
    from rich.table import Table

    from moesim.cli._common import console, fmt
    from moesim.spec.hardware import KERNEL_CLASSES

    console.print(f"[bold]{profile.name}[/bold] ({profile.vendor}): {profile.description}")
    table = Table(title="numbers (per GPU; bandwidths per direction)", title_justify="left")
    table.add_column("field", no_wrap=True)
    for header in ("value", "unit", "SI value", "SI unit"):
        table.add_column(header, justify="right" if "value" in header else "left", no_wrap=True)
    rows = profile.field_rows()
    for row in rows:
        table.add_row(
            row["yaml_key"], fmt(row["value"]), row["unit"], fmt(row["value_si"]), row["si_unit"]
        )
    console.print(table)

    eff = profile.efficiency
    table = Table(title=f"efficiency ({eff.source})", title_justify="left")
    for header in ("class", "compute", "memory", "launch µs", "tile m×n", "ridge p", "by dtype"):
        table.add_column(header)
    for name in KERNEL_CLASSES:
        k = eff.for_class(name)
        by_dtype = ", ".join(f"{d}: {v:g}" for d, v in k.compute_efficiency_by_dtype.items())
        if getattr(eff, name) is None:  # an optional class priced with another block
            by_dtype = "(not calibrated: priced as attention_decode)"
        table.add_row(
            name,
            fmt(k.compute_efficiency),
            fmt(k.memory_efficiency),
            fmt(k.launch_overhead_s * 1e6),
            f"{k.tile_m}×{k.tile_n}",
            fmt(k.ridge_sharpness),
            by_dtype,
        )
    console.print(table)
    c = eff.collectives
    table = Table(title="collectives", title_justify="left")
    for header in ("level", "bandwidth efficiency", "latency µs"):
        table.add_column(header)
    table.add_row("scale-up", fmt(c.scaleup_bandwidth_efficiency), fmt(c.scaleup_latency_s * 1e6))
    table.add_row(
        "scale-out", fmt(c.scaleout_bandwidth_efficiency), fmt(c.scaleout_latency_s * 1e6)
    )
    table.add_row("host link", fmt(c.host_link_efficiency), "-")
    console.print(table)
    console.print(
        f"all-reduce in-switch speedup: {c.allreduce_in_switch_speedup:g} "
        f"(in-switch reduction: {profile.scaleup_in_switch_reduction})"
    )
    if eff.fit_report:
        console.print(f"fit report: {eff.fit_report}")
    if profile.measurement:
        console.print(f"measurement: {profile.measurement}")

    console.print("\n[bold]sources[/bold]")
    for row in rows:
        console.print(f"[cyan]{row['yaml_key']}[/cyan]: {row['source']}", highlight=False)
    for name in (*KERNEL_CLASSES, "collectives"):
        source = profile.provenance.get(f"efficiency.{name}")
        if source:
            console.print(f"[cyan]efficiency.{name}[/cyan]: {source}", highlight=False)
