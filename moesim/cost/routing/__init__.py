"""Where the tokens go: expert-load statistics of MoE routing.

Routing distributions (uniform, Zipf, Dirichlet, measured histograms), per-token inclusion
probabilities of top-k without replacement, the vectorised :func:`routing_stats` used by the cost
model (active experts, EP straggler load, tile padding, capacity drops, all-to-all destinations),
a Monte-Carlo reference, and the EPLB redundant-expert placement.

The names below are imported on first use (PEP 562), so a prediction that needs only
``routing_stats`` does not pay for the Monte-Carlo sampler or the EPLB placer.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "UNIFORM": "distributions",
    "RoutingDistribution": "distributions",
    "dirichlet": "distributions",
    "histogram": "distributions",
    "load_histogram": "distributions",
    "parse_routing": "distributions",
    "zipf": "distributions",
    "Placement": "eplb",
    "eplb_place": "eplb",
    "inclusion_probs": "inclusion",
    "monte_carlo_stats": "montecarlo",
    "RoutingStats": "stats",
    "routing_stats": "stats",
    "shared_expert_tokens": "stats",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
