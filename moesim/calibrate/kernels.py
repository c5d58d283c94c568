"""Fit one kernel class's roofline terms to measurements (scikit-learn style estimator).

The model is :func:`moesim.cost.roofline.op_time_s` as priced by :mod:`moesim.cost.kernel_cost`:

    t = smoothmax_p(FLOPs / (peak[dtype] * eta_c[dtype] * q(m, n; tile_m, tile_n)),
                    bytes / (bandwidth * eta_m)) + t_launch

Continuous parameters — eta_c per measured dtype, eta_m, t_launch and the ridge sharpness p —
are fitted by ``scipy.optimize.least_squares`` on log-time residuals log(pred) - log(meas), so a
10 % miss on a 5 µs kernel weighs as much as one on a 50 ms kernel (relative error is what a
capacity plan inherits). Bounds: eta in [0.01, 1], t_launch in [0, 1 ms], p in [1, 64]. The
tile sizes are discrete: every (tile_m, tile_n) of :data:`TILE_GRID` is fitted and the lowest
training loss wins (GEMM-like classes only). A weak pull of each parameter towards the base
profile's value (weight :data:`PRIOR_WEIGHT` per unit of log-efficiency) keeps parameters the
data cannot see — eta_m of a class measured only compute-bound — at their datasheet values
instead of drifting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from moesim.calibrate.measurements import (
    choose_grouped_impl,
    error_stats,
    heldout_shapes,
    usable_rows,
)
from moesim.calibrate.predict import _dtype, _eager, group_rows, predict_groups
from moesim.errors import MoesimError
from moesim.spec.hardware import KERNEL_CLASSES, KernelEfficiency

TILE_GRID = (1, 16, 32, 64, 128, 256)
TILED_CLASSES = ("gemm", "grouped_gemm")
PRIOR_WEIGHT = 1e-2
# Robust loss: residuals beyond ~10 % (in log time) count linearly, not squared, so timing
# outliers of a shared machine do not drag the fit (scipy least_squares loss="soft_l1").
LOSS, F_SCALE = "soft_l1", 0.1
EFF_BOUNDS = (0.01, 1.0)
LAUNCH_MAX_S = 1e-3
RIDGE_BOUNDS = (1.0, 64.0)
_US = 1e-6  # launch overhead is optimised in microseconds, for conditioning


class KernelCalibrator:
    """Roofline terms of one kernel class, fitted to measured kernel times.

    Parameters
    ----------
    kernel_class : str
        ``gemm``, ``grouped_gemm``, ``attention_prefill``, ``attention_decode`` or ``memory``.
    heldout_fraction : float
        Fraction of distinct shapes (``shape_key``) held out of the fit and scored after it.
    seed : int
        Seed of the shape hash that picks the held-out shapes.
    base : HardwareProfile | str | None
        Profile whose roofs (peaks, bandwidth, SMs) the efficiencies scale, and whose values
        start and anchor the fit. None: the measured envelope (:func:`generic_base`).
    impl : str | None
        Only fit rows of this implementation. None: all rows, except grouped_gemm, which picks
        one implementation (Triton, else grouped_mm, else the loop).
    tile_grid : tuple of int
        Candidate tile sizes (both dimensions) for GEMM-like classes.
    fit_ridge : bool
        Fit the ridge sharpness (else keep the base value).
    heldout_keys : iterable of str | None
        The held-out shape_keys, chosen by the caller (the rule of :func:`heldout_shapes` applied
        to a larger population, of which ``measurements`` may be a training subsample plus every
        held-out row). None: the rule is applied to the rows given.

    Attributes (after ``fit``)
    --------------------------
    compute_efficiency_ : float, compute_efficiency_by_dtype_ : dict[str, float],
    mem_efficiency_ : float, launch_overhead_s_ : float (s), tile_m_, tile_n_ : int,
    ridge_sharpness_ : float, efficiency_ : KernelEfficiency, impl_ : str, dtypes_ : list[str],
    n_train_, n_heldout_ : int (rows), heldout_shapes_ : list[str],
    train_errors_, heldout_errors_ : dict (median/mean/max |pred - meas| / meas, n),
    train_mape_, heldout_mape_ : float (mean |pred - meas| / meas), hardware_ : HardwareProfile.
    """

    def __init__(
        self,
        kernel_class: str,
        heldout_fraction: float = 0.2,
        seed: int = 0,
        base=None,
        impl: str | None = None,
        tile_grid: tuple[int, ...] = TILE_GRID,
        fit_ridge: bool = True,
        heldout_keys=None,
    ):
        self.kernel_class = kernel_class
        self.heldout_fraction = heldout_fraction
        self.seed = seed
        self.base = base
        self.impl = impl
        self.tile_grid = tile_grid
        self.fit_ridge = fit_ridge
        self.heldout_keys = heldout_keys

    # ------------------------------------------------------------------ fit
    def fit(self, measurements: pd.DataFrame, meta: dict | None = None) -> KernelCalibrator:
        """Fit on the training shapes of ``measurements`` (rows of other classes are ignored)."""
        from moesim.calibrate.base import resolve_base

        if self.kernel_class not in KERNEL_CLASSES:
            raise MoesimError(
                f"unknown kernel class {self.kernel_class!r}; known: {', '.join(KERNEL_CLASSES)}"
            )
        df = measurements if "fit_class" in measurements.columns else usable_rows(measurements)
        self.hardware_ = resolve_base(self.base, meta or {}, df)
        df = df[df["fit_class"] == self.kernel_class]
        self.impl_ = self._pick_impl(df)
        if self.impl_ is not None:
            df = df[df["impl"] == self.impl_]
        if df.empty:
            raise MoesimError(f"no {self.kernel_class} measurements to fit")
        df = df.reset_index(drop=True)
        # Rows the model prices at zero (an MoE slice with no local assignment: no FLOPs, no
        # bytes) have no log-residual; they are left out of the fit and counted.
        base_pred = predict_groups(self.hardware_, group_rows(df), len(df))
        empty = ~(base_pred > 0)
        self.n_excluded_ = int(empty.sum())
        df = df[~empty].reset_index(drop=True)
        if df.empty:
            raise MoesimError(f"no {self.kernel_class} measurement the model prices above zero")
        if self.heldout_keys is not None:
            present = set(df["shape_key"].astype(str))
            self.heldout_shapes_ = sorted(present & {str(k) for k in self.heldout_keys})
        else:
            self.heldout_shapes_ = heldout_shapes(df["shape_key"], self.heldout_fraction, self.seed)
        held = df["shape_key"].isin(self.heldout_shapes_).to_numpy()
        train, test = df[~held].reset_index(drop=True), df[held].reset_index(drop=True)
        self.n_train_, self.n_heldout_ = len(train), len(test)
        self.dtypes_ = sorted(set(train["dtype"].map(_dtype)))
        self._fit_params(train)
        self.train_errors_ = error_stats(self.predict(train), train["median_s"])
        self.heldout_errors_ = error_stats(self.predict(test), test["median_s"])
        self.train_mape_ = self.train_errors_["mean_abs_error"]
        self.heldout_mape_ = self.heldout_errors_["mean_abs_error"]
        return self

    def _pick_impl(self, df: pd.DataFrame) -> str | None:
        if self.impl is not None:
            return self.impl
        impls = sorted(set(df["impl"]))
        if self.kernel_class == "grouped_gemm" and len(impls) > 1:
            return choose_grouped_impl(impls)
        return impls[0] if len(impls) == 1 else None

    def _fit_params(self, train: pd.DataFrame) -> None:
        base_eff = self.hardware_.efficiency.for_class(self.kernel_class)
        groups = group_rows(train)
        log_meas = np.log(train["median_s"].to_numpy(dtype=float))
        n_c = len(self.dtypes_)
        x0 = np.array(
            [np.log(np.clip(base_eff.compute_eff(d), *EFF_BOUNDS)) for d in self.dtypes_]
            + [np.log(np.clip(base_eff.memory_efficiency, *EFF_BOUNDS)),
               min(base_eff.launch_overhead_s, LAUNCH_MAX_S) / _US,
               np.log(np.clip(base_eff.ridge_sharpness, *RIDGE_BOUNDS)),
               min(base_eff.host_launch_s, LAUNCH_MAX_S) / _US]
        )  # fmt: skip
        lo = np.array([np.log(EFF_BOUNDS[0])] * (n_c + 1) + [0.0, np.log(RIDGE_BOUNDS[0]), 0.0])
        hi = np.array(
            [0.0] * (n_c + 1) + [LAUNCH_MAX_S / _US, np.log(RIDGE_BOUNDS[1]), LAUNCH_MAX_S / _US]
        )
        if not self.fit_ridge:
            lo[n_c + 2], hi[n_c + 2] = x0[n_c + 2] - 1e-9, x0[n_c + 2] + 1e-9
        self.fixed_at_base_ = self._unidentified(train)
        for name in self.fixed_at_base_:
            i = n_c if name == "memory_efficiency" else self.dtypes_.index(name.split(":")[1])
            lo[i], hi[i] = x0[i] - 1e-9, x0[i] + 1e-9
        if not np.any(_eager(train)):  # no eagerly timed row: the host cost is not seen
            lo[-1], hi[-1] = x0[-1] - 1e-9, x0[-1] + 1e-9
        prior_scale = np.array([1.0] * (n_c + 1) + [10.0, 1.0, 10.0])  # log-eta, µs, log-p, µs

        fitted_default = self._default_dtype(train)

        def params(x, tiles):
            fitted = {
                d: float(min(np.exp(v), 1.0)) for d, v in zip(self.dtypes_, x[:n_c], strict=True)
            }
            by_dtype = dict(base_eff.compute_efficiency_by_dtype) | fitted
            default = fitted[fitted_default] if fitted_default else base_eff.compute_efficiency
            if fitted_default and len(fitted) == 1:
                by_dtype.pop(fitted_default)  # one dtype measured: it is the default
            return KernelEfficiency(
                compute_efficiency=default,
                memory_efficiency=float(min(np.exp(x[n_c]), 1.0)),
                launch_overhead_s=float(max(x[n_c + 1], 0.0) * _US),
                tile_m=tiles[0], tile_n=tiles[1],
                ridge_sharpness=float(np.exp(x[n_c + 2])),
                host_launch_s=float(max(x[n_c + 3], 0.0) * _US),
                compute_efficiency_by_dtype=by_dtype,
            )  # fmt: skip

        def residuals(x, tiles):
            eff = self._efficiency(params(x, tiles))
            pred = predict_groups(self.hardware_, groups, len(train), eff)
            data = np.log(np.maximum(pred, 1e-30)) - log_meas
            return np.concatenate([data, PRIOR_WEIGHT * (x - x0) / prior_scale])

        x_start = np.clip(x0, lo, hi)
        eager = np.broadcast_to(_eager(train), (len(train),))
        if np.any(eager) and hi[-1] > lo[-1] + 1e-6:
            # max(host, device) has no gradient in the host cost while the device term wins:
            # start it at half the smallest eager time per launch (an upper bound on it).
            per_launch = (
                train["median_s"].to_numpy(dtype=float)[eager] / self._launches(train)[eager]
            )
            x_start[-1] = np.clip(0.5 * np.nanmin(per_launch) / _US, lo[-1], hi[-1])
        tiles_grid = (
            [(tm, tn) for tm in self.tile_grid for tn in self.tile_grid]
            if self.kernel_class in TILED_CLASSES
            else [(1, 1)]
        )
        first = least_squares(
            residuals,
            x_start,
            bounds=(lo, hi),
            args=((1, 1),),
            method="trf",
            x_scale=1.0,
            loss=LOSS,
            f_scale=F_SCALE,
        )
        best = (float(np.sum(first.fun[: len(train)] ** 2)), (1, 1), first.x)
        self.tile_losses_ = {"1x1": best[0]}
        for tiles in tiles_grid:
            if tiles == (1, 1):
                continue
            res = least_squares(
                residuals,
                first.x,
                bounds=(lo, hi),
                args=(tiles,),
                method="trf",
                x_scale=1.0,
                max_nfev=200,
                loss=LOSS,
                f_scale=F_SCALE,
            )
            loss = float(np.sum(res.fun[: len(train)] ** 2))
            self.tile_losses_[f"{tiles[0]}x{tiles[1]}"] = loss
            if loss < best[0] * (1 - 1e-9):
                best = (loss, tiles, res.x)
        self.train_loss_, (self.tile_m_, self.tile_n_), x = best
        self.efficiency_ = params(x, (self.tile_m_, self.tile_n_))
        self.compute_efficiency_ = self.efficiency_.compute_efficiency
        self.compute_efficiency_by_dtype_ = {
            d: self.efficiency_.compute_eff(d) for d in self.dtypes_
        }
        self.mem_efficiency_ = self.efficiency_.memory_efficiency
        self.launch_overhead_s_ = self.efficiency_.launch_overhead_s
        self.ridge_sharpness_ = self.efficiency_.ridge_sharpness
        self.host_launch_s_ = self.efficiency_.host_launch_s

    def _launches(self, train: pd.DataFrame) -> np.ndarray:
        """Kernel launches of each row's call (MoE implementations launch many; others one)."""
        if self.kernel_class != "grouped_gemm" or "impl" not in train.columns:
            return np.ones(len(train))
        from moesim.cost.kernel_cost import moe_launches

        paths = (
            train["impl_path"].astype(str) if "impl_path" in train.columns else [""] * len(train)
        )
        active = pd.to_numeric(train.get("n_active_experts", 0), errors="coerce").fillna(0)
        return np.array(
            [
                float(moe_launches(i, p, a))
                for i, p, a in zip(train["impl"].astype(str), paths, active, strict=True)
            ]
        )

    def _unidentified(self, train: pd.DataFrame) -> list[str]:
        """Efficiencies the training rows cannot identify, kept at the base profile's values.

        A compute efficiency needs rows well past the ridge (FLOP/byte >= 1.5x peak/bandwidth);
        a memory efficiency needs rows well below it. Without them a least-squares fit would
        trade one roof for the other (e.g. a GEMM sweep that stops at M=128 says nothing about
        the big-GEMM peak), so those parameters stay at their datasheet or published values.
        """
        if not {"flops", "hbm_bytes"} <= set(train.columns):
            return []
        flops = pd.to_numeric(train["flops"], errors="coerce").to_numpy(dtype=float)
        nbytes = pd.to_numeric(train["hbm_bytes"], errors="coerce").to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = flops / nbytes
        dtypes = train["dtype"].astype(str).map(_dtype).to_numpy() if "dtype" in train else None
        bw = self.hardware_.hbm_bandwidth_bytes_per_s
        fixed = []
        ridges = []
        for d in self.dtypes_:
            sel = dtypes == d if dtypes is not None else np.ones(len(train), bool)
            try:
                ridge = self.hardware_.peak(d) / bw
            except MoesimError:
                continue
            ridges.append(ridge)
            vals = intensity[sel & np.isfinite(intensity)]
            if vals.size and np.nanmax(vals) < 1.5 * ridge:
                fixed.append(f"compute_efficiency:{d}")
        finite = intensity[np.isfinite(intensity)]
        if ridges and finite.size and np.nanmin(finite) > min(ridges) / 1.5:
            fixed.append("memory_efficiency")
        return fixed

    def _default_dtype(self, train: pd.DataFrame) -> str | None:
        """The measured dtype whose efficiency becomes the class default, or None (keep the base's).

        bf16 when measured; on a generic (envelope) base the most measured dtype; otherwise the
        datasheet default stays and measured dtypes go to ``compute_efficiency_by_dtype``.
        """
        from moesim.calibrate.base import is_generic

        if "bf16" in self.dtypes_:
            return "bf16"
        if is_generic(self.hardware_):
            return str(train["dtype"].map(_dtype).value_counts().index[0])
        return None

    def _efficiency(self, block: KernelEfficiency):
        return self.hardware_.efficiency.model_copy(update={self.kernel_class: block})

    # -------------------------------------------------------------- predict
    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Predicted seconds for each row of ``df`` with the fitted terms, shape [len(df)]."""
        if not hasattr(self, "efficiency_"):
            raise MoesimError("KernelCalibrator.predict called before fit")
        df = df.reset_index(drop=True)
        return predict_groups(
            self.hardware_, group_rows(df), len(df), self._efficiency(self.efficiency_)
        )

    def report(self) -> dict:
        """The fit_report entry of this class."""
        return {
            "impl": self.impl_ or "all",
            "dtypes": list(self.dtypes_),
            "n_train": self.n_train_,
            "n_heldout": self.n_heldout_,
            "n_excluded_zero_work": self.n_excluded_,
            "train": _stats(self.train_errors_),
            "heldout": _stats(self.heldout_errors_),
            "params": {
                "compute_efficiency": round(self.compute_efficiency_, 5),
                "compute_efficiency_by_dtype": {
                    d: round(v, 5) for d, v in self.compute_efficiency_by_dtype_.items()
                },
                "memory_efficiency": round(self.mem_efficiency_, 5),
                "launch_overhead_us": round(self.launch_overhead_s_ * 1e6, 4),
                "tile_m": self.tile_m_,
                "tile_n": self.tile_n_,
                "ridge_sharpness": round(self.ridge_sharpness_, 4),
                "host_launch_us": round(self.host_launch_s_ * 1e6, 4),
            },
            "fixed_at_base": list(getattr(self, "fixed_at_base_", [])),
            "heldout_shape_keys": list(self.heldout_shapes_),
        }


def _stats(stats: dict) -> dict:
    return {
        k: (
            round(v, 6)
            if isinstance(v, float) and np.isfinite(v)
            else (v if not isinstance(v, float) else None)
        )
        for k, v in stats.items()
    }
