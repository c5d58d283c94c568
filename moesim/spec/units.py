"""Human units at the YAML boundary, SI everywhere else.

Files say ``hbm_bandwidth_TBps: 3.35``; the code sees ``hbm_bandwidth_bytes_per_s = 3.35e12``.
The unit lives in the key's suffix. Prefixes are decimal SI (GB = 1e9 bytes, TB/s = 1e12 B/s);
binary prefixes only when spelled so (GiB = 2**30). Bits are spelled with a lower-case ``b``
(``Gbps``: 1e9 bit/s = 1.25e8 B/s), as network datasheets do.

Conversions go through :class:`decimal.Decimal` so that ``3.35`` TB/s becomes exactly
``3.35e12`` and converts back to ``3.35``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

from moesim.errors import MoesimError


class Unit(NamedTuple):
    """One unit suffix: the quantity it measures, its SI key suffix, and the factor to SI."""

    dimension: str  # "bytes", "bytes_per_s", "flops_per_s", "s", "w", "usd_per_hour"
    si_suffix: str  # what replaces the unit suffix in the SI attribute name
    factor: Decimal  # value_si = value * factor


def _u(dimension: str, si_suffix: str, factor: int | float | str) -> Unit:
    return Unit(dimension, si_suffix, Decimal(str(factor)))


# Suffix (as written at the end of a YAML key) -> unit. Case matters: MB is bytes, Mb is bits.
UNITS: dict[str, Unit] = {
    # memory sizes (decimal, then binary when spelled so)
    "B": _u("bytes", "bytes", 1),
    "kB": _u("bytes", "bytes", 1e3),
    "KB": _u("bytes", "bytes", 1e3),
    "MB": _u("bytes", "bytes", 1e6),
    "GB": _u("bytes", "bytes", 1e9),
    "TB": _u("bytes", "bytes", 1e12),
    "KiB": _u("bytes", "bytes", 2**10),
    "MiB": _u("bytes", "bytes", 2**20),
    "GiB": _u("bytes", "bytes", 2**30),
    "TiB": _u("bytes", "bytes", 2**40),
    # bandwidths in bytes per second ("ps" = per second)
    "Bps": _u("bytes_per_s", "bytes_per_s", 1),
    "MBps": _u("bytes_per_s", "bytes_per_s", 1e6),
    "GBps": _u("bytes_per_s", "bytes_per_s", 1e9),
    "TBps": _u("bytes_per_s", "bytes_per_s", 1e12),
    "GiBps": _u("bytes_per_s", "bytes_per_s", 2**30),
    # bandwidths in bits per second (network line rates: 400 Gb/s = 50 GB/s)
    "Mbps": _u("bytes_per_s", "bytes_per_s", "125000"),
    "Gbps": _u("bytes_per_s", "bytes_per_s", "125000000"),
    "Tbps": _u("bytes_per_s", "bytes_per_s", "125000000000"),
    # arithmetic throughput
    "GFLOPS": _u("flops_per_s", "flops_per_s", 1e9),
    "TFLOPS": _u("flops_per_s", "flops_per_s", 1e12),
    "PFLOPS": _u("flops_per_s", "flops_per_s", 1e15),
    # time
    "s": _u("s", "s", 1),
    "ms": _u("s", "s", "0.001"),
    "us": _u("s", "s", "0.000001"),
    "ns": _u("s", "s", "0.000000001"),
    # power
    "W": _u("w", "w", 1),
    "kW": _u("w", "w", 1e3),
}

# SI suffixes: a key ending in one of these is already SI and passes through unchanged.
SI_SUFFIXES = ("bytes_per_s", "flops_per_s", "bytes", "s", "w", "usd_per_hour")

_KEY_RE = re.compile(r"^(?P<base>.+)_(?P<suffix>[A-Za-z]+)$")
_QUANTITY_RE = re.compile(
    r"^\s*(?P<num>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>\S*)\s*$"
)


def split_key(key: str) -> tuple[str, Unit | None]:
    """Split a YAML key into its base name and unit.

    ``split_key("hbm_bandwidth_TBps") -> ("hbm_bandwidth", UNITS["TBps"])``;
    a key with no unit suffix gives ``(key, None)``.
    """
    match = _KEY_RE.match(key)
    if match and match["suffix"] in UNITS:
        return match["base"], UNITS[match["suffix"]]
    return key, None


def si_key(key: str) -> str:
    """The SI attribute name for a YAML key: ``"l2_MB" -> "l2_bytes"``, ``"tdp_W" -> "tdp_w"``."""
    base, unit = split_key(key)
    return key if unit is None else f"{base}_{unit.si_suffix}"


def to_si(value: float, suffix: str) -> float:
    """``value`` in unit ``suffix`` -> SI float: ``to_si(3.35, "TBps") == 3.35e12``."""
    return float(Decimal(repr(float(value))) * _unit(suffix).factor)


def from_si(value_si: float, suffix: str) -> float:
    """SI float -> value in unit ``suffix``: ``from_si(3.35e12, "TBps") == 3.35``."""
    return float(Decimal(repr(float(value_si))) / _unit(suffix).factor)


def parse_quantity(text: str) -> tuple[float, str]:
    """Parse ``"900 GB/s"`` or ``"4 us"`` into ``(SI value, dimension)``.

    Slashes are accepted for "per second": ``GB/s`` == ``GBps``, ``Gb/s`` == ``Gbps``.
    """
    match = _QUANTITY_RE.match(text)
    if not match:
        raise MoesimError(f"cannot parse quantity {text!r}; expected e.g. '3.35 TB/s' or '4 us'")
    suffix = match["unit"].replace("/s", "ps").replace("µs", "us")
    unit = _unit(suffix)
    return to_si(float(match["num"]), suffix), unit.dimension


def _unit(suffix: str) -> Unit:
    try:
        return UNITS[suffix]
    except KeyError:
        from moesim.errors import unknown_name

        raise unknown_name("unit", suffix, UNITS) from None
