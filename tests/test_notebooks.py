"""The notebooks execute top to bottom (jupytext py:percent -> notebook -> nbclient, python3 kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nb = jupytext.read(ROOT / "notebooks" / name)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=60,
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # nbclient's per-cell timeout guards against a hang; speed is not tested
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
