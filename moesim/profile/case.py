"""What one measurement is (``Case``) and what every measurement can see (``Context``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SkipCase(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a case that cannot run here (no API, no GPU): recorded with status=skipped."""


@dataclass
class Case:
    """One row to measure: identity, the columns known before running, and how to run it.

    ``run(case, ctx)`` returns the measured columns (timing, rel_err, extra shape facts).
    ``writes_own_rows`` marks a case that writes its rows itself (the torchrun collectives).
    """

    kernel_class: str
    impl: str
    dtype: str
    shape_key: str
    params: dict[str, Any]
    run: Callable[[Case, Context], dict[str, Any]]
    writes_own_rows: bool = False

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kernel_class, self.impl, self.shape_key, self.dtype)


@dataclass
class Context:
    device: str  # "cuda" | "cpu"
    quick: bool
    out_dir: Path
    settings: Any  # harness.BenchSettings
    device_name: str
    capability: tuple[int, int] | None = None
    nproc: int | None = None
    resume: bool = False
    row_telemetry: dict[str, Any] = field(default_factory=dict)
