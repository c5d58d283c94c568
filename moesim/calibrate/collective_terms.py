"""Fit the per-group-size, per-regime α-β terms of :mod:`moesim.cost.fitted_comm`.

One fit per (collective, implementation, group size) — NCCL all_reduce / all_gather /
reduce_scatter / alltoall, an engine's custom all-reduce, a DeepEP phase per EP size — of

    t(S) = min_p alpha_p + S * f_p / BW_p

(NCCL's tuner runs the fastest protocol, NCCL ``src/graph/tuning.cc``; f_p the bus factors of
:func:`moesim.cost.fitted_comm.bus_factor`, Thakur, Rabenseifner & Gropp, IJHPCA 2005) by
``scipy.optimize.least_squares`` on log(pred) - log(measured) with the ``soft_l1`` loss.

The minimum of K lines is concave in S and each regime wins one contiguous range of sizes, the
smallest-alpha one first (NCCL: LL, then LL128, Simple, NVLS). The start is the best split of
the sorted sizes into K contiguous ranges, each fitted by weighted linear least squares (every
split of the distinct sizes into ranges of >= 2 is tried); the few best starts are refined
jointly. Bounds: alpha in [0.1 us, 10 ms], BW in [0.1 GB/s, line rate / factor]: no regime may
move bytes faster than the link (NVLink per direction for a single node, the NIC beyond).

After the fit a regime that wins no training point is dropped (``unused``). A used regime whose
bandwidth ends on the line rate is *clamped* (unbounded, the data would ask for a bandwidth
above what the link can carry; the fitted terms are the best the link allows). A used regime
whose alpha ends on a bound, or whose bandwidth ends on its lower bound, is *degenerate* (the
data cannot determine it). The calibrator reports both and decides what reaches the profile
(:class:`moesim.calibrate.collectives.CollectiveCalibrator`, ``on_degenerate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from scipy.optimize import least_squares

from moesim.cost.fitted_comm import bus_factor

ALPHA_BOUNDS_S = (1e-7, 1e-2)
MIN_BANDWIDTH = 1e8  # B/s
SOFT_L1_SCALE = 0.05  # residuals in log time: 5 % where the loss turns linear
AT_BOUND = 1e-3  # |log(value / bound)| under which a fitted term sits on its bound
N_STARTS = 2


@dataclass
class RegimeFit:
    """Result of one group's fit: ``terms`` {regime: [alpha_s, bandwidth]} of the used regimes."""

    terms: dict[str, list[float]]
    unused: list[str] = field(default_factory=list)
    clamped: list[str] = field(default_factory=list)  # bandwidth on the line rate
    degenerate: list[str] = field(default_factory=list)  # alpha on a bound, bandwidth on its floor
    n_points: int = 0
    n_sizes: int = 0
    cost: float = float("nan")

    @property
    def ok(self) -> bool:
        return bool(self.terms) and not self.degenerate


def _line_fit(size: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(a, s) minimising sum ((a + s S - t) / t)^2 (relative errors)."""
    a = np.stack([1.0 / t, size / t], axis=1)
    sol, *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return float(sol[0]), float(sol[1])


def _rho(z: np.ndarray) -> np.ndarray:
    """scipy's soft_l1 loss at scale SOFT_L1_SCALE."""
    c = SOFT_L1_SCALE
    return c * c * 2.0 * (np.sqrt(1.0 + (z / c) ** 2) - 1.0)


PRUNE_TOLERANCE = 0.02  # relative training-cost increase a dropped regime may cause


def _prune(x: np.ndarray, k: int, size: np.ndarray, log_t: np.ndarray, cost: float) -> list[int]:
    """Indices of the regimes to keep: greedily drop a regime while the training cost (soft_l1
    in log time) rises by less than PRUNE_TOLERANCE (plus a floor of 1e-6 per point), so that
    data one line explains get one regime, not two copies of it."""
    keep = list(range(k))
    floor = 1e-6 * len(size)

    def cost_of(idx: list[int]) -> float:
        a, s = np.exp(x[idx]), np.exp(x[k:][idx])
        pred = np.min(a[:, None] + s[:, None] * size[None, :], axis=0)
        return float(0.5 * np.sum(_rho(np.log(pred) - log_t)))

    while len(keep) > 1:
        trials = [(cost_of([j for j in keep if j != i]), i) for i in keep]
        c, i = min(trials)
        if c > cost * (1 + PRUNE_TOLERANCE) + floor:
            break
        keep.remove(i)
    return keep


def fit_regimes(
    size, time_s, kind: str, group_size: float, regimes: tuple[str, ...], line_bytes_per_s: float
) -> RegimeFit:
    """Fit the regimes of one group to (message bytes, seconds) points; see the module docstring.

    ``kind`` is an NCCL op name, ``custom`` (engine all-reduce) or ``deepep`` (factor 1: the
    sizes are already the bytes over the bottleneck level).
    """
    size = np.asarray(size, dtype=float)
    t = np.asarray(time_s, dtype=float)
    keep = (size > 0) & (t > 0) & np.isfinite(t)
    size, t = size[keep], t[keep]
    order = np.argsort(size, kind="stable")
    size, t = size[order], t[order]
    uniq = np.unique(size)
    m = len(uniq)
    k_eff = max(1, min(len(regimes), m // 2))
    regs = regimes[:k_eff]
    factor = np.array(
        [1.0 if kind == "deepep" else float(bus_factor(kind, r, group_size)) for r in regs]
    )
    # slope s = f / BW per byte of buffer: BW <= line rate -> s >= f / line
    s_lo = factor / line_bytes_per_s
    s_hi = factor / MIN_BANDWIDTH
    a_lo, a_hi = ALPHA_BOUNDS_S
    log_t = np.log(t)
    idx = np.searchsorted(uniq, size)  # distinct-size index of each point

    seg_cache: dict[tuple[int, int], tuple[float, float]] = {}

    def seg(i: int, j: int) -> tuple[float, float]:
        if (i, j) not in seg_cache:
            sel = (idx >= i) & (idx < j)
            seg_cache[(i, j)] = _line_fit(size[sel], t[sel])
        return seg_cache[(i, j)]

    starts = []
    cuts_all = [c for c in combinations(range(2, m - 1), k_eff - 1)] if k_eff > 1 else [()]
    for cuts in cuts_all:
        bounds = (0, *cuts, m)
        if any(b - a < 2 for a, b in zip(bounds[:-1], bounds[1:], strict=False)):
            continue
        lines = np.array([seg(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=False)])
        alpha = np.clip(lines[:, 0], a_lo * 1.01, a_hi * 0.99)
        slope = np.clip(lines[:, 1], s_lo * 1.01, s_hi * 0.99)
        pred = np.min(alpha[:, None] + slope[:, None] * size[None, :], axis=0)
        loss = float(np.sum(_rho(np.log(pred) - log_t)))
        starts.append((loss, np.concatenate([np.log(alpha), np.log(slope)])))
    starts.sort(key=lambda s: s[0])
    lo = np.concatenate([np.full(k_eff, np.log(a_lo)), np.log(s_lo)])
    hi = np.concatenate([np.full(k_eff, np.log(a_hi)), np.log(s_hi)])

    def residuals(x: np.ndarray) -> np.ndarray:
        alpha, slope = np.exp(x[:k_eff]), np.exp(x[k_eff:])
        pred = np.min(alpha[:, None] + slope[:, None] * size[None, :], axis=0)
        return np.log(pred) - log_t

    rows = np.arange(len(size))

    def jacobian(x: np.ndarray) -> np.ndarray:
        """d r / d log alpha_w = alpha_w / pred, d r / d log s_w = s_w S / pred, w the winner."""
        alpha, slope = np.exp(x[:k_eff]), np.exp(x[k_eff:])
        lines = alpha[:, None] + slope[:, None] * size[None, :]
        w = np.argmin(lines, axis=0)
        pred = lines[w, rows]
        jac = np.zeros((len(size), 2 * k_eff))
        jac[rows, w] = alpha[w] / pred
        jac[rows, k_eff + w] = slope[w] * size / pred
        return jac

    best = None
    for _, x0 in starts[:N_STARTS]:
        res = least_squares(
            residuals, np.clip(x0, lo, hi), jac=jacobian, bounds=(lo, hi), loss="soft_l1",
            f_scale=SOFT_L1_SCALE,
        )  # fmt: skip
        if best is None or res.cost < best.cost:
            best = res
    x = best.x
    keep = _prune(x, k_eff, size, log_t, best.cost)
    if len(keep) < k_eff:  # refit the regimes that carry the data
        sub = np.concatenate([x[keep], x[k_eff:][keep]])
        sub_lo = np.concatenate([lo[keep], lo[k_eff:][keep]])
        sub_hi = np.concatenate([hi[keep], hi[k_eff:][keep]])
        k_sub = len(keep)

        def sub_res(y: np.ndarray) -> np.ndarray:
            a, s = np.exp(y[:k_sub]), np.exp(y[k_sub:])
            return np.log(np.min(a[:, None] + s[:, None] * size[None, :], axis=0)) - log_t

        res = least_squares(sub_res, sub, bounds=(sub_lo, sub_hi), loss="soft_l1",
                            f_scale=SOFT_L1_SCALE)  # fmt: skip
        x = np.full(2 * k_eff, -np.inf)
        x[keep], x[k_eff:][keep] = res.x[:k_sub], res.x[k_sub:]
        best = res
    alpha, slope = np.exp(x[:k_eff]), np.exp(x[k_eff:])
    big = np.where(np.isfinite(x[:k_eff]), alpha, np.inf)
    winner = np.argmin(big[:, None] + slope[:, None] * size[None, :], axis=0)
    fit = RegimeFit(terms={}, n_points=len(t), n_sizes=m, cost=float(best.cost))
    fit.unused = [r for r in regimes if r not in regs]
    for i, r in enumerate(regs):
        if not np.isfinite(x[i]) or not np.any(winner == i):
            fit.unused.append(r)
            continue
        bw = float(factor[i] / slope[i])
        fit.terms[r] = [float(alpha[i]), bw]
        if abs(x[i] - lo[i]) < AT_BOUND or abs(x[i] - hi[i]) < AT_BOUND:
            fit.degenerate.append(f"{r}: alpha {alpha[i] * 1e6:.3g} us at its bound")
        if abs(x[k_eff + i] - lo[k_eff + i]) < AT_BOUND:
            fit.clamped.append(
                f"{r}: bandwidth {bw / 1e9:.4g} GB/s at the line rate {line_bytes_per_s / 1e9:.4g}"
            )
        if abs(x[k_eff + i] - hi[k_eff + i]) < AT_BOUND:
            fit.degenerate.append(f"{r}: bandwidth {bw / 1e9:.4g} GB/s at its lower bound")
    return fit
