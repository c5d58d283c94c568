"""`moesim compare`: several GPUs and layouts in one table, as table, CSV, Markdown or JSON."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.api import predict
from moesim.cli.compare import parse_layout
from moesim.errors import MoesimError

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["compare", "-m", "mixtral-8x7b", "-H", "h100-sxm", "-H", "h200", "-l", "tp1", "-l",
        "tp2", "-b", "32"]  # fmt: skip


def _run(*extra):
    return subprocess.run(
        [sys.executable, "-m", "moesim", *ARGS, *extra], capture_output=True, text=True, cwd=ROOT
    )


def test_layout_notation():
    assert parse_layout("tp2ep8dp4x3") == {"tp": 2, "ep": 8, "pp": 1, "dp": 4, "replicas": 3}
    assert parse_layout("TP4PP2") == {"tp": 4, "ep": 1, "pp": 2, "dp": 1, "replicas": 1}
    for bad in ("tp", "tp2tp4", "2tp", "tp2q"):
        with pytest.raises(MoesimError):
            parse_layout(bad)


def test_json_rows_match_predict():
    p = _run("--format", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [(r["hardware"], r["layout"]) for r in rows] == [
        ("h100-sxm", "tp1"), ("h100-sxm", "tp2"), ("h200", "tp1"), ("h200", "tp2")
    ]  # fmt: skip
    assert rows[0]["feasible"] is False and "GB usable" in rows[0]["reason"]  # 93 GB on 80 GB
    direct = predict("mixtral-8x7b", "h200", tp=2, batch=32)
    assert rows[3]["tpot_s"] == pytest.approx(direct["tpot_s"])


def test_csv_and_markdown_and_table():
    rows = list(csv.DictReader(io.StringIO(_run("--format", "csv").stdout)))
    assert len(rows) == 4 and "usd_per_million_output_tokens" in rows[0]
    md = _run("--format", "markdown").stdout.splitlines()
    assert md[0].startswith("| hardware | layout |") and md[1].startswith("|---|")
    assert len([line for line in md if line.startswith(("| h100", "| h200"))]) == 4
    table = _run().stdout
    assert "row 1 does not fit" in table
    assert max(len(line) for line in table.splitlines()) <= 100
