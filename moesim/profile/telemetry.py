"""Telemetry stored with every run: device identity, clocks, power, temperature, throttling.

On a GPU through NVML (``pynvml`` from the nvidia-ml-py package); on a CPU from
``/proc/cpuinfo``. Every NVML call is guarded on its own: a field the driver refuses is None,
and a machine with no NVML at all (``NVMLError_LibraryNotFound``) reports the CPU only.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from typing import Any

# NVML clock-event (throttle) reason bits, nvml.h ``nvmlClocksEventReason*``.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def decode_throttle_reasons(mask: int | None) -> list[str]:
    """Names of the bits set in an NVML clock-event bitmask (unknown bits as hex)."""
    if mask is None:
        return []
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(hex(unknown))
    return names


def _nvml_handle(index: int = 0) -> tuple[Any, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no library, no driver, no device
        return None


def _try(fn, *args, scale: float = 1.0) -> Any:
    try:
        value = fn(*args)
    except Exception:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if scale != 1.0 and isinstance(value, (int, float)):
        return value * scale
    return value


def gpu_static(index: int = 0) -> dict[str, Any] | None:
    """Name, driver, memory, maximum clocks and power limit of GPU ``index``; None without NVML."""
    nv = _nvml_handle(index)
    if nv is None:
        return None
    pynvml, h = nv
    mem = _try(pynvml.nvmlDeviceGetMemoryInfo, h)
    return {
        "gpu_name": _try(pynvml.nvmlDeviceGetName, h),
        "driver_version": _try(pynvml.nvmlSystemGetDriverVersion),
        "cuda_driver_version": _try(pynvml.nvmlSystemGetCudaDriverVersion),
        "memory_total_bytes": getattr(mem, "total", None),
        "sm_clock_max_mhz": _try(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_max_mhz": _try(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "power_limit_w": _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, h, scale=1e-3),
        "uuid": _try(pynvml.nvmlDeviceGetUUID, h),
    }


def gpu_sample(index: int = 0) -> dict[str, Any] | None:
    """Current clocks, power, temperature and throttle reasons of GPU ``index``."""
    nv = _nvml_handle(index)
    if nv is None:
        return None
    pynvml, h = nv
    reasons_fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    mask = _try(reasons_fn, h) if reasons_fn else None
    return {
        "sm_clock_mhz": _try(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": _try(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "power_w": _try(pynvml.nvmlDeviceGetPowerUsage, h, scale=1e-3),
        "power_limit_w": _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, h, scale=1e-3),
        "temp_c": _try(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "throttle_mask": mask,
        "throttle_reasons": decode_throttle_reasons(mask),
    }


def cpu_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo where there is one) and logical cores."""
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_cores": os.cpu_count()}


def versions() -> dict[str, Any]:
    """Python, torch, CUDA, triton and NVML binding versions (None where missing)."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda_runtime"] = torch.version.cuda
    except Exception:
        out["torch"] = None
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = None
    try:
        from importlib.metadata import version

        out["nvidia_ml_py"] = version("nvidia-ml-py")
    except Exception:
        out["nvidia_ml_py"] = None
    return out


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sample(device: str, when: str) -> dict[str, Any]:
    """One time-stamped sample: GPU state on CUDA (when NVML answers), else just the time."""
    out: dict[str, Any] = {"when": when, "time": now()}
    if device == "cuda":
        out.update(gpu_sample() or {})
    return out


def snapshot(device: str) -> dict[str, Any]:
    """The static part of ``telemetry.json``: date, versions, CPU, GPU (and torch's view of it)."""
    out: dict[str, Any] = {"date": now(), "device": device, "versions": versions()}
    out["cpu"] = cpu_info()
    out["gpu"] = gpu_static() if device == "cuda" else None
    if device == "cuda":
        try:
            import torch

            props = torch.cuda.get_device_properties(0)
            out["torch_device"] = {
                "name": props.name,
                "capability": list(torch.cuda.get_device_capability(0)),
                "multiprocessors": props.multi_processor_count,
                "memory_bytes": props.total_memory,
                "l2_cache_bytes": getattr(props, "L2_cache_size", None),
            }
        except Exception as exc:
            out["torch_device"] = {"error": repr(exc)}
    return out


def device_name(snap: dict[str, Any]) -> str:
    """The name copied onto every row: the GPU's, or the CPU model."""
    gpu = snap.get("gpu") or {}
    torch_dev = snap.get("torch_device") or {}
    return gpu.get("gpu_name") or torch_dev.get("name") or snap["cpu"]["cpu_model"] or "cpu"


def row_fields(sample_: dict[str, Any]) -> dict[str, Any]:
    """Telemetry columns copied onto each row from the latest sample."""
    return {k: sample_.get(k) for k in ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c")}
