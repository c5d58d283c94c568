"""Fit the α-β network terms (``efficiency.collectives``) to measured collectives.

Each all-reduce / all-to-all row is priced by :mod:`moesim.cost.comm` (ring or in-switch all-reduce,
hierarchical across domains; all-to-all bounded by the slower level), whose per-level time is
alpha + bytes / (line rate * eta) (Hockney 1994). ``scipy.optimize.least_squares`` fits, in log
time, the latency and bandwidth efficiency of each level the rows exercise — scale-up for groups
inside one domain, scale-out for groups spanning several — and, when the profile has in-switch
reduction and both all-reduce and all-to-all rows inside a domain were measured, the all-reduce
in-switch speed-up. Rows with world_size 1 move nothing and are skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from moesim.calibrate.measurements import error_stats, heldout_shapes, usable_rows
from moesim.calibrate.predict import _col, collective_bytes, predict_collective_rows
from moesim.errors import MoesimError
from moesim.spec.hardware import CollectiveEfficiency

LATENCY_MAX_S = 1e-3
EFF_BOUNDS = (0.01, 1.0)
SPEEDUP_BOUNDS = (1.0, 4.0)
PRIOR_WEIGHT = 1e-2
_US = 1e-6


class CollectiveCalibrator:
    """α-β terms of the scale-up and scale-out levels, fitted to measured collectives.

    Attributes (after ``fit``): ``collectives_`` (CollectiveEfficiency), ``fitted_params_``
    (names of the parameters the data determined), ``n_train_``, ``n_heldout_``,
    ``n_skipped_world1_``, ``heldout_shapes_``, ``train_errors_``, ``heldout_errors_``,
    ``train_mape_``, ``heldout_mape_``, ``hardware_``, ``impl_``.
    """

    kernel_class = "collectives"

    def __init__(self, heldout_fraction: float = 0.2, seed: int = 0, base=None):
        self.heldout_fraction = heldout_fraction
        self.seed = seed
        self.base = base

    def fit(self, measurements: pd.DataFrame, meta: dict | None = None) -> CollectiveCalibrator:
        from moesim.calibrate.base import resolve_base

        df = measurements if "fit_class" in measurements.columns else usable_rows(measurements)
        self.hardware_ = resolve_base(self.base, meta or {}, df)
        df = df[df["fit_class"] == "collectives"].reset_index(drop=True)
        world = _col(df, "world_size", 1.0) if len(df) else np.zeros(0)
        self.n_skipped_world1_ = int(np.sum(world <= 1))
        df = df[world > 1].reset_index(drop=True)
        if df.empty:
            raise MoesimError(
                "no collective measurement with world_size > 1 to fit (world_size 1 rows move no data)"
            )
        self.impl_ = ",".join(sorted(set(df["impl"].astype(str))))
        self.heldout_shapes_ = heldout_shapes(df["shape_key"], self.heldout_fraction, self.seed)
        held = df["shape_key"].isin(self.heldout_shapes_).to_numpy()
        train, test = df[~held].reset_index(drop=True), df[held].reset_index(drop=True)
        self.n_train_, self.n_heldout_ = len(train), len(test)
        self._fit_params(train)
        self.train_errors_ = error_stats(self.predict(train), train["median_s"])
        self.heldout_errors_ = error_stats(self.predict(test), test["median_s"])
        self.train_mape_ = self.train_errors_["mean_abs_error"]
        self.heldout_mape_ = self.heldout_errors_["mean_abs_error"]
        return self

    def _levels_used(self, df: pd.DataFrame) -> tuple[bool, bool, bool]:
        dom = int(self.hardware_.scaleup_domain_size)
        n = _col(df, "world_size", 1.0)
        kinds = df["kernel_class"].to_numpy()
        intra, inter = collective_bytes(df, dom)
        a2a = kinds == "alltoall"
        ar = kinds == "allreduce"
        up = bool(np.any(ar & (n > 1)) or np.any(a2a & (intra > 0)))
        out = bool(np.any(ar & (n > dom)) or np.any(a2a & (inter > 0)))
        speedup = bool(
            self.hardware_.scaleup_in_switch_reduction
            and np.any(ar & (n > 1) & (n <= dom))
            and np.any(a2a & (intra > 0))
        )
        return up, out, speedup

    def _fit_params(self, train: pd.DataFrame) -> None:
        base = self.hardware_.efficiency.collectives
        up, out, speedup = self._levels_used(train)
        names = [
            "scaleup_latency_s",
            "scaleup_bandwidth_efficiency",
            "scaleout_latency_s",
            "scaleout_bandwidth_efficiency",
            "allreduce_in_switch_speedup",
        ]
        used = [up, up, out, out, speedup]
        x0 = np.array([
            min(base.scaleup_latency_s, LATENCY_MAX_S) / _US, np.log(np.clip(base.scaleup_bandwidth_efficiency, *EFF_BOUNDS)),
            min(base.scaleout_latency_s, LATENCY_MAX_S) / _US, np.log(np.clip(base.scaleout_bandwidth_efficiency, *EFF_BOUNDS)),
            np.log(np.clip(base.allreduce_in_switch_speedup, *SPEEDUP_BOUNDS)),
        ])  # fmt: skip
        lo = np.array([0.0, np.log(EFF_BOUNDS[0]), 0.0, np.log(EFF_BOUNDS[0]), 0.0])
        hi = np.array(
            [LATENCY_MAX_S / _US, 0.0, LATENCY_MAX_S / _US, 0.0, np.log(SPEEDUP_BOUNDS[1])]
        )
        for i, use in enumerate(used):
            if not use:  # the rows cannot see it: pin it to the base value
                lo[i], hi[i] = x0[i] - 1e-9, x0[i] + 1e-9
        scale = np.array([10.0, 1.0, 10.0, 1.0, 1.0])
        log_meas = np.log(train["median_s"].to_numpy(dtype=float))

        def params(x) -> CollectiveEfficiency:
            return base.model_copy(update={
                "scaleup_latency_s": float(max(x[0], 0.0) * _US),
                "scaleup_bandwidth_efficiency": float(min(np.exp(x[1]), 1.0)),
                "scaleout_latency_s": float(max(x[2], 0.0) * _US),
                "scaleout_bandwidth_efficiency": float(min(np.exp(x[3]), 1.0)),
                "allreduce_in_switch_speedup": float(max(np.exp(x[4]), 1.0)),
            })  # fmt: skip

        def residuals(x):
            pred = predict_collective_rows(self.hardware_, train, params(x))
            return np.concatenate(
                [np.log(np.maximum(pred, 1e-30)) - log_meas, PRIOR_WEIGHT * (x - x0) / scale]
            )

        res = least_squares(residuals, np.clip(x0, lo, hi), bounds=(lo, hi), method="trf")
        self.collectives_ = CollectiveEfficiency.model_validate(params(res.x).model_dump())
        self.fitted_params_ = [n for n, u in zip(names, used, strict=True) if u]

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Predicted seconds of each collective row, shape [len(df)]."""
        return predict_collective_rows(self.hardware_, df.reset_index(drop=True), self.collectives_)

    def report(self) -> dict:
        from moesim.calibrate.kernels import _stats

        c = self.collectives_
        return {
            "impl": self.impl_,
            "n_train": self.n_train_,
            "n_heldout": self.n_heldout_,
            "n_skipped_world_size_1": self.n_skipped_world1_,
            "train": _stats(self.train_errors_),
            "heldout": _stats(self.heldout_errors_),
            "params": {
                "scaleup_latency_us": round(c.scaleup_latency_s * 1e6, 4),
                "scaleup_bandwidth_efficiency": round(c.scaleup_bandwidth_efficiency, 5),
                "scaleout_latency_us": round(c.scaleout_latency_s * 1e6, 4),
                "scaleout_bandwidth_efficiency": round(c.scaleout_bandwidth_efficiency, 5),
                "allreduce_in_switch_speedup": round(c.allreduce_in_switch_speedup, 4),
            },
            "fitted_params": list(self.fitted_params_),
            "heldout_shape_keys": list(self.heldout_shapes_),
        }
