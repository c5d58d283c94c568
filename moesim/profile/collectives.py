"""Collectives through ``torch.distributed``: all-reduce and all-to-all bandwidth vs message size.

Run under torchrun, one process per device (``moesim profile --only collectives --nproc N``
spawns ``python -m torch.distributed.run --standalone --nproc-per-node N -m
moesim.profile.collectives …``); NCCL on GPUs, gloo on CPU. Every rank times every repeat;
the row keeps, per repeat, the slowest rank's time (a collective ends when its last rank does).

Bandwidths follow nccl-tests (PERFORMANCE.md): algbw = bytes / time; busbw = algbw · 2(n−1)/n
for all-reduce and algbw · (n−1)/n for all-to-all, comparable with the link's peak.
With one GPU, NCCL's world size 1 is degenerate (a local copy, no link traffic): the rows are
kept, marked in ``note``, and must not be read as link bandwidth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from moesim.profile.case import Case, Context

BUDGET_S = {"cuda": 40.0, "cpu": 45.0}
KB, MB = 2**10, 2**20


def message_sizes(device: str, quick: bool) -> list[int]:
    if device == "cuda":
        top = 16 * MB if quick else 1024 * MB
    else:
        top = 4 * MB if quick else 64 * MB
    sizes, size = [], 4 * KB
    while size <= top:
        sizes.append(size)
        size *= 4
    return sizes


# -- launcher side (inside ``moesim profile``) ---------------------------------------------


def default_nproc(device: str) -> int:
    if device == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    return 2


def cases(ctx: Context) -> list[Case]:
    nproc = ctx.nproc or default_nproc(ctx.device)
    backend = "nccl" if ctx.device == "cuda" else "gloo"
    params = {"world_size": nproc, "backend": backend}
    return [Case("collectives", backend, "fp32", f"torchrun_n{nproc}", params, _launch, True)]


def _launch(case: Case, ctx: Context) -> dict[str, Any]:
    """Spawn torchrun; the ranks append their rows to ``collectives.csv`` themselves."""
    nproc = case.params["world_size"]
    budget = BUDGET_S[ctx.device] * (0.5 if ctx.quick else 1.0)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "moesim.profile.collectives",
        "--out", str(ctx.out_dir), "--device", ctx.device, "--budget-s", str(budget),
        "--device-name", ctx.device_name,
    ] + (["--quick"] if ctx.quick else [])  # fmt: skip
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    from moesim.profile.runner import run_child  # dies with this process, group killed on error

    proc = run_child(cmd, env=env, timeout=budget + 120)
    log = Path(ctx.out_dir) / "collectives.log"
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {' | '.join(tail)} (see {log})")
    return {}


# -- worker side (one process per rank, under torchrun) ------------------------------------


def _input(numel: int, rank: int, device: str):
    """Rank ``rank``'s message: reproducible on every rank, so each can check what it gets."""
    import torch

    gen = torch.Generator(device=device).manual_seed(1000 + rank)
    return torch.randn(numel, generator=gen, device=device)


def _measure(op: str, size: int, device: str, dist, reps: int) -> tuple[list[float], float]:
    """Check one collective against its reference, then time ``reps`` calls (slowest rank)."""
    import torch

    from moesim.kernels.reference import relative_error

    world, rank = dist.get_world_size(), dist.get_rank()
    numel = size // 4 // world * world
    x = _input(numel, rank, device)
    if op == "allreduce":
        buf = x.clone()
        dist.all_reduce(buf)
        ref = sum(_input(numel, r, device).double() for r in range(world))
        err = relative_error(buf, ref)

        def call():
            dist.all_reduce(buf)
    else:
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x)
        chunk = numel // world
        ref = torch.cat(
            [_input(numel, r, device)[rank * chunk : (rank + 1) * chunk] for r in range(world)]
        )
        err = relative_error(out, ref)

        def call():
            dist.all_to_all_single(out, x)

    for _ in range(2):
        call()
    times = []
    for _ in range(reps):
        dist.barrier()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    slowest = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return slowest.cpu().tolist(), err


def worker(argv: list[str] | None = None) -> None:
    import torch
    import torch.distributed as dist

    from moesim.profile.results import CsvSink
    from moesim.profile.telemetry import now

    ap = argparse.ArgumentParser(prog="python -m moesim.profile.collectives")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget-s", type=float, default=60.0)
    ap.add_argument("--device-name", default="")
    args = ap.parse_args(argv)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", f"cuda:{local_rank}"
    else:
        backend, device = "gloo", "cpu"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    sink = CsvSink(Path(args.out), "collectives", resume=True) if rank == 0 else None
    note = "world_size=1: degenerate, no inter-device traffic" if world == 1 else ""
    start = time.perf_counter()
    for op in ("allreduce", "alltoall"):
        for size in message_sizes(args.device, args.quick):
            key = (op, backend, f"b{size}_w{world}", "fp32")
            todo = [sink is None or not sink.has(key)]
            dist.broadcast_object_list(todo, src=0)
            over = [time.perf_counter() - start > args.budget_s]
            dist.broadcast_object_list(over, src=0)
            if over[0]:
                break
            if not todo[0]:
                continue
            row: dict[str, Any] = {
                "kernel_class": op, "impl": backend, "dtype": "fp32", "shape_key": key[2],
                "message_bytes": size // 4 // world * world * 4, "world_size": world,
                "backend": backend, "flops": 0, "device_name": args.device_name,
                "timing_method": "torch.distributed", "note": note, "timestamp": now(),
            }  # fmt: skip
            try:
                reps = 20 if size <= 16 * MB else 5
                times, err = _measure(op, size, device, dist, reps)
                status, message = ("ok", "") if err <= 1e-5 else ("error", f"rel_err {err:.3g}")
                median = statistics.median(times)
                algbw = row["message_bytes"] / median / 1e9
                factor = 2 * (world - 1) / world if op == "allreduce" else (world - 1) / world
                row.update(
                    median_s=median, min_s=min(times), max_s=max(times), repeats=len(times),
                    rel_err=err, status=status, error=message, algbw_gbps=algbw,
                    busbw_gbps=algbw * factor, achieved_gbps=algbw * factor,
                )  # fmt: skip
            except Exception as exc:  # one size failing must not end the sweep
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
            if sink is not None:
                sink.write(row)
    if sink is not None:
        sink.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker()
