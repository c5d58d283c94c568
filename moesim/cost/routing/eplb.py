"""Redundant experts: the expert-parallel load balancer (EPLB) placement.

Follows DeepSeek's EPLB global policy (github.com/deepseek-ai/EPLB, ``eplb.py``):
``replicate_experts`` gives each of the R redundant slots to the expert with the highest load per
replica (each replica then serves an equal share of its expert's load), and ``balanced_packing``
puts the E + R replicas, heaviest first, on the least loaded GPU that still has a free slot, so
every GPU holds (E + R)/G slots. The baseline is the default contiguous placement (experts
[g·E/G, (g+1)·E/G) on GPU g) without replicas; if EPLB would not improve on it the baseline is
returned (``fallback=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moesim.errors import MoesimError


@dataclass(frozen=True, eq=False)
class Placement:
    """Where each expert slot lives. A leading layer axis is present when built from ``[L, E]``.

    replicas : ``[E]`` replicas per expert (≥ 1)
    slot_expert : ``[S]`` expert held by each slot (S = E + R, or E on fallback)
    gpu_of_slot : ``[S]`` GPU of each slot
    gpu_load : ``[G]`` load per GPU in the units of the input load
    """

    num_gpus: int
    replicas: np.ndarray
    slot_expert: np.ndarray
    gpu_of_slot: np.ndarray
    gpu_load: np.ndarray
    max_mean_ratio: np.ndarray
    baseline_max_mean_ratio: np.ndarray
    redundant_slots: int
    extra_memory_bytes: float
    extra_memory_bytes_per_gpu: float
    fallback: np.ndarray

    @property
    def num_layers(self) -> int:
        return 1 if self.replicas.ndim == 1 else self.replicas.shape[0]

    @cached_property
    def key(self) -> tuple:
        return (
            self.num_gpus,
            self.slot_expert.tobytes(),
            self.gpu_of_slot.tobytes(),
            self.replicas.tobytes(),
        )

    def layer(self, i: int) -> Placement:
        """The single-layer placement of layer ``i``."""
        if self.num_layers == 1:
            return self
        names = (
            "replicas",
            "slot_expert",
            "gpu_of_slot",
            "gpu_load",
            "max_mean_ratio",
            "baseline_max_mean_ratio",
            "fallback",
        )
        pick = {name: getattr(self, name)[i] for name in names}
        used = pick["slot_expert"] >= 0  # fallback layers are padded with -1
        pick["slot_expert"], pick["gpu_of_slot"] = (
            pick["slot_expert"][used],
            pick["gpu_of_slot"][used],
        )
        return Placement(
            self.num_gpus,
            redundant_slots=self.redundant_slots,
            extra_memory_bytes=self.extra_memory_bytes,
            extra_memory_bytes_per_gpu=self.extra_memory_bytes_per_gpu,
            **pick,
        )

    def gpu_load_fractions(self) -> np.ndarray:
        """Share of the layer's assignments served by each GPU, ``[G]`` (or ``[L, G]``)."""
        return self.gpu_load / self.gpu_load.sum(axis=-1, keepdims=True)


def eplb_place(
    load, num_gpus: int, redundant_slots: int = 0, expert_bytes: float = 0.0
) -> Placement:
    """Replicate the hottest experts into ``redundant_slots`` extra slots and pack all slots onto
    ``num_gpus`` GPUs with balanced load and equal slot counts (DeepSeek EPLB, see module doc).

    load : expected or measured per-expert load ``[E]`` or per layer ``[L, E]``
    expert_bytes : weight bytes of one expert; the R replicas cost R·expert_bytes in all
    """
    arr = np.asarray(load, dtype=float)
    G, R = int(num_gpus), int(redundant_slots)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise MoesimError("eplb_place: load must be [E] or [layers, E]")
    if np.any(~np.isfinite(arr)) or np.any(arr < 0):
        raise MoesimError("eplb_place: loads must be finite and >= 0")
    E = arr.shape[-1]
    if G < 1 or R < 0:
        raise MoesimError("eplb_place: num_gpus must be >= 1 and redundant_slots >= 0")
    if (E + R) % G:
        raise MoesimError(f"{E} experts + {R} redundant slots do not split evenly over {G} GPUs")
    rows = [_place_one(row, G, R) for row in np.atleast_2d(arr)]
    stacked = _stack(rows) if arr.ndim == 2 else rows[0]
    extra = 0.0 if np.all(stacked["fallback"]) else R * float(expert_bytes)
    return Placement(
        num_gpus=G,
        redundant_slots=R,
        extra_memory_bytes=extra,
        extra_memory_bytes_per_gpu=extra / G,
        **stacked,
    )


def _place_one(load: np.ndarray, G: int, R: int) -> dict:
    E = load.size
    base_gpu = (
        np.repeat(np.arange(G), E // G)
        if E % G == 0
        else np.concatenate(
            [np.full(len(c), g) for g, c in enumerate(np.array_split(np.arange(E), G))]
        )
    )
    base_load = np.bincount(base_gpu, weights=load, minlength=G)
    base_ratio = _ratio(base_load)
    replicas = np.ones(E, dtype=np.int64)
    for _ in range(R):  # replicate_experts: the hottest load per replica gets one more
        replicas[np.argmax(load / replicas)] += 1
    slot_expert = np.repeat(np.arange(E), replicas)
    weight = load[slot_expert] / replicas[slot_expert]
    per_gpu = (E + R) // G
    gpu_of_slot = np.empty(slot_expert.size, dtype=np.int64)
    gpu_load, gpu_count = np.zeros(G), np.zeros(G, dtype=np.int64)
    for s in np.argsort(
        -weight, kind="stable"
    ):  # balanced_packing: heaviest to the lightest open GPU
        open_gpu = np.flatnonzero(gpu_count < per_gpu)
        g = open_gpu[np.argmin(gpu_load[open_gpu])]
        gpu_of_slot[s] = g
        gpu_load[g] += weight[s]
        gpu_count[g] += 1
    ratio = _ratio(gpu_load)
    if ratio > base_ratio + 1e-12:
        return {
            "replicas": np.ones(E, dtype=np.int64),
            "slot_expert": np.arange(E),
            "gpu_of_slot": base_gpu,
            "gpu_load": base_load,
            "max_mean_ratio": np.asarray(base_ratio),
            "baseline_max_mean_ratio": np.asarray(base_ratio),
            "fallback": np.asarray(True),
        }
    return {
        "replicas": replicas,
        "slot_expert": slot_expert,
        "gpu_of_slot": gpu_of_slot,
        "gpu_load": gpu_load,
        "max_mean_ratio": np.asarray(ratio),
        "baseline_max_mean_ratio": np.asarray(base_ratio),
        "fallback": np.asarray(False),
    }


def _stack(rows: list[dict]) -> dict:
    """Stack per-layer results; layers that fell back have fewer slots, padded with -1."""
    width = max(r["slot_expert"].size for r in rows)
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        if key in ("slot_expert", "gpu_of_slot"):
            vals = [np.concatenate([v, np.full(width - v.size, -1)]) for v in vals]
        out[key] = np.stack(vals)
    return out


def _ratio(gpu_load: np.ndarray) -> float:
    mean = gpu_load.mean()
    return float(gpu_load.max() / mean) if mean > 0 else 1.0
