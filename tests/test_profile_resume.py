"""Profiler runs that lose no measurement: torn rows, foreign headers, backups, worker cleanup.

All CPU-only and without torch: they exercise moesim.profile.results and the process helpers of
moesim.profile.runner directly (the end-to-end kill-and-resume of a run is in test_profile.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from moesim.errors import MoesimError
from moesim.profile.results import CsvSink, read_rows, repair_csv
from moesim.profile.runner import _PrivateTemp, run_child

ROOT = Path(__file__).resolve().parents[1]


def _row(i: int, status: str = "ok") -> dict:
    return {
        "kernel_class": "memory", "impl": "copy", "dtype": "fp32", "shape_key": f"b{i}",
        "median_s": 1e-3 * (i + 1), "status": status, "bytes": 1024 * (i + 1),
    }  # fmt: skip


def _three_rows(tmp_path) -> Path:
    with CsvSink(tmp_path, "memory", resume=False) as sink:
        for i in range(3):
            sink.write(_row(i))
    return tmp_path / "memory.csv"


@pytest.mark.parametrize("tail", [b"memory,copy,fp32,b9,0.0", b"\x00" * 64, b'memory,"copy'])
def test_resume_over_a_torn_last_row_drops_it_and_keeps_the_original(tmp_path, tail):
    path = _three_rows(tmp_path)
    intact = path.read_bytes()
    path.write_bytes(intact + tail)  # power loss in the middle of the fourth row
    with CsvSink(tmp_path, "memory", resume=True) as sink:
        assert sink.repaired and sink.repaired["torn_bytes_removed"] == len(tail)
        assert sink.has(("memory", "copy", "b2", "fp32")) and not sink.has(
            ("memory", "copy", "b9", "fp32")
        )
        sink.write(_row(9))
    rows = read_rows(path)
    assert [r["shape_key"] for r in rows] == ["b0", "b1", "b2", "b9"]
    assert all(r["status"] == "ok" for r in rows)
    assert (tmp_path / "memory.csv.bak").read_bytes() == intact + tail  # nothing thrown away


def test_rows_with_a_wrong_field_count_are_dropped(tmp_path):
    path = _three_rows(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(2, "memory,copy,fp32\n")  # a short row in the middle (a torn write, then more)
    path.write_text("".join(lines))
    info = repair_csv(path)
    assert info["rows_dropped"] == 1
    assert [r["shape_key"] for r in read_rows(path)] == ["b0", "b1", "b2"]


def test_a_clean_file_is_left_alone(tmp_path):
    path = _three_rows(tmp_path)
    before = path.read_bytes()
    assert repair_csv(path) is None and path.read_bytes() == before
    assert not (tmp_path / "memory.csv.bak").exists()


def test_resume_refuses_a_foreign_header(tmp_path):
    (tmp_path / "memory.csv").write_text("name,age\nalice,3\n")
    with pytest.raises(MoesimError, match="not a moesim measurement CSV"):
        CsvSink(tmp_path, "memory", resume=True)
    assert (tmp_path / "memory.csv").read_text() == "name,age\nalice,3\n"


def test_backups_are_never_overwritten(tmp_path):
    contents = []
    for run in range(4):  # four fresh runs into the same folder
        with CsvSink(tmp_path, "memory", resume=False) as sink:
            sink.write(_row(run))
        contents.append((tmp_path / "memory.csv").read_text())
    backups = [tmp_path / n for n in ("memory.csv.bak", "memory.csv.bak.2", "memory.csv.bak.3")]
    assert [p.read_text() for p in backups] == contents[:3]
    assert (tmp_path / "memory.csv").read_text() == contents[3]


def test_private_temp_is_the_childrens_tmpdir_and_is_removed():
    before = os.environ.get("TMPDIR")
    with _PrivateTemp() as tmp:
        assert os.environ["TMPDIR"] == str(tmp) and tmp.is_dir()
        out = subprocess.run(
            [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
            capture_output=True,
            text=True,
        )
        assert out.stdout.strip() == str(tmp)
        (tmp / "torchelastic_x").mkdir()
    assert not tmp.exists() and os.environ.get("TMPDIR") == before


def test_stale_private_temps_of_dead_runs_are_removed():
    base = Path(tempfile.gettempdir())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = base / f"{_PrivateTemp.PREFIX}{dead.pid}-abc"
    stale.mkdir(exist_ok=True)
    with _PrivateTemp():
        pass
    assert not stale.exists()


def test_run_child_kills_its_process_group_on_timeout(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, time; p = subprocess.Popen(['sleep', '30']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(30)"
    )
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", script], env=dict(os.environ), timeout=2)
    assert time.monotonic() - start < 25
    grandchild = int(pid_file.read_text())
    for _ in range(100):
        if _gone(grandchild):
            break
        time.sleep(0.05)
    assert _gone(grandchild)  # the whole group went, not only the direct child


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_worker_dies_when_its_parent_is_killed(tmp_path):
    """The parent (a stand-in for `moesim profile`) starts a worker through run_child and is
    then SIGKILLed: the worker must not keep running."""
    pid_file = tmp_path / "worker.pid"
    parent = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from moesim.profile.runner import run_child
        worker = "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
        run_child([sys.executable, "-c", worker], env=dict(os.environ), timeout=120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        if _gone(worker):
            break
        time.sleep(0.05)
    assert _gone(worker)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
