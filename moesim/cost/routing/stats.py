"""``routing_stats``: expert-load statistics for the cost model's hot path, vectorised.

T = tokens, E = experts, K = top-k, G = expert-parallel GPUs, A = T·K assignments, BM = block M.

Uniform routing uses closed forms where they exist (P(expert unused) = (1 − K/E)^T exactly, since
a token's K distinct picks include a given expert with probability K/E). Everything else is read
from per-(E, K, distribution, G, BM, C) tables over integer T — every T up to 64, then eight
points per octave — built once by :mod:`moesim.cost.routing.loads` and interpolated linearly in
x(T) = T (T ≤ 64) or 64·(1 + ln(T/64)) (T > 64). A call over a million (T, G) pairs is then a
few ``np.interp`` per distinct G.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from moesim.cost.routing import cache as disk_cache
from moesim.cost.routing.distributions import UNIFORM, RoutingDistribution, parse_routing
from moesim.cost.routing.inclusion import ExponentialRace
from moesim.cost.routing.loads import (
    dropped_counts,
    expected_max_loads,
    padded_counts,
    per_token_gpu_variance,
)
from moesim.errors import MoesimError


@dataclass(frozen=True)
class RoutingStats:
    """Expected routing statistics of one MoE layer (averaged over layers for per-layer
    histograms); every field has the broadcast shape of the inputs. Loads count assignments
    (token-expert pairs)."""

    active_experts: np.ndarray  # E[#experts with n_e > 0], whole layer
    active_experts_per_gpu: np.ndarray  # mean over GPUs (expert slots, counting replicas)
    active_experts_max_gpu: np.ndarray  # on the most loaded GPU (approximation)
    tokens_per_expert: np.ndarray  # A/E
    tokens_per_active_expert: np.ndarray  # A/active_experts
    mean_gpu_load: np.ndarray  # A/G
    max_gpu_load: np.ndarray  # E[max_g load_g], the EP straggler
    max_load_ratio: np.ndarray  # max_gpu_load/mean_gpu_load
    padded_assignments: np.ndarray  # E[Σ_e ceil(n_e/BM)·BM], whole layer
    padded_assignments_max_gpu: np.ndarray  # the same on the straggler GPU
    padding_waste: np.ndarray  # padded/A − 1: an overhead ratio (0.25 = 20% of rows are padding)
    dropped_assignments: np.ndarray  # E[Σ_e (n_e − capacity)^+]
    drop_rate: np.ndarray  # dropped/A
    remote_gpus_per_token: np.ndarray  # E[#distinct GPUs other than the token's own it sends to]
    # {tile b: padded_assignments_max_gpu with each expert's rows padded to b} for the ``tiles``
    # asked for (a fused MoE's token tile candidates); None when none were
    padded_max_gpu_by_tile: dict[int, np.ndarray] | None = None

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in STAT_NAMES}


STAT_NAMES = tuple(f.name for f in fields(RoutingStats) if f.name != "padded_max_gpu_by_tile")


def shared_expert_tokens(tokens):
    """Tokens each shared expert processes (DeepSeekMoE, arXiv:2401.06066): every token, so a
    shared expert is a dense FFN of T rows with no routing, padding or drops."""
    return np.asarray(tokens, dtype=float)


# ---------------------------------------------------------------- interpolation grid

_DENSE_T = 64
_PER_OCTAVE = 8


def _x_of_t(T):
    T = np.asarray(T, dtype=float)
    return np.where(T <= _DENSE_T, T, _DENSE_T * (1 + np.log(np.maximum(T, _DENSE_T) / _DENSE_T)))


def _t_grid(t_max: float) -> np.ndarray:
    octaves = max(0.0, np.log2(max(t_max, 1.0) / _DENSE_T))
    steps = int(np.ceil(octaves * _PER_OCTAVE)) + 1
    geo = np.round(_DENSE_T * 2.0 ** (np.arange(1, steps + 1) / _PER_OCTAVE))
    grid = np.sort(np.concatenate([np.arange(_DENSE_T + 1), geo]))
    # sorted distinct values; np.unique would import numpy.ma into every predict
    return grid[np.r_[True, grid[1:] != grid[:-1]]].astype(np.int64)


# ---------------------------------------------------------------- one layer's routing model


@dataclass(frozen=True)
class LayerRouting:
    """Routing of one layer over one placement: per-token pick probabilities.

    pi : ``[E]`` probability that a token's top-k contains expert e (Σ = K)
    q_gpu : ``[G, n]`` per-token probability that a pick lands on each slot of GPU g
        (slots are experts, or replicas taking an equal share; zero-padded)
    remote : expected remote destination GPUs per token
    """

    top_k: int
    pi: np.ndarray
    q_gpu: np.ndarray
    remote: float

    @property
    def num_experts(self) -> int:
        return self.pi.size

    @property
    def num_gpus(self) -> int:
        return self.q_gpu.shape[0]


def layer_routing(p: np.ndarray, top_k: int, ep: int, placement=None) -> LayerRouting:
    """Build the routing model of one layer with weights ``p [E]`` on ``ep`` GPUs."""
    E, K, G = p.size, int(top_k), int(ep)
    if np.allclose(p, 1.0 / E):
        pi = np.full(E, K / E)
        race = None
    else:
        race = ExponentialRace(p, K)
        pi = race.inclusion()
    if placement is None:
        if E % G:
            raise MoesimError(f"{E} experts do not split evenly over ep={G} GPUs")
        q_gpu = pi.reshape(G, E // G)
        starts = np.arange(G) * (E // G)
        if G == 1:
            hit = np.array([1.0])
        elif race is None:
            from moesim.cost.routing._special import comb  # C(E − E/G, K)/C(E, K): no pick on g

            hit = np.full(G, 1.0 - float(comb(E - E // G, K)) / float(comb(E, K)))
        else:
            hit = race.group_hit(starts, starts + E // G)
    else:
        q_gpu = placement_slot_probs(placement, pi)
        hit = 1.0 - np.prod(1.0 - q_gpu, axis=1)  # slots treated as independent per token
    remote = float((1.0 - 1.0 / G) * np.sum(hit))
    return LayerRouting(K, pi, q_gpu, remote)


def placement_slot_probs(placement, pi: np.ndarray) -> np.ndarray:
    """Per-GPU slot probabilities ``[G, n]`` for a :class:`~moesim.cost.routing.eplb.Placement`."""
    slot_expert = np.asarray(placement.slot_expert)
    gpu_of_slot = np.asarray(placement.gpu_of_slot)
    replicas = np.asarray(placement.replicas)
    if replicas.size != pi.size:
        raise MoesimError(f"placement is for {replicas.size} experts, the layer has {pi.size}")
    G = int(placement.num_gpus)
    q = pi[slot_expert] / replicas[slot_expert]
    n = int(np.bincount(gpu_of_slot, minlength=G).max())
    out = np.zeros((G, n))
    for g in range(G):
        vals = q[gpu_of_slot == g]
        out[g, : vals.size] = vals
    return out


# ---------------------------------------------------------------- tables over T


def build_table(
    model: LayerRouting, t_grid: np.ndarray, block_m, capacity_factor, max_ratio=None
) -> dict:
    """Statistics of one layer at integer token counts ``t_grid`` (the slow, accurate path);
    ``max_ratio`` reuses an E[max]/mean already computed on the same grid."""
    K, E, G = model.top_k, model.num_experts, model.num_gpus
    T = t_grid.astype(float)
    A = T * K
    mean_load = A / G
    if max_ratio is None:
        tau = per_token_gpu_variance(model.q_gpu, E)
        max_load = expected_max_loads(t_grid, K, model.q_gpu, tau)
    else:
        max_load = max_ratio * mean_load
    active = np.sum(
        -np.expm1(T[:, None] * np.log1p(-np.minimum(model.pi, 1 - 1e-16))[None, :]), axis=1
    )
    active = np.where(
        np.isclose(model.pi.max(), 1.0) & (T > 0), _active_with_ones(model.pi, T), active
    )
    slots = model.q_gpu.reshape(-1)
    slots = slots[slots > 0]
    slot_active = np.sum(1.0 - (1.0 - slots[None, :]) ** T[:, None], axis=1)
    # the straggler: the GPU with the largest expected load, seen at the token count that
    # gives it the expected maximum load
    g_star = int(np.argmax(model.q_gpu.sum(axis=1)))
    q_star = model.q_gpu[g_star][model.q_gpu[g_star] > 0]
    mu_star = T * q_star.sum()
    t_eff = np.where(mu_star > 0, T * max_load / np.where(mu_star > 0, mu_star, 1), 0.0)
    active_max = np.sum(1.0 - (1.0 - q_star[None, :]) ** t_eff[:, None], axis=1)
    # a slot holds at most one pick per token, so load ℓ needs ≥ ℓ/T active slots (exact at T = 1)
    active_max = np.maximum(
        active_max,
        np.where(T > 0, np.maximum(max_load / np.maximum(T, 1), np.minimum(max_load, 1.0)), 0.0),
    )
    active_max = np.clip(active_max, slot_active / G, q_star.size)
    if block_m is None:
        padded, padded_max = A, max_load
    else:
        padded = _sum_unique(lambda q: padded_counts(T[:, None], q[None, :], block_m), slots)
        padded_max = _sum_unique(
            lambda q: padded_counts(np.round(t_eff)[:, None], q[None, :], block_m), q_star
        )
        padded_max = np.maximum(
            padded_max, np.maximum(max_load, block_m * active_max)
        )  # ≥ one tile per active expert
    if capacity_factor is None:
        dropped = np.zeros_like(T)
    else:
        cap = np.ceil(capacity_factor * A / E)  # per-expert capacity; Switch Transformer §2.2
        dropped = _sum_unique(
            lambda q: dropped_counts(T[:, None], q[None, :], cap[:, None]), model.pi
        )
    safe_a = np.where(A > 0, A, 1.0)
    return {
        "x": _x_of_t(T),
        "active_frac": active / E,
        "slot_active_frac": slot_active / G,
        "active_max_gpu": active_max,
        "max_ratio": np.where(A > 0, max_load / np.where(mean_load > 0, mean_load, 1), 1.0),
        "padded_ratio": np.where(A > 0, padded / safe_a, 1.0),
        "padded_max_ratio": np.where(A > 0, padded_max / np.where(max_load > 0, max_load, 1), 1.0),
        "drop_rate": np.where(A > 0, dropped / safe_a, 0.0),
    }


def _sum_unique(per_slot, q: np.ndarray) -> np.ndarray:
    """Σ_s per_slot(q_s) evaluating each distinct q once (uniform routing has one)."""
    values, counts = np.unique(np.round(q, 14), return_counts=True)
    return per_slot(values) @ counts


def _active_with_ones(pi: np.ndarray, T: np.ndarray) -> np.ndarray:
    ones = pi >= 1 - 1e-12
    rest = pi[~ones]
    return ones.sum() + np.sum(1.0 - (1.0 - rest[None, :]) ** T[:, None], axis=1)


_TABLES: dict = {}
_MODELS: dict = {}


def _model(dist: RoutingDistribution, E: int, K: int, G: int, layer: int, R: int, placement):
    key = (dist.key, E, K, G, layer, R, None if placement is None else placement.key)
    if key not in _MODELS:
        p = dist.probs(E)
        p = p[layer] if p.ndim == 2 else p
        if placement is None and R > 0:
            from moesim.cost.routing.eplb import eplb_place

            pi = layer_routing(p, K, 1).pi
            placement = eplb_place(pi, G, R)
        _MODELS[key] = layer_routing(p, K, G, placement)
    return _MODELS[key]


def _table(model_key, model: LayerRouting, t_max: float, block_m, capacity_factor) -> dict:
    """The load table of a layer model (E[max] etc.), with padding and drop columns for
    ``block_m``/``capacity_factor`` added per setting, over the same T grid."""
    core = _TABLES.get(model_key)
    if core is None or core["t_max"] < t_max:
        cap = 2.0 ** np.ceil(np.log2(max(t_max, 2 * _DENSE_T)))
        disk_key = ("core", model_key, cap)
        core = disk_cache.load(disk_key, _CORE_NAMES)
        if core is None:
            core = build_table(model, _t_grid(cap), None, None)
            disk_cache.store(disk_key, core)
        core["t_max"], core["t_grid"] = cap, _t_grid(cap)
        _TABLES[model_key] = core
    key = (model_key, core["t_max"], block_m, capacity_factor)
    if key not in _TABLES:
        disk_key = ("extra", *key)
        extra = disk_cache.load(disk_key, _EXTRA_NAMES)
        if extra is None:
            full = build_table(
                model, core["t_grid"], block_m, capacity_factor, max_ratio=core["max_ratio"]
            )
            extra = {n: full[n] for n in _EXTRA_NAMES}
            disk_cache.store(disk_key, extra)
        _TABLES[key] = {**core, **extra}
    return _TABLES[key]


_CORE_NAMES = (
    "x",
    "active_frac",
    "slot_active_frac",
    "active_max_gpu",
    "max_ratio",
    "padded_ratio",
    "padded_max_ratio",
    "drop_rate",
)
_EXTRA_NAMES = ("padded_ratio", "padded_max_ratio", "drop_rate")


# ---------------------------------------------------------------- public entry point


def routing_stats(
    tokens,
    top_k,
    num_experts,
    ep=1,
    dist: RoutingDistribution | str = UNIFORM,
    block_m: int | None = None,
    capacity_factor: float | None = None,
    redundant_experts: int = 0,
    placement=None,
    layer: int | None = None,
    tiles: tuple[int, ...] = (),
) -> RoutingStats:
    """Expected routing statistics for ``tokens`` (T) top-``top_k`` (K) of ``num_experts`` (E)
    on ``ep`` (G) expert-parallel GPUs; T, K, E, G broadcast as numpy arrays.

    Parameters
    ----------
    dist : routing distribution (or a spec string for :func:`parse_routing`)
    block_m : grouped-GEMM tile rows; each expert's rows are padded to a multiple of it
    capacity_factor : C; per-expert capacity ceil(C·A/E) (Switch Transformer, arXiv:2101.03961)
    redundant_experts : R extra replica slots placed by EPLB (E + R must divide by G)
    placement : an explicit :class:`~moesim.cost.routing.eplb.Placement` (scalar E, K, G only)
    layer : for per-layer histograms, one layer; None averages the statistics over layers
    tiles : token tiles b to also pad the straggler's rows to (``padded_max_gpu_by_tile``);
        one pass shares the interpolation, so several tiles cost little more than one
    """
    dist = parse_routing(dist) if isinstance(dist, str) else dist
    T, K, E, G = np.broadcast_arrays(
        np.asarray(tokens, dtype=float), np.asarray(top_k), np.asarray(num_experts), np.asarray(ep)
    )
    R = int(redundant_experts)
    _validate(T, K, E, G, R, block_m, capacity_factor, placement)
    tiles = tuple(int(b) for b in tiles)
    if any(b < 1 for b in tiles):
        raise MoesimError(f"token tiles must be >= 1, got {tiles}")
    names = STAT_NAMES + tuple(f"_tile{b}" for b in tiles)
    layers = range(dist.num_layers) if layer is None else [int(layer)]
    arrays = [np.asarray(a) for a in (top_k, num_experts, ep)]
    if all(a.size and not np.any(a != a.flat[0]) for a in arrays):  # one group, the common case
        groups = [((int(arrays[0].flat[0]), int(arrays[1].flat[0]), int(arrays[2].flat[0])), None)]
    else:
        uniq = [np.unique(a) for a in arrays]
        groups = []
        for k in uniq[0].tolist():
            for e in uniq[1].tolist():
                for g in uniq[2].tolist():
                    mask = (K == k) & (E == e) & (G == g)
                    if mask.any():
                        groups.append(((k, e, g), mask))
    out = {name: np.zeros(T.shape) for name in names}
    for (k, e, g), mask in groups:
        t = T if mask is None else T[mask]
        acc = None
        for li in layers:
            part = _stats_one(t, k, e, g, dist, li, R, placement, block_m, capacity_factor, tiles)
            acc = part if acc is None else {n: acc[n] + part[n] for n in names}
        for name in names:
            value = acc[name] / len(layers) if len(layers) > 1 else acc[name]
            if mask is None:
                out[name] = np.broadcast_to(value, T.shape).astype(float)
            else:
                out[name][mask] = value
    by_tile = {b: out.pop(f"_tile{b}") for b in tiles} if tiles else None
    return RoutingStats(**out, padded_max_gpu_by_tile=by_tile)


def _validate(T, K, E, G, R, block_m, capacity_factor, placement) -> None:
    if np.any(~np.isfinite(T)) or np.any(T < 0):
        raise MoesimError("tokens must be finite and >= 0")
    if np.any(K < 1) or np.any(E < 1) or np.any(G < 1):
        raise MoesimError("top_k, num_experts and ep must all be >= 1")
    if np.any(K > E):
        raise MoesimError(
            f"top_k={int(K.max())} exceeds num_experts={int(E.min())}: a token picks k distinct experts"
        )
    if R < 0:
        raise MoesimError(f"redundant_experts must be >= 0, got {R}")
    bad = (E + R) % G != 0
    if np.any(bad) and placement is None:
        e, g = int(E[bad].flat[0]), int(G[bad].flat[0])
        what = f"{e} experts + {R} redundant slots" if R else f"{e} experts"
        raise MoesimError(f"{what} do not split evenly over ep={g} GPUs")
    if np.any(G > E + R):
        raise MoesimError("ep exceeds the number of expert slots (experts + redundant)")
    if block_m is not None and int(block_m) < 1:
        raise MoesimError(f"block_m must be >= 1, got {block_m}")
    if capacity_factor is not None and not capacity_factor > 0:
        raise MoesimError(f"capacity_factor must be > 0, got {capacity_factor}")
    if placement is not None and (np.unique(E).size > 1 or np.unique(G).size > 1):
        raise MoesimError("an explicit placement needs a single num_experts and ep")


def _stats_one(T, K, E, G, dist, layer, R, placement, block_m, capacity_factor, tiles=()) -> dict:
    if placement is not None and int(placement.num_gpus) != G:
        raise MoesimError(f"placement is for {placement.num_gpus} GPUs, ep={G}")
    lay_place = (
        placement.layer(layer) if placement is not None and placement.num_layers > 1 else placement
    )
    model_key = (dist.key, E, K, G, layer, R, None if lay_place is None else lay_place.key)
    model = _model(dist, E, K, G, layer, R, lay_place)
    A = T * K
    mean_load = A / G
    uniform_closed = dist.kind == "uniform" and R == 0 and placement is None
    need_table = not (
        uniform_closed and G == 1 and block_m is None and capacity_factor is None and not tiles
    )
    tile_ratio = {}
    if need_table and T.size:
        tab = _table(model_key, model, float(T.max()), block_m, capacity_factor)
        grid = tab["x"]
        x = np.clip(_x_of_t(T), grid[0], grid[-1])
        hi = np.clip(np.searchsorted(grid, x), 1, grid.size - 1)  # one search, reused per field
        frac = (x - grid[hi - 1]) / (grid[hi] - grid[hi - 1])

        def interp(name):
            if name in ("padded_ratio", "padded_max_ratio") and block_m is None:
                return np.ones_like(T)
            if name == "drop_rate" and capacity_factor is None:
                return np.zeros_like(T)
            y = tab[name]
            lo_y = y[hi - 1]
            return lo_y + frac * (y[hi] - lo_y)

        for b in tiles:  # the same grid and search, each tile's padding column
            y = _table(model_key, model, float(T.max()), b, capacity_factor)["padded_max_ratio"]
            tile_ratio[b] = y[hi - 1] + frac * (y[hi] - y[hi - 1])
    else:

        def interp(name):
            return {
                "max_ratio": 1.0,
                "padded_ratio": 1.0,
                "padded_max_ratio": 1.0,
                "drop_rate": 0.0,
            }.get(name, np.nan) * np.ones_like(T)

    if uniform_closed:
        active = E * -np.expm1(T * np.log1p(-K / E)) if K < E else np.where(T > 0, float(E), 0.0)
        slot_active = active / G
    else:
        active = interp("active_frac") * E
        slot_active = interp("slot_active_frac")
    max_load = interp("max_ratio") * mean_load if G > 1 else A
    active_max = interp("active_max_gpu") if G > 1 else slot_active
    padded = interp("padded_ratio") * A
    safe_a = np.where(A > 0, A, 1.0)
    return {
        "active_experts": active,
        "active_experts_per_gpu": slot_active,
        "active_experts_max_gpu": np.maximum(active_max, slot_active),
        "tokens_per_expert": A / E,
        "tokens_per_active_expert": np.where(active > 0, A / np.where(active > 0, active, 1), 0.0),
        "mean_gpu_load": mean_load,
        "max_gpu_load": np.maximum(max_load, mean_load),
        "max_load_ratio": np.where(
            A > 0, np.maximum(max_load, mean_load) / np.where(mean_load > 0, mean_load, 1), 1.0
        ),
        "padded_assignments": padded,
        "padded_assignments_max_gpu": interp("padded_max_ratio") * np.maximum(max_load, mean_load),
        "padding_waste": np.where(A > 0, padded / safe_a - 1.0, 0.0),
        "dropped_assignments": interp("drop_rate") * A,
        "drop_rate": interp("drop_rate"),
        "remote_gpus_per_token": np.full(T.shape, model.remote),
    } | {
        f"_tile{b}": tile_ratio.get(b, np.ones_like(T)) * np.maximum(max_load, mean_load)
        for b in tiles
    }
