"""On-disk cache of routing tables, so a Zipf or histogram question is answered once per machine.

The tables of :mod:`moesim.cost.routing.stats` (E[max] load, padding and drop ratios over a grid
of token counts) cost ~1 s to build for a skewed 256-expert layer and are pure functions of the
distribution, the shape (E, k, G, layer, redundant slots, placement), the grid and the padding /
capacity settings. They are kept in memory for the process and in one ``.npz`` file each under the
user cache directory:

- ``$MOESIM_CACHE_DIR`` if set (``off`` / empty disables the disk cache),
- else ``platformdirs.user_cache_dir("moesim")`` when platformdirs is installed,
- else ``$XDG_CACHE_HOME/moesim`` (default ``~/.cache/moesim``; XDG Base Directory spec).

The file name is a SHA-256 of the key and of the routing code itself, so a change to the
formulas never reads an old table. Files are written to a temporary name in the same folder and
renamed (``os.replace`` is atomic on POSIX and Windows), so concurrent writers race harmlessly and
readers never see half a file; a file that does not load (truncated, corrupt, wrong keys) is
ignored, rebuilt and rewritten. Any I/O error just skips the disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

SUBDIR = "routing"


def cache_dir() -> Path | None:
    """The folder routing tables go to, or None when the disk cache is off."""
    from moesim.cachedir import cache_dir as _cache_dir

    return _cache_dir(SUBDIR)


@cache
def code_version() -> str:
    """Hash of the routing package's source: tables built by other formulas are never reused."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _digest(key: tuple) -> str:
    return hashlib.sha256(repr((code_version(), key)).encode()).hexdigest()


def _path(key: tuple) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    return folder / f"{_digest(key)[:32]}.npz"


def load(key: tuple, names: tuple[str, ...]) -> dict | None:
    """The cached table for ``key`` with exactly the arrays ``names``, or None."""
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != set(names) | {"_key"} or str(data["_key"]) != _digest(key):
                return None
            table = {n: np.array(data[n]) for n in names}
    except Exception:  # truncated, corrupt or foreign file: rebuild it
        return None
    if any(not np.all(np.isfinite(v)) for v in table.values() if v.dtype.kind == "f"):
        return None
    return table


def store(key: tuple, table: dict) -> None:
    """Write ``table`` (name -> array) for ``key`` atomically; failures are ignored."""
    path = _path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh, _key=np.array(_digest(key)), **{k: np.asarray(v) for k, v in table.items()}
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return
