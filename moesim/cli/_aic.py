"""``moesim calibrate --from aiconfigurator`` and ``moesim validate --from / --against
aiconfigurator``: fit and score hardware profiles on AIConfigurator's measured kernel tables."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

SOURCES = ("aiconfigurator", "aic")


def check_source(source: str) -> None:
    from moesim.errors import MoesimError

    if str(source).lower() not in SOURCES:
        raise MoesimError(f"unknown --from source {source!r}; known: aiconfigurator")


def load_rows(system: str | None, framework: str | None, version: str | None, rows: Path | None):
    """(rows, provenance, system) from the installed wheel, or from a converted rows CSV."""
    from moesim.calibrate import aic
    from moesim.errors import MoesimError

    if rows is not None:
        df, prov = aic.read_rows_csv(rows)
        found = aic.system_of_rows(df)
        if system and found and system != found:
            raise MoesimError(f"{rows}: rows of {found}, not of --system {system}")
        return df, prov, system or found
    if not system:
        raise MoesimError("--from aiconfigurator needs --system (e.g. h100_sxm)")
    df, prov = aic.read_rows(system, framework or "trtllm", version)
    return df, prov, system


def base_profile_for(system: str | None) -> str:
    from moesim.calibrate.aic import PROFILE_OF
    from moesim.errors import MoesimError

    if system not in PROFILE_OF:
        known = ", ".join(f"{k} ({v})" for k, v in PROFILE_OF.items())
        raise MoesimError(
            f"no moesim datasheet profile for aiconfigurator system {system!r}; "
            f"supported: {known}; or give --base PROFILE"
        )
    return PROFILE_OF[system]


def summary(prov: dict[str, Any]) -> dict[str, Any]:
    """The import provenance a profile's ``measurement`` block keeps (plain, compact)."""
    if "tables" not in prov:  # a rows CSV
        return {k: prov[k] for k in ("rows_file", "sources", "rows") if k in prov}
    keep = ("package", "package_version", "system", "framework", "version_request", "units",
            "not_read", "traps", "rows")  # fmt: skip
    out = {k: prov[k] for k in keep if k in prov}
    out["tables"] = {
        t: {k: v for k, v in e.items() if k != "versions_available"}
        for t, e in prov["tables"].items()
    }
    return out


def source_text(prov: dict[str, Any], device: str) -> str:
    if "tables" in prov:
        tables = ", ".join(f"{t} {e['folder_version']}" for t, e in prov["tables"].items())
        where = f"{prov['package']} {prov['package_version']} {prov['system']}/{prov['framework']}"
        return f"measured: {device} ({where}: {tables})"
    # rows CSV: sources "<package> <version> <system>/<group>/<framework>/<folder>/<table>"
    parts, head = [], ""
    for text in prov.get("sources", []):
        pkg, _, path = text.rpartition(" ")
        bits = path.split("/")
        if len(bits) == 5:
            head = f"{pkg} {bits[0]}/{bits[2]}"
            parts.append(f"{bits[4]} {bits[3]}")
        else:
            parts.append(text)
    return f"measured: {device} ({head} rows {Path(prov['rows_file']).name}: {', '.join(parts)})"


def _progress(cls: str, event: str, seconds: float) -> None:
    if event == "start":
        sys.stderr.write(f"fitting {cls} ...\n")
    else:
        sys.stderr.write(f"fitted {cls} in {seconds:.1f} s\n")
    sys.stderr.flush()


def run_calibrate(
    out: Path,
    system: str | None,
    framework: str | None,
    version: str | None,
    rows: Path | None,
    base: str | None,
    heldout_fraction: float,
    seed: int,
    max_rows_per_class: int,
    as_json: bool,
) -> None:
    from moesim.calibrate import Calibration, aic
    from moesim.calibrate.measurements import FIT_CLASSES
    from moesim.cli.calibrate import _print_fit, save_profile

    started = time.perf_counter()
    df, prov, system = load_rows(system, framework, version, rows)
    base = base or base_profile_for(system)
    fit_df, left_out = aic.model_rows(df)
    held = aic.heldout_keys(fit_df, heldout_fraction, seed)
    train, counts = aic.training_subsample(fit_df, held, max_rows_per_class)
    sys.stderr.write(
        f"read {len(df):,} rows in {time.perf_counter() - started:.1f} s; fitting on "
        + ", ".join(
            f"{c} {v['train_rows_used']:,} (+{v['heldout_rows']:,} held out)"
            for c, v in counts.items()
            if c in FIT_CLASSES
        )
        + "\n"
    )
    cal = Calibration(
        base,
        heldout_fraction=heldout_fraction,
        seed=seed,
        heldout_keys=held,
        progress=_progress,
        model="shape",
    ).fit(train, meta={})
    coll = cal.calibrators_.get("collectives")
    split_ok = coll is None or sorted(coll.heldout_shapes_) == held.get("collectives", [])
    src = source_text(prov, cal.device_)
    cal.report_["measurements"] = src.removeprefix("measured: ")
    cal.report_["aiconfigurator"] = {
        "rows_per_class": counts,
        "max_rows_per_class": max_rows_per_class,
        "subsample_rule": "training shapes with the smallest sha256('subsample:<shape_key>'); "
        "every held-out shape is scored, none is trained on",
        "left_out": left_out,
        "collectives_split_matches_rule": bool(split_ok),
    }
    aic.compact_fit_report(cal.report_)
    profile = cal.to_profile(name=out.name.removesuffix(".yaml"), source=src)
    measurement = dict(profile.measurement) | {"aiconfigurator": summary(prov)}
    profile = profile.model_copy(update={"measurement": measurement})
    path = save_profile(profile, out)
    _print_fit(cal, profile, path, as_json)


def run_validate(
    profile: str,
    system: str | None,
    framework: str | None,
    version: str | None,
    rows: Path | None,
    heldout_only: bool,
    as_json: bool,
) -> None:
    from moesim.calibrate import aic
    from moesim.calibrate.validate import validate
    from moesim.cli._common import console, print_json
    from moesim.cli.calibrate import _print_validation
    from moesim.errors import MoesimError
    from moesim.spec.hardware import load_hardware

    hw = load_hardware(profile)
    df, prov, system = load_rows(system, framework, version, rows)
    frame, skipped = aic.model_rows(df)
    priced, unpriced = aic.priceable_classes(hw, frame)
    skipped |= unpriced
    report_meta = hw.efficiency.fit_report or {}
    split = report_meta.get("heldout") or {}
    fraction, seed = float(split.get("fraction", 0.2)), int(split.get("seed", 0))
    check: dict[str, str] = {}
    if heldout_only:
        held = aic.heldout_keys(frame, fraction, seed)
        check = _heldout_check(report_meta, held)
        keep = [
            (frame["fit_class"] == cls) & frame["shape_key"].isin(set(keys))
            for cls, keys in held.items()
        ]
        mask = keep[0]
        for k in keep[1:]:
            mask |= k
        frame = frame[mask]
    frame = frame[frame["kernel_class"].isin(priced)]
    grouped = ((report_meta.get("classes") or {}).get("grouped_gemm") or {}).get("impl")
    moe = frame["fit_class"] == "grouped_gemm"
    if grouped and grouped != "all" and moe.any() and not (frame.loc[moe, "impl"] == grouped).any():
        skipped["grouped_gemm"] = (
            f"{int(moe.sum())} rows of {', '.join(sorted(set(frame.loc[moe, 'impl'])))}: the "
            f"profile's grouped_gemm block represents {grouped}"
        )
    if frame.empty:
        raise MoesimError("no imported row the model can price to validate")
    report = validate(frame, hw, heldout_only=False)
    report["heldout_only"] = heldout_only
    report["skipped"] = skipped
    report["aiconfigurator"] = {
        "system": system,
        "tables": {t: e["file"] for t, e in prov.get("tables", {}).items()} or prov.get("sources"),
        "traps": [t["trap"] for t in prov.get("traps", [])],
    }
    if heldout_only:
        report["aiconfigurator"]["heldout"] = {
            "rule": f"moesim.calibrate.measurements.heldout_shapes per class, fraction {fraction}, "
            f"seed {seed}, over moesim.calibrate.aic.model_rows",
            "check_against_profile": check,
        }
    if as_json:
        print_json(report)
        return
    _print_validation(report)
    for what, why in skipped.items():
        console.print(f"[yellow]skipped {what}:[/yellow] {why}")


def _heldout_check(fit_report: dict, held: dict[str, list[str]]) -> dict[str, str]:
    """Per class: does the rule reproduce the split recorded in the profile's fit_report?"""
    from moesim.calibrate.aic import keys_digest

    out = {}
    for cls, entry in (fit_report.get("classes") or {}).items():
        mine = held.get(cls, [])
        if entry.get("heldout_shape_keys_sha256"):
            same = entry["heldout_shape_keys_sha256"] == keys_digest(mine)
        else:
            same = sorted(entry.get("heldout_shape_keys") or []) == sorted(mine)
        out[cls] = "same split as the fit" if same else "differs (profile fitted on other rows)"
    return out


def run_cross_check(
    directory: Path,
    system: str | None,
    framework: str | None,
    version: str | None,
    rows: Path | None,
    as_json: bool,
) -> None:
    from moesim.calibrate import aic
    from moesim.cli._common import console, print_json
    from moesim.errors import MoesimError

    if rows is not None:
        df, _, found = load_rows(system, framework, version, rows)
        report = aic.cross_check(directory, found or "", framework or "trtllm", rows=df)
    else:
        if not system:
            raise MoesimError("--against aiconfigurator needs --system (e.g. h200_sxm)")
        report = aic.cross_check(directory, system, framework or "trtllm", version)
    if as_json:
        print_json(report)
        return
    from rich.table import Table

    theirs = report["theirs"]
    what = f"{theirs['system']}/{theirs['framework']}" if "system" in theirs else str(rows)
    table = Table(title=f"{directory} against aiconfigurator {what}", title_justify="left")
    for col in ("class", "impl (timing)", "n", "median |ours-theirs|/theirs", "max", "ours/theirs"):
        table.add_column(col, justify="left" if col in ("class", "impl (timing)") else "right")
    for cls, entry in report["classes"].items():
        for impl, s in entry["by_impl"].items():
            table.add_row(cls, impl, str(s["n"]), f"{100 * s['median_abs_error']:.1f}%",
                          f"{100 * s['max_abs_error']:.1f}%", f"{s['median_ratio']:.2f}")  # fmt: skip
    console.print(table)
    for cls, n in report["unmatched_ours"].items():
        console.print(f"{cls}: {n} of our rows have no AIC row of the same shape")
