"""Speculative decoding: draft N tokens cheaply, verify them in one step of the target model.

One speculative decode step of a batch (B sequences at context c) costs

    t_step = t_draft + t_verify
    t_verify = a decode step of the target with 1 + N new tokens per sequence (each attends to
               the cache and the tokens before it; the weights are read once)
    t_draft  = N sequential passes of the drafter at one token per sequence:
               - MTP heads (DeepSeek-V3 report arXiv:2412.19437 section 2.2): each MTP module is
                 the shared embedding, a projection M_k of [h; emb] (2h -> h), one Transformer
                 block and the shared output head, so a draft token costs one decoder layer of
                 the model (an MoE layer for DeepSeek) + that projection + the LM head; chained
                 drafts reuse the module (SGLang / TensorRT-LLM run DeepSeek's single MTP layer
                 N times for N draft tokens);
               - a separate draft model: one decode step of that model per draft token.

and yields, with per-token acceptance probability p independent across positions and the
first rejection ending the run (Leviathan, Kalman & Matias, "Fast Inference from Transformers
via Speculative Decoding", ICML 2023, eq. 1), plus the target's own token,

    E[tokens per step] = 1 + p + p^2 + ... + p^N = (1 - p^(N+1)) / (1 - p).

TPOT = t_step / E, per-user speed = E / t_step, throughput = B E / t_step / GPUs.

Default p: DeepSeek-V3's MTP head accepts the second token 85-90 % of the time across
generation topics (report section 5.4.3, giving 1.8x tokens per second): 0.875, the middle of
that range. For a separate draft model: 0.7, within the 0.6-0.8 that Leviathan et al. (2023,
Table 3) measure for drafts about a hundredth of the target's size. Pass ``acceptance_rate``
to use your own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from moesim.errors import MoesimError

MTP_ACCEPTANCE_RATE = 0.875  # DeepSeek-V3 report section 5.4.3: 85-90 %
DRAFT_ACCEPTANCE_RATE = 0.7  # Leviathan et al. 2023, Table 3: 0.6-0.8 for ~1/100-size drafts
METHODS = ("mtp", "draft")


@dataclass(frozen=True)
class Speculation:
    """How decode speculates. ``method`` 'mtp' (the model's multi-token-prediction heads) or
    'draft' (``draft_model``, a ModelSpec); ``num_tokens`` = N drafted per step; ``acceptance_rate``
    = p per drafted token (None: the published default of the method)."""

    method: str
    num_tokens: int
    acceptance_rate: float | None = None
    draft_model: object = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MoesimError(f"speculation method {self.method!r} must be one of {METHODS}")
        if int(self.num_tokens) != self.num_tokens or self.num_tokens < 1:
            raise MoesimError("the number of speculative tokens must be an integer >= 1")
        if self.num_tokens > 16:
            raise MoesimError("at most 16 speculative tokens per step are modelled")
        p = self.acceptance_rate
        if p is not None and not (np.isfinite(p) and 0.0 <= p <= 1.0):
            raise MoesimError("acceptance rate must be in [0, 1]")
        if self.method == "draft" and self.draft_model is None:
            raise MoesimError("speculation with a draft model needs the draft model")

    @property
    def p(self) -> float:
        if self.acceptance_rate is not None:
            return float(self.acceptance_rate)
        return MTP_ACCEPTANCE_RATE if self.method == "mtp" else DRAFT_ACCEPTANCE_RATE


def expected_tokens_per_step(acceptance_rate, num_tokens) -> np.ndarray:
    """1 + p + ... + p^N (Leviathan et al. 2023, eq. 1); N + 1 at p = 1."""
    p = np.asarray(acceptance_rate, dtype=float)
    n = np.asarray(num_tokens, dtype=float)
    safe = np.where(p < 1.0, p, 0.5)
    geo = (1.0 - safe ** (n + 1.0)) / (1.0 - safe)
    return np.where(p < 1.0, geo, n + 1.0)


@dataclass
class SpeculativeStep:
    """One speculative decode step (all times in seconds, per step)."""

    step_s: np.ndarray  # draft + verify
    tokens_per_step: np.ndarray  # expected accepted tokens per sequence, the target's included
    draft_s: np.ndarray
    verify_s: np.ndarray
    floor_s: np.ndarray  # roofline floor of the same work
    verify: object  # the verification StepResult (1 + N tokens per sequence)


def mtp_layer_model(model):
    """The model cut to the one decoder layer an MTP module runs (an MoE layer when the model
    has experts, full attention), for costing draft tokens."""
    fields = dict(num_hidden_layers=1, layer_types=None, sliding_window=None)
    if model.is_moe:
        fields.update(first_k_dense_replace=0, moe_layer_freq=1, decoder_sparse_step=1,
                      mlp_only_layers=())  # fmt: skip
    return model.with_overrides(**fields)


def speculative_step(model, hw, layout, spec: Speculation, seqs_per_group, context, routing=None):
    """Time and expected tokens of one speculative decode step (module doc). ``seqs_per_group``
    and ``context`` as for :func:`moesim.cost.step.step` in decode."""
    from moesim.cost.step import step

    n = int(spec.num_tokens)
    seqs = np.asarray(seqs_per_group, dtype=float)
    ctx = np.asarray(context, dtype=float)
    verify = step(model, hw, layout, "decode", seqs, 1.0 + n, ctx, routing)
    draft_s = np.zeros(np.shape(verify.time_s))
    draft_floor = np.zeros(np.shape(verify.time_s))
    for i in range(n):
        t, f = _draft_pass(model, hw, layout, spec, seqs, ctx + 1.0 + i, routing)
        draft_s, draft_floor = draft_s + t, draft_floor + f
    tokens = expected_tokens_per_step(spec.p, n)
    return SpeculativeStep(
        step_s=verify.time_s + draft_s,
        tokens_per_step=np.broadcast_to(tokens, np.shape(verify.time_s)),
        draft_s=draft_s,
        verify_s=verify.time_s,
        floor_s=verify.floor_s + draft_floor,
        verify=verify,
    )


def _draft_pass(model, hw, layout, spec: Speculation, seqs, context, routing):
    """(time, floor) of drafting one token for every sequence."""
    from moesim.cost.kernel_cost import gemm_cost
    from moesim.cost.step import step
    from moesim.spec.dtypes import compute_dtype

    one_stage = layout.with_(pp=1)  # the drafter sits on the last pipeline stage
    if spec.method == "mtp":
        head = mtp_layer_model(model)
        # embedding, one decoder layer, LM head and sampling, as one decode step of the cut model
        r = step(head, hw, one_stage, "decode", seqs, 1.0, context, routing)
        # the MTP projection M_k: [T, 2h] x [2h, h] (DeepSeek-V3 report eq. 21)
        h = model.hidden_size
        cdt = compute_dtype(layout.weight_dtype, hw.peak_flops_per_s)
        proj = gemm_cost(hw, seqs, h, 2 * h, cdt)
        return r.time_s + proj["latency_s"], r.floor_s + proj["floor_s"]
    draft = spec.draft_model
    tp = int(np.max(layout.arr("tp")))
    if draft.num_attention_heads % tp or (
        draft.num_key_value_heads % tp and tp % draft.num_key_value_heads
    ):
        tp = 1  # the draft runs replicated when its heads do not split over the target's TP
    lay = replace(one_stage, tp=tp, ep=1, redundant_experts=0, offload_fraction=0.0)
    # the draft serves each DP group's sequences on that group's GPUs
    r = step(draft, hw, lay, "decode", seqs, 1.0, context, None)
    return r.time_s, r.floor_s


def speculative_decode(model, hw, layout, spec: Speculation, seqs_per_group, context, routing=None):
    """The decode step as the engines' schedules use it: a StepResult whose ``time_s`` is the
    time per accepted token (TPOT) and ``floor_s`` the roofline floor per accepted token, and
    the JSON keys describing the speculation.

    This is the hook for an engine's decode path: replace ``step(..., "decode", ...)`` by it.
    """
    sp = speculative_step(model, hw, layout, spec, seqs_per_group, context, routing)
    per_token = replace(
        sp.verify,
        time_s=sp.step_s / sp.tokens_per_step,
        floor_s=sp.floor_s / sp.tokens_per_step,
    )
    keys = {
        "speculative_method": spec.method,
        "speculative_tokens": int(spec.num_tokens),
        "acceptance_rate": spec.p,
        "accepted_tokens_per_step": sp.tokens_per_step,
        "speculative_step_s": sp.step_s,
        "draft_s": sp.draft_s,
        "verify_s": sp.verify_s,
    }
    return per_token, keys
