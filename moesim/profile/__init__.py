"""Hardware calibration runs: kernel microbenchmarks on ``cuda`` or ``cpu``.

``moesim profile --device cuda --out DIR`` (or ``python -m moesim.profile …`` where moesim's
other dependencies are missing) measures GEMMs, copy bandwidth, MoE expert kernels, attention,
token permutation, collectives and whole decoder layers, and writes one CSV per class plus
``run.json`` and ``telemetry.json``; ``moesim calibrate`` fits the cost model to them.

Nothing here imports torch, triton or pynvml at import time; the submodules that measure do.
"""

from __future__ import annotations

from typing import Any


def run_profile(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a profile (see ``moesim.profile.runner.run_profile``)."""
    from moesim.profile.runner import run_profile as _run

    return _run(*args, **kwargs)


__all__ = ["run_profile"]
