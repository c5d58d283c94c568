"""What a cold command pays for: the import graph of `moesim predict` (not its wall time).

A cold ``moesim predict`` must stay well under a second; almost all of that is imports. These
tests run the command in a fresh interpreter and look at ``sys.modules`` afterwards, so they hold
on a loaded machine as on an idle one (the wall time itself is in benchmarks/bench_cli_startup.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("scipy", "pandas", "altair", "pyarrow", "torch", "matplotlib", "dask")


def _modules_after(argv: list[str]) -> tuple[int, list[str]]:
    code = (
        "import contextlib, io, json, sys\n"
        "from moesim.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    rc = run({argv!r})\n"
        "print(json.dumps([rc, sorted(m.split('.')[0] for m in sys.modules)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rc, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, modules


@pytest.mark.parametrize(
    "argv",
    [
        # the README's first command (MoE, uniform routing, table output)
        ["predict", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--tp", "2",
         "--batch", "32", "--input-len", "1024", "--output-len", "256"],
        ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--batch", "8", "--json"],
        ["predict", "--model", "qwen3-30b-a3b", "--hardware", "h200", "--batch", "4",
         "--phase", "decode", "--json"],
    ],
)  # fmt: skip
def test_predict_imports_no_heavy_module(argv):
    rc, modules = _modules_after(argv)
    assert rc == 0
    assert not [m for m in HEAVY if m in modules], [m for m in HEAVY if m in modules]


def test_predict_loads_only_its_own_command_module():
    code = (
        "import contextlib, io, json, sys\nfrom moesim.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    run(['predict', '--model', 'llama-3.1-8b', '-H', 'h100-sxm', '-b', '1', '--json'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('moesim.cli.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "moesim.cli.predict" in loaded
    assert not {"moesim.cli.sweep", "moesim.cli.calibrate", "moesim.cli.profile"} & set(loaded)


def test_help_still_lists_every_command():
    from typer.testing import CliRunner

    from moesim.cli import app, command_modules

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("predict", "sweep", "scenario", "profile", "calibrate", "validate", "hw", "model"):
        assert name in result.output
    assert "predict" in command_modules() and "_common" not in command_modules()
