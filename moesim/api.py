"""The Python entry points behind the CLI: names in, a prediction dict out.

>>> from moesim.api import predict
>>> r = predict("mixtral-8x7b", "h100-sxm", tp=2, batch=32, input_len=1024, output_len=256)
>>> round(float(r["tpot_s"]) * 1e3, 1) > 0
True
"""

from __future__ import annotations

import numpy as np

from moesim.cost.ops import routing_options  # noqa: F401 (public here since 0.1)
from moesim.errors import MoesimError
from moesim.spec import resolve  # noqa: F401 (public here since 0.1)
from moesim.spec.deployment import Layout


def build_layout(
    model,
    hardware,
    *,
    tp=1,
    ep=1,
    pp=1,
    dp=1,
    replicas=1,
    nodes=None,
    gpus_per_node=None,
    dtype="bf16",
    kv_dtype="bf16",
    dispatch_dtype="bf16",
    overlap="none",
    redundant_experts=0,
    offload=0.0,
    framework=None,
    dp_balance="even",
    context_cv=0.0,
) -> tuple[Layout, list[str]]:
    """A Layout from CLI-style integers. With ``nodes``, the GPU count nodes x gpus_per_node must
    match tp*dp*pp*replicas; if dp was left at 1 it is raised to fill the nodes (DP attention)."""
    _, hw = resolve(model, hardware)
    notes = []
    if nodes is not None:
        per_node = gpus_per_node or hw.gpus_per_node
        total = nodes * per_node
        if tp * dp * pp * replicas != total:
            fill = total // (tp * pp * replicas)
            if dp == 1 and fill * tp * pp * replicas == total:
                dp = fill
                notes.append(
                    f"dp set to {dp} so that tp*dp*pp*replicas fills {nodes} x {per_node} GPUs"
                )
            else:
                raise MoesimError(
                    f"tp*dp*pp*replicas = {tp * dp * pp * replicas} GPUs but --nodes {nodes} x "
                    f"{per_node} GPUs per node = {total}; make them equal"
                )
    layout = Layout(
        tp=tp,
        ep=ep,
        pp=pp,
        dp=dp,
        replicas=replicas,
        weight_dtype=dtype,
        kv_dtype=kv_dtype,
        dispatch_dtype=dispatch_dtype,
        overlap=overlap,
        redundant_experts=redundant_experts,
        offload_fraction=offload,
        gpus_per_node=gpus_per_node,
        framework=framework,
        dp_balance=dp_balance,
        context_cv=context_cv,
    )
    return layout, notes


def build_speculation(model, *, mtp=None, spec_draft=None, spec_tokens=None, acceptance_rate=None):
    """A :class:`moesim.cost.speculative.Speculation` from CLI-style options, or None.

    ``mtp`` = N draft tokens from the model's MTP heads; ``spec_draft`` = a draft model (preset
    name or config path) drafting ``spec_tokens`` tokens; ``acceptance_rate`` = p per token."""
    from moesim.cost.speculative import Speculation

    if mtp is not None and spec_draft is not None:
        raise MoesimError("use either --mtp or --spec-draft, not both")
    if spec_tokens is not None and spec_draft is None:
        raise MoesimError("--spec-tokens goes with --spec-draft MODEL (for MTP use --mtp N)")
    if acceptance_rate is not None and mtp is None and spec_draft is None:
        raise MoesimError("--acceptance-rate needs --mtp N or --spec-draft MODEL")
    if mtp is not None:
        return Speculation("mtp", int(mtp), acceptance_rate)
    if spec_draft is not None:
        if spec_tokens is None:
            raise MoesimError("--spec-draft needs --spec-tokens N (tokens drafted per step)")
        from moesim.spec.model import load_model

        draft = load_model(spec_draft) if isinstance(spec_draft, str) else spec_draft
        if draft.vocab_size != model.vocab_size:
            raise MoesimError(
                f"draft model {draft.name} has vocabulary {draft.vocab_size}, "
                f"{model.name} has {model.vocab_size}: a draft must share the target's tokenizer"
            )
        return Speculation("draft", int(spec_tokens), acceptance_rate, draft)
    return None


def run_prediction(
    model,
    hardware,
    layout: Layout,
    *,
    batch,
    input_len=1024,
    output_len=256,
    context_len=None,
    phase="both",
    routing="uniform",
    capacity_factor=None,
    block_m=64,
    breakdown=False,
    disaggregate=None,
    rate=None,
    prefix_cache_hit_rate=0.0,
    mtp=None,
    spec_draft=None,
    spec_tokens=None,
    acceptance_rate=None,
) -> dict:
    """Predict one scenario; returns plain scalars (0-d arrays squeezed) for display / JSON."""
    from moesim.engine import static as serving

    m, hw = resolve(model, hardware)
    speculation = build_speculation(
        m, mtp=mtp, spec_draft=spec_draft, spec_tokens=spec_tokens, acceptance_rate=acceptance_rate
    )
    if speculation is not None and (disaggregate or phase == "prefill"):
        raise MoesimError(
            "speculative decoding (--mtp / --spec-draft) is modelled for --phase both or decode, "
            "without --disaggregate"
        )
    ropts = routing_options(routing, capacity_factor, block_m)
    if np.any(layout.arr("offload_fraction") > 0) and m.is_moe:
        from moesim.cost.offload import with_offload

        ropts = with_offload(ropts, m)  # hit rate of a cache of the hottest experts
    if m.is_moe is False and layout.arr("ep").max() > 1:
        raise MoesimError(
            f"--ep {int(layout.arr('ep').max())} needs an MoE model; {m.name} is dense"
        )
    if disaggregate:
        from moesim.engine.disagg import predict_disaggregated

        res = predict_disaggregated(
            m,
            hw,
            disaggregate,
            batch=batch,
            input_len=input_len,
            output_len=output_len,
            routing=ropts,
            rate=rate,
            breakdown=breakdown,
            base=layout,
        )
    elif phase == "both":
        res = serving.predict(
            m,
            hw,
            layout,
            batch=batch,
            input_len=input_len,
            output_len=output_len,
            routing=ropts,
            breakdown=breakdown,
            prefix_cache_hit_rate=prefix_cache_hit_rate,
            speculation=speculation,
        )
        if rate is not None:
            from moesim.engine.queueing import add_queueing

            res = add_queueing(res, rate=rate, batch=batch)
    else:
        res = serving.predict_phase(
            m,
            hw,
            layout,
            phase=phase,
            batch=batch,
            input_len=input_len,
            context_len=context_len
            if context_len is not None
            else (input_len + output_len / 2 if phase == "decode" else None),
            routing=ropts,
            breakdown=breakdown,
            speculation=speculation,
        )
    head = {
        "model": m.name,
        "hardware": hw.name,
        "phase": phase if not disaggregate else "disaggregated",
        "layout": {
            "tp": layout.tp,
            "ep": layout.ep,
            "pp": layout.pp,
            "dp": layout.dp,
            "replicas": layout.replicas,
            "dtype": layout.weight_dtype,
            "kv_dtype": layout.kv_dtype,
            "overlap": layout.overlap,
            "framework": layout.framework,
        },
        "batch": batch,
        "input_len": input_len,
        "output_len": output_len,
        "routing": routing if isinstance(routing, str) else getattr(routing, "name", "custom"),
        "calibration": hw.efficiency.source,
    }
    if (
        speculation is not None
        and speculation.method == "mtp"
        and not m.model_type.startswith("deepseek_v3")
    ):
        head["notes"] = [
            f"{m.name} ships no MTP module; each draft token is priced as DeepSeek-V3's MTP "
            "head: one decoder layer, its 2h->h projection and the LM head"
        ]
    return head | squeeze(res)


def squeeze(obj):
    """0-d arrays to Python scalars, recursively."""
    if isinstance(obj, dict):
        return {k: squeeze(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [squeeze(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.ndim == 0:
        return obj.item()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def predict(
    model,
    hardware,
    *,
    batch,
    input_len=1024,
    output_len=256,
    phase="both",
    context_len=None,
    routing="uniform",
    capacity_factor=None,
    block_m=64,
    breakdown=False,
    mtp=None,
    spec_draft=None,
    spec_tokens=None,
    acceptance_rate=None,
    **layout_kw,
) -> dict:
    """One-call prediction from names: ``predict('mixtral-8x7b', 'h100-sxm', tp=2, batch=32)``;
    ``mtp=3`` (or ``spec_draft=..., spec_tokens=N``) prices speculative decoding."""
    layout, notes = build_layout(model, hardware, **layout_kw)
    res = run_prediction(
        model,
        hardware,
        layout,
        batch=batch,
        input_len=input_len,
        output_len=output_len,
        context_len=context_len,
        phase=phase,
        routing=routing,
        capacity_factor=capacity_factor,
        block_m=block_m,
        breakdown=breakdown,
        mtp=mtp,
        spec_draft=spec_draft,
        spec_tokens=spec_tokens,
        acceptance_rate=acceptance_rate,
    )
    if notes:
        res["notes"] = notes + res.get("notes", [])
    return res
