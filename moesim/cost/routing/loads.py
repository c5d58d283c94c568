"""Expected load statistics for T tokens routed top-k over experts placed on G GPUs.

Everything here is for one layer and one placement, as functions of integer token counts T
(the tables in :mod:`moesim.cost.routing.stats` interpolate between them). Per token, slot s (an
expert, or one replica of it) receives the token with probability ``q_s`` (Σ_s q_s = k), so an
expert's count over T independent tokens is exactly Binomial(T, π_e) and a GPU's load
``L_g = Σ_t c_{t,g}`` is a sum of T independent per-token counts with ``Σ_g L_g = N = T·k``.

E[max_g L_g] (the expert-parallel straggler) uses ``E[max] = Σ_{m≥1} (1 − P(all L_g < m))``
(the tail-sum formula for a non-negative integer; David & Nagaraja, *Order Statistics*, §3):

* small N (≤ ``EXACT_MAX_ASSIGNMENTS``): the loads are modelled as independent Poisson-binomial
  sums ``X_g = Σ_{s∈g} Bin(T, q_s)`` *conditioned on their total* ``Σ X_g = N`` — the conditional
  Poisson model of sampling without replacement (Hájek 1964; Chen, Dempster & Liu, Biometrika
  1994), exact for uniform routing at T = 1 — and ``P(all X_g < m | ΣX = N)`` is the coefficient
  of z^N in Π_g (truncated pgf of X_g), divided by P(ΣX = N);
* large N: the conditioning on the total only shrinks each GPU's variance, so the loads are
  treated as independent with the variance inflated back, ``v_g = Var(L_g)/(1 − Var(L_g)/ΣVar)``
  (exact for exchangeable Gaussians, where max Y = max X − X̄), each a two-moment binomial or
  negative binomial, and the CDF product is summed over the window where it moves.
"""

from __future__ import annotations

import numpy as np

from moesim.cost.routing import _special as special  # numpy; SciPy only where needed

EXACT_MAX_ASSIGNMENTS = 512  # N = T·k up to which the conditioned exact sum is used
# A GPU-count pmf entry below this share of the pmf's peak is FFT round-off (~1e-17), not mass.
_PMF_NEGLIGIBLE = 1e-15


def padded_counts(T: np.ndarray, q: np.ndarray, block_m: int) -> np.ndarray:
    """E[ceil(n/BM)·BM] for n ~ Binomial(T, q); broadcasts ``T`` and ``q``.

    Σ_{j≥0} P(n > j·BM) on the window where the tail moves; when sd ≥ BM (and the mean is far
    from 0) the residue n mod BM is equidistributed to within exp(−2π²sd²/BM²) (Poisson
    summation), giving mean + (BM − 1)/2.
    """
    T, q = np.broadcast_arrays(np.asarray(T, dtype=float), np.asarray(q, dtype=float))
    B = int(block_m)
    mu = T * q
    if B == 1:
        return mu
    sd = np.sqrt(T * q * (1 - q))
    out = mu + (B - 1) / 2.0
    exact = (sd < B) | (mu < 30)
    if np.any(exact):
        Te, qe, me, se = T[exact], q[exact], mu[exact], sd[exact]
        j_lo = np.floor(np.maximum(me - 12 * se - 5, 0) / B)
        width = np.ceil((24 * se + 10) / B).astype(np.int64) + 2
        bucket = np.ceil(np.log2(width)).astype(np.int64)  # similar windows together
        vals = np.empty(Te.size)
        for b in sorted(set(bucket.tolist())):  # not np.unique: it imports numpy.ma
            sel = bucket == b
            j = j_lo[sel, None] + np.arange(1 << int(b))[None, :]
            tail = _binom_sf(j * B, Te[sel, None], qe[sel, None])
            vals[sel] = B * (j_lo[sel] + tail.sum(axis=1))
        out[exact] = vals
    return out


def dropped_counts(T: np.ndarray, q: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """E[(n − c)^+] for n ~ Binomial(T, q): T·q·P(Bin(T−1, q) ≥ c) − c·P(Bin(T, q) > c)."""
    T, q, c = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (T, q, capacity)))
    first = T * q * _binom_sf(c - 1, T - 1, q)
    return np.maximum(first - c * _binom_sf(c, T, q), 0.0)


def _binom_sf(x, n, p):
    """P(Binomial(n, p) > x), defined for any x (1 below 0, 0 at or above n)."""
    x, n, p = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (x, n, p)))
    inside = (x >= 0) & (x < n)
    safe_x = np.where(inside, x, 0.0)
    safe_n = np.where(n > 0, n, 1.0)
    out = np.where(x < 0, 1.0, 0.0)
    with np.errstate(invalid="ignore"):
        val = special.bdtrc(
            np.floor(safe_x), np.round(safe_n).astype(np.int64), np.clip(p, 0.0, 1.0)
        )
    return np.where(inside, val, out)


# ---------------------------------------------------------------- E[max] over GPUs


def expected_max_loads(
    t_grid: np.ndarray, top_k: int, q_gpu: np.ndarray, tau: np.ndarray
) -> np.ndarray:
    """E[max_g L_g] at each integer T of ``t_grid``. ``q_gpu [G, n]`` per-token slot
    probabilities, ``tau [G]`` per-token variance of a GPU's count (:func:`per_token_gpu_variance`)."""
    K = int(top_k)
    if q_gpu.shape[0] == 1:
        return np.asarray(t_grid, dtype=float) * K
    out = np.zeros(len(t_grid))
    for i, t in enumerate(t_grid):
        N = int(t) * K
        if N == 0:
            continue
        if N <= EXACT_MAX_ASSIGNMENTS:
            out[i] = _max_conditioned(int(t), K, q_gpu, tau)
        else:
            out[i] = _max_independent(int(t), N, q_gpu, tau)
    return out


def expected_max_load(T: int, top_k: int, q_gpu: np.ndarray, tau: np.ndarray) -> float:
    """E[max_g L_g] for one integer T (see :func:`expected_max_loads`)."""
    return float(expected_max_loads(np.array([int(T)]), top_k, q_gpu, tau)[0])


def per_token_gpu_variance(q_gpu: np.ndarray, num_experts: int) -> np.ndarray:
    """Var of the number of a token's k picks that land on each GPU, ``[G]``.

    Independent Bernoulli(q_s) conditioned on their total k (Gaussian form v − v²/V) with the
    finite-population factor E/(E−1); exact for uniform routing (hypergeometric variance).
    """
    s = np.sum(q_gpu * (1 - q_gpu), axis=1)
    total = s.sum()
    if total <= 0:
        return np.zeros_like(s)
    E = max(int(num_experts), 2)
    return s * (1 - s / total) * E / (E - 1)


def _max_conditioned(T: int, K: int, q_gpu: np.ndarray, tau: np.ndarray) -> float:
    """Conditioned exact sum. Slot counts are independent two-moment counts (at most T each)
    with mean T·q_s and variance T·q_s(1 − q_s) inflated by 1/(1 − q_s(1 − q_s)/Σ q(1 − q)) so
    that conditioning on the total gives back each slot's binomial variance (Poisson for k = 1,
    where this conditioning is exactly the multinomial; a uniform k-subset at T = 1)."""
    G, N = q_gpu.shape[0], T * K
    q = q_gpu.reshape(-1)
    spread = np.sum(q * (1 - q))
    if spread <= 1e-12:
        return float(T * q_gpu.sum(axis=1).max())
    mu = T * q
    if K == 1:
        var = mu.copy()
    else:
        var = np.minimum(T * q * (1 - q) / np.maximum(1 - q * (1 - q) / spread, 1e-12), mu)
    j = np.arange(N + 1)
    log_pmf = np.full((q.size, N + 1), -np.inf)
    pois = (var >= mu * (1 - 1e-9)) & (mu > 0)
    log_pmf[pois] = j * np.log(mu[pois, None]) - mu[pois, None] - special.gammaln(j + 1)
    binom = ~pois & (mu > 0)
    p = np.clip(1 - var[binom] / mu[binom], 1e-15, 1.0)[:, None]
    n = np.maximum(mu[binom, None] / p, 1.0)
    rest = np.maximum(n - j, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lb = (
            special.gammaln(n + 1)
            - special.gammaln(j + 1)
            - special.gammaln(rest + 1)
            + j * np.log(p)
            + rest * np.log1p(-np.minimum(p, 1 - 1e-15))
        )
    log_pmf[binom] = np.where(j <= n + 1e-9, lb, -np.inf)
    log_pmf[:, T + 1 :] = -np.inf  # a slot gets at most one pick per token
    log_pmf[mu == 0, 0] = 0.0
    slot_pmf = np.exp(log_pmf - log_pmf.max(axis=1, keepdims=True))
    slot_pmf /= slot_pmf.sum(axis=1, keepdims=True)
    P = 1 << int(np.ceil(np.log2(2 * N + 64)))  # mass of a GPU's count beyond P is negligible
    spec = np.fft.rfft(slot_pmf, P, axis=1).reshape(G, -1, P // 2 + 1).prod(axis=1)
    pmf = np.clip(np.fft.irfft(spec, P, axis=1)[:, : N + 1], 0.0, None)  # [G, N+1]
    gpu_mu = T * q_gpu.sum(axis=1)
    sd = np.sqrt(T * np.sum(q_gpu * (1 - q_gpu), axis=1))
    m_lo = -(-N // G)  # P(all L_g < m) = 0 for m ≤ ceil(N/G) (pigeonhole)
    m_hi = int(min(N, np.ceil(np.max(gpu_mu + 12 * sd + 6)))) + 1
    if m_hi <= m_lo:
        return float(m_lo)
    m = np.concatenate([np.arange(m_lo + 1, m_hi + 1), [N + 1]])  # thresholds; last row: P(ΣX = N)
    if np.allclose(pmf, pmf[0]):
        num = _coef_power(pmf[0], m, G, N)
    else:
        num = _coef_product(pmf, m, N)
    below = np.clip(num[:-1] / num[-1], 0.0, 1.0)
    return float(m_lo + np.sum(1.0 - below))


def _coef_power(f: np.ndarray, m: np.ndarray, G: int, N: int) -> np.ndarray:
    """[z^N] (Σ_{j<m} f_j z^j)^G for each threshold m (exchangeable GPUs), via FFT."""
    width = int(m.max())
    trunc = np.where(np.arange(width)[None, :] < m[:, None], f[None, :width], 0.0)  # [R, width]
    # The G-fold product is the pgf of a total with mean N, so coefficients past N + 12·sqrt(N) + 64
    # are negligible and P points suffice (the same bound as _coef_product): aliasing onto N is nil.
    P = 1 << int(np.ceil(np.log2(max(N + 12 * np.sqrt(N) + 64, width + 1))))
    F = np.fft.rfft(trunc, P, axis=1)
    return np.fft.irfft(F**G, P, axis=1)[:, N]


def _coef_product(pmf: np.ndarray, m: np.ndarray, N: int) -> np.ndarray:
    """[z^N] Π_g (Σ_{j<m} pmf_gj z^j) for each threshold m.

    Evaluated on P points of the unit circle: a truncated pgf is a prefix sum over j, and the
    product's coefficients beyond N + P are below P(ΣX ≥ N + P) ≈ 0, so nothing aliases onto N.
    """
    width = int(m.max())
    P = 1 << int(np.ceil(np.log2(N + 12 * np.sqrt(N) + 64)))
    k = np.arange(P // 2 + 1)  # half circle; the rest is conjugate
    circle = np.exp(-2j * np.pi * np.arange(P) / P)
    # A GPU's truncated pgf only changes with m inside the support of its pmf: below it the
    # prefix is 0, above it the full pgf. So each GPU multiplies its own rows only, and its
    # full pgf is applied to every later threshold through one running product at the end.
    order = np.argsort(m)
    ms = m[order]
    prod = np.ones((ms.size, k.size), dtype=complex)
    later = np.ones((ms.size + 1, k.size), dtype=complex)  # factor for rows >= index
    live = np.nonzero(pmf[:, :width] > _PMF_NEGLIGIBLE * pmf[:, :width].max(axis=1, keepdims=True))
    lo_of = np.full(pmf.shape[0], width)
    hi_of = np.full(pmf.shape[0], -1)
    np.minimum.at(lo_of, live[0], live[1])
    np.maximum.at(hi_of, live[0], live[1])
    for g, f in enumerate(pmf):
        lo, hi = int(lo_of[g]), int(hi_of[g])
        if hi < lo:  # no mass below width: every threshold sees a zero prefix
            prod[:] = 0.0
            continue
        j = np.arange(lo, hi + 1)
        powers = circle[(j[:, None] * k[None, :]) % P]  # w^j for j in the support
        partial = np.cumsum(f[lo : hi + 1, None] * powers, axis=0)  # [support, P/2+1]
        # rows with m - 1 < lo: zero prefix; lo <= m - 1 <= hi: partial; beyond: full pgf
        first = int(np.searchsorted(ms - 1, lo, side="left"))
        past = int(np.searchsorted(ms - 1, hi, side="right"))
        prod[:first] = 0.0
        if past > first:
            prod[first:past] *= partial[ms[first:past] - 1 - lo]
        later[past] *= partial[-1]
    prod *= np.cumprod(later[:-1], axis=0)
    weight = np.full(k.size, 2.0)
    weight[0] = weight[-1] = 1.0
    shift = np.conj(circle[(N * k) % P])
    out = np.empty(m.size)
    out[order] = np.real(prod * shift[None, :]) @ weight / P
    return out


def _max_independent(T: int, N: int, q_gpu: np.ndarray, tau: np.ndarray) -> float:
    mu = T * q_gpu.sum(axis=1)
    total_tau = tau.sum()
    inflate = 1.0 / np.maximum(1.0 - tau / total_tau, 1e-12) if total_tau > 0 else np.ones_like(tau)
    var = T * tau * inflate
    if np.all(var <= 1e-12 * np.maximum(mu, 1.0)):
        return float(mu.max())
    if np.allclose(mu, mu[0]) and np.allclose(var, var[0]):
        mu, var, power = mu[:1], var[:1], q_gpu.shape[0]
    else:
        power = 1
    sd = np.sqrt(var)
    top = int(np.argmax(mu))
    lo = max(0.0, np.floor(mu[top] - 12 * sd[top] - 2))
    hi = float(np.ceil(np.max(mu + 14 * sd + 10)))
    step = max(1.0, np.floor(np.min(sd[sd > 0]) / 4)) if np.any(sd > 0) else 1.0
    count = int(np.ceil((hi - lo) / step))
    # Σ_{m=lo+1}^{hi} g(m), g(m) = 1 − Π F(m−1); midpoint samples when step > 1
    m = lo + 1 + (np.arange(count) + 0.5) * step - 0.5 if step > 1 else lo + 1 + np.arange(count)
    cdf = _two_moment_cdf(m[None, :] - 1, mu[:, None], var[:, None])  # [G, M]
    prod = np.exp(power * np.sum(np.log(np.maximum(cdf, 1e-300)), axis=0))
    return float(lo + step * np.sum(1.0 - prod))


def _two_moment_cdf(x, mu, var):
    """P(X ≤ x) for a count with the given mean and variance: binomial when var < mean, negative
    binomial when var > mean (Poisson between), continued to real x by the incomplete beta."""
    x, mu, var = np.broadcast_arrays(x, mu, var)
    out = np.zeros(x.shape)
    point = var <= 1e-12 * np.maximum(mu, 1.0)
    out[point] = (x[point] >= mu[point] - 1e-9).astype(float)
    pois = ~point & (np.abs(var - mu) <= 1e-9 * mu)
    out[pois] = special.gammaincc(np.maximum(x[pois], -0.5) + 1, mu[pois]) * (x[pois] >= 0)
    binom = ~point & ~pois & (var < mu)
    if np.any(binom):
        p = 1 - var[binom] / mu[binom]
        n = mu[binom] / p
        xb = x[binom]
        val = special.betainc(np.maximum(n - xb, 1e-12), np.maximum(xb, 0) + 1, 1 - p)
        out[binom] = np.where(xb < 0, 0.0, np.where(xb >= n, 1.0, val))
    nb = ~point & ~pois & (var > mu)
    if np.any(nb):
        p = mu[nb] / var[nb]
        r = mu[nb] * p / (1 - p)
        xn = x[nb]
        out[nb] = np.where(xn < 0, 0.0, special.betainc(r, np.maximum(xn, 0) + 1, p))
    return out
