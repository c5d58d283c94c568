"""The notebooks execute headless with the README's command (jupytext py:percent -> executed
.ipynb through nbconvert and the python3 kernel) and produce what they promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.py"))


def _execute(name: str, out: Path) -> dict:
    """`jupytext --to ipynb --execute` (the README command), written to ``out``."""
    jupytext = shutil.which("jupytext") or pytest.skip("jupytext is not installed")
    pytest.importorskip("nbconvert")
    pytest.importorskip("ipykernel")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [jupytext, "--to", "ipynb", "--execute", "--output", str(out), f"notebooks/{name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def _outputs(nb: dict) -> list[dict]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


# Not marked slow: the default test run executes every notebook (they are part of the product).
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    nb = _execute(name, tmp_path / name.replace(".py", ".ipynb"))
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # every chart renders as an image (visible offline and on any notebook viewer)
    assert any("image/png" in o.get("data", {}) for o in outputs), "no chart rendered"
    text = "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/html", ""))
        for o in outputs
    )
    if name == "calibration_report.py":
        # the shipped measured profile, scored on its held-out shapes
        assert "h200.measured" in text and "held-out shapes" in text
    if name == "capacity_planning.py":
        for column in ("TTFT (ms)", "TPOT (ms)", "$ / M output tok"):
            assert column in text
        assert "vllm serve" in text


def test_dev_extra_installs_what_the_command_needs():
    import tomllib

    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in dev["dev"]}
    assert {"jupytext", "nbconvert", "nbclient", "ipykernel"} <= names
    assert sys.version_info >= (3, 11)
