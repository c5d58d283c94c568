"""Where the tokens go: expert-load statistics of MoE routing.

Routing distributions (uniform, Zipf, Dirichlet, measured histograms), per-token inclusion
probabilities of top-k without replacement, the vectorised :func:`routing_stats` used by the cost
model (active experts, EP straggler load, tile padding, capacity drops, all-to-all destinations),
a Monte-Carlo reference, and the EPLB redundant-expert placement.
"""

from moesim.cost.routing.distributions import (
    UNIFORM,
    RoutingDistribution,
    dirichlet,
    histogram,
    load_histogram,
    parse_routing,
    zipf,
)
from moesim.cost.routing.eplb import Placement, eplb_place
from moesim.cost.routing.inclusion import inclusion_probs
from moesim.cost.routing.montecarlo import monte_carlo_stats
from moesim.cost.routing.stats import RoutingStats, routing_stats, shared_expert_tokens

__all__ = [
    "UNIFORM",
    "Placement",
    "RoutingDistribution",
    "RoutingStats",
    "dirichlet",
    "eplb_place",
    "histogram",
    "inclusion_probs",
    "load_histogram",
    "monte_carlo_stats",
    "parse_routing",
    "routing_stats",
    "shared_expert_tokens",
    "zipf",
]
