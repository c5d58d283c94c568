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
# # Dense vs MoE: batching fragmentation
#
# A dense FFN reads its weights once per decode step, whatever the batch. An MoE layer reads
# every *active* expert, and each expert sees only about `batch x k / E` tokens, so it stays
# memory-bound until far larger batches. Below: Qwen3-30B-A3B against its dense equivalent
# (same attention, one FFN with the same active parameters per token).

# %%
import altair as alt
import numpy as np

from moesim.api import resolve
from moesim.plots.charts import dense_vs_moe_chart, fragmentation_curve

alt.renderers.enable("png", scale_factor=1.5)  # charts as images: they show in any viewer

moe, hw = resolve("qwen3-30b-a3b", "h100-sxm")
batches = np.unique(np.geomspace(1, 16384, 29).round())
curve = fragmentation_curve(moe, hw, batches, routings=("uniform", "zipf:1.2"))
curve.head()

# %%
dense_vs_moe_chart(curve)

# %% [markdown]
# Where do the experts become compute-bound? An expert GEMM over `n` tokens does 2 FLOP per
# weight per token and reads each weight once, so it reaches the ridge (peak / bandwidth) at
# `n = ridge x bytes_per_param / 2` tokens; with uniform routing that is a batch of
# `n x E / k`.

# %%
row = curve[curve["kind"] == "moe"].iloc[0]
print(
    f"ridge: {hw.peak('bf16') / hw.hbm_bandwidth_bytes_per_s:.0f} FLOP/byte; experts compute-bound from batch "
    f"~{row['compute_bound_batch']:,.0f} ({moe.num_experts} experts, top-{moe.top_k})"
)
at = curve[curve["batch"] == 64].set_index("routing")["step_s_per_token"] * 1e6
print("decode time per token at batch 64 (µs):", at.round(1).to_dict())
