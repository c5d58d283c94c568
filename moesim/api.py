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
from moesim.spec.dtypes import resolve_formats


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
    dtype=None,
    kv_dtype=None,
    dispatch_dtype="bf16",
    overlap="none",
    redundant_experts=0,
    offload=0.0,
    gpu_memory_utilization=None,
    kv_cache_free_gpu_memory_fraction=None,
    framework=None,
    dp_balance="even",
    context_cv=0.0,
) -> tuple[Layout, list[str]]:
    """A Layout from CLI-style integers. With ``nodes``, the GPU count nodes x gpus_per_node must
    match tp*dp*pp*replicas; if dp was left at 1 it is raised to fill the nodes (DP attention).
    ``dtype`` / ``kv_dtype`` None take the checkpoint's own formats (:func:`resolve_formats`);
    formats no engine runs on the chip are refused."""
    m, hw = resolve(model, hardware)
    formats = resolve_formats(m, hw, dtype, kv_dtype)
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
        weight_dtype=formats.weight_dtype,
        kv_dtype=formats.kv_dtype,
        dispatch_dtype=dispatch_dtype,
        overlap=overlap,
        redundant_experts=redundant_experts,
        offload_fraction=offload,
        gpus_per_node=gpus_per_node,
        kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
        framework=framework,
        dp_balance=dp_balance,
        context_cv=context_cv,
    )
    if gpu_memory_utilization is not None:
        layout = layout.with_(memory_utilization=gpu_memory_utilization)
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
    batch=None,
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
    concurrency=None,
    max_throughput=False,
    engine=None,
    token_budget=None,
    max_batch=None,
    ttft_slo=None,
    tpot_slo=None,
    input_dist=None,
    output_dist=None,
    arrivals="bunched",
    mtp=None,
    spec_draft=None,
    spec_tokens=None,
    acceptance_rate=None,
) -> dict:
    """Predict one scenario; returns plain scalars (0-d arrays squeezed) for display / JSON.

    ``batch``: a static batch (prefill all, then decode). ``concurrency`` (closed loop),
    ``rate`` without ``batch`` (open loop) or ``max_throughput``: in-flight batching with chunked
    prefill (:mod:`moesim.engine.inflight`) under ``engine``'s token budget and running cap
    (``token_budget`` / ``max_batch`` override them); ``ttft_slo`` / ``tpot_slo`` bound the
    max-throughput search. ``input_dist`` / ``output_dist`` (``uniform:LO:HI``, ``normal:M:S``,
    ``file:PATH``) replace the fixed lengths there.
    """
    from moesim.engine import static as serving

    m, hw = resolve(model, hardware)
    inflight = concurrency is not None or max_throughput or (rate is not None and batch is None)
    if not inflight and batch is None:
        raise MoesimError(
            "give --batch (a static batch), --concurrency, --rate or --max-throughput"
        )
    if (ttft_slo is not None or tpot_slo is not None) and not max_throughput:
        raise MoesimError("--ttft-slo / --tpot-slo bound the --max-throughput search; add it")
    if inflight:
        if batch is not None:
            raise MoesimError(
                "--batch is the static mode; drop it with --concurrency / --max-throughput"
            )
        if disaggregate:
            raise MoesimError("--disaggregate sizes its own pools; use --batch with it")
        if phase != "both":
            raise MoesimError("--phase is for the static and pool modes; drop it here")
        if concurrency is not None and (max_throughput or rate is not None):
            raise MoesimError("give one of --concurrency, --rate and --max-throughput")
        if max_throughput and rate is not None:
            raise MoesimError("--max-throughput runs at an infinite rate; drop --rate")
    speculation = build_speculation(
        m, mtp=mtp, spec_draft=spec_draft, spec_tokens=spec_tokens, acceptance_rate=acceptance_rate
    )
    if speculation is not None and (disaggregate or phase == "prefill"):
        raise MoesimError(
            "speculative decoding (--mtp / --spec-draft) is modelled for --phase both or decode, "
            "without --disaggregate"
        )
    if speculation is not None and inflight:
        raise MoesimError(
            "speculative decoding (--mtp / --spec-draft) is modelled for the static batch "
            "(--batch) and the decode pool (--phase decode); not yet with --concurrency, --rate "
            "or --max-throughput"
        )
    ropts = routing_options(routing, capacity_factor, block_m)
    if np.any(layout.arr("offload_fraction") > 0) and m.is_moe:
        from moesim.cost.offload import with_offload

        ropts = with_offload(ropts, m)  # hit rate of a cache of the hottest experts
    if m.is_moe is False and layout.arr("ep").max() > 1:
        raise MoesimError(
            f"--ep {int(layout.arr('ep').max())} needs an MoE model; {m.name} is dense"
        )
    if inflight:
        res, schedule = _inflight(
            m, hw, layout, ropts, input_len=input_len, output_len=output_len,
            concurrency=concurrency, rate=rate, max_throughput=max_throughput, engine=engine,
            token_budget=token_budget, max_batch=max_batch, ttft_slo=ttft_slo, tpot_slo=tpot_slo,
            input_dist=input_dist, output_dist=output_dist, breakdown=breakdown,
            prefix_cache_hit_rate=prefix_cache_hit_rate, arrivals=arrivals,
        )  # fmt: skip
    elif disaggregate:
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
            engine=engine,
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
            engine=engine,
            speculation=speculation,
        )
    head = {
        "model": m.name,
        "hardware": hw.name,
        "phase": "inflight" if inflight else phase if not disaggregate else "disaggregated",
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
        "formats": _formats(m, hw, layout),
    }
    if inflight:
        head["schedule"] = schedule
        for key in ("concurrency", "token_budget", "max_batch"):
            value = np.asarray(res.get(key, np.nan), dtype=float)
            if value.ndim == 0 and np.isfinite(value) and float(value).is_integer():
                res[key] = int(value)
        if input_dist:
            head["input_dist"] = input_dist
        if output_dist:
            head["output_dist"] = output_dist
    if (
        speculation is not None
        and speculation.method == "mtp"
        and not m.model_type.startswith("deepseek_v3")
    ):
        head["notes"] = [
            f"{m.name} ships no MTP module; each draft token is priced as DeepSeek-V3's MTP "
            "head: one decoder layer, its 2h->h projection and the LM head"
        ]
    out = head | squeeze(res)
    if m.is_moe:
        if "padding_waste" in out:  # the old name, kept: padded/useful - 1, not a fraction
            out["padding_overhead"] = out["padding_waste"]
    else:
        for key in MOE_ONLY_KEYS:  # a dense model has no routing to report
            out.pop(key, None)
    return out


MOE_ONLY_KEYS = ("max_load_ratio", "active_experts", "padding_waste", "drop_rate")


def _formats(m, hw, layout) -> dict:
    """Which formats ran, for the output: origin is 'checkpoint' when they are the model's own."""
    native = m.native_format
    weight = None if layout.weight_dtype == native.weight_dtype else layout.weight_dtype
    kv = None if layout.kv_dtype == native.kv_dtype else layout.kv_dtype
    try:
        return resolve_formats(m, hw, weight, kv).to_dict()
    except MoesimError as exc:  # a Layout built by hand with a refused format: say so
        return {"weight_dtype": layout.weight_dtype, "kv_dtype": layout.kv_dtype, "error": str(exc)}


def _inflight(m, hw, layout, ropts, *, input_len, output_len, concurrency, rate, max_throughput,
              engine, token_budget, max_batch, ttft_slo, tpot_slo, input_dist, output_dist,
              breakdown, prefix_cache_hit_rate, arrivals="bunched"):  # fmt: skip
    """In-flight batching: a closed loop, an open loop or the max-throughput search."""
    from moesim.engine import inflight as ifb
    from moesim.engine.presets import engine_preset

    eng = engine_preset(engine, hw)
    if layout.kv_cache_free_gpu_memory_fraction is None and layout.memory_utilization != 0.90:
        eng = eng.with_(
            memory_mode="gpu_memory_utilization", memory_fraction=layout.memory_utilization
        )
    isl = ifb.LengthDist.parse(input_dist) if input_dist else input_len
    osl = ifb.LengthDist.parse(output_dist) if output_dist else output_len
    kw = dict(input_len=isl, output_len=osl, engine=eng, token_budget=token_budget,
              max_batch=max_batch, routing=ropts, prefix_cache_hit_rate=prefix_cache_hit_rate,
              arrivals=arrivals)  # fmt: skip
    if max_throughput:
        return ifb.max_throughput(
            m, hw, layout, ttft_slo=ttft_slo, tpot_slo=tpot_slo, **kw
        ), "max-throughput"
    res = ifb.predict_inflight(
        m, hw, layout, concurrency=concurrency, rate=rate, breakdown=breakdown, **kw
    )
    return res, "concurrency" if concurrency is not None else "rate"


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
    batch=None,
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
    **kw,
) -> dict:
    """One-call prediction from names: ``predict('mixtral-8x7b', 'h100-sxm', tp=2, batch=32)``;
    ``concurrency=64`` or ``max_throughput=True`` (with ``engine``, ``token_budget``,
    ``max_batch``, ``ttft_slo``, ``tpot_slo``, ``rate``) for in-flight batching; ``mtp=3`` (or
    ``spec_draft=..., spec_tokens=N``) prices speculative decoding."""
    serve = {k: kw.pop(k) for k in _SERVING_KEYS if k in kw}
    layout, notes = build_layout(model, hardware, **kw)
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
        **serve,
        mtp=mtp,
        spec_draft=spec_draft,
        spec_tokens=spec_tokens,
        acceptance_rate=acceptance_rate,
    )
    if notes:
        res["notes"] = notes + res.get("notes", [])
    return res


_SERVING_KEYS = (
    "concurrency", "max_throughput", "engine", "token_budget", "max_batch", "ttft_slo",
    "tpot_slo", "rate", "prefix_cache_hit_rate", "disaggregate", "input_dist", "output_dist",
    "arrivals",
)  # fmt: skip
