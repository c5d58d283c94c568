"""Routing distributions: how popular each expert of an MoE layer is.

A distribution gives the router's per-expert selection weights ``p`` (summing to one); a token
then takes its top-k as k *distinct* experts drawn without replacement proportionally to ``p``
(see :mod:`moesim.cost.routing.inclusion`).

An expert's index carries no popularity information in a trained model, so synthetic skew
(Zipf) is mapped onto expert indices by a seeded random permutation: otherwise the contiguous
expert-parallel placement (experts ``[g*E/G, (g+1)*E/G)`` on GPU g, the vLLM/SGLang default)
would stack all the hottest experts on GPU 0, an artificial worst case. ``sorted=True`` keeps
the adversarial order (expert 0 hottest). Measured histograms keep their real expert indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from moesim.errors import MoesimError

# Bounds of a measured histogram, checked before anything is allocated: 10-100x the largest
# MoE built (DeepSeek-V3: 58 MoE layers x 256 experts).
MAX_HIST_LAYERS = 1 << 14
MAX_HIST_EXPERTS = 1 << 16
MAX_HIST_CELLS = 1 << 22
SPEC_SYNTAX = "use uniform | zipf:S (S >= 0) | dirichlet:A (A > 0) | hist:PATH (CSV or JSON)"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class RoutingDistribution:
    """Per-expert routing popularity of one MoE layer, or of each layer (measured histograms).

    kind : ``"uniform" | "zipf" | "dirichlet" | "hist"``
    param : Zipf exponent s, or Dirichlet concentration α (unused otherwise)
    sorted : Zipf only: keep rank order on expert indices (adversarial for contiguous EP)
    seed : seeds the Zipf rank permutation and the Dirichlet draw
    counts : measured counts, ``[E]`` or ``[L, E]`` as nested tuples (``hist`` only)
    source : file the histogram came from (for messages)
    """

    kind: str = "uniform"
    param: float = 0.0
    sorted: bool = False
    seed: int = DEFAULT_SEED
    counts: tuple | None = None
    source: str = ""

    @property
    def name(self) -> str:
        if self.kind == "uniform":
            return "uniform"
        if self.kind == "hist":
            return f"hist:{self.source or 'inline'}"
        suffix = ":sorted" if self.sorted else ""
        return f"{self.kind}:{self.param:g}{suffix}"

    @cached_property
    def key(self) -> tuple:
        """Hashable identity used to cache tables built for this distribution."""
        return (self.kind, self.param, self.sorted, self.seed, self.counts)

    @property
    def num_layers(self) -> int:
        """Number of layers with their own histogram (1 for synthetic distributions)."""
        if self.counts is not None and isinstance(self.counts[0], tuple):
            return len(self.counts)
        return 1

    @property
    def histogram_experts(self) -> int | None:
        """Experts in the measured histogram, or None for synthetic distributions."""
        if self.counts is None:
            return None
        row = self.counts[0] if isinstance(self.counts[0], tuple) else self.counts
        return len(row)

    def probs(self, num_experts: int) -> np.ndarray:
        """Selection weights ``p``: ``[E]``, or ``[L, E]`` for a per-layer histogram."""
        E = int(num_experts)
        if E < 1:
            raise MoesimError(f"num_experts must be >= 1, got {E}")
        if self.kind == "uniform":
            return np.full(E, 1.0 / E)
        if self.kind == "zipf":
            rank = np.arange(1, E + 1, dtype=float)
            w = rank ** (-self.param)  # Zipf's law: weight of rank r ∝ r^-s
            if not self.sorted:
                w = w[np.random.default_rng([self.seed, E]).permutation(E)]
            return w / w.sum()
        if self.kind == "dirichlet":
            rng = np.random.default_rng([self.seed, E, 7])
            w = rng.dirichlet(np.full(E, self.param))
            return np.maximum(w, 1e-300) / np.maximum(w, 1e-300).sum()
        if self.kind == "hist":
            counts = np.asarray(self.counts, dtype=float)
            if counts.shape[-1] != E:
                raise MoesimError(
                    f"routing histogram {self.source or '(inline)'} has {counts.shape[-1]} "
                    f"experts but the model has {E}"
                )
            return counts / counts.sum(axis=-1, keepdims=True)
        raise MoesimError(f"unknown routing kind {self.kind!r}; {SPEC_SYNTAX}")


UNIFORM = RoutingDistribution()


def zipf(s: float, sorted: bool = False, seed: int = DEFAULT_SEED) -> RoutingDistribution:
    """Zipf popularity, weight of rank r ∝ r^-s, ranks placed on experts by a seeded permutation."""
    if not (s >= 0 and math.isfinite(s)):
        raise MoesimError(f"zipf exponent must be a finite number >= 0, got {s}")
    return RoutingDistribution("zipf", float(s), bool(sorted), int(seed))


def dirichlet(alpha: float, seed: int = DEFAULT_SEED) -> RoutingDistribution:
    """Random popularity ``p ~ Dirichlet(α·1)`` (seeded); small α is more skewed."""
    if not (alpha > 0 and math.isfinite(alpha)):
        raise MoesimError(f"dirichlet concentration must be a finite number > 0, got {alpha}")
    return RoutingDistribution("dirichlet", float(alpha), False, int(seed))


def histogram(counts, source: str = "") -> RoutingDistribution:
    """Measured per-expert counts ``[E]`` or per-layer ``[L, E]`` (validated like a file)."""
    arr = _validate_counts(np.asarray(counts, dtype=float), source or "(inline histogram)")
    nested = tuple(map(tuple, arr.tolist())) if arr.ndim == 2 else tuple(arr.tolist())
    return RoutingDistribution("hist", 0.0, False, DEFAULT_SEED, nested, str(source))


def parse_routing(spec: str, num_experts: int | None = None) -> RoutingDistribution:
    """Parse ``uniform | zipf:S | dirichlet:A | hist:PATH`` (optional ``:sorted`` on zipf)."""
    if isinstance(spec, RoutingDistribution):
        return spec
    text = str(spec).strip()
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if kind == "uniform" and not arg:
        return UNIFORM
    if kind == "hist" and arg:
        return histogram(load_histogram(arg, num_experts), source=arg)
    if kind in ("zipf", "dirichlet") and arg:
        value, _, flag = arg.partition(":")
        try:
            x = float(value)
        except ValueError:
            raise MoesimError(
                f"bad routing spec {text!r}: {value!r} is not a number; {SPEC_SYNTAX}"
            ) from None
        if kind == "zipf" and flag not in ("", "sorted"):
            raise MoesimError(f"bad routing spec {text!r}: zipf takes zipf:S or zipf:S:sorted")
        if kind == "dirichlet" and flag:
            raise MoesimError(f"bad routing spec {text!r}: dirichlet takes dirichlet:A")
        try:
            return zipf(x, sorted=flag == "sorted") if kind == "zipf" else dirichlet(x)
        except MoesimError as exc:
            raise MoesimError(f"bad routing spec {text!r}: {exc}") from None
    raise MoesimError(f"bad routing spec {text!r}; {SPEC_SYNTAX}")


# ---------------------------------------------------------------- measured histograms


def load_histogram(path: str | Path, num_experts: int | None = None) -> np.ndarray:
    """Read per-expert routing counts exported from a serving engine.

    CSV: one row of counts per layer (or a single row), optionally under a header row; or long
    form with a header ``layer,expert,count``. JSON: a list of counts, a list of per-layer lists,
    or ``{"layers": [...]}``. Returns ``[E]`` (one row) or ``[L, E]``.
    """
    from moesim.spec.safe_io import MAX_JSON_BYTES, read_text

    p = Path(path)
    if not p.is_file():
        raise MoesimError(f"routing histogram {p}: no such file")
    text = read_text(p, what="routing histogram", max_bytes=MAX_JSON_BYTES, display=str(p))
    if not text.strip():
        raise MoesimError(f"routing histogram {p}: file is empty")
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in "[{":
        arr = _parse_json(text, p)
    else:
        arr = _parse_csv(text, p)
    return _validate_counts(arr, str(p), num_experts)


def _parse_json(text: str, path: Path) -> np.ndarray:
    from moesim.spec.safe_io import parse_json

    data = parse_json(text, f"routing histogram {path}", top=(list, dict))
    if isinstance(data, dict):
        for key in ("layers", "counts", "histogram"):
            if key in data:
                data = data[key]
                break
        else:
            raise MoesimError(f"routing histogram {path}: JSON object needs a 'layers' list")
    if not isinstance(data, list) or not data:
        raise MoesimError(f"routing histogram {path}: expected a non-empty list of counts")
    rows = data if isinstance(data[0], list) else [data]
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or not row:
            raise MoesimError(f"routing histogram {path}: layer {i} is not a non-empty list")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MoesimError(
                    f"routing histogram {path}: layer {i} expert {j}: {v!r} is not a number"
                )
        out.append(row)
    return _rectangular(out, path, lambda i: f"layer {i}")


def _parse_csv(text: str, path: Path) -> np.ndarray:
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise MoesimError(f"routing histogram {path}: file has no data rows")
    header = [c.strip().lower() for c in lines[0][1].split(",")]
    has_header = any(not _is_number(c) for c in header)
    if has_header and {"layer", "expert", "count"} <= set(header):
        return _parse_long_csv(lines, header, path)
    body = lines[1:] if has_header else lines
    if not body:
        raise MoesimError(f"routing histogram {path}: file has a header but no data rows")
    rows, numbers = [], []
    for n, ln in body:
        cells = [c.strip() for c in ln.split(",")]
        for c in cells:
            if not _is_number(c):
                raise MoesimError(f"routing histogram {path} line {n}: {c!r} is not a number")
        rows.append(n)
        numbers.append([float(c) for c in cells])
    return _rectangular(numbers, path, lambda i: f"line {rows[i]}")


def _parse_long_csv(lines, header, path: Path) -> np.ndarray:
    col = {name: header.index(name) for name in ("layer", "expert", "count")}
    entries = []
    for n, ln in lines[1:]:
        cells = [c.strip() for c in ln.split(",")]
        try:
            layer, expert = int(cells[col["layer"]]), int(cells[col["expert"]])
            count = float(cells[col["count"]])
        except (ValueError, IndexError):
            raise MoesimError(
                f"routing histogram {path} line {n}: expected layer,expert,count numbers"
            ) from None
        if layer < 0 or expert < 0:
            raise MoesimError(f"routing histogram {path} line {n}: negative layer or expert index")
        if layer >= MAX_HIST_LAYERS or expert >= MAX_HIST_EXPERTS:
            raise MoesimError(
                f"routing histogram {path} line {n}: layer {layer} / expert {expert} is beyond "
                f"the limits ({MAX_HIST_LAYERS:,} layers, {MAX_HIST_EXPERTS:,} experts)"
            )
        entries.append((layer, expert, count, n))
    if not entries:
        raise MoesimError(f"routing histogram {path}: file has a header but no data rows")
    L = max(e[0] for e in entries) + 1
    E = max(e[1] for e in entries) + 1
    if L * E > MAX_HIST_CELLS:  # checked before the [L, E] table is allocated
        raise MoesimError(
            f"routing histogram {path}: {L:,} layers x {E:,} experts is more than "
            f"{MAX_HIST_CELLS:,} counts"
        )
    out = np.zeros((L, E))
    for layer, expert, count, n in entries:
        if count < 0:
            raise MoesimError(f"routing histogram {path} line {n}: negative count {count:g}")
        out[layer, expert] += count
    return out


def _rectangular(rows: list, path: Path, where) -> np.ndarray:
    width = len(rows[0])
    if len(rows) > MAX_HIST_LAYERS or width > MAX_HIST_EXPERTS:
        raise MoesimError(
            f"routing histogram {path}: {len(rows):,} rows of {width:,} counts is beyond the "
            f"limits ({MAX_HIST_LAYERS:,} layers, {MAX_HIST_EXPERTS:,} experts)"
        )
    for i, row in enumerate(rows):
        if len(row) != width:
            raise MoesimError(
                f"routing histogram {path} {where(i)}: {len(row)} experts, but the first row has {width}"
            )
    arr = np.asarray(rows, dtype=float)
    return arr[0] if arr.shape[0] == 1 else arr


def _validate_counts(arr: np.ndarray, source: str, num_experts: int | None = None) -> np.ndarray:
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise MoesimError(f"routing histogram {source}: expected counts [E] or [layers, E]")
    if not np.all(np.isfinite(arr)) or not np.all(np.isfinite(np.atleast_2d(arr).sum(axis=-1))):
        raise MoesimError(f"routing histogram {source}: counts must be finite numbers")
    if num_experts is not None and arr.shape[-1] != int(num_experts):
        raise MoesimError(
            f"routing histogram {source}: {arr.shape[-1]} experts, but the model has {int(num_experts)}"
        )
    rows = np.atleast_2d(arr)
    for i, row in enumerate(rows):
        where = f" layer {i}" if arr.ndim == 2 else ""
        if np.any(row < 0):
            j = int(np.argmax(row < 0))
            raise MoesimError(
                f"routing histogram {source}{where}: negative count {row[j]:g} for expert {j}"
            )
        if not row.sum() > 0:
            raise MoesimError(f"routing histogram {source}{where}: all counts are zero")
    return arr


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
