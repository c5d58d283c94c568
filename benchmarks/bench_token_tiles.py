"""Cost of the fused MoE's token-tile choice in the step model, as a ratio in one run.

Prices the decode step of Mixtral-8x7B (TP2 EP2) at 10^6 batch sizes on the shipped
``h200.trtllm`` profile twice: with its fitted ``token_tiles`` (the autotuner's fastest of
five tiles per point) and with them removed (one 64-row block), and reports the ratio.

    python benchmarks/bench_token_tiles.py [--points N] [--out benchmarks/results/token_tiles.json]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from _bench import best_of, report

from moesim.cost.ops import routing_or_default, step_ops
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model


def _without_tiles(hw):
    g = hw.efficiency.grouped_gemm
    plain = g.model_copy(
        update={
            "token_tiles": [],
            "by_format": {
                f: b.model_copy(update={"token_tiles": []}) for f, b in g.by_format.items()
            },
        }
    )
    return hw.model_copy(
        update={"efficiency": hw.efficiency.model_copy(update={"grouped_gemm": plain})}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10**6)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    hw = load_hardware("h200.trtllm")
    tiles = list(hw.efficiency.grouped_gemm.for_format("bf16", "bf16").token_tiles)
    plain = _without_tiles(hw)
    model = load_model("mixtral-8x7b")
    batch = np.resize(np.geomspace(1, 4096, 4096).round(), args.points)
    routing = routing_or_default(None)

    def run(h):
        return lambda: step_ops(model, h, Layout(tp=2, ep=2), "decode", batch, 1, 2048, routing)

    run(hw)(), run(plain)()  # warm the routing tables
    tiled_s, plain_s = best_of(run(hw), 3), best_of(run(plain), 3)
    result = {
        "what": f"step_ops, Mixtral-8x7B decode TP2 EP2, {args.points:,} batch sizes, h200.trtllm",
        "token_tiles": tiles,
        "with_tiles_s": round(tiled_s, 4),
        "one_block_s": round(plain_s, 4),
        "ratio": round(tiled_s / plain_s, 2),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "timing": "best of 3 runs each, tables warm",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
