"""``moesim profile``: run the kernel classes, one CSV each, with telemetry and a progress bar.

Each class module (gemm, memory, moe, attention, permute, collectives, layer) lists its
``cases(ctx)`` and a time budget; the runner measures them in order, writing one row per case
as soon as it is measured. Nothing inside a class can end the run: a failing case is an
``error`` row, a class that fails to build its cases is logged in ``run.json``, and a class
that exceeds its budget stops starting new cases (``--resume`` picks them up later).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError, unknown_name
from moesim.profile.results import CLASSES, CsvSink, backup_path

# Run order: bandwidth and GEMM ceilings first, the composite layer last.
CLASS_ORDER = ("memory", "gemm", "moe", "attention", "permute", "collectives", "layer")
assert set(CLASS_ORDER) == set(CLASSES)


def parse_only(only: str | None) -> list[str]:
    """``"gemm,memory"`` → ["memory", "gemm"] (run order); None or "" → every class."""
    if not only:
        return list(CLASS_ORDER)
    names = [n.strip() for n in only.split(",") if n.strip()]
    for name in names:
        if name not in CLASS_ORDER:
            raise unknown_name("kernel class", name, CLASS_ORDER)
    return [c for c in CLASS_ORDER if c in names]


def _check_device(device: str) -> None:
    if device not in ("cuda", "cpu"):
        raise unknown_name("device", device, ["cuda", "cpu"])
    try:
        import torch
    except ImportError as exc:
        raise MoesimError("moesim profile needs PyTorch: pip install 'moesim[profile]'") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise MoesimError("--device cuda but torch sees no CUDA GPU; use --device cpu")


def _json_dump(path: Path, obj: Any) -> None:
    from moesim.outdir import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


# --- child processes -----------------------------------------------------------------------
# Run first in the child, then exec'd away: asks the kernel to send the child SIGTERM when its
# parent dies, even by SIGKILL (prctl(2) PR_SET_PDEATHSIG = 1; the setting survives execve), and
# exits if the parent is already gone. A launcher rather than Popen's preexec_fn, which is not
# safe in a process that runs threads (the progress bar does).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "parent = int(sys.argv[1])\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != parent:\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def run_child(cmd: list[str], *, env: dict[str, str], timeout: float):
    """Run a worker command (torchrun) that cannot outlive this process.

    On Linux the command is started through a small launcher that sets the parent-death
    signal (SIGTERM; torchrun answers it by stopping its ranks); the child gets its own process
    group, which is terminated, then killed, on a timeout, an error or Ctrl-C here. Returns a
    ``subprocess.CompletedProcess`` with text stdout/stderr.
    """
    import os
    import signal
    import subprocess

    if sys.platform.startswith("linux"):
        cmd_run = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
    else:
        cmd_run = list(cmd)
    proc = subprocess.Popen(
        cmd_run,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class _PrivateTemp:
    """A temporary folder of this run, made the children's TMPDIR and removed at the end, so the
    ``torchelastic_*`` folders torchrun makes never pile up in the system temp folder."""

    PREFIX = "moesim-profile-"

    def __enter__(self) -> Path:
        import shutil
        import tempfile

        from moesim.outdir import pid_alive

        base = Path(tempfile.gettempdir())
        for stale in base.glob(f"{self.PREFIX}*-*"):  # left by a run that was killed
            pid = stale.name[len(self.PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=base))
        self.saved = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = str(self.path)
        return self.path

    def __exit__(self, *exc: object) -> None:
        import shutil

        if self.saved is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.saved
        shutil.rmtree(self.path, ignore_errors=True)


def run_profile(
    device: str,
    out_dir: str | Path,
    *,
    quick: bool = False,
    only: str | None = None,
    resume: bool = False,
    nproc: int | None = None,
    budget_scale: float = 1.0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Measure the selected kernel classes on ``device``; returns the run summary (run.json)."""
    classes = parse_only(only)
    _check_device(device)
    from moesim.outdir import check_out_dir

    out = check_out_dir(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoesimError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    with _PrivateTemp():
        return _run(device, out, classes, quick, resume, nproc, budget_scale, show_progress)


def _run(device, out, classes, quick, resume, nproc, budget_scale, show_progress) -> dict:
    import torch

    from moesim.profile import telemetry
    from moesim.profile.case import Context
    from moesim.profile.harness import default_settings

    snap = telemetry.snapshot(device)
    snap["samples"] = []
    capability = torch.cuda.get_device_capability(0) if device == "cuda" else None
    l2 = (snap.get("torch_device") or {}).get("l2_cache_bytes")
    ctx = Context(
        device=device,
        quick=quick,
        out_dir=out,
        settings=default_settings(device, quick=quick, l2_bytes=l2),
        device_name=telemetry.device_name(snap),
        capability=capability,
        nproc=nproc,
        resume=resume,
    )
    run: dict[str, Any] = {
        "device": device,
        "device_name": ctx.device_name,
        "args": {"quick": quick, "only": classes, "resume": resume, "nproc": nproc,
                 "budget_scale": budget_scale, "argv": sys.argv},
        "versions": snap["versions"],
        "start": telemetry.now(),
        "end": None,
        "settings": ctx.settings.__dict__,
        "classes": {},
    }  # fmt: skip
    for name in ("run.json", "telemetry.json"):  # an earlier run's metadata is kept, not lost
        if (out / name).exists():
            os.replace(out / name, backup_path(out / name))
    _json_dump(out / "run.json", run)
    _json_dump(out / "telemetry.json", snap)

    plans = {}
    for cls in classes:
        try:
            module = importlib.import_module(f"moesim.profile.{cls}")
            plans[cls] = (module, module.cases(ctx))
        except Exception as exc:
            run["classes"][cls] = {"error": _one_line(exc), "traceback": traceback.format_exc()}
    total = sum(len(c) for _, c in plans.values())

    with _progress(show_progress) as progress:
        task = progress.add_task("profiling", total=total)
        for cls, (module, cases) in plans.items():
            budget = module.BUDGET_S[device] * budget_scale * (0.5 if quick else 1.0)
            progress.update(task, description=f"{cls:<11}")
            snap["samples"].append(telemetry.sample(device, f"before {cls}"))
            ctx.row_telemetry = telemetry.row_fields(snap["samples"][-1])
            run["classes"][cls] = _run_class(cls, cases, ctx, budget, resume, progress, task)
            snap["samples"].append(telemetry.sample(device, f"after {cls}"))
            _json_dump(out / "telemetry.json", snap)
            run["end"] = telemetry.now()
            _json_dump(out / "run.json", run)
    run["end"] = telemetry.now()
    _json_dump(out / "run.json", run)
    return run


def _run_class(cls, cases, ctx, budget_s, resume, progress, task) -> dict[str, Any]:
    from moesim.profile.telemetry import now

    counts = {"ok": 0, "error": 0, "skipped": 0, "already_present": 0, "left_over_budget": 0}
    start = time.perf_counter()
    sink = CsvSink(ctx.out_dir, cls, resume=resume)
    own_rows = any(c.writes_own_rows for c in cases)
    if own_rows:  # the subprocess appends to the same file
        sink.close()
    try:
        for case in cases:
            if not own_rows and sink.has(case.key):
                counts["already_present"] += 1
                progress.advance(task)
                continue
            if time.perf_counter() - start > budget_s:
                counts["left_over_budget"] += 1
                progress.advance(task)
                continue
            row = _measure(case, ctx)
            row["timestamp"] = now()
            if own_rows:
                if row["status"] == "error":
                    with CsvSink(ctx.out_dir, cls, resume=True) as s:
                        s.write(row)
            else:
                sink.write(row)
            counts[row["status"]] += 1
            progress.advance(task)
    finally:
        if not own_rows:
            sink.close()
        _free_memory(ctx.device)
    if sink.repaired:
        counts["repaired"] = sink.repaired  # a torn last row dropped (it was measured again)
    if own_rows:
        from moesim.profile.results import read_rows

        rows = read_rows(ctx.out_dir / f"{cls}.csv")
        for status in ("ok", "error", "skipped"):
            counts[status] = sum(r.get("status") == status for r in rows)
    counts["elapsed_s"] = round(time.perf_counter() - start, 2)
    counts["budget_s"] = budget_s
    return counts


def _measure(case, ctx) -> dict[str, Any]:
    """One row: identity and known columns, then the measurement or the reason it failed."""
    from moesim.profile.case import SkipCase
    from moesim.profile.harness import KernelCheckError

    row: dict[str, Any] = {
        "kernel_class": case.kernel_class,
        "impl": case.impl,
        "dtype": case.dtype,
        "shape_key": case.shape_key,
        "device_name": ctx.device_name,
        **ctx.row_telemetry,
        **{k: v for k, v in case.params.items() if not k.startswith("_")},
    }
    try:
        row.update(case.run(case, ctx))
        row["status"] = "ok"
    except SkipCase as exc:
        row.update(status="skipped", error=str(exc))
    except KernelCheckError as exc:
        row.update(status="error", error=f"check failed: {exc}")
    except Exception as exc:  # a kernel failing must not end the sweep
        row.update(status="error", error=_one_line(exc))
        _free_memory(ctx.device)
    return row


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def _progress(show: bool):
    if not show:
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
