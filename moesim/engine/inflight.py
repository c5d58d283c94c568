"""In-flight (continuous) batching with chunked prefill under a per-step token budget.

The schedule is Sarathi-Serve's (Agrawal et al., OSDI'24), as vLLM (``max_num_batched_tokens``),
SGLang (``chunked_prefill_size``) and TensorRT-LLM (``max_num_tokens``) run it: every step
carries one token for each running decode and fills the rest of the budget ``tau`` with prefill
chunks, first come first served. A step is *mixed* (a prefill chunk plus all running decodes) or
*decode-only*. Steps are timed by :func:`moesim.cost.step.step` (see :class:`StepCost`).

Steady state of one scheduler unit (a DP group's micro-batch; with ``pp`` stages a group runs
``pp`` micro-batches in flight, each iterating once per pipeline latency) with ``R`` requests
holding a slot, prompts of I tokens and O output tokens (the first comes out of the last prefill
chunk, the other O - 1 out of decode steps), in units of steps (fluid limit):

- a request prefilling alone takes k = ceil(I / (tau - d_m)) chunks; it holds its slot for
  k + O - 1 steps, so requests complete at r = R / (k + O - 1) per step (Little's law);
- a share f = min(1, r k) of the steps is mixed, with n = r k / f requests prefilling and
  d_m = R - n decoding; the other steps decode all R;
- the budget saturates when r (I + O - 1) > tau: then every step is mixed, carries exactly tau
  tokens, and r = tau / (I + O - 1) (Sarathi-Serve's fixed-budget throughput);
- time per step t = f t_mixed + (1 - f) t_decode; requests/s X = r / t;
- TPOT (benchmark definition, (e2e - TTFT) / (O - 1)) is the decode-token-weighted step time
  (f d_m t_mixed + (1 - f) R t_decode) / (r (O - 1)): the slowdown decodes suffer in mixed steps;
- a closed loop of C clients (as ``vllm bench serve --max-concurrency``, ``genai-perf``) keeps
  C requests in the system: e2e = C / X, TTFT = e2e - (O - 1) TPOT (queueing for a slot, waiting
  for budget and the chunked prefill itself), R = min(C, max batch, KV capacity).

With an arrival rate instead (open loop) R is the running count whose throughput equals the rate,
and TTFT adds the M/G/1 wait of the prefill queue (:mod:`moesim.engine.queueing`) and half a step
(a request arrives during a running step). ISL/OSL may be distributions (:class:`LengthDist`);
the schedule uses their moments: E[k], E[I], E[O], the token-weighted prefill and decode contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import MoesimError
from moesim.spec.deployment import Layout

# Operators whose cost depends on the batch's sequences (contexts, chunking) rather than on its
# token count; a mixed step takes every other operator at its total token count.
COMPOSITION_OPS = ("attn.core", "attn.core_sliding", "attn.kv_b", "attn.absorb")
OVERLOAD_REASON = "arrival rate exceeds the engine's capacity"
ARRIVALS = ("bunched", "spread", "poisson")


# ---------------------------------------------------------------------------- lengths
@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts: ``values`` with probabilities ``probs`` (discrete)."""

    values: tuple[float, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        v, p = np.asarray(self.values, dtype=float), np.asarray(self.probs, dtype=float)
        if v.ndim != 1 or v.size == 0 or v.shape != p.shape:
            raise MoesimError("a length distribution needs matching, non-empty values and probs")
        if np.any(v < 1) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise MoesimError("lengths must be >= 1 and probabilities sum to 1")

    @classmethod
    def fixed(cls, n: float) -> LengthDist:
        return cls((float(n),), (1.0,))

    @classmethod
    def uniform(cls, lo: int, hi: int, points: int = 64) -> LengthDist:
        """Integers uniform on [lo, hi] (quantised to at most ``points`` values)."""
        if not 1 <= lo <= hi:
            raise MoesimError(f"uniform lengths need 1 <= lo <= hi, got {lo}, {hi}")
        v = np.unique(np.round(np.linspace(lo, hi, min(points, hi - lo + 1))))
        return cls(tuple(v), tuple(np.full(v.size, 1.0 / v.size)))

    @classmethod
    def normal(cls, mean: float, std: float, points: int = 64) -> LengthDist:
        """A normal distribution truncated to >= 1, on ``points`` quantiles."""
        if mean < 1 or std < 0:
            raise MoesimError(f"normal lengths need mean >= 1 and std >= 0, got {mean}, {std}")
        if std == 0:
            return cls.fixed(mean)
        from statistics import NormalDist

        q = (np.arange(points) + 0.5) / points
        v = np.maximum(np.round([NormalDist(mean, std).inv_cdf(x) for x in q]), 1.0)
        return cls.from_samples(v)

    @classmethod
    def from_samples(cls, samples) -> LengthDist:
        v, counts = np.unique(np.asarray(samples, dtype=float), return_counts=True)
        return cls(tuple(v), tuple(counts / counts.sum()))

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        """``N`` | ``uniform:LO:HI`` | ``normal:MEAN:STD`` | ``file:PATH`` (one length a line)."""
        kind, _, rest = str(spec).partition(":")
        try:
            if not rest:
                return cls.fixed(float(kind))
            args = rest.split(":")
            if kind == "uniform" and len(args) == 2:
                return cls.uniform(int(args[0]), int(args[1]))
            if kind == "normal" and len(args) == 2:
                return cls.normal(float(args[0]), float(args[1]))
            if kind == "file":
                from pathlib import Path

                text = Path(rest).read_text().split()
                return cls.from_samples([float(x) for x in text])
        except (ValueError, OSError) as exc:
            raise MoesimError(f"bad length distribution {spec!r}: {exc}") from None
        raise MoesimError(
            f"bad length distribution {spec!r}; use N, uniform:LO:HI, normal:MEAN:STD or file:PATH"
        )

    @property
    def mean(self) -> float:
        return float(np.dot(self.values, self.probs))

    def expect(self, fn) -> np.ndarray:
        """E[fn(L)], ``fn`` vectorised; broadcasts over the other arrays it closes over."""
        v = np.asarray(self.values, dtype=float)
        out = 0.0
        for value, p in zip(v, self.probs, strict=True):
            out = out + p * np.asarray(fn(value), dtype=float)
        return np.asarray(out)


def _varies(length) -> bool:
    return isinstance(length, LengthDist) and len(length.values) > 1


def _mean(length) -> np.ndarray:
    return np.asarray(length.mean if isinstance(length, LengthDist) else length, dtype=float)


def _expect(length, fn) -> np.ndarray:
    if isinstance(length, LengthDist):
        return length.expect(fn)
    return np.asarray(fn(np.asarray(length, dtype=float)), dtype=float)


# ---------------------------------------------------------------------------- step costs
@dataclass
class StepTiming:
    """Latency of one scheduler iteration through the pipeline, its roofline floor, and the
    communication share of its per-stage time."""

    time_s: np.ndarray
    floor_s: np.ndarray
    comm_share: np.ndarray
    routing: object = None


def _sum(ops, keep) -> tuple[np.ndarray, np.ndarray]:
    t = sum((o.time_s for o in ops if keep(o)), np.asarray(0.0))
    f = sum((o.floor_s for o in ops if keep(o)), np.asarray(0.0))
    return np.asarray(t), np.asarray(f)


def _composition(o) -> bool:
    return o.per_stage and o.name in COMPOSITION_OPS


def _once(o) -> bool:
    return not o.per_stage and o.name != "pp.send"


class StepCost:
    """Times of one scheduler iteration (one micro-batch through all ``pp`` stages) of a given
    composition, from :func:`moesim.cost.step.step` — whatever efficiencies and overlap it models.

    A mixed step is costed from three evaluations: every token-count operator (projections, FFN,
    experts, norms, collectives, sends) at the step's total tokens; the attention of the prefill
    chunks at their context; the attention of the decodes at theirs; and the LM head / sampler for
    the sequences that sample. They are combined through the pipeline exactly as ``step`` does
    (``test_mixed_step_recombines_like_step`` holds the two equal).
    """

    def __init__(self, model, hw, layout: Layout, routing=None):
        self.model, self.hw, self.layout, self.routing = model, hw, layout, routing
        self.split = 2.0 if layout.overlap == "two-batch" else 1.0

    def _step(self, phase, seqs, new_tokens, context):
        from moesim.cost.step import step

        return step(
            self.model, self.hw, self.layout, phase, seqs, new_tokens, context, self.routing, 1.0
        )

    def decode(self, seqs, context) -> StepTiming:
        """``seqs`` sequences (one micro-batch of one DP group) decoding at ``context``."""
        res = self._step("decode", np.maximum(seqs, 1e-9), 1.0, context)
        return StepTiming(res.time_s, res.floor_s, res.comm_share, res.routing)

    def mixed(
        self, decode_seqs, decode_context, prefill_tokens, prefill_seqs, prefill_context
    ) -> StepTiming:
        """``decode_seqs`` decodes at ``decode_context`` plus ``prefill_tokens`` of prompt in
        ``prefill_seqs`` chunks of equal size, each after ``prefill_context`` cached tokens."""
        d = np.asarray(decode_seqs, dtype=float)
        p = np.asarray(prefill_tokens, dtype=float)
        s = np.maximum(np.asarray(prefill_seqs, dtype=float), 1e-9)
        tokens = np.maximum(d + p, 1e-9)
        lin = self._step("prefill", 1.0, tokens, 0.0)
        pre = self._step("prefill", s, np.maximum(p, 1e-9) / s, prefill_context)
        dec = self._step("decode", np.maximum(d, 1e-9), 1.0, decode_context)
        has_p, has_d = p > 0, d > 0
        parts = {}
        for name, res, on in (("lin", lin, True), ("pre", pre, has_p), ("dec", dec, has_d)):
            ct, cf = _sum(res.ops, _composition)
            ot, of = _sum(res.ops, _once)
            parts[name] = (np.where(on, ct, 0.0), np.where(on, cf, 0.0), np.where(on, ot, 0.0),
                           np.where(on, of, 0.0))  # fmt: skip
        d_compute = parts["pre"][0] + parts["dec"][0] - parts["lin"][0]
        d_floor = parts["pre"][1] + parts["dec"][1] - parts["lin"][1]
        once_t = parts["pre"][2] + parts["dec"][2]
        once_f = parts["pre"][3] + parts["dec"][3]
        time, floor, share = recombine(lin, self.layout, d_compute, d_floor, once_t, once_f)
        return StepTiming(time, floor, share, lin.routing)


def recombine(res, layout: Layout, d_compute, d_floor, once_t, once_f):
    """(time, floor, comm share) of ``res`` (a :class:`~moesim.cost.step.StepResult`) with its
    per-stage compute changed by ``d_compute`` (floor ``d_floor``) and its once-per-step operators
    replaced by ``once_t`` / ``once_f``.

    ``res`` is the step of all the step's tokens, so its time already carries what ``step``
    models beyond a sum of operators (the per-layer two-batch overlap, the busiest DP rank, the
    host-launch bound); the composition-dependent attention is added to it on every stage,
    outside any overlap (for a step of one kind the delta is zero and this is ``step`` itself;
    for a mixed step under two-batch overlap it charges the attention difference in full, an
    upper bound on what the overlap would hide). time = res + pp (d_compute + once - res once).
    """
    pp = layout.arr("pp")
    ot_old, of_old = _sum(res.ops, _once)
    time = np.asarray(res.time_s) + pp * (d_compute + once_t - ot_old)
    floor = np.asarray(res.floor_s) + pp * (d_floor + once_f - of_old)
    compute = np.asarray(res.compute_s) + d_compute
    comm = np.asarray(res.comm_s)
    total = compute + comm
    share = np.where(total > 0, comm / np.where(total > 0, total, 1.0), 0.0)
    return time, np.minimum(floor, time), share


# ---------------------------------------------------------------------------- the schedule
def schedule(
    cost,
    *,
    running,
    input_len,
    output_len,
    token_budget,
    prefix_cache_hit_rate=0.0,
    arrivals: str = "bunched",
    iterations: int = 5,
) -> dict:
    """Steady state of one scheduler unit with ``running`` requests holding a slot (module
    docstring). ``cost`` has ``mixed(...)`` and ``decode(...)`` like :class:`StepCost`. Returns per
    unit: ``requests_per_step``, ``mixed_fraction``, ``decode_seqs_mixed``, ``prefill_tokens``,
    ``prefill_seqs``, ``chunks``, ``saturated``, ``mixed`` / ``decode`` (:class:`StepTiming`),
    ``step_s`` (mean), ``requests_per_s``, ``tpot_s``, ``tpot_floor_s``, ``prefill_s`` (a
    request's time in prefill when it never waits for budget), ``prefill_floor_s``."""
    R = np.asarray(running, dtype=float)
    tau = np.asarray(token_budget, dtype=float)
    hit = np.clip(np.asarray(prefix_cache_hit_rate, dtype=float), 0.0, 1.0)

    def new_tokens(i):  # prompt tokens computed (the rest come from the prefix cache)
        return np.maximum(i - np.floor(i * hit), 1.0)

    I_new = _expect(input_len, new_tokens)
    n_out = _mean(output_len)
    O1 = np.maximum(n_out - 1.0, 0.0)
    # Context a prefill token attends to beyond its own chunk: E[cached + (I_new + 1) / 2] per
    # token, token-weighted (causal pairs of a prompt, I_new (I_new + 1) / 2, however chunked).
    pairs_per_token = _expect(input_len, lambda i: new_tokens(i) * (i - new_tokens(i))
                              + new_tokens(i) * (new_tokens(i) + 1.0) / 2.0) / I_new  # fmt: skip
    # Decode context, weighted by decode tokens: step j of a request sees I + j tokens.
    if isinstance(output_len, LengthDist) or isinstance(input_len, LengthDist):
        I_mean = _mean(input_len)
        ctx_d = I_mean + _expect(
            output_len, lambda o: np.maximum(o - 1.0, 0.0) * o / 2.0
        ) / np.maximum(O1, 1e-9)
    else:
        ctx_d = np.asarray(input_len, dtype=float) + n_out / 2.0

    # How prompts reach the budget (the discrete-event reference in tests/test_inflight.py holds
    # each case):
    # - "bunched": clients that start together with fixed lengths stay together, as benchmark
    #   clients do. The R requests of a unit form one cohort whose prompts arrive back to back
    #   each round and fill S = ceil(R I / room) steps (room = budget left by the decodes); a
    #   prompt touches 1 + (S - 1) / R of those steps on average (its first may share a step with
    #   the one before); a round lasts that plus O - 1 decode steps.
    # - "spread": the same clients evenly desynchronised: one prompt per mixed step; a prompt
    #   needing k > 1 chunks runs k - 1 full chunks and one tail.
    # - "poisson" (an open loop, or lengths that vary: completions then superpose independent
    #   renewal processes, close to Poisson by Palm-Khintchine): prompts that fit one step arrive
    #   Poisson(r) per step, so a share 1 - exp(-r) of the steps is mixed. Prompts needing k > 1
    #   chunks space themselves instead: one that finds the budget taken starts a step later and
    #   keeps that offset (the reference shows +1 % TTFT at a prefill utilisation of 0.44, +7 %
    #   at 0.86 over k chunk steps).
    if arrivals not in ARRIVALS:
        raise MoesimError(f"arrivals {arrivals!r} must be one of {', '.join(ARRIVALS)}")
    random = _varies(input_len) or _varies(output_len) or arrivals == "poisson"
    bunched = arrivals == "bunched" and not random
    Rp = np.maximum(R, 1e-12)
    d_m = np.maximum(R - 1.0, 0.0)
    for _ in range(iterations):
        room = np.maximum(tau - d_m, 1.0)
        k = _expect(input_len, lambda i, room=room: np.ceil(new_tokens(i) / room))
        if bunched:
            # whole prompts (k = 1): groups of g = room // I arrive together, S = ceil(R / g)
            # steps a round, one step each; longer prompts stream through S = ceil(R I / room)
            # budget-filled steps, each touching 1 + (S - 1) / R of them.
            whole = k <= 1.0
            g = np.clip(np.floor(room / np.maximum(I_new, 1.0)), 1.0, np.maximum(R, 1.0))
            S = np.where(whole, np.ceil(R / g), np.ceil(R * I_new / room))
            steps_pre = np.where(whole, 1.0, 1.0 + np.maximum(S - 1.0, 0.0) / Rp)
            r_b = R / (steps_pre + O1)
            f = np.minimum(1.0, r_b * S / Rp)
            n_pre = np.where(f > 0, r_b * steps_pre / np.maximum(f, 1e-12), 0.0)
        else:
            steps_pre = k
            r_b = R / (k + O1)
            rho = r_b * k
            f = np.where(random & (k <= 1.0), -np.expm1(-rho), np.minimum(1.0, rho))
            n_pre = np.where(f > 0, rho / np.maximum(f, 1e-12), 0.0)
        d_m = np.maximum(R - n_pre, 0.0)
    r_a = tau / (I_new + O1)
    saturated = r_b > r_a
    r = np.where(saturated, r_a, r_b)
    f = np.where(saturated, 1.0, f)
    d_m = np.where(saturated, r_a * O1, d_m)
    p_m = np.where(saturated, tau - d_m, r * I_new / np.maximum(f, 1e-12))
    chunk = np.minimum(p_m, I_new)
    s_p = p_m / np.maximum(chunk, 1e-9)
    c_pre = np.maximum(pairs_per_token - (chunk + 1.0) / 2.0, 0.0)

    # Mixed steps of two kinds (A and B, B a share w_b of them), at their exact compositions
    # rather than the mean one (a short tail costs about a decode step while a full chunk may be
    # compute-bound): a spread prompt alone in k > 1 chunks runs k - 1 full chunks and a tail;
    # a bunched round runs S - 1 full groups and a remainder.
    room = np.maximum(tau - d_m, 1.0)
    k = _expect(input_len, lambda i: np.ceil(new_tokens(i) / room))
    cached = _expect(input_len, lambda i: i - new_tokens(i))
    one = (d_m, p_m, s_p, c_pre)
    if bunched:
        two = ~saturated & (S > 1.0)
        rem = np.maximum(R - (S - 1.0) * g, 1.0)
        rest = np.maximum(R * I_new - (S - 1.0) * room, 1.0)
        c_room = np.maximum(pairs_per_token - (np.minimum(room, I_new) + 1.0) / 2.0, 0.0)
        c_rest = np.maximum(pairs_per_token - (np.minimum(rest, I_new) + 1.0) / 2.0, 0.0)
        comp_a = (
            np.where(whole, np.maximum(R - g, 0.0), d_m),
            np.where(whole, g * I_new, room),
            np.where(whole, g, room / np.minimum(room, I_new)),
            np.where(whole, cached, c_room),
        )
        comp_b = (
            np.where(whole, np.maximum(R - rem, 0.0), d_m),
            np.where(whole, rem * I_new, rest),
            np.where(whole, rem, rest / np.minimum(rest, I_new)),
            np.where(whole, cached, c_rest),
        )
        # one group: every prompt of the unit in one step, no decodes beside it
        comp_a = tuple(np.where(~saturated & (S <= 1.0) & whole, x, y) for x, y in zip(
            (0.0, R * I_new, R, cached), comp_a, strict=True))  # fmt: skip
        w_b = np.where(two, 1.0 / np.maximum(S, 1.0), 0.0)
    else:
        two = ~saturated & (f < 1.0) & (k > 1.0)
        tail = _expect(
            input_len, lambda i: new_tokens(i) - (np.ceil(new_tokens(i) / room) - 1.0) * room
        )
        comp_a = (d_m, room, 1.0, cached + np.maximum(k - 2.0, 0.0) / 2.0 * room)
        comp_b = (d_m, tail, 1.0, cached + (k - 1.0) * room)
        w_b = np.where(two, 1.0 / np.maximum(k, 1.0), 0.0)
    use_a = ~saturated & (two | (bunched and (S <= 1.0)))
    d_a, p_a, s_a, c_a = (np.where(use_a, x, y) for x, y in zip(comp_a, one, strict=True))
    d_b, p_b, s_b, c_b = (np.where(two, x, y) for x, y in zip(comp_b, one, strict=True))
    first = cost.mixed(d_a, ctx_d, p_a, s_a, c_a)
    last = cost.mixed(d_b, ctx_d, p_b, s_b, c_b) if np.any(two) else first
    t_a, t_b = np.asarray(first.time_s), np.asarray(last.time_s)
    f_a, f_b = np.asarray(first.floor_s), np.asarray(last.floor_s)
    t_m = (1.0 - w_b) * t_a + w_b * t_b
    fm = (1.0 - w_b) * f_a + w_b * f_b
    mixed = StepTiming(t_m, fm, first.comm_share, first.routing)

    # Time a request spends prefilling, every step of it a mixed one: its chunks; saturated,
    # also the wait for the budget (Little: requests prefilling per step over completions per
    # step); a bunched prompt, the step of its group (or its stream of budget-filled steps).
    waiting = np.maximum(R - d_m, 0.0) / np.maximum(r, 1e-12)
    prefill_s = np.where(saturated, np.maximum(waiting, 1.0) * t_m, steps_pre * t_m)
    prefill_floor = np.where(saturated, np.maximum(waiting, 1.0) * fm, steps_pre * fm)
    if bunched:
        whole_s = ((S - 1.0) * g * t_a + rem * t_b) / Rp
        whole_f = ((S - 1.0) * g * f_a + rem * f_b) / Rp
        share = np.clip((S - 1.0) * room / np.maximum(R * I_new, 1e-12), 0.0, 1.0)
        extra = np.maximum(steps_pre - 1.0, 0.0)
        stream_s = share * t_a + (1.0 - share) * t_b + extra * t_a
        stream_f = share * f_a + (1.0 - share) * f_b + extra * f_a
        single = S <= 1.0
        prefill_s = np.where(
            saturated, prefill_s, np.where(single, t_a, np.where(whole, whole_s, stream_s))
        )
        prefill_floor = np.where(
            saturated, prefill_floor, np.where(single, f_a, np.where(whole, whole_f, stream_f))
        )

    decode = cost.decode(R, ctx_d)
    t_d, fd = np.asarray(decode.time_s), np.asarray(decode.floor_s)
    step_s = f * t_m + (1.0 - f) * t_d
    # decode tokens (and their step times) per mixed step, by kind
    dd_m = (1.0 - w_b) * d_a + w_b * d_b
    dt_m = (1.0 - w_b) * d_a * t_a + w_b * d_b * t_b
    df_m = (1.0 - w_b) * d_a * f_a + w_b * d_b * f_b
    with np.errstate(divide="ignore", invalid="ignore"):
        X = r / step_s
        dec_tokens = np.maximum(f * dd_m + (1.0 - f) * R, 1e-12)  # decode tokens per step
        tpot = np.where(O1 > 0, (f * dt_m + (1.0 - f) * R * t_d) / dec_tokens, t_d)
        tpot_floor = np.where(O1 > 0, (f * df_m + (1.0 - f) * R * fd) / dec_tokens, fd)
    return {
        "requests_per_step": r,
        "mixed_fraction": f,
        "decode_seqs_mixed": d_m,
        "prefill_tokens": p_m,
        "prefill_seqs": s_p,
        "chunks": k,
        "saturated": saturated,
        "mixed": mixed,
        "decode": decode,
        "step_s": step_s,
        "requests_per_s": X,
        "tpot_s": tpot,
        "tpot_floor_s": tpot_floor,
        # Time in the prefill state (Little: requests prefilling per step / completions per step),
        # every such step a mixed one: k chunks alone, longer when waiting for the budget.
        "prefill_s": prefill_s,
        "prefill_steps": np.where(saturated, np.maximum(waiting, 1.0), steps_pre),
        "prefill_floor_s": prefill_floor,
        "decode_context": ctx_d,
        "input_tokens": I_new,
    }


# ---------------------------------------------------------------------------- serving
@dataclass
class _Setup:
    """What a layout, an engine and the traffic fix before any step is timed."""

    engine: object
    groups: np.ndarray  # DP groups x replicas (schedulers)
    pp: np.ndarray
    kv: dict  # moesim.engine.memory.kv_capacity of one scheduler
    max_batch: np.ndarray  # running cap per scheduler (engine and --max-batch)
    cap: np.ndarray  # most requests holding a slot per scheduler: min(max batch, KV)


def _setup(model, hw, layout, input_len, output_len, engine, token_budget, max_batch) -> _Setup:
    from moesim.engine import memory as mem
    from moesim.engine.presets import engine_preset, sglang_max_running

    eng = engine_preset(engine, hw)
    if token_budget is not None:
        eng = eng.with_(token_budget=int(np.max(token_budget)))
    tau = np.asarray(token_budget if token_budget is not None else eng.token_budget, dtype=float)
    kv = mem.kv_capacity(
        model, hw, layout, input_len=_expect(input_len, lambda i: i),
        output_len=_mean(output_len), engine=eng, max_tokens_per_step=tau,
    )  # fmt: skip
    # Admission at full length with lengths drawn from a distribution: blocks per request on average.
    if isinstance(input_len, LengthDist) or isinstance(output_len, LengthDist):
        B = float(eng.kv_block_tokens)
        out = (
            output_len
            if isinstance(output_len, LengthDist)
            else LengthDist.fixed(float(np.max(output_len)))
        )
        blocks = _expect(input_len, lambda i: out.expect(lambda o: np.ceil((i + o) / B)))
        kv["blocks_per_request"] = blocks
        kv["max_seqs"] = np.floor(kv["kv_blocks"] / blocks)
        kv["max_concurrency"] = kv["max_seqs"] * layout.arr("dp") * layout.arr("replicas")
    if eng.max_batch is not None:
        engine_cap = np.asarray(float(eng.max_batch))
    else:
        ctx_len = model.max_position_embeddings or 32768
        engine_cap = sglang_max_running(kv["kv_tokens"], ctx_len)
    cap_batch = (
        engine_cap if max_batch is None else np.minimum(engine_cap, np.asarray(max_batch, float))
    )
    cap = np.minimum(cap_batch, kv["max_seqs"])
    groups = layout.arr("dp") * layout.arr("replicas")
    return _Setup(eng, groups, layout.arr("pp"), kv, cap_batch, cap)


def _units(setup: _Setup, concurrency):
    """(active schedulers x micro-batches, requests per unit) for C clients spread evenly."""
    C = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    active = np.minimum(setup.groups, C)
    per_group = C / active
    micro = np.clip(np.floor(per_group), 1.0, setup.pp)
    return active * micro, per_group / micro, micro


def predict_inflight(
    model,
    hw,
    layout: Layout | None = None,
    *,
    concurrency=None,
    rate=None,
    input_len=1024,
    output_len=256,
    engine=None,
    token_budget=None,
    max_batch=None,
    routing=None,
    prefix_cache_hit_rate=0.0,
    breakdown: bool = False,
    arrivals: str = "bunched",
) -> dict:
    """Serve under in-flight batching with chunked prefill: a closed loop of ``concurrency``
    clients, or (``rate``, requests/s over the layout) an open loop. Returns today's prediction
    keys (README) plus ``concurrency``, ``token_budget``, ``max_batch``, ``engine``,
    ``running_seqs``, ``queue_delay_s``, ``mixed_step_fraction``, ``mixed_step_s``,
    ``decode_step_s``, ``prefill_chunk_tokens``, ``requests_per_s``,
    ``total_tokens_per_s_per_gpu``, ``kv_cache_occupancy``, ``kv_cache_capacity_tokens``.

    ``input_len`` / ``output_len``: token counts (arrays broadcast) or :class:`LengthDist`.
    ``engine``: vllm | sglang | trtllm or an :class:`~moesim.engine.presets.EngineConfig`;
    ``token_budget`` / ``max_batch`` override its per-step token budget and running cap.
    ``arrivals`` (closed loop, fixed lengths): ``bunched`` (clients started together, as
    benchmark clients are) or ``spread`` (desynchronised); see :func:`schedule`.
    """
    from moesim.cost.ops import routing_or_default

    if (concurrency is None) == (rate is None):
        raise MoesimError("give a concurrency (closed loop) or an arrival rate (open loop)")
    layout = layout or Layout()
    routing = routing_or_default(routing)
    setup = _setup(model, hw, layout, input_len, output_len, engine, token_budget, max_batch)
    tau = np.asarray(setup.engine.token_budget if token_budget is None else token_budget, float)
    cost = StepCost(model, hw, layout, routing)
    kw = dict(input_len=input_len, output_len=output_len, token_budget=tau,
              prefix_cache_hit_rate=prefix_cache_hit_rate)  # fmt: skip
    if concurrency is not None:
        units, c_unit, micro = _units(setup, concurrency)
        loop = closed_loop(cost, clients=c_unit, cap=setup.cap / micro, arrivals=arrivals, **kw)
        st, R, X = loop, loop["running"], loop["requests_per_s"]
        wait = loop["queue_delay_s"]
        ttft = wait + _pipelined(loop, layout)
        e2e = ttft + np.maximum(_mean(output_len) - 1.0, 0.0) * st["tpot_s"]
        conc = np.asarray(concurrency, dtype=float)
        stable = np.ones(np.shape(X), dtype=bool)
    else:
        units = setup.groups * setup.pp
        lam = np.asarray(rate, dtype=float) / units
        R, st, stable = _open_loop(cost, lam, setup.cap / setup.pp, kw)
        from moesim.engine.queueing import pk_wait_s

        wait = pk_wait_s(lam, st["prefill_s"])
        ttft = _pipelined(st, layout) + wait + st["step_s"] / 2.0
        X = np.where(stable, lam, st["requests_per_s"])
        e2e = ttft + np.maximum(_mean(output_len) - 1.0, 0.0) * st["tpot_s"]
        conc = R * units
    out = _outputs(model, hw, layout, setup, st, R, units, X, ttft, e2e, wait, conc, tau,
                   input_len, output_len, stable)  # fmt: skip
    if rate is not None:
        out["arrival_rate"] = np.asarray(rate, dtype=float)
        out["stable"] = stable
    if breakdown:
        out["breakdown"] = _breakdown(cost, st)
    return out


def _pipelined(st: dict, layout: Layout) -> np.ndarray:
    """A request's prefill time when its c chunks follow one another through the pp stages
    (chunked pipelining): (pp + c - 1) stage cycles instead of c pipeline latencies of pp cycles
    (the sends between stages are inside each latency and counted once per chunk here, an upper
    bound). An unsplit prompt (c = 1) still crosses every stage in turn."""
    pp = layout.arr("pp")
    c = np.maximum(np.asarray(st["prefill_steps"], dtype=float), 1.0)
    return st["prefill_s"] * (pp + c - 1.0) / (pp * c)


def closed_loop(cost, *, clients, cap, input_len, output_len, token_budget, **kw) -> dict:
    """A closed loop of ``clients`` per scheduler unit (each sends its next request when the last
    one ends), at most ``cap`` of them holding a slot: :func:`schedule`'s keys plus ``running``,
    ``queue_delay_s`` (waiting for a slot: the clients beyond ``cap`` over the throughput, Little),
    ``ttft_s`` (that wait plus the time in prefill) and ``e2e_latency_s``."""
    clients = np.asarray(clients, dtype=float)
    R = np.minimum(clients, cap)
    st = schedule(
        cost, running=R, input_len=input_len, output_len=output_len, token_budget=token_budget,
        **kw,
    )  # fmt: skip
    X = st["requests_per_s"]
    O1 = np.maximum(_mean(output_len) - 1.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = np.maximum(clients - R, 0.0) / X
    ttft = wait + st["prefill_s"]
    return st | {
        "running": R,
        "e2e_latency_s": ttft + O1 * st["tpot_s"],
        "ttft_s": ttft,
        "queue_delay_s": wait,
    }


def _open_loop(cost, lam, cap, kw, iterations: int = 18):
    """Running count whose throughput equals ``lam`` (requests/s per unit), by bisection on
    [0, cap]; ``stable`` is False where even ``cap`` running requests serve less than ``lam``."""
    kw = kw | {"arrivals": "poisson"}
    hi_state = schedule(cost, running=np.maximum(cap, 1e-6), **kw)
    stable = np.asarray(hi_state["requests_per_s"]) > lam
    lo, hi = np.zeros(np.shape(stable)) + 1e-6, np.maximum(cap, 1e-6) + np.zeros(np.shape(stable))
    for _ in range(iterations):
        mid = np.sqrt(lo * hi)
        X = schedule(cost, running=mid, **kw)["requests_per_s"]
        lo, hi = np.where(X < lam, mid, lo), np.where(X < lam, hi, mid)
    R = np.where(stable, hi, np.maximum(cap, 1e-6))
    return R, schedule(cost, running=R, **kw), stable


def _outputs(model, hw, layout, setup, st, R, units, X, ttft, e2e, wait, conc, tau,
             input_len, output_len, stable) -> dict:  # fmt: skip
    from moesim.engine.static import _routing_fields, feasibility
    from moesim.spec.deployment import check_layout

    gpus = layout.num_gpus
    n_in, n_out = _mean(input_len), _mean(output_len)
    req_s = X * units  # requests/s over the layout
    out_tps = req_s * n_out
    price = hw.price_usd_per_hour * gpus / 3600.0
    kv = setup.kv
    micro = units / np.minimum(setup.groups, np.maximum(units, 1.0))
    seqs_group = R * np.maximum(micro, 1.0)
    kv_bytes = seqs_group * kv["blocks_per_request"] * kv["kv_block_bytes_per_gpu"]
    weights, act = kv["weights_bytes_per_gpu"], kv["activation_bytes_per_gpu"]
    reserve = kv["reserve_in_budget_bytes_per_gpu"]
    total = weights + act + reserve + kv_bytes
    usable = weights + act + reserve + kv["kv_budget_bytes_per_gpu"]
    possible, reason = check_layout(model, layout)
    shape = np.broadcast(total, possible, R, X).shape
    need = np.where(kv["max_seqs"] >= 1, total, weights + act + reserve + kv["blocks_per_request"]
                    * kv["kv_block_bytes_per_gpu"])  # fmt: skip
    feasible, reason = feasibility(reason, need, weights, usable, np.ones(shape), shape)
    reason = np.broadcast_to(reason, shape).copy()
    reason[np.broadcast_to(~np.asarray(stable), shape) & (reason == "")] = OVERLOAD_REASON
    feasible = reason == ""
    live = R * (st["decode_context"]) + 0.0  # live KV tokens per unit (decodes mid-way)
    with np.errstate(divide="ignore", invalid="ignore"):
        occupancy = np.where(
            kv["kv_tokens"] > 0, live * np.maximum(micro, 1.0) / kv["kv_tokens"], np.nan
        )
        res = {
            "ttft_s": ttft,
            "tpot_s": st["tpot_s"],
            "e2e_latency_s": e2e,
            "output_tokens_per_s_per_gpu": out_tps / gpus,
            "output_tokens_per_s_per_user": 1.0 / st["tpot_s"],
            "prefill_tokens_per_s_per_gpu": req_s * n_in / gpus,
            "decode_tokens_per_s_per_gpu": req_s * np.maximum(n_out - 1.0, 0.0) / gpus,
            "total_tokens_per_s_per_gpu": req_s * (n_in + n_out) / gpus,
            "requests_per_s": req_s,
            "num_gpus": gpus,
            "weights_bytes_per_gpu": weights,
            "kv_cache_bytes_per_gpu": kv_bytes,
            "activation_bytes_per_gpu": act,
            "runtime_reserve_bytes_per_gpu": reserve,
            "memory_bytes_per_gpu": total,
            "memory_capacity_bytes_per_gpu": np.asarray(hw.hbm_capacity_bytes),
            "max_concurrency": kv["max_concurrency"],
            "kv_cache_capacity_tokens": kv["kv_tokens"],
            "kv_cache_occupancy": occupancy,
            "feasible": feasible,
            "reason": reason,
            "usd_per_million_output_tokens": price / out_tps * 1e6,
            "usd_per_million_input_tokens": price / (req_s * (n_in + n_out)) * 1e6,
            "power_w": hw.tdp_w * gpus,
            "ttft_floor_s": st["prefill_floor_s"],
            "tpot_floor_s": st["tpot_floor_s"],
            "prefill_comm_share": st["mixed"].comm_share,
            "decode_comm_share": st["decode"].comm_share,
            "concurrency": conc,
            "token_budget": tau,
            "max_batch": setup.max_batch,
            "engine": setup.engine.name,
            "running_seqs": R * units,
            "queue_delay_s": wait,
            "mixed_step_fraction": st["mixed_fraction"],
            "mixed_step_s": st["mixed"].time_s,
            "decode_step_s": st["decode"].time_s,
            "prefill_chunk_tokens": st["prefill_tokens"],
        }
    res.update(_routing_fields(st["decode"].routing))
    return res


def _breakdown(cost: StepCost, st: dict) -> dict:
    """Per-operator rows of the decode-only step and of the mixed step's token-count part."""
    from moesim.engine.static import _rows

    R = st["decode_seqs_mixed"] + st["prefill_seqs"]
    mixed = cost._step(
        "prefill", 1.0, np.maximum(st["decode_seqs_mixed"] + st["prefill_tokens"], 1e-9), 0.0
    )
    decode = cost._step("decode", np.maximum(R, 1e-9), 1.0, st["decode_context"])
    return {"prefill": _rows(mixed), "decode": _rows(decode)}


# ---------------------------------------------------------------------------- max throughput
TOKEN_BUDGETS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def max_throughput(
    model,
    hw,
    layout: Layout | None = None,
    *,
    input_len=1024,
    output_len=256,
    engine=None,
    token_budget=None,
    max_batch=None,
    ttft_slo=None,
    tpot_slo=None,
    routing=None,
    prefix_cache_hit_rate=0.0,
    budgets=TOKEN_BUDGETS,
    arrivals: str = "bunched",
) -> dict:
    """The concurrency and token budget with the most output tokens/s per GPU under memory (every
    admitted request's KV at full length), the engine's (or ``max_batch``) cap on running
    sequences and the optional ``ttft_slo`` / ``tpot_slo`` (seconds) — what ``trtllm-bench`` runs
    at an infinite request rate. ``token_budget`` fixes the budget instead of searching
    ``budgets`` (plus the engine's default). Returns :func:`predict_inflight`'s keys at the chosen
    point (``concurrency``, ``token_budget``) and ``schedule='max-throughput'``."""
    from moesim.engine.presets import engine_preset

    layout = layout or Layout()
    for name in ("tp", "ep", "pp", "dp", "replicas"):
        if np.size(getattr(layout, name)) != 1:
            raise MoesimError("max-throughput searches one layout at a time (scalar tp/ep/pp/dp)")
    eng = engine_preset(engine, hw)
    taus = (
        np.asarray([float(token_budget)])
        if token_budget is not None
        else np.unique(np.asarray([*budgets, eng.token_budget], dtype=float))
    )
    setup = _setup(model, hw, layout, input_len, output_len, eng, taus, max_batch)
    full = np.maximum(setup.cap * setup.groups, 1.0)  # [n_tau]: every slot busy
    fracs = 2.0 ** -np.arange(0, 12)
    cands = np.maximum(np.round(full[:, None] * fracs[None, :]), 1.0)  # [n_tau, n_c]
    res = predict_inflight(
        model, hw, layout, concurrency=cands, input_len=input_len, output_len=output_len,
        engine=eng, token_budget=taus[:, None], max_batch=max_batch, routing=routing,
        prefix_cache_hit_rate=prefix_cache_hit_rate, arrivals=arrivals,
    )  # fmt: skip
    best = _pick(res, cands, taus, ttft_slo, tpot_slo)
    if best is not None and (ttft_slo is not None or tpot_slo is not None):
        # An SLO bounds the concurrency between the chosen point and the next one up (2x):
        # search that octave finely at the chosen budget.
        i, j = best
        fine = np.unique(np.round(cands[i, j] * 2.0 ** (np.arange(0, 9) / 8.0)))
        fine = np.minimum(fine, full[i])
        cands, taus = fine[None, :], taus[i : i + 1]
        res = predict_inflight(
            model, hw, layout, concurrency=cands, input_len=input_len, output_len=output_len,
            engine=eng, token_budget=taus[:, None], max_batch=max_batch, routing=routing,
            prefix_cache_hit_rate=prefix_cache_hit_rate, arrivals=arrivals,
        )  # fmt: skip
    shape = cands.shape
    ok = _meets(res, shape, ttft_slo, tpot_slo)
    tps = np.broadcast_to(np.asarray(res["output_tokens_per_s_per_gpu"], dtype=float), shape)
    score = np.where(ok, tps, -np.inf)
    if np.isfinite(score).any():
        # Ties (within 0.1 %) go to the smaller concurrency, then the smaller budget.
        top = score.max()
        near = score >= top * (1 - 1e-3)
        flat = np.lexsort((np.broadcast_to(taus[:, None], shape)[near], cands[near]))
        idx = tuple(np.argwhere(near)[flat[0]])
        reason = ""
    else:
        fallback = np.where(np.broadcast_to(res["feasible"], shape), tps, -np.inf)
        idx = np.unravel_index(
            int(np.argmax(np.where(np.isfinite(fallback), fallback, tps))), shape
        )
        reason = "no concurrency and token budget meet the SLOs" if np.any(
            np.broadcast_to(res["feasible"], shape)) else ""  # fmt: skip
    out = {}
    for key, value in res.items():
        arr = np.asarray(value)
        out[key] = np.broadcast_to(arr, shape)[idx] if arr.ndim else arr
    out = {
        k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in out.items()
    }
    if reason:
        out["feasible"], out["reason"] = False, reason
    out["schedule"] = "max-throughput"
    return out


def _meets(res, shape, ttft_slo, tpot_slo) -> np.ndarray:
    ok = np.broadcast_to(np.asarray(res["feasible"], dtype=bool), shape).copy()
    if ttft_slo is not None:
        ok &= np.broadcast_to(res["ttft_s"], shape) <= ttft_slo
    if tpot_slo is not None:
        ok &= np.broadcast_to(res["tpot_s"], shape) <= tpot_slo
    return ok


def _pick(res, cands, taus, ttft_slo, tpot_slo):
    """(budget index, concurrency index) of the best point meeting the SLOs, or None."""
    shape = cands.shape
    tps = np.broadcast_to(np.asarray(res["output_tokens_per_s_per_gpu"], dtype=float), shape)
    score = np.where(_meets(res, shape, ttft_slo, tpot_slo), tps, -np.inf)
    if not np.isfinite(score).any():
        return None
    return tuple(int(x) for x in np.unravel_index(int(np.argmax(score)), shape))


# ---------------------------------------------------------------------------- planner's view
def at_capacity(
    model,
    hw,
    layout: Layout,
    *,
    running_per_group,
    input_len,
    output_len,
    engine=None,
    routing=None,
) -> dict:
    """One replica with ``running_per_group`` requests holding a slot in every DP group (all of
    them busy, as at the replica's capacity): ``requests_per_s`` it completes, ``tpot_s``,
    ``decode_step_s`` (a decode-only step, what TPOT falls to as the load goes to zero),
    ``step_s``, ``prefill_s`` (one request's chunked prefill), ``prefill_servers`` (schedulers x
    micro-batches, each an FCFS prefill queue), ``fits`` (the engine's cap and the KV cache at full
    length admit them), ``max_concurrency``, ``memory_bytes_per_gpu``, ``decode_comm_share``."""
    from moesim.cost.ops import routing_or_default

    setup = _setup(model, hw, layout, input_len, output_len, engine, None, None)
    b = np.asarray(running_per_group, dtype=float)
    micro = np.clip(np.floor(b), 1.0, setup.pp)
    cost = StepCost(model, hw, layout, routing_or_default(routing))
    st = schedule(
        cost, running=b / micro, input_len=input_len, output_len=output_len,
        token_budget=float(setup.engine.token_budget),
    )  # fmt: skip
    servers = layout.arr("dp") * micro
    kv = setup.kv
    kv_bytes = b * kv["blocks_per_request"] * kv["kv_block_bytes_per_gpu"]
    return {
        "requests_per_s": st["requests_per_s"] * servers,
        "tpot_s": st["tpot_s"],
        "decode_step_s": np.asarray(st["decode"].time_s),
        "step_s": st["step_s"],
        "prefill_s": st["prefill_s"],
        "prefill_servers": servers,
        "fits": b <= setup.cap,
        "max_concurrency": kv["max_concurrency"],
        "memory_bytes_per_gpu": kv["weights_bytes_per_gpu"]
        + kv["activation_bytes_per_gpu"]
        + kv["reserve_in_budget_bytes_per_gpu"]
        + kv_bytes,
        "decode_comm_share": np.asarray(st["decode"].comm_share),
    }
