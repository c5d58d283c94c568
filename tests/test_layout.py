"""The package layout of DESIGN: spec -> cost -> engine -> plan, one direction only; old flat
import paths still resolve to the very same modules for one release."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moesim"
RANK = {"spec": 0, "cost": 1, "engine": 2, "plan": 3}
TOP = ("api", "cli", "plots")

# Upward imports that remain, each inside a function and each with its reason.
ALLOWED = {
    # Workload.predict is a convenience kept from the flat layout: it hands the traffic to the
    # static-batch engine. The engine does not depend on it.
    ("spec/workload.py", "moesim.engine"),
    ("spec/workload.py", "moesim.cost.ops"),
    # A sweep renders its charts into its output folder when the scenario asks for them.
    ("plan/sweep.py", "moesim.plots.charts"),
}

OLD_PATHS = {
    "moesim.model": "moesim.spec.model",
    "moesim.hardware": "moesim.spec.hardware",
    "moesim.deployment": "moesim.spec.deployment",
    "moesim.workload": "moesim.spec.workload",
    "moesim.dtypes": "moesim.spec.dtypes",
    "moesim.units": "moesim.spec.units",
    "moesim.ops": "moesim.cost.ops",
    "moesim.roofline": "moesim.cost.roofline",
    "moesim.kernel_cost": "moesim.cost.kernel_cost",
    "moesim.comm": "moesim.cost.comm",
    "moesim.offload": "moesim.cost.offload",
    "moesim.routing": "moesim.cost.routing",
    "moesim.routing.stats": "moesim.cost.routing.stats",
    "moesim.routing.distributions": "moesim.cost.routing.distributions",
    "moesim.serving": "moesim.engine.static",
    "moesim.disagg": "moesim.engine.disagg",
    "moesim.queueing": "moesim.engine.queueing",
    "moesim.planner": "moesim.plan.planner",
    "moesim.scenario": "moesim.plan.scenario",
    "moesim.sweep": "moesim.plan.sweep",
    "moesim.validate": "moesim.calibrate.validate",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_lower_wings_never_import_higher_ones():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        wing = rel.parts[0]
        if wing not in RANK:
            continue
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "moesim" or len(parts) < 2:
                continue
            target = parts[1]
            upward = (target in RANK and RANK[target] > RANK[wing]) or target in TOP
            allowed = any(str(rel) == f and module.startswith(m) for f, m in ALLOWED)
            if upward and not allowed:
                bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_cost_never_imports_engine_at_all():
    """The disagg <-> offload circle is broken: nothing in cost/ reaches engine/."""
    for path in (PACKAGE / "cost").rglob("*.py"):
        for line, module in _imports(path):
            assert not module.startswith("moesim.engine"), f"{path}:{line} imports {module}"


@pytest.mark.parametrize("old,new", sorted(OLD_PATHS.items()))
def test_old_import_paths_are_the_same_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_serving_names_still_resolve():
    from moesim import serving
    from moesim.cost.step import evaluate_ops, step
    from moesim.engine.memory import memory_per_gpu

    assert serving.step is step
    assert serving.evaluate_ops is evaluate_ops
    assert serving.memory_per_gpu is memory_per_gpu
    assert callable(serving.predict) and callable(serving.predict_phase)
