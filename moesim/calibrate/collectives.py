"""Fit the α-β network terms (``efficiency.collectives``) to measured collectives.

Two parts, both fitted by ``scipy.optimize.least_squares`` in log time on the training shapes
(the held-out split is a fixed hash of shape_key, :func:`moesim.calibrate.measurements.heldout_shapes`):

1. The two-level model (every profile has it). Each all-reduce / all-to-all row is priced by
   :mod:`moesim.cost.comm` (ring or in-switch all-reduce, hierarchical across domains;
   all-to-all bounded by the slower level), whose per-level time is alpha + bytes / (line rate *
   eta) (Hockney 1994). The latency and bandwidth efficiency of each level the rows exercise are
   fitted — scale-up for groups inside one domain, scale-out for groups spanning several — and,
   when the profile has in-switch reduction and both all-reduce and all-to-all rows inside a
   domain were measured, the all-reduce in-switch speed-up. Engines' own all-reduce kernels
   (impl trtllm / vllm / sglang) and the newer classes do not enter this part.
2. Per-group-size terms (``efficiency.collectives.fitted``, :mod:`moesim.cost.fitted_comm`),
   wherever the rows measure a collective at enough message sizes: per (NCCL op, n) the alpha
   and bus bandwidth of each protocol regime, per (engine, n) its custom all-reduce regimes,
   per (DeepEP impl, EP size, phase) t0 and bandwidth — by
   :func:`moesim.calibrate.collective_terms.fit_regimes` (soft_l1 loss). Groups whose fit is
   degenerate (a term on its bound, e.g. a bandwidth at the line rate) are reported and left out.

Rows with world_size 1 move nothing and are skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from moesim.calibrate.measurements import error_stats, heldout_shapes, usable_rows
from moesim.calibrate.predict import (
    ENGINE_ALLREDUCE_IMPLS,
    _col,
    collective_bytes,
    deepep_row_bytes,
    deepep_row_keys,
    predict_collective_rows,
)
from moesim.errors import MoesimError
from moesim.spec.hardware import CollectiveEfficiency, FittedCollectives

LATENCY_MAX_S = 1e-3
EFF_BOUNDS = (0.01, 1.0)
SPEEDUP_BOUNDS = (1.0, 4.0)
PRIOR_WEIGHT = 1e-2
_US = 1e-6
LEGACY_CLASSES = ("allreduce", "alltoall")
# A group gets per-size terms when its training rows cover this many distinct sizes.
MIN_SIZES_NCCL = 6
MIN_SIZES_DEEPEP = 4
NCCL_OPS = {
    "allreduce": "all_reduce",
    "allgather": "all_gather",
    "reducescatter": "reduce_scatter",
    "alltoall": "alltoall",
}


class CollectiveCalibrator:
    """α-β terms of the scale-up and scale-out levels, fitted to measured collectives.

    Attributes (after ``fit``): ``collectives_`` (CollectiveEfficiency, with ``fitted`` when
    per-group-size terms were fitted), ``fitted_params_`` (names of the two-level parameters the
    data determined), ``groups_`` (per fitted group: terms, unused regimes, rows),
    ``degenerate_`` (groups left out, with the reason), ``clamped_`` (groups written with a
    bandwidth clamped to the line rate), ``n_train_``, ``n_heldout_``,
    ``n_skipped_world1_``, ``heldout_shapes_``, ``train_errors_``, ``heldout_errors_``,
    ``heldout_by_class_``, ``train_mape_``, ``heldout_mape_``, ``hardware_``, ``impl_``.

    ``fit_terms=False`` fits the two-level model only. ``on_degenerate`` decides the groups whose
    fit sits on a bound (:mod:`moesim.calibrate.collective_terms`): ``"mark"`` (default) writes
    a group whose bandwidth is clamped to the line rate, listing it in the profile's
    ``fitted.at_line_rate`` and the report, and leaves out (reporting) groups with an alpha on
    a bound; ``"drop"`` leaves out both; ``"raise"`` stops with a MoesimError.
    """

    kernel_class = "collectives"

    def __init__(
        self,
        heldout_fraction: float = 0.2,
        seed: int = 0,
        base=None,
        fit_terms: bool = True,
        on_degenerate: str = "mark",
    ):
        if on_degenerate not in ("mark", "drop", "raise"):
            raise MoesimError(f"on_degenerate must be mark, drop or raise, got {on_degenerate!r}")
        self.heldout_fraction = heldout_fraction
        self.seed = seed
        self.base = base
        self.fit_terms = fit_terms
        self.on_degenerate = on_degenerate

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
        legacy = _legacy_rows(train)
        if len(legacy):
            self._fit_params(legacy)
        else:
            self.collectives_ = self.hardware_.efficiency.collectives.model_copy(
                update={"fitted": None}
            )
            self.fitted_params_ = []
        self.groups_, self.degenerate_, self.clamped_ = {}, {}, {}
        fitted = self._fit_terms(train) if self.fit_terms else None
        self.collectives_ = CollectiveEfficiency.model_validate(
            self.collectives_.model_dump() | {"fitted": fitted}
        )
        self.train_errors_ = error_stats(self.predict(train), train["median_s"])
        self.heldout_errors_ = error_stats(self.predict(test), test["median_s"])
        pred = self.predict(test) if len(test) else np.zeros(0)
        self.heldout_by_class_ = {
            str(cls): error_stats(pred[idx], test["median_s"].to_numpy()[idx])
            for cls, idx in test.groupby("kernel_class").indices.items()
        }
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
        base = self.hardware_.efficiency.collectives.model_copy(update={"fitted": None})
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

    def _fit_terms(self, train: pd.DataFrame) -> FittedCollectives | None:
        """Per-group-size terms of every group the training rows measure at enough sizes."""
        from moesim.calibrate.collective_terms import fit_regimes

        hw = self.hardware_
        dom = int(hw.scaleup_domain_size)
        up, out = hw.scaleup_bandwidth_bytes_per_s, hw.scaleout_bandwidth_bytes_per_s
        nvls = bool(hw.scaleup_in_switch_reduction)
        blocks: dict[str, dict] = {"nccl": {}, "custom_allreduce": {}, "deepep": {}}
        kinds = train["kernel_class"].astype(str)
        impls = train["impl"].astype(str)
        n_all = _col(train, "world_size", 1.0)

        clamped: list[str] = []

        def record(block: str, first: str, n: int, regime_key: str | None, fit, rows) -> None:
            name = ".".join([block, first, str(n)] + ([regime_key] if regime_key else []))
            problems = fit.degenerate or ([] if fit.terms else ["no regime fitted"])
            if self.on_degenerate == "raise" and (problems or fit.clamped):
                raise MoesimError(
                    f"degenerate collective fit {name}: {'; '.join(problems + fit.clamped)}"
                )
            if problems or (fit.clamped and self.on_degenerate == "drop"):
                self.degenerate_[name] = problems + fit.clamped
                return
            if fit.clamped:
                self.clamped_[name] = list(fit.clamped)
                clamped.append(name)
            terms = fit.terms if regime_key is None else {regime_key: fit.terms["t"]}
            blocks[block].setdefault(first, {}).setdefault(str(n), {}).update(terms)
            self.groups_[name] = {
                "terms": {r: [a, b] for r, (a, b) in terms.items()},
                "unused": list(fit.unused),
                "n_train": int(rows),
                "sizes": int(fit.n_sizes),
            }

        # NCCL collectives (and all-to-all) inside one scale-up domain
        nccl = kinds.isin(list(NCCL_OPS)) & ~impls.isin(list(ENGINE_ALLREDUCE_IMPLS))
        for (cls, n), g in train[nccl.to_numpy() & (n_all <= dom)].groupby(
            ["kernel_class", "world_size"]
        ):
            size = _col(g, "message_bytes", np.nan)
            if len(np.unique(size[np.isfinite(size)])) < MIN_SIZES_NCCL:
                continue
            op = NCCL_OPS[str(cls)]
            regimes = ("ll", "ll128", "simple") + (("nvls",) if op == "all_reduce" and nvls else ())
            fit = fit_regimes(size, g["median_s"], op, float(n), regimes, up)
            record("nccl", op, int(n), None, fit, len(g))
        # engines' own all-reduce
        custom = (kinds == "allreduce") & impls.isin(list(ENGINE_ALLREDUCE_IMPLS))
        for (impl, n), g in train[custom.to_numpy() & (n_all <= dom)].groupby(
            ["impl", "world_size"]
        ):
            size = _col(g, "message_bytes", np.nan)
            if len(np.unique(size[np.isfinite(size)])) < MIN_SIZES_NCCL:
                continue
            regimes = ("oneshot", "twoshot", "nvls" if nvls else "nccl")
            fit = fit_regimes(size, g["median_s"], "custom", float(n), regimes, up)
            record("custom_allreduce", str(impl), int(n), None, fit, len(g))
        # DeepEP dispatch / combine: t0 + bytes over the slowest level / BW
        ep_rows = train[kinds.isin(["ep_dispatch", "ep_combine"]).to_numpy()].reset_index(drop=True)
        engines = sorted(set(ep_rows["framework"].dropna().astype(str))) if (
            "framework" in ep_rows.columns
        ) else []  # fmt: skip
        if len(engines) > 1:
            raise MoesimError(
                f"DeepEP rows of several engines ({', '.join(engines)}) cannot share one "
                "(impl, EP size, phase) fit; calibrate one engine's rows at a time"
            )
        if len(ep_rows):
            intra, inter = deepep_row_bytes(ep_rows, dom)
            ep_rows = ep_rows.assign(
                _bytes=np.where(inter > 0, inter, intra),
                _line=np.where(inter > 0, out, up),
                _key=deepep_row_keys(ep_rows),
                _ep=_col(ep_rows, "ep_size", np.nan),
            )
            ep_rows["_ep"] = ep_rows["_ep"].fillna(ep_rows["world_size"])
            for (impl, ep, key), g in ep_rows.groupby(["impl", "_ep", "_key"]):
                if len(np.unique(g["_bytes"])) < MIN_SIZES_DEEPEP or ep <= 1:
                    continue
                fit = fit_regimes(g["_bytes"], g["median_s"], "deepep", float(ep), ("t",),
                                  float(g["_line"].max()))  # fmt: skip
                record("deepep", str(impl), int(ep), str(key), fit, len(g))
        if not any(blocks.values()):
            return None
        sources = sorted(set(train["source"].astype(str))) if "source" in train.columns else []
        note = f"; rows from {'; '.join(sources)}" if sources and len(sources) <= 6 else ""
        return FittedCollectives(
            at_line_rate=clamped,
            source=(
                "moesim.calibrate.collective_terms: least_squares (soft_l1) in log time on "
                f"{len(train)} training rows{note}"
            ),
            **blocks,
        )

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
            "fitted_groups": {
                name: {
                    "terms_us_GBps": {
                        r: [round(a * 1e6, 4), round(b / 1e9, 3)]
                        for r, (a, b) in g["terms"].items()
                    },
                    "unused": g["unused"],
                    "n_train": g["n_train"],
                }
                for name, g in self.groups_.items()
            },
            "degenerate_left_out": {k: list(v) for k, v in self.degenerate_.items()},
            "at_line_rate": {k: list(v) for k, v in self.clamped_.items()},
            "heldout_by_class": {k: _stats(v) for k, v in self.heldout_by_class_.items()},
            "heldout_shape_keys": list(self.heldout_shapes_),
        }


def _legacy_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows the two-level model is fitted to: all-reduce / all-to-all, not an engine's own
    all-reduce kernel (those have their own fitted curve)."""
    kinds = df["kernel_class"].astype(str)
    engine = (kinds == "allreduce") & df["impl"].astype(str).isin(list(ENGINE_ALLREDUCE_IMPLS))
    return df[kinds.isin(list(LEGACY_CLASSES)) & ~engine].reset_index(drop=True)
