"""Time of one engine step as a function of what the step carries, tabulated once.

An iteration-level engine (Orca, Yu et al. OSDI'22; vLLM; Sarathi-Serve, Agrawal et al.
OSDI'24) runs one forward pass per step over every scheduled sequence: ``D`` decoding sequences
(one token each, at their own contexts) and prefill chunks (``P_i`` prompt tokens of a request
at ``c_i`` tokens already cached). The cost model (:func:`moesim.cost.ops.step_ops`, timed by
:func:`moesim.cost.step.evaluate_ops`) prices each operator of such a step, and the operators
fall into parts that depend on different things:

- token-linear operators (QKV/O projections, FFN or MoE experts with their routing statistics —
  skew, padding, EP straggler, offload misses, all-to-all — norms, all-reduces, embedding,
  pipeline sends): on the step's total tokens T = D + sum P_i;
- the sampler and LM head: on the sequences that produce logits, S = D + chunks;
- decode attention: on D and the decoders' total context C (memory-bound KV reads);
- prefill attention: per chunk, on (P_i, c_i) (causal pairs P_i c_i + P_i (P_i + 1) / 2).

Each part is tabulated on a grid from :func:`moesim.cost.step.step` itself (so the per-layer
two-batch overlap, the busiest DP rank and the host-launch bound it models are in the table),
made monotone (more work never takes less time) and combined as

    step_s = max(A_row[T], A_dec[D]) + dec(D, C) + sum_i pref(P_i, c_i) + H[S]

with A_dec[T] a decode-only step of T sequences at context 0 and A_pre[T] one prompt of T
tokens at context 0 (row 1, used when the step carries prefill), both less their LM head and
prompt attention; dec(D, u) = step(D, u) - step(D, 0), so a decode-only step of D sequences at
mean context u reproduces ``step(phase='decode')`` at the grid's nodes, and a single-chunk
prefill reproduces ``step(phase='prefill')`` (tests hold both). In a mixed step the attention is
added outside any overlap: an upper bound where two-batch overlap would hide part of it.

The table is the simulator's only view of the cost model: swapping in another engine model's
mixed-step cost means building a StepTable from it (see :func:`build_step_table`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Operators that belong to one part of the step rather than to the token-linear part.
HEAD_OPS = frozenset({"sampler", "lm_head", "lm_head.gather"})
DECODE_ATTN_OPS = frozenset({"attn.core", "attn.core_sliding", "attn.absorb"})
PREFILL_ATTN_OPS = frozenset({"attn.core", "attn.core_sliding", "attn.kv_b"})
_COMM_CLASSES = ("allreduce", "alltoall", "p2p", "host")

DECODE_CONTEXT_NODES = 65  # mean decode context grid (uniform over 0 .. max context)
PREFILL_CONTEXT_NODES = 33  # chunk context grid (uniform over 0 .. max context)


@dataclass(frozen=True)
class StepTable:
    """Step time of one engine instance by batch composition (seconds).

    tok_inner_s, tok_comm_s, tok_once_s : [2, max_tokens + 1] by step tokens T; row 0 for
        decode-only steps, row 1 for steps with prefill (DeepEP picks its kernels by phase)
    head_s : [max_seqs + 1] by sequences producing logits S
    dec_s : [max_seqs + 1, DECODE_CONTEXT_NODES] by decoders D and their mean context
        u = C / D on ``u_j = j * dec_du``
    pref_s : [max_tokens + 1, PREFILL_CONTEXT_NODES] by chunk tokens P and chunk context
        c on ``c_j = j * pref_dc``
    """

    max_tokens: int
    max_seqs: int
    max_context: int
    tok_inner_s: np.ndarray
    tok_comm_s: np.ndarray
    tok_once_s: np.ndarray
    head_s: np.ndarray
    dec_s: np.ndarray
    dec_du: float
    pref_s: np.ndarray
    pref_dc: float
    description: str = ""

    # ------------------------------------------------------------------ lookups (vectorised)
    def decode_attention_s(self, decode_seqs, decode_context_tokens) -> np.ndarray:
        """Decode attention of ``decode_seqs`` sequences holding ``decode_context_tokens`` in all."""
        d = np.clip(np.asarray(decode_seqs, dtype=np.int64), 0, self.max_seqs)
        c = np.asarray(decode_context_tokens, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.where(d > 0, c / np.maximum(d, 1), 0.0)
        return _interp_rows(self.dec_s, d, u / self.dec_du)

    def prefill_attention_s(self, chunk_tokens, chunk_context_tokens) -> np.ndarray:
        """Attention of one prefill chunk of ``chunk_tokens`` after ``chunk_context_tokens``."""
        p = np.clip(np.asarray(chunk_tokens, dtype=np.int64), 0, self.max_tokens)
        x = np.asarray(chunk_context_tokens, dtype=float) / self.pref_dc
        return _interp_rows(self.pref_s, p, x)

    def time_s(
        self,
        decode_seqs,
        decode_context_tokens,
        prefill_tokens=0,
        prefill_attention_s=0.0,
        prefill_chunks=None,
    ) -> np.ndarray:
        """Step time for arrays of compositions. ``prefill_attention_s`` is the sum of
        :meth:`prefill_attention_s` over the step's chunks; ``prefill_chunks`` their count
        (default: one chunk when ``prefill_tokens`` > 0)."""
        d = np.asarray(decode_seqs, dtype=np.int64)
        p = np.asarray(prefill_tokens, dtype=np.int64)
        chunks = (p > 0).astype(np.int64) if prefill_chunks is None else np.asarray(prefill_chunks)
        t = np.clip(d + p, 0, self.max_tokens)
        row = (p > 0).astype(np.int64)
        # A step with prefill costs at least the decode-only step of its decodes.
        lin = np.where(
            p > 0,
            np.maximum(self.tok_inner_s[1, t], self.tok_inner_s[0, np.clip(d, 0, self.max_tokens)]),
            self.tok_inner_s[0, t],
        )
        inner = (
            lin
            + self.decode_attention_s(d, decode_context_tokens)
            + np.asarray(prefill_attention_s, dtype=float)
        )
        s = np.clip(d + chunks, 0, self.max_seqs)
        return np.maximum(inner, self.tok_comm_s[row, t]) + self.tok_once_s[row, t] + self.head_s[s]

    # ------------------------------------------------------------------ toy tables
    @classmethod
    def constant(
        cls, step_s: float, max_tokens: int, max_seqs: int, max_context: int = 1
    ) -> StepTable:
        """Every step takes ``step_s`` whatever it carries (a reference for queueing tests)."""
        T, S = max_tokens + 1, max_seqs + 1
        zeros_t = np.zeros((2, T))
        return cls(
            max_tokens,
            max_seqs,
            max_context,
            np.full((2, T), float(step_s)),
            zeros_t,
            zeros_t.copy(),
            np.zeros(S),
            np.zeros((S, DECODE_CONTEXT_NODES)),
            max(max_context, 1) / (DECODE_CONTEXT_NODES - 1),
            np.zeros((T, PREFILL_CONTEXT_NODES)),
            max(max_context, 1) / (PREFILL_CONTEXT_NODES - 1),
            f"constant {step_s:g} s per step",
        )


def _interp_rows(table: np.ndarray, row, x) -> np.ndarray:
    """Linear interpolation along the columns of ``table[row]`` at fractional column ``x``
    (clamped to the grid; the last segment extrapolates)."""
    n = table.shape[1]
    x = np.maximum(np.asarray(x, dtype=float), 0.0)
    i = np.minimum(x.astype(np.int64), n - 2)
    f = x - i
    lo = table[row, i]
    return lo + f * (table[row, i + 1] - lo)


# ---------------------------------------------------------------------------- building
def _parts(model, hw, layout, phase, seqs, new_tokens, context, routing, keep):
    """(compute, comm, once, p2p) seconds of the operators whose name passes ``keep``, split
    the way :func:`moesim.cost.step.step` splits them."""
    from moesim.cost.ops import step_ops
    from moesim.cost.step import evaluate_ops

    ops, _ = step_ops(model, hw, layout, phase, seqs, new_tokens, context, routing)
    timings = evaluate_ops([op for op in ops if keep(op.name)], hw, layout)
    shape = np.broadcast(np.asarray(seqs), np.asarray(new_tokens), np.asarray(context)).shape
    compute, comm, once, p2p = (np.zeros(shape) for _ in range(4))
    for t in timings:
        if t.name == "pp.send":
            p2p = p2p + t.time_s
        elif not t.per_stage:
            once = once + t.time_s
        elif t.kernel_class in _COMM_CLASSES:
            comm = comm + t.time_s
        else:
            compute = compute + t.time_s
    return compute, comm, once, p2p


def _grid(n_max: int, exact: int, nodes: int) -> np.ndarray:
    """Integers 1..exact, then about ``nodes`` geometric steps up to n_max (always included)."""
    head = np.arange(1, min(exact, n_max) + 1)
    if n_max <= exact:
        return head.astype(float)
    tail = np.unique(np.rint(np.geomspace(exact, n_max, nodes)).astype(np.int64))
    return np.unique(np.concatenate([head, tail])).astype(float)


def _expand_rows(nodes: np.ndarray, values: np.ndarray, n_max: int) -> np.ndarray:
    """Rows for every integer 0..n_max by linear interpolation between node rows (row 0 = 0)."""
    x = np.concatenate([[0.0], nodes])
    v = np.concatenate([np.zeros((1, values.shape[1])), values], axis=0)
    want = np.arange(n_max + 1, dtype=float)
    return np.stack([np.interp(want, x, v[:, j]) for j in range(values.shape[1])], axis=1)


def _monotone(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Running maximum along every axis (more work never takes less time); returns the table
    and the largest relative correction it made (a cost-model artefact if large)."""
    out = a.copy()
    for axis in range(a.ndim):
        out = np.maximum.accumulate(out, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(out > 0, (out - a) / out, 0.0)
    return out, float(np.max(rel)) if rel.size else 0.0


EXACT_TOKENS = 16384  # step-token counts up to this are evaluated one by one


def build_step_table(
    model,
    hw,
    layout,
    routing=None,
    *,
    max_tokens: int,
    max_seqs: int,
    max_context: int,
) -> StepTable:
    """Tabulate the cost model's step time for one engine instance of ``layout`` (one replica).

    max_tokens : the engine's token budget per step (vLLM ``max_num_batched_tokens``)
    max_seqs : the engine's cap on scheduled sequences (vLLM ``max_num_seqs``)
    max_context : the longest prompt + generation the traffic holds

    Sequences and tokens are spread evenly over the ``dp`` attention-DP groups and split into
    ``pp`` micro-batches, as :func:`moesim.cost.step.step` does.
    """
    from moesim.cost.ops import routing_or_default
    from moesim.cost.step import step

    routing = routing_or_default(routing)
    pp = float(np.max(layout.arr("pp")))
    dp = float(np.max(layout.arr("dp")))
    lmax = max(int(max_context), 1)

    def run(phase, seqs_total, new_tokens, context):
        """``step`` for ``seqs_total`` sequences of the instance (spread over its DP groups)."""
        return step(model, hw, layout, phase, np.asarray(seqs_total, float) / dp, new_tokens,
                    context, routing)  # fmt: skip

    def part(res, names) -> np.ndarray:
        """Seconds the operators ``names`` add to ``res``'s step: per-stage operators run on
        every stage of a micro-batch's way, once-per-step ones once per stage pass (pp x)."""
        return pp * sum((t.time_s for t in res.ops if t.name in names), np.asarray(0.0))

    # Token-linear part: every integer T up to EXACT_TOKENS (tile and wave quantisation make
    # it a staircase), a fine grid above that. Row 0: a decode-only step of T sequences (at
    # context 0; the context's share is dec_s). Row 1: a step with prefill, as one prompt of T
    # tokens (its attention is pref_s). Both come from step() itself, so the overlap, the
    # busiest DP rank and the host-launch bound it models are in them; the attention of a mixed
    # step is added on top, outside any overlap (an upper bound where two-batch overlap would
    # hide some of it).
    t_eval = np.arange(1, min(max_tokens, EXACT_TOKENS) + 1, dtype=float)
    if max_tokens > EXACT_TOKENS:
        t_eval = np.concatenate([t_eval, np.arange(EXACT_TOKENS + 16, max_tokens + 16, 16.0)])
        t_eval[-1] = max_tokens
    t_all = np.arange(max_tokens + 1, dtype=float)
    dec0 = run("decode", t_eval, 1.0, 0.0)
    lin_dec = np.asarray(dec0.time_s) - part(dec0, HEAD_OPS)
    pre0 = run("prefill", 1.0, t_eval, 0.0)
    lin_pre = np.asarray(pre0.time_s) - part(pre0, HEAD_OPS) - part(pre0, PREFILL_ATTN_OPS)
    rows = [np.interp(t_all, np.concatenate([[0.0], t_eval]), np.concatenate([[0.0], v]))
            for v in (lin_dec, lin_pre)]  # fmt: skip
    mono = [_monotone(r) for r in rows]  # along tokens, each row on its own
    inner = np.stack([m for m, _ in mono])
    fixes = [max(f for _, f in mono)]
    zeros = np.zeros_like(inner)

    # LM head and sampler: per sequence producing logits.
    s_all = np.arange(max_seqs + 1, dtype=float)
    head, fix = _monotone(part(run("decode", np.maximum(s_all, 1e-9), 1.0, 0.0), HEAD_OPS))
    head[0] = 0.0
    fixes.append(fix)

    # Decode attention: what context adds to a decode-only step of D sequences (nodes, expanded
    # to every integer) at mean context u: step(D, u) - step(D, 0), exact at the nodes.
    d_nodes = _grid(max_seqs, 32, 48)
    du = lmax / (DECODE_CONTEXT_NODES - 1)
    u = np.arange(DECODE_CONTEXT_NODES) * du
    at_u = np.asarray(run("decode", d_nodes[:, None], 1.0, u[None, :]).time_s)
    at_0 = np.asarray(run("decode", d_nodes[:, None], 1.0, 0.0).time_s)
    dc = np.maximum(np.broadcast_to(at_u - at_0, (d_nodes.size, u.size)), 0.0)
    dec, fix = _monotone(_expand_rows(d_nodes, dc, max_seqs))
    fixes.append(fix)

    # Prefill attention of one chunk: tokens P (nodes, expanded) x context already cached c.
    p_nodes = _grid(max_tokens, 64, 96)
    dcc = lmax / (PREFILL_CONTEXT_NODES - 1)
    cc = np.arange(PREFILL_CONTEXT_NODES) * dcc
    pc = part(run("prefill", 1.0, p_nodes[:, None], cc[None, :]), PREFILL_ATTN_OPS)
    pref, fix = _monotone(
        _expand_rows(p_nodes, np.broadcast_to(pc, (p_nodes.size, cc.size)), max_tokens)
    )
    fixes.append(fix)

    desc = (
        f"{model.name} on {hw.name}: tp{int(np.max(layout.arr('tp')))} ep{int(np.max(layout.arr('ep')))} "
        f"pp{int(pp)} dp{int(dp)} {layout.weight_dtype}, overlap {layout.overlap}; "
        f"largest monotone correction {max(fixes):.2%}"
    )
    return StepTable(
        int(max_tokens),
        int(max_seqs),
        lmax,
        inner,
        zeros,
        zeros.copy(),
        head,
        dec,
        du,
        pref,
        dcc,
        desc,
    )
