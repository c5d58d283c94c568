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
# Pick a model, a GPU and a service-level objective; sweep the layouts and batch sizes that
# could serve it, keep the points that meet the SLO, and sort them by dollars per million
# output tokens.

# %%
import tempfile
from pathlib import Path

from moesim.plan.scenario import build_plan, load_scenario
from moesim.plan.sweep import run_plan
from moesim.plots.charts import pareto_chart

MODEL, HARDWARE = "mixtral-8x7b", "h100-sxm"
SLO = {"ttft_s": 1.5, "tpot_s": 0.04}

# %%
scenario = f"""
name: plan-{MODEL}
models: [{MODEL}]
hardware: [{HARDWARE}, h200]
layouts:
  - tp: [1, 2, 4, 8]
    weight_dtype: [bf16, fp8]
    replicas: [1, 2]
workloads:
  - batch: {{start: 1, stop: 1024, num: 11, log: true}}
    input_len: 2048
    output_len: 512
slo: {{ttft_s: {SLO["ttft_s"]}, tpot_s: {SLO["tpot_s"]}}}
"""
path = Path(tempfile.mkdtemp()) / "plan.yaml"
path.write_text(scenario)
plan = build_plan(load_scenario(path))
df = run_plan(plan)
print(
    f"{len(df):,} points, {int(df['feasible'].sum()):,} feasible, {int(df['meets_slo'].sum()):,} meet the SLO"
)

# %% [markdown]
# The cheapest points that meet the SLO — layout, batch, and the bill.

# %%
cols = [
    "hardware",
    "layout",
    "weight_dtype",
    "batch",
    "num_gpus",
    "ttft_s",
    "tpot_s",
    "output_tokens_per_s_per_gpu",
    "usd_per_million_output_tokens",
]
best = df[df["meets_slo"]].sort_values("usd_per_million_output_tokens")[cols]
best.head(10)

# %%
pick = best.iloc[0]
print(
    f"Serve {MODEL} on {pick['num_gpus']} x {pick['hardware']} ({pick['layout']}, {pick['weight_dtype']}), "
    f"batch {pick['batch']}: TTFT {pick['ttft_s']:.2f} s, TPOT {pick['tpot_s'] * 1e3:.1f} ms, "
    f"${pick['usd_per_million_output_tokens']:.3f} per million output tokens."
)

# %% [markdown]
# Every feasible point and the frontier of throughput per GPU against speed per user.

# %%
pareto_chart(df, color="hardware", title=f"{MODEL}: throughput vs interactivity")

# %% [markdown]
# The planner answers the same question for an arrival rate: it sizes replicas (or separate
# prefill and decode pools) so that the whole fleet meets the SLO at that rate.

# %%
try:
    from moesim.plan.planner import plan as plan_fleet
except ImportError:
    plan_fleet = None
if plan_fleet is None:
    print("moesim.plan.planner is not available in this install; the sweep above is the plan.")
else:
    result = plan_fleet(
        MODEL,
        [HARDWARE, "h200"],
        ttft_slo=SLO["ttft_s"],
        tpot_slo=SLO["tpot_s"],
        rate=20.0,
        input_len=2048,
        output_len=512,
        max_gpus=32,
        top=3,
    )
    for p in result.best:
        print({k: p[k] for k in list(p)[:10]})
