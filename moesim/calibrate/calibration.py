"""Calibrate every kernel class of a measurement set and write the measured profile.

``Calibration(base).fit(directory).to_profile()`` runs one :class:`KernelCalibrator` per kernel
class present (gemm, grouped_gemm, attention_prefill, attention_decode, memory) and one
:class:`CollectiveCalibrator`, and returns the base profile with the fitted efficiency block,
``efficiency.source = "measured: <device> <driver> <date>"`` and a ``fit_report`` that records,
per class, the rows used, the implementation, the fitted parameters, the train and held-out
errors and the held-out shape_keys (so ``moesim validate --heldout-only`` reproduces the split).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.calibrate.base import device_name_of, resolve_base
from moesim.calibrate.collectives import CollectiveCalibrator
from moesim.calibrate.kernels import KernelCalibrator
from moesim.calibrate.measurements import (
    FIT_CLASSES,
    HELDOUT_RULE,
    KERNEL_FIT_CLASSES,
    read_measurements,
    read_run_metadata,
    usable_rows,
)
from moesim.calibrate.shape_fit import SHAPE_CLASSES, ShapeCalibrator
from moesim.errors import MoesimError
from moesim.spec.hardware import HardwareProfile

METHOD = (
    "scipy.optimize.least_squares (trf) on log(pred) - log(measured); predictions through "
    "moesim.cost.kernel_cost / moesim.cost.comm; eta in [0.01, 1], launch overhead in [0, 1 ms], ridge "
    "sharpness in [1, 64]; tile_m x tile_n from {1, 16, 32, 64, 128, 256}^2 by training loss; "
    "weak prior (1e-2 per unit log-eta) towards the base profile"
)


class Calibration:
    """Fit all kernel classes of a measurement set against a base profile.

    Parameters
    ----------
    base_profile : HardwareProfile | str | None
        Datasheet profile the efficiencies scale. None: inferred from the run's device name
        (``run.json`` / ``telemetry.json``), else a generic base from the measured envelope.
    heldout_fraction, seed : as :class:`KernelCalibrator`.
    classes : the calibration blocks to fit (default: every one with measurements).
    heldout_keys : {class: shape_keys} | None
        Held-out shapes chosen by the caller for kernel classes (see :class:`KernelCalibrator`);
        classes not in it use the rule on the rows given.
    progress : callable(class, event, seconds) | None
        Called with ``"start"`` before and ``"done"`` after each class is fitted.

    Attributes (after ``fit``): ``calibrators_`` {class: fitted calibrator}, ``skipped_``
    {class: reason}, ``hardware_`` (the base profile), ``meta_`` (run.json / telemetry.json),
    ``measurements_`` (the usable rows), ``device_``, ``report_`` (the fit_report).
    """

    def __init__(
        self,
        base_profile=None,
        heldout_fraction: float = 0.2,
        seed: int = 0,
        classes: tuple[str, ...] | None = None,
        heldout_keys: dict[str, Any] | None = None,
        progress=None,
        model: str = "roofline",
    ):
        self.base_profile = base_profile
        self.heldout_fraction = heldout_fraction
        self.seed = seed
        self.classes = classes
        self.heldout_keys = heldout_keys
        self.progress = progress
        if model not in ("roofline", "shape"):
            raise MoesimError(f"unknown kernel model {model!r}; use 'roofline' or 'shape'")
        self.model = model

    def fit(self, dir_or_frames, meta: dict[str, Any] | None = None) -> Calibration:
        """Fit on a measurement directory, one frame, or a {name: frame} mapping."""
        self.directory_ = None
        if isinstance(dir_or_frames, (str, Path)):
            self.directory_ = str(dir_or_frames)
            df = read_measurements(dir_or_frames)
            meta = meta if meta is not None else read_run_metadata(dir_or_frames)
        elif isinstance(dir_or_frames, pd.DataFrame):
            df = usable_rows(dir_or_frames)
        elif isinstance(dir_or_frames, dict):
            frames = [f for f in dir_or_frames.values() if len(f)]
            if not frames:
                raise MoesimError("no measurement rows to calibrate on")
            df = usable_rows(pd.concat(frames, ignore_index=True))
        else:
            raise MoesimError(
                f"cannot calibrate on a {type(dir_or_frames).__name__}; pass a directory or DataFrame"
            )
        if df.empty:
            raise MoesimError("no usable measurement row (status ok, median_s > 0)")
        self.meta_ = meta or {}
        self.measurements_ = df
        self.hardware_ = resolve_base(self.base_profile, self.meta_, df)
        self.device_ = device_name_of(self.meta_, df)
        self.calibrators_: dict[str, Any] = {}
        self.skipped_: dict[str, str] = {}
        wanted = self.classes or FIT_CLASSES
        present = set(df["fit_class"])
        for cls in wanted:
            if cls not in present:
                self.skipped_[cls] = "not measured"
                continue
            started = time.perf_counter()
            if self.progress is not None:
                self.progress(cls, "start", 0.0)
            if cls == "collectives":
                cal = CollectiveCalibrator(self.heldout_fraction, self.seed, base=self.hardware_)
                try:
                    cal.fit(df, self.meta_)
                except MoesimError as exc:
                    self.skipped_[cls] = str(exc)
                    continue
            elif self.model == "shape" and cls in SHAPE_CLASSES:
                try:
                    cal = ShapeCalibrator(
                        cls,
                        self.hardware_,
                        self.heldout_fraction,
                        self.seed,
                        max_train_rows=None,
                        heldout_keys=(self.heldout_keys or {}).get(cls),
                    ).fit(df)
                except MoesimError as exc:  # too few rows of the class: keep the base terms
                    self.skipped_[cls] = str(exc)
                    continue
            else:
                cal = KernelCalibrator(
                    cls,
                    self.heldout_fraction,
                    self.seed,
                    base=self.hardware_,
                    heldout_keys=(self.heldout_keys or {}).get(cls),
                ).fit(df, self.meta_)
            self.calibrators_[cls] = cal
            if self.progress is not None:
                self.progress(cls, "done", time.perf_counter() - started)
        unknown = sorted(present - set(FIT_CLASSES) - {"layer"})
        if unknown:
            self.skipped_["unknown"] = (
                f"rows of kernel_class {', '.join(unknown)} have no model and were ignored"
            )
        if not self.calibrators_:
            raise MoesimError(
                f"nothing to calibrate: {'; '.join(f'{k}: {v}' for k, v in self.skipped_.items())}"
            )
        self.report_ = self._report()
        return self

    def _report(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "base_profile": self.hardware_.name,
            "measurements": self.directory_ or "in-memory frames",
            "heldout": {"rule": HELDOUT_RULE, "fraction": self.heldout_fraction, "seed": self.seed},
            "classes": {cls: cal.report() for cls, cal in self.calibrators_.items()},
            "skipped": dict(self.skipped_),
        }

    def source(self) -> str:
        """``measured: <device> <driver> <date>``."""
        tel = self.meta_.get("telemetry") or {}
        run = self.meta_.get("run") or {}
        gpu = tel.get("gpu") or {}
        versions = tel.get("versions") or {}
        driver = gpu.get("driver_version") or run.get("driver_version")
        torch_version = versions.get("torch") or run.get("torch")
        driver = (
            f"driver {driver}" if driver else (f"torch {torch_version}" if torch_version else "")
        )
        date = tel.get("date") or run.get("date") or run.get("started")
        if not date and "timestamp" in self.measurements_.columns:
            # No run.json / telemetry.json: the rows' own timestamps date the measurement.
            stamps = self.measurements_["timestamp"].dropna().astype(str)
            date = f"{stamps.min()}..{stamps.max()}" if len(stamps) else None
        return " ".join(p for p in ("measured:", self.device_, driver, date or "undated") if p)

    def to_profile(self, name: str | None = None, source: str | None = None) -> HardwareProfile:
        """The base profile with the fitted efficiency block (and provenance for it)."""
        if not hasattr(self, "calibrators_"):
            raise MoesimError("Calibration.to_profile called before fit")
        updates: dict[str, Any] = {}
        provenance = dict(self.hardware_.provenance)
        for cls, cal in self.calibrators_.items():
            if cls in KERNEL_FIT_CLASSES:
                updates[cls] = cal.efficiency_
            else:
                updates["collectives"] = cal.collectives_
            provenance[f"efficiency.{cls}"] = (
                f"fitted to {cal.n_train_} measured rows (impl {cal.report()['impl']}); held-out median "
                f"error {_pct(cal.heldout_errors_['median_abs_error'])} on {cal.n_heldout_} rows"
            )
        src = source or self.source()
        eff = self.hardware_.efficiency.model_copy(
            update=updates | {"source": src, "fit_report": self.report_}
        )
        measurement = {"device": self.device_, "source": src, "base_profile": self.hardware_.name}
        if self.directory_:
            measurement["directory"] = self.directory_
        tel = self.meta_.get("telemetry") or {}
        if tel.get("versions"):
            measurement["versions"] = {k: v for k, v in tel["versions"].items() if v is not None}
        profile = self.hardware_.model_copy(
            update={
                "name": name or f"{self.hardware_.name}.measured",
                "provenance": provenance,
                "measurement": measurement,
            }
        )
        return profile.with_efficiency(eff.model_dump())


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"
