"""Where moesim keeps its on-disk caches (routing tables, parsed profiles).

- ``$MOESIM_CACHE_DIR`` if set (``off`` / empty disables every disk cache),
- else ``platformdirs.user_cache_dir("moesim")`` when platformdirs is installed,
- else ``$XDG_CACHE_HOME/moesim`` (default ``~/.cache/moesim``; XDG Base Directory spec).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(subdir: str) -> Path | None:
    """The folder of one cache, or None when the disk caches are off."""
    env = os.environ.get("MOESIM_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env) / subdir
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("moesim", appauthor=False)) / subdir
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "moesim" / subdir
