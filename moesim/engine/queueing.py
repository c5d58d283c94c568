"""Queueing delay before the first token under Poisson arrivals.

The prefill server is modelled as M/G/1: Poisson arrivals at rate λ (requests/s), one server
working through prompts in arrival order, service time S per request with squared coefficient of
variation c² (0 for equal prompt lengths, i.e. M/D/1). The mean wait in queue is the
Pollaczek–Khinchine formula (Kleinrock, *Queueing Systems* Vol. 1, 1975, eq. 5.105):

    W_q = λ E[S²] / (2 (1 - ρ)) = ρ S (1 + c²) / (2 (1 - ρ)),    ρ = λ S.

S is the prefill time of one request at the server's batched throughput (ttft of a batch of B
prompts / B); the request's own prefill then takes the batch's ttft_s (conservative). A pool of
``c`` identical prefill servers fed at random is ``c`` M/G/1 queues at λ / c each — an upper bound
on the shared-queue M/G/c wait. ρ ≥ 1 has no steady state: the queue grows without bound.
"""

from __future__ import annotations

import numpy as np

UNSTABLE_REASON = "arrival rate exceeds prefill capacity"


def pk_wait_s(rate, service_s, service_cv2=0.0) -> np.ndarray:
    """Mean M/G/1 wait in queue (s); inf where ρ = rate * service_s >= 1."""
    lam = np.asarray(rate, dtype=float)
    s = np.asarray(service_s, dtype=float)
    rho = lam * s
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = rho * s * (1.0 + np.asarray(service_cv2, dtype=float)) / (2.0 * (1.0 - rho))
    return np.where(rho < 1.0, np.where(lam > 0, wait, 0.0), np.inf)


MAX_SLOTS = 65_536


def erlang_c_wait_s(rate, slots, hold_s) -> np.ndarray:
    """Mean wait for one of ``slots`` sequence slots, each held ``hold_s`` (M/M/c, Erlang C).

    With offered load a = λ H: Erlang B by the stable recursion B_k = a B_{k-1} / (k + a
    B_{k-1}) (Jagerman 1974), C = c B_c / (c - a (1 - B_c)), W = C H / (c - a) (Kleinrock
    1975, section 3.5). inf where a >= c (no steady state).
    """
    lam = np.asarray(rate, dtype=float)
    hold = np.asarray(hold_s, dtype=float)
    c = np.minimum(np.floor(np.asarray(slots, dtype=float)), MAX_SLOTS)
    lam, hold, c = np.broadcast_arrays(lam, hold, c)
    a = lam * hold
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        b = np.ones(a.shape)
        top = int(np.nanmax(np.where(np.isfinite(c), c, 0.0), initial=0.0))
        for k in range(1, top + 1):
            b = np.where(k <= c, a * b / (k + a * b), b)
        erlang_c = c * b / (c - a * (1.0 - b))
        wait = erlang_c * hold / (c - a)
    ok = np.isfinite(a) & (c >= 1) & (a < c)
    return np.where(lam > 0, np.where(ok, np.nan_to_num(wait, nan=0.0), np.inf), 0.0)


def max_utilization_for_wait(max_wait_s, service_s, service_cv2=0.0) -> np.ndarray:
    """Largest ρ whose P-K wait stays within ``max_wait_s`` (the inverse of :func:`pk_wait_s` in ρ).

    From W = ρ S (1 + c²) / (2 (1 - ρ)):  ρ = 2W / (2W + S (1 + c²)); 0 where the budget is negative.
    """
    w = np.maximum(np.asarray(max_wait_s, dtype=float), 0.0)
    sc = np.asarray(service_s, dtype=float) * (1.0 + np.asarray(service_cv2, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(sc > 0, 2.0 * w / (2.0 * w + sc), 1.0)
    return np.nan_to_num(rho, nan=0.0)


def add_queueing(result: dict, rate, batch, servers=1, service_cv2=0.0) -> dict:
    """Add ``queue_delay_s``, ``ttft_with_queue_s``, ``utilization`` and ``stable`` to a prediction.

    result : a dict from ``serving.predict`` / ``predict_phase(phase='prefill')`` with ``ttft_s``
    rate : arrival rate, requests/s (array)
    batch : prompts prefilled together in ``ttft_s`` (across the layout)
    servers : independent prefill servers sharing the rate (replicas of the prefill layout)

    Where the queue is unstable the result becomes infeasible with reason
    "arrival rate exceeds prefill capacity" (an earlier reason is kept).
    """
    out = dict(result)
    ttft = np.asarray(result["ttft_s"], dtype=float)
    service = ttft / np.asarray(batch, dtype=float)
    lam = np.asarray(rate, dtype=float) / np.asarray(servers, dtype=float)
    rho = lam * service
    wait = pk_wait_s(lam, service, service_cv2)
    stable = rho < 1.0
    out.update(
        queue_delay_s=wait,
        ttft_with_queue_s=ttft + wait,
        utilization=rho,
        stable=stable,
        arrival_rate=np.asarray(rate, dtype=float),
    )
    if "feasible" in result:
        feasible = np.asarray(result["feasible"], dtype=bool)
        shape = np.broadcast(feasible, stable).shape
        reason = np.broadcast_to(np.asarray(result.get("reason", ""), dtype=object), shape).copy()
        reason[np.broadcast_to(~stable, shape) & (reason == "")] = UNSTABLE_REASON
        out["feasible"] = np.broadcast_to(feasible, shape) & np.broadcast_to(stable, shape)
        out["reason"] = reason
    return out
