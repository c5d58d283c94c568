"""MoE expert kernels: Triton fused kernel, grouped GEMM and block alignment vs the reference.

Without a GPU the Triton kernel runs through Triton's interpreter (TRITON_INTERPRET=1 must be
set before ``moesim.kernels.fused_moe`` is imported, hence at the top of this module), in
float32 and float16 only: the interpreter computes bfloat16 wrongly.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from moesim.kernels.align import max_padded_rows, moe_align_block_size  # noqa: E402
from moesim.kernels.configs import TILE_CONFIGS, pick_config  # noqa: E402
from moesim.kernels.reference import moe_loop, relative_error  # noqa: E402
from moesim.kernels.routing import route, routing_stats  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def fused():
    from moesim.kernels import fused_moe

    if DEVICE == "cpu" and not fused_moe.interpreter_active():
        pytest.skip("fused_moe was imported before TRITON_INTERPRET=1 was set")
    return fused_moe


def ragged_ids(tokens: int, experts: int, top_k: int, empty: set[int], seed: int) -> torch.Tensor:
    """Top-k ids with uneven loads; experts in ``empty`` get no tokens."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(experts) if e not in empty])
    # Skew: earlier allowed experts are likelier (weights 1/(r+1)).
    probs = 1.0 / torch.arange(1, len(allowed) + 1, dtype=torch.float)
    rows = [allowed[torch.multinomial(probs, top_k, generator=gen)] for _ in range(tokens)]
    return torch.stack(rows)


def make_problem(tokens, experts, top_k, hidden, inter, dtype, seed=0, empty=(1, 4)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=gen) / inter**0.5
    ids = ragged_ids(tokens, experts, top_k, set(empty), seed)
    weights = torch.rand(tokens, top_k, generator=gen).softmax(-1)
    ref = moe_loop(x.double(), w13.double(), w2.double(), ids, weights.double())
    cast = [t.to(DEVICE, dtype) for t in (x, w13, w2)]
    return (*cast, ids.to(DEVICE), weights.to(DEVICE)), ref


# -- the fused Triton kernel -----------------------------------------------------------------


@pytest.mark.parametrize("regime", ["decode", "small"])
def test_fused_moe_fp32_matches_reference_ragged_and_empty_experts(fused, regime):
    args, ref = make_problem(
        tokens=21, experts=6, top_k=2, hidden=64, inter=48, dtype=torch.float32
    )
    cfg = pick_config(1.0 if regime == "decode" else 40.0, 48, 64)
    assert cfg.block_m == TILE_CONFIGS[regime].block_m
    counts = torch.bincount(args[3].flatten().cpu(), minlength=6)
    assert counts[1] == 0 and counts[4] == 0 and len(set(counts.tolist())) > 2
    out = fused.fused_moe(*args, config=cfg)
    err = relative_error(out.cpu(), ref)
    print(f"fused_moe fp32 {regime}: rel err {err:.2e}")
    assert err < 1e-3


def test_fused_moe_fp32_non_local_experts_contribute_nothing(fused):
    args, _ = make_problem(tokens=17, experts=5, top_k=3, hidden=32, inter=32, dtype=torch.float32)
    x, w13, w2, ids, weights = args
    ids = torch.where(ids >= 3, torch.full_like(ids, -1), ids)  # experts 3, 4 on another GPU
    ref = moe_loop(x.double(), w13.double(), w2.double(), ids, weights.double())
    out = fused.fused_moe(x, w13[:3], w2[:3], ids, weights)
    assert relative_error(out.cpu(), ref.cpu()) < 1e-3


def test_fused_moe_all_tokens_elsewhere_gives_zeros(fused):
    args, _ = make_problem(tokens=4, experts=2, top_k=1, hidden=32, inter=16, dtype=torch.float32)
    x, w13, w2, ids, weights = args
    out = fused.fused_moe(x, w13, w2, torch.full_like(ids, -1), weights)
    assert torch.equal(out.cpu(), torch.zeros(4, 32))


def test_fused_moe_fp16(fused):
    args, ref = make_problem(
        tokens=19, experts=4, top_k=2, hidden=64, inter=32, dtype=torch.float16, empty=(2,)
    )
    out = fused.fused_moe(*args)
    err = relative_error(out.float().cpu(), ref)
    print(f"fused_moe fp16: rel err {err:.2e}")
    assert out.dtype == torch.float16 and err < 1e-2


@gpu
@needs_cuda
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_fused_moe_bf16_on_gpu(fused, tokens):
    args, ref = make_problem(
        tokens=tokens, experts=8, top_k=2, hidden=256, inter=512, dtype=torch.bfloat16
    )
    out = fused.fused_moe(*args)
    err = relative_error(out.float().cpu(), ref)
    print(f"fused_moe bf16 T={tokens}: rel err {err:.2e}")
    assert err < 2e-2


@gpu
@needs_cuda
def test_fused_moe_is_deterministic_and_graph_capturable(fused):
    args, _ = make_problem(
        tokens=64, experts=8, top_k=2, hidden=256, inter=256, dtype=torch.bfloat16
    )
    first = fused.fused_moe(*args)
    assert torch.equal(first, fused.fused_moe(*args))
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fused.fused_moe(*args)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        captured = fused.fused_moe(*args)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, first)


# -- grouped GEMM ------------------------------------------------------------------------------


def test_grouped_mm_api_and_path_detection(monkeypatch):
    import torch.nn.functional as F

    from moesim.kernels import grouped

    if hasattr(F, "grouped_mm"):
        assert grouped.grouped_mm_api()[0] == "F.grouped_mm"
    assert grouped.grouped_mm_path("cpu", torch.float32) == "fallback_loop_cpu"
    monkeypatch.delattr(F, "grouped_mm", raising=False)
    if hasattr(torch, "_grouped_mm"):
        assert grouped.grouped_mm_api()[0] == "torch._grouped_mm"
    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    assert grouped.grouped_mm_api() is None
    assert grouped.grouped_mm_path("cpu", torch.float32) == "none"


@gpu
@needs_cuda
def test_grouped_mm_path_on_gpu():
    from moesim.kernels.grouped import grouped_mm_path

    major, _ = torch.cuda.get_device_capability()
    expected = f"fused_cutlass_sm{major}0" if major in (9, 10) else "fallback_loop_cuda"
    assert grouped_mm_path("cuda", torch.bfloat16) == expected
    assert grouped_mm_path("cuda", torch.float16) == "fallback_loop_cuda"


def test_moe_grouped_mm_matches_reference():
    from moesim.kernels.grouped import grouped_mm_api, moe_grouped_mm

    if grouped_mm_api() is None:
        pytest.skip("this torch has no grouped_mm")
    args, ref = make_problem(
        tokens=23, experts=6, top_k=2, hidden=32, inter=24, dtype=torch.float32
    )
    x, w13, w2, ids, weights = args
    ids = torch.where(ids == 5, torch.full_like(ids, -1), ids)
    ref = moe_loop(x.double(), w13.double(), w2.double(), ids, weights.double())
    assert relative_error(moe_grouped_mm(x, w13, w2, ids, weights).cpu(), ref.cpu()) < 1e-4


# -- alignment (sorting + padding) -------------------------------------------------------------


@st.composite
def routings(draw):
    experts = draw(st.integers(1, 9))
    top_k = draw(st.integers(1, experts))
    tokens = draw(st.integers(0, 40))
    rows = [
        draw(st.lists(st.integers(-1, experts - 1), min_size=top_k, max_size=top_k))
        for _ in range(tokens)
    ]
    ids = torch.tensor(rows, dtype=torch.int64).reshape(tokens, top_k)
    return ids, experts, draw(st.sampled_from([1, 2, 4, 16]))


@settings(max_examples=150, deadline=None)
@given(routings())
def test_moe_align_block_size_properties(case):
    ids, experts, bm = case
    al = moe_align_block_size(ids, experts, bm)
    flat = ids.flatten()
    n_assign = flat.numel()
    counts = torch.bincount(flat[flat >= 0], minlength=experts)
    padded = (counts + bm - 1) // bm * bm
    assert torch.equal(al.counts, counts)
    assert int(al.num_padded) == int(padded.sum())
    assert al.sorted_ids.numel() == max_padded_rows(n_assign, experts, bm) >= int(padded.sum())
    assert al.sorted_ids.numel() % bm == 0
    used = al.sorted_ids[: int(al.num_padded)]
    real = used[used < n_assign]
    # Every local assignment appears exactly once; padding uses the sentinel A only.
    assert sorted(real.tolist()) == sorted(torch.nonzero(flat >= 0).flatten().tolist())
    assert bool((al.sorted_ids[int(al.num_padded) :] == n_assign).all())
    start = 0
    for e in range(experts):
        run = al.sorted_ids[start : start + int(padded[e])]
        members = run[run < n_assign]
        assert bool((flat[members.long()] == e).all())
        assert members.tolist() == sorted(members.tolist())  # stable: original order kept
        blocks = al.block_expert[start // bm : (start + int(padded[e])) // bm]
        assert bool((blocks == e).all())
        start += int(padded[e])


# -- routing -----------------------------------------------------------------------------------


def test_route_distinct_normalised_and_local_slice():
    gen = torch.Generator().manual_seed(0)
    ids, w = route(500, 32, 4, "zipf", local_experts=8, generator=gen)
    assert ids.shape == (500, 4) and w.shape == (500, 4)
    assert torch.allclose(w.sum(-1), torch.ones(500))
    assert bool(((ids >= -1) & (ids < 8)).all())
    full, _ = route(500, 32, 4, "uniform", generator=torch.Generator().manual_seed(1))
    assert all(len(set(r)) == 4 for r in full.tolist())


def test_zipf_routing_is_more_skewed_than_uniform():
    def max_load(routing):
        ids, _ = route(4096, 64, 2, routing, generator=torch.Generator().manual_seed(3))
        return routing_stats(ids, 64, 16)["max_expert_tokens"]

    assert max_load("zipf") > 2 * max_load("uniform")


def test_routing_stats_counts_padding():
    ids = torch.tensor([[0, 1], [0, -1], [0, 2]])
    stats = routing_stats(ids, 4, 4)
    assert stats == {
        "assignments": 5, "n_active_experts": 3, "max_expert_tokens": 3,
        "sum_padded_tokens": 12, "local_tokens": 3,
    }  # fmt: skip
