"""User-facing errors: one line that says what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MoesimError(ValueError):
    """An input the user can fix (unknown name, impossible layout, malformed file).

    The CLI prints ``error: <message>`` and exits with status 2; it never shows a traceback.
    """


def unknown_name(kind: str, name: str, known: Iterable[str]) -> MoesimError:
    """Error for an unknown preset / profile / option, listing the known ones and the nearest."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return MoesimError(f"unknown {kind} {name!r}{hint}; known: {', '.join(known)}")
