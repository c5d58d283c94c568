# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Capacity planning: which layout serves my model within the SLO, and what does it cost?
#
# Pick a model, the GPUs you can rent, a service-level objective and an arrival rate. The
# planner searches every layout (tensor, expert, pipeline and data parallel, one or separate
# prefill and decode pools) and batch, sizes the fleet to the rate, and ranks what meets the
# SLO by dollars per million output tokens. Change the four settings below and re-run.

# %%
import altair as alt
import pandas as pd

from moesim.plan.planner import plan
from moesim.plots.planner import planner_chart

MODEL = "mixtral-8x7b"
HARDWARE = ["h100-sxm", "h200"]
SLO = {"ttft_s": 1.5, "tpot_s": 0.04}  # seconds
RATE, INPUT_LEN, OUTPUT_LEN = 20.0, 2048, 512  # requests/s, tokens

result = plan(
    MODEL,
    HARDWARE,
    ttft_slo=SLO["ttft_s"],
    tpot_slo=SLO["tpot_s"],
    rate=RATE,
    input_len=INPUT_LEN,
    output_len=OUTPUT_LEN,
    max_gpus=64,
    top=8,
)
print(
    f"{result.evaluated:,} plans evaluated, {result.feasible:,} meet TTFT <= {SLO['ttft_s']} s "
    f"and TPOT <= {SLO['tpot_s']} s at {RATE:g} req/s ({result.elapsed_s:.2f} s)"
)

alt.renderers.enable("png", scale_factor=1.5)  # charts as images: they show in any viewer

# %% [markdown]
# The cheapest plans. *Layout* reads `tp2ep8dp4`: tensor-parallel 2, expert-parallel 8,
# data-parallel attention 4; `x3` is three copies behind a load balancer. Plans that differ
# only in a detail that does not change cost (EP 2 vs 4 over the same GPUs) are folded into
# the first; *alike* counts them.


# %%
def layout(p: dict) -> str:
    text = f"tp{p['tp']}" + "".join(f"{k}{p[k]}" for k in ("ep", "pp", "dp") if p[k] > 1)
    return text + f" x{p['replicas']}"


rows = []
for p in result.best:
    lay = layout(p)
    if p["mode"] == "disaggregated":
        lay = f"prefill {layout(p['prefill'])} + decode {lay}"
    rows.append(
        {
            "hardware": p["hardware"],
            "mode": p["mode"],
            "layout": lay,
            "GPUs": p["gpus"],
            "batch": p["batch"],
            "TTFT (ms)": p["ttft_s"] * 1e3,
            "TPOT (ms)": p["tpot_s"] * 1e3,
            "tok/s per GPU": p["output_tokens_per_s_per_gpu"],
            "tok/s per user": p["output_tokens_per_s_per_user"],
            "$ / M output tok": p["usd_per_million_output_tokens"],
            "$ / hour": p["usd_per_hour"],
            "bound by": p["bound"],
            "alike": len(p.get("similar_layouts", [])),
        }
    )
plans = pd.DataFrame(rows)
plans.style.format(
    {
        "TTFT (ms)": "{:,.0f}",
        "TPOT (ms)": "{:,.1f}",
        "tok/s per GPU": "{:,.0f}",
        "tok/s per user": "{:,.1f}",
        "$ / M output tok": "${:,.3f}",
        "$ / hour": "${:,.2f}",
    }
).hide(axis="index")

# %%
best = result.best[0]
print(
    f"Cheapest: {best['gpus']} x {best['hardware']} ({best['mode']}, {rows[0]['layout']}), "
    f"TTFT {best['ttft_s'] * 1e3:,.0f} ms, TPOT {best['tpot_s'] * 1e3:.1f} ms, "
    f"${best['usd_per_million_output_tokens']:.3f} per million output tokens, "
    f"${best['usd_per_hour']:,.2f} per hour. Bound by: {best['bound']}."
)

# %% [markdown]
# Every plan that fits in memory, throughput per GPU against speed per user: the bright points
# meet the SLO, the dashed line is the Pareto frontier, the red diamond is the cheapest plan
# and the grey rule is the TPOT SLO.

# %%
planner_chart(result)

# %% [markdown]
# To deploy the cheapest plan, `moesim plan ... --emit vllm` (or `sglang`, `trtllm`,
# `dynamo`) prints its launch command with the engine's own flags:

# %%
from moesim.plan.emit import emit  # noqa: E402
from moesim.spec import resolve  # noqa: E402
from moesim.spec.dtypes import resolve_formats  # noqa: E402

model, hw = resolve(MODEL, best["hardware"].split("+")[-1])
launch = emit(
    "vllm",
    best,
    model_id="mistralai/Mixtral-8x7B-v0.1",
    formats=resolve_formats(model, hw).to_dict(),
    gpus_per_node=hw.gpus_per_node,
    max_model_len=INPUT_LEN + OUTPUT_LEN,
)
print(launch.text())
