"""Altair charts. Each chart function returns an ``alt.Chart``; :func:`save_chart` writes it as
HTML, SVG and PNG (PNG and SVG are rendered offline through vl-convert)."""

from moesim.plots._save import save_chart

__all__ = ["save_chart"]
