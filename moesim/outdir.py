"""Where results go: output paths checked before any work starts, files and folders written
atomically, so an interrupted run never leaves a file that reads as complete.

- :func:`check_out_file` / :func:`check_out_dir` refuse, with one line, an ``--out`` that is a
  file where a folder is wanted (or the reverse), whose parent cannot be created, or that this
  user cannot write — before minutes of evaluation, not after;
- :func:`atomic_write_text` / :func:`atomic_write_bytes` write ``NAME.tmp-<pid>`` in the same
  folder, flush it to disk and rename it over ``NAME`` (``rename`` is atomic on POSIX): a reader
  sees the old file or the new one, never a prefix;
- :class:`StagedDir` builds a whole output folder under a hidden sibling name and renames it into
  place when complete; an earlier run's folder is replaced whole, so one folder never mixes
  two runs (and a killed run leaves only the hidden staging folder, cleaned up by the next run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from moesim.errors import MoesimError

_STAGE = ".moesim-staging-"
_OLD = ".moesim-old-"


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def _check_writable_parent(path: Path, what: str) -> None:
    anchor = _nearest_existing(path.parent if path.parent != path else path)
    if not anchor.is_dir():
        raise MoesimError(f"{what} {path}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise MoesimError(f"{what} {path}: cannot write in {anchor} (permission denied)")


def check_out_file(path: str | Path, *, what: str = "--out") -> Path:
    """A file path that can be written: not a folder, in a folder that exists or can be made."""
    p = Path(path)
    if str(p) in ("", "."):
        raise MoesimError(f"{what}: give a file name")
    if p.is_dir():
        raise MoesimError(f"{what} {p} is a folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise MoesimError(f"{what} {p}: cannot overwrite it (permission denied)")
    _check_writable_parent(p, what)
    return p


def check_out_dir(path: str | Path, *, what: str = "--out") -> Path:
    """A folder path that can be written: not a file, its nearest existing ancestor writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MoesimError(f"{what} {p} is a file; give a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise MoesimError(f"{what} {p}: cannot write in it (permission denied)")
        return p
    _check_writable_parent(p, what)
    return p


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary name in the same folder and a rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets, not results
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process of that id exists (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StagedDir:
    """An output folder built aside and moved into place whole.

    ``with StagedDir(out, is_previous_run=f, overwrite=...) as stage:`` write into ``stage``;
    on success the folder is renamed to ``out`` (an earlier run there, recognised by
    ``is_previous_run(out)``, is replaced only with ``overwrite``; anything else non-empty there
    is never touched). On an error the staging folder is removed and ``out`` is unchanged.
    """

    def __init__(self, out: str | Path, *, is_previous_run, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.is_previous_run = is_previous_run
        self.overwrite = overwrite
        self.stage: Path | None = None
        self.check()

    def check(self) -> None:
        """Refuse now (before any work) what the commit would refuse later."""
        out = check_out_dir(self.out)
        here = Path.cwd().resolve()
        if out.exists() and (out.resolve() == here or out.resolve() in here.parents):
            raise MoesimError(
                f"--out {out} is the working folder or above it; give a folder of its own"
            )
        if out.is_dir() and any(out.iterdir()):
            if not self.is_previous_run(out):
                raise MoesimError(
                    f"--out {out} is a folder with other files in it, not an earlier moesim "
                    "output; choose a new or empty folder"
                )
            if not self.overwrite:
                raise MoesimError(
                    f"--out {out} holds an earlier run; pass --overwrite to replace it whole, "
                    "or choose another folder"
                )

    def __enter__(self) -> Path:
        parent = self.out.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._clean_stale(parent)
            self.stage = Path(tempfile.mkdtemp(prefix=f"{_STAGE}{os.getpid()}-", dir=parent))
            os.chmod(self.stage, 0o777 & ~_umask())  # mkdtemp's 0700 is for secrets, not results
        except OSError as exc:
            raise MoesimError(
                f"--out {self.out}: cannot create a folder in {parent} ({exc.strerror or exc})"
            ) from None
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.stage is not None
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return False
        self.check()  # nothing appeared at --out meanwhile
        old = None
        try:
            if self.out.exists():
                old = self.out.absolute().parent / f"{_OLD}{os.getpid()}-{self.out.name}"
                os.replace(self.out, old)
            os.replace(self.stage, self.out)
        except OSError as exc:
            if old is not None and not self.out.exists():
                os.replace(old, self.out)
            raise MoesimError(
                f"--out {self.out}: cannot move the results into place ({exc.strerror or exc}); "
                f"they are in {self.stage}"
            ) from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False

    @staticmethod
    def _clean_stale(parent: Path) -> None:
        """Staging folders of runs that were killed (their process is gone)."""
        for p in parent.glob(f"{_STAGE}*"):
            try:
                pid = int(p.name[len(_STAGE) :].split("-", 1)[0])
            except ValueError:
                continue
            if pid != os.getpid() and not pid_alive(pid) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
