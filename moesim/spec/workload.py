"""What the traffic looks like: concurrency, lengths, arrival rate, prefix reuse, routing skew.

A :class:`Workload` gathers the traffic-side inputs of a prediction in one validated object
(fields may be numpy arrays, as everywhere in the cost path); :meth:`Workload.predict` hands
them to :func:`moesim.engine.static.predict` and, with an arrival rate, adds queueing delay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import MoesimError


@dataclass(frozen=True)
class Workload:
    """Traffic of one serving scenario.

    batch : concurrent sequences across the whole layout
    input_len, output_len : tokens per request (prompt, generated)
    rate_per_s : arrival rate (requests/s) for queueing, or None
    prefix_cache_hit_rate : share of each prompt served from the prefix cache, in [0, 1]
    routing : expert routing, ``uniform | zipf:S | dirichlet:A | hist:PATH``
    capacity_factor : expert capacity factor C, or None (no drops)
    """

    batch: object = 1
    input_len: object = 1024
    output_len: object = 256
    rate_per_s: float | None = None
    prefix_cache_hit_rate: object = 0.0
    routing: str = "uniform"
    capacity_factor: float | None = None

    def __post_init__(self) -> None:
        for name in ("batch", "input_len", "output_len"):
            if np.any(np.asarray(getattr(self, name), dtype=float) < 1):
                raise MoesimError(f"workload {name} must be >= 1")
        hit = np.asarray(self.prefix_cache_hit_rate, dtype=float)
        if np.any((hit < 0) | (hit > 1)):
            raise MoesimError("prefix_cache_hit_rate must be in [0, 1]")
        if self.rate_per_s is not None and self.rate_per_s < 0:
            raise MoesimError("rate_per_s must be >= 0")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise MoesimError("capacity_factor must be > 0")

    def routing_options(self, block_m: int = 64):
        from moesim.cost.ops import routing_options

        return routing_options(self.routing, self.capacity_factor, block_m)

    def predict(self, model, hw, layout=None, **kw) -> dict:
        """``serving.predict`` for this traffic (plus M/G/1 queueing when a rate is given)."""
        from moesim.engine import static as serving

        res = serving.predict(
            model, hw, layout, batch=self.batch, input_len=self.input_len,
            output_len=self.output_len, routing=self.routing_options(),
            prefix_cache_hit_rate=self.prefix_cache_hit_rate, **kw,
        )  # fmt: skip
        if self.rate_per_s is not None:
            from moesim.engine.queueing import add_queueing

            res = add_queueing(res, rate=self.rate_per_s, batch=self.batch)
        return res
