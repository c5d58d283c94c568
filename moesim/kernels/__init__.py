"""MoE expert kernels that ``moesim profile`` measures.

Three implementations of one function, ``y = Σ_k w_k · down(silu(gate(x)) · up(x))`` over each
token's top-k experts:

- ``reference.moe_loop``: PyTorch, a loop over experts (the reference);
- ``grouped.moe_grouped_mm``: torch's grouped GEMM (``F.grouped_mm`` / ``torch._grouped_mm``);
- ``fused_moe.fused_moe``: our Triton kernel on tokens sorted by expert and padded to BLOCK_M
  (``align.moe_align_block_size``).

torch and triton are imported by the submodules only; importing this package costs nothing.
"""
