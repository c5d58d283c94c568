"""Write an Altair chart to HTML, SVG and PNG."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import altair as alt

alt.data_transformers.disable_max_rows()  # charts here are built from aggregated frames


def save_chart(
    chart: alt.TopLevelMixin,
    path_stem: str | Path,
    formats: Iterable[str] = ("html", "svg", "png"),
    scale: float = 2.0,
) -> list[Path]:
    """Save ``chart`` as ``<path_stem>.<fmt>`` for each format; returns the written paths."""
    import vl_convert as vlc

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    spec = chart.to_json()
    written = []
    for fmt in formats:
        out = stem.with_suffix(f".{fmt}")
        if fmt == "html":
            # Vega, Vega-Lite and vega-embed inlined: the page renders offline (no CDN)
            _atomic_write(out, vlc.vegalite_to_html(spec, bundle=True).encode())
        elif fmt == "svg":
            _atomic_write(out, vlc.vegalite_to_svg(spec).encode())
        elif fmt == "png":
            _atomic_write(out, vlc.vegalite_to_png(spec, scale=scale))
        else:
            raise ValueError(f"unknown chart format {fmt!r}; use html, svg or png")
        written.append(out)
    return written


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a chart is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
