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
            chart.save(str(out))
        elif fmt == "svg":
            out.write_text(vlc.vegalite_to_svg(spec))
        elif fmt == "png":
            out.write_bytes(vlc.vegalite_to_png(spec, scale=scale))
        else:
            raise ValueError(f"unknown chart format {fmt!r}; use html, svg or png")
        written.append(out)
    return written
