"""Every shipped scenario runs through ``moesim sweep`` (the 1M-point one reduced with --limit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_runs(tmp_path, name):
    args = ["sweep", str(ROOT / "scenarios" / name), "--out", str(tmp_path), "--json"]
    if name == "bench-1m.yaml":
        args += ["--limit", "20000"]
    p = subprocess.run(
        [sys.executable, "-c", "from moesim.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    manifest = json.loads(p.stdout)
    assert manifest["points"] > 0 and (tmp_path / "results.parquet").exists()
    for chart in manifest["charts"]:
        assert (tmp_path / chart).stat().st_size > 0
