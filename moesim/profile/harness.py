"""Timing harness: check a kernel against a reference, then time it fairly.

The order of one measurement (METHOD.md of the device notes, Triton's ``do_bench``):

1. build input sets from fresh random data (never zeros), enough of them that together they
   exceed the last-level cache several times over, so rotating among them keeps caches from
   flattering the kernel;
2. run once on set 0 and compare with a reference (``check`` returns ‖out − ref‖/‖ref‖); a
   wrong or non-finite answer raises ``KernelCheckError`` and nothing is timed;
3. warm up (compilation, handles, clocks) and estimate the time of one call;
4. time ``repeats`` calls, sized to a per-case time budget: CUDA events around each call; or,
   for short kernels that allow it, CUDA-graph replays of many calls (launch gaps removed);
   on CPU the host clock (``time.perf_counter``). Median, min and max over the repeats.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class KernelCheckError(RuntimeError):
    """The kernel's output disagrees with its reference (or is not finite): it is not timed."""


@dataclass(frozen=True)
class BenchSettings:
    """How hard to measure: a per-case time budget and the size of the rotating input pool."""

    device: str
    rotate_bytes: int  # inputs rotated per case: several times the last-level cache
    max_sets: int
    warmup_s: float
    budget_s: float  # time spent in timed calls per case
    min_repeats: int
    max_repeats: int
    graph_below_s: float  # capture a CUDA graph when one call is shorter than this


def default_settings(device: str, *, quick: bool, l2_bytes: int | None = None) -> BenchSettings:
    """Settings for ``device``: on CUDA rotate 4 × L2 (H100: 4 × 50 MB); short on CPU."""
    if device == "cuda":
        l2 = l2_bytes or 50 * 2**20
        return BenchSettings(
            device="cuda",
            rotate_bytes=4 * l2,
            max_sets=64,
            warmup_s=0.01 if quick else 0.02,
            budget_s=0.01 if quick else 0.025,
            min_repeats=5,
            max_repeats=200,
            graph_below_s=50e-6,
        )
    return BenchSettings(
        device="cpu",
        rotate_bytes=(16 if quick else 64) * 2**20,
        max_sets=8,
        warmup_s=0.0,
        budget_s=0.03 if quick else 0.2,
        min_repeats=3,
        max_repeats=50,
        graph_below_s=0.0,
    )


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    timing_method: str  # cuda_event | cuda_graph | perf_counter
    buffer_sets: int
    rel_err: float | None

    def as_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tensor_bytes(obj: Any) -> int:
    """Total bytes of the tensors in ``obj`` (a tensor or nested tuple/list/dict of them)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o) for o in obj.values())
    return 0


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def summarize(times_s: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of a sequence of per-call times."""
    if not times_s:
        raise ValueError("no timings to summarize")
    return statistics.median(times_s), min(times_s), max(times_s)


def bench(
    fn: Callable[..., Any],
    make_inputs: Callable[[], Sequence[Any]],
    settings: BenchSettings,
    *,
    check: Callable[[Any, Sequence[Any]], float] | None = None,
    tol: float = 1e-3,
    graphable: bool = False,
) -> Timing:
    """Check ``fn(*make_inputs())`` against a reference, then time it on rotating inputs.

    ``check(out, inputs)`` returns the relative error of ``out``; above ``tol`` (or NaN/inf)
    raises ``KernelCheckError``. ``graphable`` allows CUDA-graph replay for short calls (the
    function must not synchronise with the host).
    """
    first = tuple(make_inputs())
    set_bytes = max(tensor_bytes(first), 1)
    n_sets = max(1, min(settings.max_sets, math.ceil(settings.rotate_bytes / set_bytes)))
    sets = [first] + [tuple(make_inputs()) for _ in range(n_sets - 1)]

    rel_err = None
    out = fn(*sets[0])
    sync(settings.device)
    if check is not None:
        rel_err = float(check(out, sets[0]))
        if not (rel_err <= tol):  # also catches NaN
            raise KernelCheckError(f"relative error {rel_err:.3g} > tolerance {tol:.1g}")
    del out

    est_s = _warmup(fn, sets, settings)
    repeats = int(min(settings.max_repeats, max(settings.min_repeats, settings.budget_s / est_s)))
    if settings.device == "cuda":
        if graphable and est_s < settings.graph_below_s:
            try:
                times, per_replay = _time_cuda_graph(fn, sets, est_s, repeats)
                return Timing(*summarize(times), len(times), "cuda_graph", n_sets, rel_err)
            except Exception:  # capture refused (a host sync inside): fall back to events
                torch.cuda.synchronize()
        times = _time_cuda_events(fn, sets, repeats)
        return Timing(*summarize(times), repeats, "cuda_event", n_sets, rel_err)
    times = _time_host_clock(fn, sets, repeats, settings.device)
    return Timing(*summarize(times), repeats, "perf_counter", n_sets, rel_err)


def _warmup(fn: Callable[..., Any], sets: list[tuple], settings: BenchSettings) -> float:
    """Run until ``warmup_s`` has passed (at least twice); return seconds per call."""
    calls, start = 0, time.perf_counter()
    while True:
        fn(*sets[calls % len(sets)])
        calls += 1
        sync(settings.device)
        elapsed = time.perf_counter() - start
        if calls >= 2 and (elapsed >= settings.warmup_s or calls >= 1000):
            return max(elapsed / calls, 1e-7)


def _time_cuda_events(fn: Callable[..., Any], sets: list[tuple], repeats: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    torch.cuda.synchronize()
    for i in range(repeats):
        starts[i].record()
        fn(*sets[i % len(sets)])
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]


def _time_cuda_graph(
    fn: Callable[..., Any], sets: list[tuple], est_s: float, repeats: int
) -> tuple[list[float], int]:
    """Capture ``calls`` launches cycling through the input sets; time replays with events."""
    calls = int(min(200, max(len(sets), 10, math.ceil(200e-6 / est_s))))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            fn(*sets[i % len(sets)])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(*sets[i % len(sets)])
    graph.replay()
    torch.cuda.synchronize()
    replays = max(5, min(repeats, 50))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for i in range(replays):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) * 1e-3 / calls for s, e in zip(starts, ends, strict=True)]
    del graph
    return times, calls


def _time_host_clock(
    fn: Callable[..., Any], sets: list[tuple], repeats: int, device: str
) -> list[float]:
    times = []
    for i in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn(*sets[i % len(sets)])
        sync(device)
        times.append(time.perf_counter() - start)
    return times
