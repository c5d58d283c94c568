"""Request traffic for the request-level simulator: arrival times and token lengths.

Synthetic traffic draws inter-arrival gaps from an exponential distribution (Poisson process)
or a gamma distribution with a chosen coefficient of variation (bursty for CV > 1; the gamma
arrivals of ``vllm bench serve --burstiness``, where burstiness = 1 / CV²), and lengths from a
named distribution. A trace file (CSV or JSON lines) gives arrival times and/or lengths per
request; column names of public traces are recognised (Azure LLM inference traces 2023/2024:
``TIMESTAMP, ContextTokens, GeneratedTokens``; ShareGPT-derived length sets: ``input_len,
output_len`` or ``prompt_tokens, completion_tokens``).

Randomness comes from one ``numpy.random.Generator`` per stream (arrivals, input lengths,
output lengths), spawned from one ``SeedSequence(seed)``: the same seed gives the same traffic
bit for bit, and changing one stream's distribution leaves the others unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.errors import MoesimError

MAX_TRACE_BYTES = 2 * 1024**3  # a larger trace file is refused rather than read into memory
MAX_TOKENS = 10_000_000  # a longer request is a corrupt row, not a prompt

# Column aliases, compared case-insensitively after dropping '_', '-' and spaces.
ARRIVAL_COLUMNS = (
    "TIMESTAMP",  # Azure LLM inference traces
    "arrival_time_s",
    "arrival_s",
    "arrival_time",
    "arrival",
    "timestamp_s",
    "timestamp",
    "time_s",
    "time",
    "created",
)
INPUT_COLUMNS = (
    "ContextTokens",  # Azure
    "input_len",
    "input_length",
    "input_tokens",
    "prompt_len",
    "prompt_length",
    "prompt_tokens",
    "num_prompt_tokens",
    "num_input_tokens",
    "context_tokens",
    "isl",
)
OUTPUT_COLUMNS = (
    "GeneratedTokens",  # Azure
    "output_len",
    "output_length",
    "output_tokens",
    "completion_len",
    "completion_tokens",
    "num_output_tokens",
    "num_generated_tokens",
    "generated_tokens",
    "max_tokens",
    "osl",
)
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Traffic:
    """Requests in arrival order.

    arrival_s : [N] float64, seconds from the start, non-decreasing (NaN for closed-loop
        requests, whose arrival is the finish of the previous request of their client)
    input_tokens, output_tokens : [N] int64, >= 1
    concurrency : at most this many requests in flight: a closed loop of this many clients when
        ``arrival_s`` is NaN, an open loop capped at it otherwise (None: open loop)
    ramp_up_s : closed loop: the first ``concurrency`` requests arrive evenly over this time
    source : a short description for reports
    notes : things the reader of a report should know (sorted rows, truncation)
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    concurrency: int | None = None
    ramp_up_s: float = 0.0
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def num_requests(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def max_context_tokens(self) -> int:
        """Longest prompt + generation: the context the step-time table must cover."""
        if self.num_requests == 0:
            return 1
        return int(np.max(self.input_tokens + self.output_tokens))

    def take(self, index) -> Traffic:
        """The requests at ``index`` (an array of positions), same settings."""
        return Traffic(
            self.arrival_s[index],
            self.input_tokens[index],
            self.output_tokens[index],
            self.concurrency,
            self.ramp_up_s,
            self.source,
            self.notes,
        )


# ---------------------------------------------------------------------------- lengths
@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: ``fixed:N`` (or just ``N``), ``uniform:LO:HI`` (inclusive),
    ``normal:MEAN:STD``, ``exponential:MEAN``, ``lognormal:MEAN:SIGMA`` (mean in tokens, SIGMA
    the standard deviation of the log). Draws are rounded to integers and clipped to
    [``low``, ``high``] (``high`` from an optional last field ``:max=N``)."""

    kind: str
    a: float
    b: float = 0.0
    high: int = MAX_TOKENS
    text: str = ""

    @property
    def mean_tokens(self) -> float:
        """Mean before rounding and clipping (for defaults and reports)."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2.0
        return self.a

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.a)
        elif self.kind == "uniform":
            x = rng.integers(int(self.a), int(self.b), size=n, endpoint=True).astype(float)
        elif self.kind == "normal":
            x = rng.normal(self.a, self.b, size=n)
        elif self.kind == "exponential":
            x = rng.exponential(self.a, size=n)
        else:  # lognormal with E[X] = a: mu = ln(a) - sigma^2 / 2
            x = rng.lognormal(math.log(self.a) - self.b**2 / 2.0, self.b, size=n)
        return np.clip(np.rint(x), 1, self.high).astype(np.int64)


_LENGTH_SYNTAX = (
    "use N, fixed:N, uniform:LO:HI, normal:MEAN:STD, exponential:MEAN or lognormal:MEAN:SIGMA "
    "(optionally ending in :max=N)"
)


def parse_lengths(spec: str | int | LengthDist, what: str = "length") -> LengthDist:
    """A :class:`LengthDist` from its text form (see the class docstring)."""
    if isinstance(spec, LengthDist):
        return spec
    text = str(spec).strip()
    parts = [p.strip() for p in text.split(":")]
    high = MAX_TOKENS
    if len(parts) > 1 and parts[-1].lower().startswith("max="):
        high = _number(parts.pop()[4:], what, text, integer=True)
        if high < 1:
            raise MoesimError(f"{what} {text!r}: max must be >= 1")
    if len(parts) == 1:
        parts = ["fixed", parts[0]]
    kind, args = parts[0].lower(), parts[1:]
    arity = {"fixed": 1, "uniform": 2, "normal": 2, "exponential": 1, "lognormal": 2}
    if kind not in arity:
        raise MoesimError(f"unknown {what} distribution {kind!r} in {text!r}; {_LENGTH_SYNTAX}")
    if len(args) != arity[kind]:
        raise MoesimError(f"{what} {text!r} needs {arity[kind]} number(s); {_LENGTH_SYNTAX}")
    nums = [_number(a, what, text, integer=kind in ("fixed", "uniform")) for a in args]
    a, b = nums[0], nums[1] if len(nums) > 1 else 0.0
    if a < 1 or (kind == "uniform" and b < a):
        raise MoesimError(f"{what} {text!r}: lengths must be >= 1 (and LO <= HI)")
    if kind in ("normal", "lognormal") and b < 0:
        raise MoesimError(f"{what} {text!r}: the spread must be >= 0")
    if a > MAX_TOKENS or b > MAX_TOKENS:
        raise MoesimError(f"{what} {text!r}: lengths above {MAX_TOKENS:,} tokens are not requests")
    return LengthDist(kind, float(a), float(b), int(high), text)


def _number(text: str, what: str, spec: str, integer: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MoesimError(f"{what} {spec!r}: {text!r} is not a number; {_LENGTH_SYNTAX}") from None
    if not math.isfinite(value) or (integer and value != int(value)):
        raise MoesimError(
            f"{what} {spec!r}: {text!r} must be a finite {'integer' if integer else 'number'}"
        )
    return value


# ---------------------------------------------------------------------------- arrivals
ARRIVALS = ("poisson", "gamma", "constant")


def arrival_times(
    rng: np.random.Generator, n: int, rate_per_s: float, kind: str = "poisson", cv: float = 1.0
) -> np.ndarray:
    """Arrival times (s) of ``n`` requests at mean rate ``rate_per_s``; the first gap counts
    from 0. ``poisson``: exponential gaps (CV = 1); ``gamma``: gamma gaps with shape 1/CV² and
    mean 1/rate (CV > 1 bursty, < 1 smoother); ``constant``: equal gaps."""
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise MoesimError(f"arrival rate must be a positive number of requests/s, got {rate_per_s}")
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate_per_s, size=n)
    elif kind == "gamma":
        if not (cv > 0 and math.isfinite(cv)):
            raise MoesimError(f"gamma arrivals need a coefficient of variation > 0, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate_per_s * shape), size=n)
    elif kind == "constant":
        gaps = np.full(n, 1.0 / rate_per_s)
    else:
        raise MoesimError(f"unknown arrival process {kind!r}; use one of {', '.join(ARRIVALS)}")
    return np.cumsum(gaps)


def synthetic(
    num_requests: int,
    *,
    rate_per_s: float | None = None,
    concurrency: int | None = None,
    input_len: str | int | LengthDist = 1024,
    output_len: str | int | LengthDist = 256,
    arrival: str = "poisson",
    cv: float = 1.0,
    ramp_up_s: float = 0.0,
    seed: int = 0,
) -> Traffic:
    """Synthetic traffic: open loop at ``rate_per_s``, closed loop with ``concurrency``
    clients, or both (arrivals at the rate, at most ``concurrency`` in flight: ``vllm bench
    serve --request-rate R --max-concurrency C``); lengths from ``input_len`` / ``output_len``."""
    _check_count(num_requests)
    if rate_per_s is None and concurrency is None:
        raise MoesimError("give an arrival rate, a concurrency, or both")
    g_arr, g_in, g_out = _streams(seed)
    din, dout = parse_lengths(input_len, "input length"), parse_lengths(output_len, "output length")
    inp = din.sample(g_in, num_requests)
    out = dout.sample(g_out, num_requests)
    parts = []
    if rate_per_s is not None:
        arr = arrival_times(g_arr, num_requests, float(rate_per_s), arrival, cv)
        parts.append(
            f"{arrival} arrivals at {rate_per_s:g}/s"
            + (f" (CV {cv:g})" if arrival == "gamma" else "")
        )
    else:
        arr = np.full(num_requests, np.nan)
    if concurrency is not None:
        _check_concurrency(concurrency, ramp_up_s)
        parts.append(
            f"at most {concurrency} in flight"
            if rate_per_s is not None
            else f"closed loop, {concurrency} clients"
        )
    desc = ", ".join(parts) + f", input {din.text or din.kind}, output {dout.text or dout.kind}"
    return Traffic(arr, inp, out, concurrency, float(ramp_up_s), desc)


def _streams(seed: int) -> list[np.random.Generator]:
    try:
        seq = np.random.SeedSequence(int(seed))
    except (TypeError, ValueError):
        raise MoesimError(f"seed must be a non-negative integer, got {seed!r}") from None
    return [np.random.default_rng(s) for s in seq.spawn(3)]


MAX_REQUESTS = 100_000_000  # about 10 GB of per-request state and step log


def _check_count(n) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise MoesimError(f"the number of requests must be a positive integer, got {n!r}")
    if n > MAX_REQUESTS:
        raise MoesimError(
            f"{n:,} requests is more than the {MAX_REQUESTS:,} one run simulates; split the run"
        )


def _check_concurrency(concurrency, ramp_up_s) -> None:
    if not isinstance(concurrency, (int, np.integer)) or concurrency < 1:
        raise MoesimError(f"concurrency must be a positive integer, got {concurrency!r}")
    if not (ramp_up_s >= 0 and math.isfinite(ramp_up_s)):
        raise MoesimError(f"ramp-up time must be >= 0 seconds, got {ramp_up_s}")


# ---------------------------------------------------------------------------- traces
def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def _find_column(columns, aliases) -> str | None:
    by_key = {}
    for c in columns:
        by_key.setdefault(_key(c), c)
    for alias in aliases:
        if _key(alias) in by_key:
            return by_key[_key(alias)]
    return None


def read_trace(
    path: str | Path,
    *,
    time_unit: str = "s",
    rate_scale: float = 1.0,
    num_requests: int | None = None,
    sort: bool = True,
    max_bytes: int = MAX_TRACE_BYTES,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a trace: (arrival_s or None when the file has no arrival column, input_tokens,
    output_tokens, notes). CSV/TSV by extension, JSON lines otherwise (``.jsonl``, ``.json``).

    time_unit : unit of numeric arrival columns (s, ms, us, ns) unless the column's name ends
        in one (``arrival_time_ms``); datetime strings (Azure's ``TIMESTAMP``) are parsed as
        dates. Times are made relative to the first arrival.
    rate_scale : arrivals are compressed by this factor (2 = twice the trace's request rate)
    num_requests : keep the first N requests (after sorting)
    sort : out-of-order arrival times are sorted (stable) and noted; False refuses them
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MoesimError(f"trace not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise MoesimError(
            f"trace {path} is {size / 2**20:,.0f} MiB; the limit is {max_bytes / 2**20:,.0f} MiB (cut it, or pass a larger limit)"
        )
    if size == 0:
        raise MoesimError(f"trace {path} is empty")
    if time_unit not in TIME_UNITS:
        raise MoesimError(f"time unit {time_unit!r} must be one of {', '.join(TIME_UNITS)}")
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise MoesimError(f"rate scale must be a positive number, got {rate_scale}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(path, lines=True)
        else:
            raise MoesimError(f"trace {path}: unknown format {suffix!r}; use .csv, .tsv or .jsonl")
    except MoesimError:
        raise
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoesimError(f"trace {path} cannot be parsed: {first}") from None
    if len(df) == 0:
        raise MoesimError(f"trace {path} has no rows")
    cols = list(df.columns)
    c_in, c_out = _find_column(cols, INPUT_COLUMNS), _find_column(cols, OUTPUT_COLUMNS)
    c_arr = _find_column(cols, ARRIVAL_COLUMNS)
    unit_s = TIME_UNITS[time_unit]
    if c_arr is None:  # a unit in the name: arrival_time_ms, timestamp_us, ...
        for unit in ("ms", "us", "ns", "s"):
            c_arr = _find_column(cols, [f"{a}_{unit}" for a in ARRIVAL_COLUMNS])
            if c_arr is not None:
                unit_s = TIME_UNITS[unit]
                break
    for label, found, aliases in (
        ("input", c_in, INPUT_COLUMNS),
        ("output", c_out, OUTPUT_COLUMNS),
    ):
        if found is None:
            raise MoesimError(
                f"trace {path}: no {label}-token column among {', '.join(map(str, cols[:8]))}; "
                f"name it one of {', '.join(aliases[:6])}"
            )
    inp = _lengths(df[c_in], path, c_in)
    out = _lengths(df[c_out], path, c_out)
    notes: list[str] = []
    arr = None
    if c_arr is not None:
        arr = _times(df[c_arr], path, c_arr, unit_s)
        order = np.argsort(arr, kind="stable")
        if np.any(np.diff(arr) < 0):
            n_bad = int(np.sum(np.diff(arr) < 0))
            if not sort:
                row = int(np.flatnonzero(np.diff(arr) < 0)[0]) + 3  # header is row 1
                raise MoesimError(
                    f"trace {path}: arrival times go backwards at row {row} ({c_arr})"
                )
            notes.append(f"{n_bad} out-of-order arrival times sorted")
            arr, inp, out = arr[order], inp[order], out[order]
        arr = (arr - arr[0]) / rate_scale
    if num_requests is not None:
        _check_count(num_requests)
        if num_requests < len(inp):
            notes.append(f"first {num_requests:,} of {len(inp):,} requests")
        inp, out = inp[:num_requests], out[:num_requests]
        arr = arr[:num_requests] if arr is not None else None
    return arr, inp, out, tuple(notes)


def _lengths(col, path, name) -> np.ndarray:
    import pandas as pd

    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(x) | (x < 1) | (x != np.floor(x)) | (x > MAX_TOKENS)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise MoesimError(
            f"trace {path}: {name} must be whole numbers of tokens >= 1; row {i + 2} holds {col.iloc[i]!r}"
            + (f" ({int(bad.sum())} bad rows)" if bad.sum() > 1 else "")
        )
    return x.astype(np.int64)


def _times(col, path, name, unit_s: float) -> np.ndarray:
    import pandas as pd

    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    if np.all(np.isnan(x)) and not pd.api.types.is_numeric_dtype(col):  # Azure's TIMESTAMP
        try:
            t = pd.to_datetime(col, errors="coerce", format="mixed")
        except (ValueError, TypeError):
            t = pd.Series(pd.NaT, index=col.index)
        ns = t.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(float)
        x = np.where(t.isna().to_numpy(), np.nan, ns * 1e-9)
    else:
        x = x * unit_s
    bad = ~np.isfinite(x)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise MoesimError(f"trace {path}: {name} must be a time; row {i + 2} holds {col.iloc[i]!r}")
    return x


def from_trace(
    path: str | Path,
    *,
    rate_per_s: float | None = None,
    concurrency: int | None = None,
    arrival: str = "poisson",
    cv: float = 1.0,
    ramp_up_s: float = 0.0,
    seed: int = 0,
    time_unit: str = "s",
    rate_scale: float = 1.0,
    num_requests: int | None = None,
    sort: bool = True,
) -> Traffic:
    """Traffic from a trace file. Its arrival times are used unless a rate is given (then the
    trace supplies the lengths only, as ``vllm bench serve`` replays ShareGPT lengths at a
    chosen rate); a concurrency without a rate makes a closed loop over the trace's lengths,
    with a rate it caps the requests in flight. A trace without an arrival column needs a rate
    or a concurrency."""
    arr, inp, out, notes = read_trace(
        path, time_unit=time_unit, rate_scale=rate_scale, num_requests=num_requests, sort=sort
    )
    name = Path(path).name
    if rate_per_s is not None:
        arr = arrival_times(_streams(seed)[0], len(inp), float(rate_per_s), arrival, cv)
        desc = f"trace {name} lengths, {arrival} arrivals at {rate_per_s:g}/s"
    elif concurrency is not None:
        arr = None
        desc = f"trace {name} lengths, closed loop, {concurrency} clients"
    else:
        desc = f"trace {name}"
    if concurrency is not None:
        _check_concurrency(concurrency, ramp_up_s)
        if arr is not None:
            desc += f", at most {concurrency} in flight"
        times = np.full(len(inp), np.nan) if arr is None else arr
        return Traffic(times, inp, out, int(concurrency), float(ramp_up_s), desc, notes)
    if arr is None:
        raise MoesimError(
            f"trace {path} has no arrival-time column; give a rate or a concurrency (or add one of {', '.join(ARRIVAL_COLUMNS[:4])})"
        )
    return Traffic(arr, inp, out, None, 0.0, desc, notes)
