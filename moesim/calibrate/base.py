"""The base profile a calibration starts from: a datasheet profile, or a measured envelope.

A GPU run starts from the shipped datasheet profile of its device (``run.json`` / telemetry
device name, e.g. "NVIDIA H100 80GB HBM3" -> ``h100-sxm``). A device with no datasheet profile
(any CPU, an unknown GPU) starts from a *generic* base whose roofs are the run's own envelope:
peak FLOP/s per dtype = the best GEMM the run achieved in that dtype, HBM bandwidth = the best
copy bandwidth (bytes read + written per second). Efficiencies fitted against it are fractions
of what this machine demonstrably reaches, not of a vendor number. Hardware fields a kernel fit
never reads (capacity, network, power, price) are placeholders, marked so in provenance.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import MoesimError
from moesim.spec.hardware import HardwareProfile, list_hardware, load_hardware, normalize_dtype

# Device-name patterns -> shipped datasheet profile (first match wins; order matters).
DEVICE_PROFILES: tuple[tuple[str, str], ...] = (
    (r"H100.*PCIe", "h100-pcie"),
    (r"H100", "h100-sxm"),
    (r"H800", "h800"),
    (r"H200", "h200"),
    (r"A100", "a100-sxm-80gb"),
    (r"L40S", "l40s"),
    (r"B200", "b200"),
    (r"MI300X", "mi300x"),
)


def device_name_of(meta: dict[str, Any], df: pd.DataFrame | None = None) -> str:
    """The measured device's name: run.json, then telemetry.json, then the rows' device_name."""
    run, tel = meta.get("run") or {}, meta.get("telemetry") or {}
    for source in (run, run.get("telemetry") or {}, tel):
        for key in ("device_name", "gpu_name"):
            if source.get(key):
                return str(source[key])
        gpu = source.get("gpu") or {}
        if isinstance(gpu, dict) and gpu.get("gpu_name"):
            return str(gpu["gpu_name"])
    if df is not None and "device_name" in df.columns:
        names = df["device_name"].dropna().astype(str)
        names = names[names != ""]
        if len(names):
            return str(names.mode().iloc[0])
    cpu = tel.get("cpu") or {}
    return str(cpu.get("cpu_model") or run.get("device") or "unknown device")


def is_cpu_run(meta: dict[str, Any], device: str) -> bool:
    run, tel = meta.get("run") or {}, meta.get("telemetry") or {}
    kind = str(run.get("device") or tel.get("device") or "")
    if kind:
        return kind == "cpu"
    return (
        not any(re.search(p, device, re.I) for p, _ in DEVICE_PROFILES)
        and "nvidia" not in device.lower()
    )


def infer_base_name(meta: dict[str, Any], df: pd.DataFrame | None = None) -> str | None:
    """Datasheet profile for the run's device, or None (CPU or unknown: use :func:`generic_base`)."""
    device = device_name_of(meta, df)
    if is_cpu_run(meta, device):
        return None
    for pattern, name in DEVICE_PROFILES:
        if re.search(pattern, device, re.I) and name in list_hardware():
            return name
    return None


def resolve_base(base, meta: dict[str, Any], df: pd.DataFrame) -> HardwareProfile:
    """``base`` (profile, name or path), else the inferred datasheet profile, else the envelope."""
    if base is not None:
        return load_hardware(base)
    name = infer_base_name(meta, df)
    return load_hardware(name) if name else generic_base(df, meta)


def generic_base(df: pd.DataFrame, meta: dict[str, Any] | None = None) -> HardwareProfile:
    """A profile whose roofs are the measured envelope of ``df`` (see module docstring)."""
    meta = meta or {}
    device = device_name_of(meta, df)
    peaks: dict[str, float] = {}
    gemm = df[df["kernel_class"] == "gemm"]
    if "flops" in gemm.columns and len(gemm):
        rate = pd.to_numeric(gemm["flops"], errors="coerce") / gemm["median_s"]
        for dtype, values in rate.groupby(
            gemm["dtype"].map(normalize_dtype).str.replace(r"^fp8.*", "fp8", regex=True)
        ):
            if np.isfinite(values.max()) and values.max() > 0:
                peaks[str(dtype)] = float(values.max())
    if not peaks:
        other = (
            df[pd.to_numeric(df.get("flops", pd.Series(dtype=float)), errors="coerce") > 0]
            if "flops" in df.columns
            else df.iloc[:0]
        )
        if len(other):
            peaks["fp32"] = float((pd.to_numeric(other["flops"]) / other["median_s"]).max())
        else:
            raise MoesimError(
                "no GEMM measurement to derive a peak FLOP/s from; pass --base PROFILE"
            )
    best = max(peaks.values())
    measured_peaks = dict(peaks)
    for dtype in ("bf16", "fp32"):  # copy/permute rows price in bf16, attention in its own dtype
        peaks.setdefault(dtype, best)
    mem = df[df["kernel_class"].isin(["memory", "permute"])]
    if "hbm_bytes" in mem.columns and len(mem):
        bw = float((pd.to_numeric(mem["hbm_bytes"], errors="coerce") / mem["median_s"]).max())
    else:
        raise MoesimError(
            "no copy measurement to derive a memory bandwidth from; pass --base PROFILE"
        )
    tel = meta.get("telemetry") or {}
    cores = int((tel.get("cpu") or {}).get("cpu_cores") or 1)
    envelope = "measured envelope of this run (generic base, no datasheet profile for the device)"
    placeholder = "placeholder: generic base for a device with no datasheet profile; not used by kernel calibration"
    provenance = {
        f"peak_flops_per_s.{d}": f"{envelope}: best {d} GEMM achieved" for d in measured_peaks
    }
    for d in peaks:
        provenance.setdefault(
            f"peak_flops_per_s.{d}",
            f"{envelope}: not measured in {d}; set to the best measured peak",
        )
    provenance |= {
        "hbm_bandwidth_bytes_per_s": f"{envelope}: best copy (bytes read + written per second)",
        "num_sms": "telemetry cpu_cores (parallel units for wave quantisation)",
    }
    fields = ("hbm_capacity_bytes", "l2_bytes", "scaleup_domain_size", "scaleup_bandwidth_bytes_per_s",
              "scaleup_in_switch_reduction", "scaleout_bandwidth_bytes_per_s", "host_link_bandwidth_bytes_per_s",
              "host_memory_bytes", "gpus_per_node", "tdp_w", "price_usd_per_hour")  # fmt: skip
    provenance |= {f: placeholder for f in fields}
    return HardwareProfile(
        name=_slug(device),
        description=f"{device} {GENERIC_MARK}",
        vendor="",
        peak_flops_per_s=peaks,
        hbm_bandwidth_bytes_per_s=bw,
        hbm_capacity_bytes=64e9,
        num_sms=max(cores, 1),
        l2_bytes=32e6,
        scaleup_domain_size=max(cores, 1),  # local processes share memory: one domain
        scaleup_bandwidth_bytes_per_s=bw / 2.0,
        scaleout_bandwidth_bytes_per_s=1.25e9,
        host_link_bandwidth_bytes_per_s=bw / 2.0,
        host_memory_bytes=64e9,
        gpus_per_node=max(cores, 1),
        tdp_w=100.0,
        price_usd_per_hour=0.0,
        provenance=provenance,
    )


GENERIC_MARK = "(generic base from measurements)"


def is_generic(hw: HardwareProfile) -> bool:
    """Whether ``hw`` is an envelope base from :func:`generic_base` (or a profile fitted on one)."""
    return hw.description.endswith(GENERIC_MARK)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "device"
