"""The README's examples run as written: its Python blocks execute, and every command of its
bash blocks exits 0.

Bash blocks are split into commands (``\\`` continues a line, ``#`` starts a comment). A block
right after ``<!-- readme: slow -->`` is marked ``slow`` and runs only with
``MOESIM_README_SLOW=1`` (a CPU profile takes minutes; CI skips it), one after
``<!-- readme: gpu -->`` only where a CUDA GPU is present (marked ``gpu``), and the block after
``<!-- ci:test -->`` is the test command itself (run by ``.ci/run``, not from inside the tests).
``pip install ...`` parts are the set-up the test environment already did; the rest of the line
runs. ``moesim`` is this checkout's ``python -m moesim``; commands run in a scratch folder that
links the checkout's ``scenarios``, ``notebooks``, ``hwprofiles`` and ``benchmarks``, so outputs
(``out/...``) land there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
FENCE = re.compile(r"(?:<!-- (?P<tag>[\w:]+(?:: \w+)?) -->\n)?```bash\n(?P<body>.*?)```", re.S)


def bash_commands() -> list[tuple[str, str]]:
    """(tag, command) for every command of every bash block, in README order."""
    out = []
    for m in FENCE.finditer(TEXT):
        tag = (m.group("tag") or "").replace("readme: ", "")
        joined = re.sub(r"\\\n\s*", " ", m.group("body"))
        for line in joined.splitlines():
            cmd = _strip_comment(line).strip()
            if cmd:
                out.append((tag, cmd))
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment``: a ``#`` after whitespace, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _runnable(cmd: str) -> str:
    """Drop the pip set-up step; use this checkout's moesim."""
    parts = [p.strip() for p in cmd.split("&&")]
    parts = [p for p in parts if not p.startswith("pip install")]
    return " && ".join(parts)


COMMANDS = bash_commands()
CASES = []
for i, (tag, cmd) in enumerate(COMMANDS):
    if tag == "ci:test" or _runnable(cmd).startswith("python -m pytest"):
        continue  # the test suite itself (.ci/run runs it): never from inside the tests
    marks = {"slow": [pytest.mark.slow], "gpu": [pytest.mark.gpu]}.get(tag, [])
    words = _runnable(cmd).split()
    CASES.append(pytest.param(tag, cmd, marks=marks, id=f"cmd{i}-{words[0]}-{words[1][:16]}"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder that looks like the checkout for commands that read repo paths."""
    where = tmp_path_factory.mktemp("readme")
    for name in ("scenarios", "notebooks", "hwprofiles", "benchmarks", "tests", "pyproject.toml"):
        (where / name).symlink_to(ROOT / name)
    bindir = where / ".bin"
    bindir.mkdir()
    shim = bindir / "moesim"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m moesim "$@"\n')
    shim.chmod(0o755)
    return where


@pytest.mark.parametrize("tag,cmd", CASES)
def test_readme_command_exits_0(tag, cmd, scratch):
    if tag == "slow" and not os.environ.get("MOESIM_README_SLOW"):
        pytest.skip("slow README command: set MOESIM_README_SLOW=1 to run it")
    if tag == "gpu":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
    if cmd.startswith("jupytext"):
        pytest.importorskip("nbconvert")
    runnable = _runnable(cmd)
    env = dict(os.environ)
    env["PATH"] = f"{scratch / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    (scratch / "out").mkdir(exist_ok=True)
    p = subprocess.run(
        runnable, shell=True, cwd=scratch, env=env, capture_output=True, text=True, timeout=900
    )
    assert p.returncode == 0, (
        f"{runnable}\n--- stdout\n{p.stdout[-2000:]}\n--- stderr\n{p.stderr[-3000:]}"
    )


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code):
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README


def test_readme_has_examples_and_the_ci_line():
    assert len(BLOCKS) >= 2
    assert "<!-- ci:test -->" in TEXT
    tags = {tag for tag, _ in COMMANDS}
    assert tags <= {"", "ci:test", "slow", "gpu"}, tags
    assert sum(1 for tag, _ in COMMANDS if tag == "") >= 15  # the tour runs in the fast tier


def test_commands_are_split_like_a_shell_would():
    assert _strip_comment("moesim model list   # 16 presets") == "moesim model list   "
    assert _strip_comment("moesim routing --routing 'zipf:1.2#x'") == (
        "moesim routing --routing 'zipf:1.2#x'"
    )
    assert _runnable("pip install -e . && moesim predict -m x") == "moesim predict -m x"
