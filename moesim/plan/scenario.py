"""Scenario files: a YAML description of a sweep, validated, resolved and expanded into points.

A scenario names models, hardware, layouts and workloads; every numeric field of a layout or a
workload is an *axis* (one value, a list, or a range), and the points of the sweep are the
cartesian product of all axes (``sweep.mode: grid``), or the axes paired position by position
(``sweep.mode: zip``, or named groups in ``sweep.zip``). Each (layout, workload) pair of the
file is one *block*; the sweep is the blocks one after the other.

    scenario.yaml --load_scenario--> Scenario (pydantic, frozen) --build_plan--> Plan
    Plan.rows(start, stop) -> {axis: values}     one numpy array per input column

Errors name the file, line and field path (``x.yaml:7: models[0]: unknown model ...``).
The YAML is read with ruamel's round-trip loader (for line numbers); tags are never executed:
any explicit tag other than YAML's core ones is rejected.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from moesim.engine.presets import ENGINES
from moesim.errors import MoesimError
from moesim.spec.deployment import OVERLAP_MODES
from moesim.spec.dtypes import DTYPE_BYTES
from moesim.spec.limits import (
    DEFAULT_MAX_POINTS,
    INT_LIMITS,
    MAX_AXIS_VALUES,
    MAX_CAPACITY_FACTOR,
    MAX_RATE_PER_S,
    MAX_TOKENS_IN_FLIGHT,
    check_memory_scale,
)

CHARTS = (
    "pareto",
    "roofline",
    "latency_breakdown",
    "memory_breakdown",
    "expert_load",
    "dense_vs_moe",
)
PHASES = ("both", "decode", "prefill")


# ---------------------------------------------------------------------------- axis values
class Range(BaseModel):
    """Evenly spaced values: ``{start, stop, num[, log]}`` (linspace / logspace, both ends
    included) or ``{start, stop, step}`` (start, start+step, ... up to stop inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    start: float = Field(description="First value.")
    stop: float = Field(description="Last value (included when the spacing lands on it).")
    num: int | None = Field(
        None, ge=1, le=MAX_AXIS_VALUES, description="Number of values (with start/stop)."
    )
    step: float | None = Field(None, gt=0, description="Spacing between values (instead of num).")
    log: bool = Field(False, description="With num: space the values geometrically (start > 0).")

    @model_validator(mode="after")
    def _one_spacing(self) -> Range:
        if (self.num is None) == (self.step is None):
            raise ValueError("a range takes exactly one of 'num' or 'step'")
        if self.log and (self.num is None or self.start <= 0 or self.stop <= 0):
            raise ValueError("a log range needs 'num' and start, stop > 0")
        if self.stop < self.start:
            raise ValueError("stop must be >= start")
        if self.step is not None:
            count = (self.stop - self.start) / self.step + 1  # counted before any allocation
            if not count <= MAX_AXIS_VALUES:
                raise ValueError(
                    f"this range has {count:,.0f} values; the limit per axis is "
                    f"{MAX_AXIS_VALUES:,} (use a larger step)"
                )
        return self

    def values(self) -> np.ndarray:
        if self.num is not None:
            if self.log:
                return np.geomspace(self.start, self.stop, self.num)
            return np.linspace(self.start, self.stop, self.num)
        n = math.floor((self.stop - self.start) / self.step * (1 + 1e-12)) + 1
        return self.start + self.step * np.arange(n)


def _no_bools(values: list) -> list:
    # pydantic reads true as 1; in a sweep axis that is a typo, not a number
    if any(isinstance(v, bool) for v in values):
        raise ValueError("expected numbers or names, got a boolean (true/false)")
    return values


def _as_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return _no_bools(list(value))
    if isinstance(value, dict) or value is None:
        return value
    return _no_bools([value])


def _int_axis(minimum: int, maximum: int):
    def check(value: list[int] | Range) -> tuple[int, ...]:
        if isinstance(value, Range):
            for end in (value.start, value.stop):
                if end < minimum - 0.5:
                    raise ValueError(f"values must be >= {minimum}, got {end:g}")
                if end > maximum + 0.5:
                    raise ValueError(f"values must be <= {maximum:,}, got {end:g}")
            values = np.rint(value.values()).astype(np.int64)
            _, first = np.unique(values, return_index=True)
            out = tuple(int(v) for v in values[np.sort(first)])  # integers, order kept, once each
        else:
            out = tuple(value)
        if not out:
            raise ValueError("needs at least one value")
        if len(out) > MAX_AXIS_VALUES:
            raise ValueError(f"{len(out):,} values; the limit per axis is {MAX_AXIS_VALUES:,}")
        if min(out) < minimum:
            raise ValueError(f"values must be >= {minimum}, got {min(out)}")
        if max(out) > maximum:
            raise ValueError(f"values must be <= {maximum:,}, got {max(out):,}")
        return out

    return check


def _float_axis(low: float, high: float):
    def check(value: list[float] | Range) -> tuple[float, ...]:
        out = tuple(float(v) for v in (value.values() if isinstance(value, Range) else value))
        if not out:
            raise ValueError("needs at least one value")
        if len(out) > MAX_AXIS_VALUES:
            raise ValueError(f"{len(out):,} values; the limit per axis is {MAX_AXIS_VALUES:,}")
        bad = [v for v in out if not low <= v <= high]
        if bad:
            raise ValueError(f"values must be in [{low:g}, {high:g}], got {bad[0]:g}")
        return out

    return check


def _choice_axis(kind: str, known: Sequence[str]):
    def check(value: list[str]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one value")
        for v in value:
            if v not in known:
                raise ValueError(
                    f"unknown {kind} {v!r}{did_you_mean(v, known)}; use one of {', '.join(known)}"
                )
        return tuple(value)

    return check


_AS_LIST = PlainSerializer(list, return_type=list)


def _axis_type(inner, check, *, with_range: bool = True):
    scalar_or_list = inner | list[inner]
    schema_type = (scalar_or_list | Range) if with_range else scalar_or_list
    core = (list[inner] | Range) if with_range else list[inner]
    return Annotated[
        core,
        BeforeValidator(_as_list, json_schema_input_type=schema_type),
        AfterValidator(check),
        _AS_LIST,
    ]


def _limited(name: str):
    return _axis_type(int, _int_axis(*INT_LIMITS[name]))


ParallelAxis = _limited("tp")  # tp, ep, pp, dp
ReplicaAxis = _limited("replicas")
RedundantAxis = _limited("redundant_experts")
BatchAxis = _limited("batch")
TokensAxis = _limited("input_len")  # input_len, output_len, context_len
FractionAxis = _axis_type(float, _float_axis(0.0, 1.0))
DtypeAxis = _axis_type(str, _choice_axis("dtype", list(DTYPE_BYTES)), with_range=False)
OverlapAxis = _axis_type(str, _choice_axis("overlap", OVERLAP_MODES), with_range=False)
PhaseAxis = _axis_type(str, _choice_axis("phase", PHASES), with_range=False)
EngineAxis = _axis_type(str, _choice_axis("engine", ENGINES), with_range=False)
StrAxis = _axis_type(str, lambda v: tuple(v) if v else _empty(), with_range=False)
BlockAxis = _axis_type(int, _int_axis(*INT_LIMITS["block_m"]), with_range=False)
IntAxis = _limited("concurrency")  # concurrency, token_budget, max_batch
PositiveAxis = _axis_type(float, _float_axis(1e-9, MAX_RATE_PER_S))  # arrival rates, requests/s


def _empty():
    raise ValueError("needs at least one value")


def _capacity_list(value: Any) -> Any:
    return _no_bools([value] if value is None or not isinstance(value, (list, tuple)) else value)


def _capacity_check(value: list[float | None]) -> tuple[float | None, ...]:
    if not value:
        _empty()
    bad = [v for v in value if v is not None and not 0 < v <= MAX_CAPACITY_FACTOR]
    if bad:
        raise ValueError(
            f"capacity factors must be finite, in (0, {MAX_CAPACITY_FACTOR:g}] (or null for no "
            f"cap), got {bad[0]}"
        )
    return tuple(value)


CapacityAxis = Annotated[
    list[float | None],
    BeforeValidator(_capacity_list, json_schema_input_type=float | None | list[float | None]),
    AfterValidator(_capacity_check),
    _AS_LIST,
]


# ---------------------------------------------------------------------------- the schema
class _Strict(BaseModel):
    # No NaN or infinity anywhere: a number in a scenario is finite or it is an error.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelEntry(_Strict):
    """One model: a preset or file (``name``), or an inline spec (``spec``)."""

    name: str | None = Field(
        None,
        description="Preset name (moesim model list), or a path to a Hugging Face config.json, a "
        "folder holding one, or a preset-style YAML (relative to the scenario file).",
    )
    spec: dict[str, Any] | None = Field(
        None, description="Inline model: ModelSpec fields (hidden_size, num_hidden_layers, ...)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="ModelSpec fields to change on the named model."
    )
    dense_equivalent: bool = Field(
        False,
        description="Use the model's dense equivalent: same attention, one FFN of the width that "
        "gives equal active parameters per token.",
    )
    label: str | None = Field(None, description="Name in the results (default: the model's name).")

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.name is None) == (self.spec is None):
            raise ValueError("give exactly one of 'name' or 'spec'")
        return self


def _model_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class LayoutSpec(_Strict):
    """A family of deployment layouts; every list-valued field is a sweep axis."""

    label: str | None = Field(None, description="Name of this layout family (kept as a column).")
    tp: ParallelAxis = Field(
        (1,), description="Tensor-parallel sizes (attention; experts unless ep)."
    )
    ep: ParallelAxis = Field((1,), description="Expert-parallel sizes (must divide tp*dp).")
    ep_spans_stage: bool = Field(
        False,
        description="Set ep = tp*dp on every point (experts spread over every GPU of a stage, "
        "DeepSeek-style DP attention + EP); ep must then be left at 1.",
    )
    pp: ParallelAxis = Field((1,), description="Pipeline-parallel stages.")
    dp: ParallelAxis = Field(
        (1,), description="Attention data-parallel groups per stage (DP attention)."
    )
    replicas: ReplicaAxis = Field((1,), description="Independent copies of the whole layout.")
    redundant_experts: RedundantAxis = Field(
        (0,), description="Extra expert replicas (EPLB) over the EP group."
    )
    offload_fraction: FractionAxis = Field(
        (0.0,), description="Share of each GPU's routed experts kept in host memory, in [0, 1]."
    )
    weight_dtype: DtypeAxis = Field(("bf16",), description="Weight storage dtypes.")
    kv_dtype: DtypeAxis = Field(("bf16",), description="KV-cache dtypes.")
    act_dtype: DtypeAxis = Field(("bf16",), description="Activation dtypes.")
    dispatch_dtype: DtypeAxis = Field(
        ("bf16",), description="EP all-to-all dispatch payload dtypes (fp8: DeepEP)."
    )
    overlap: OverlapAxis = Field(
        ("none",), description="Compute/communication overlap: none | two-batch."
    )
    memory_utilization: float = Field(
        0.90, gt=0, le=1, description="Usable share of GPU memory (vLLM's default 0.9)."
    )
    gpus_per_node: int | None = Field(
        None,
        ge=1,
        le=INT_LIMITS["gpus_per_node"][1],
        description="GPUs per node (default: the hardware profile's).",
    )

    @model_validator(mode="after")
    def _ep_once(self) -> LayoutSpec:
        if self.ep_spans_stage and self.ep != (1,):
            raise ValueError("ep_spans_stage sets ep itself; leave ep out")
        return self


class WorkloadSpec(_Strict):
    """A family of workloads; every list-valued field is a sweep axis."""

    label: str | None = Field(None, description="Name of this workload family (kept as a column).")
    batch: BatchAxis = Field((1,), description="Concurrent sequences across the whole layout.")
    input_len: TokensAxis = Field((1024,), description="Prompt tokens per request.")
    output_len: TokensAxis = Field((256,), description="Generated tokens per request.")
    context_len: TokensAxis | None = Field(
        None,
        description="phase=decode only: context tokens per sequence (default input + output/2).",
    )
    phase: PhaseAxis = Field(
        ("both",),
        description="both: static batch end to end; decode / prefill: one pool's steady state.",
    )
    routing: StrAxis = Field(
        ("uniform",), description="Routing skew: uniform | zipf:S | dirichlet:A | hist:PATH."
    )
    capacity_factor: CapacityAxis = Field(
        (None,), description="Expert capacity factors (null: no cap, no drops)."
    )
    block_m: BlockAxis = Field((64,), description="Grouped-GEMM block M that expert tokens pad to.")
    concurrency: IntAxis | None = Field(
        None,
        description="In-flight batching with chunked prefill: clients in a closed loop across the "
        "whole layout (replaces batch; phase stays both).",
    )
    engine: EngineAxis = Field(
        ("vllm",), description="Engine whose scheduler and memory defaults to use (concurrency)."
    )
    token_budget: IntAxis | None = Field(
        None, description="Tokens per step (default: the engine's; concurrency only)."
    )
    max_batch: IntAxis | None = Field(
        None, description="Cap on running sequences per scheduler (default: the engine's)."
    )

    @model_validator(mode="after")
    def _inflight_phase(self) -> WorkloadSpec:
        if self.concurrency is not None and self.phase != ("both",):
            raise ValueError("concurrency runs in-flight batching end to end; leave phase at both")
        return self


class SweepSpec(_Strict):
    """How the axes combine."""

    mode: Literal["grid", "zip"] = Field(
        "grid",
        description="grid: cartesian product of all axes; zip: multi-valued axes paired by position.",
    )
    zip: list[list[str]] = Field(
        default_factory=list,
        description="grid mode: groups of axis names paired by position (equal lengths), each "
        "group one axis of the product, e.g. [[tp, batch]].",
    )


class SloSpec(_Strict):
    """Service-level objectives: a point meets them when feasible and under every maximum."""

    ttft_s: float | None = Field(None, gt=0, description="Maximum time to first token, seconds.")
    tpot_s: float | None = Field(None, gt=0, description="Maximum time per output token, seconds.")
    e2e_latency_s: float | None = Field(
        None, gt=0, description="Maximum end-to-end request latency, seconds."
    )


class OutputSpec(_Strict):
    """What ``moesim sweep`` writes."""

    formats: list[Literal["parquet", "csv"]] | None = Field(
        None,
        min_length=1,
        description="Result tables written to --out (default: parquet, and csv for sweeps of "
        "at most 250,000 points).",
    )
    charts: list[Literal[CHARTS]] = Field(
        default_factory=list, description=f"Charts to draw: {', '.join(CHARTS)}."
    )
    chart_formats: list[Literal["html", "svg", "png"]] = Field(
        ["html", "svg", "png"], description="Files written for each chart."
    )
    color_by: Literal["hardware", "layout", "model"] = Field(
        "hardware", description="Pareto chart: colour points by this column."
    )


class SimulateSpec(_Strict):
    """Request-level simulation (``moesim simulate --scenario``): every point of the layouts x
    workloads (batch, phase and context_len aside) is simulated at every rate or concurrency."""

    rate_per_s: PositiveAxis | None = Field(
        None, description="Open loop: arrival rates, requests/s."
    )
    concurrency: IntAxis | None = Field(
        None, description="Closed loop: numbers of clients (with rate_per_s: caps in flight)."
    )
    arrival: Literal["poisson", "gamma", "constant"] = Field(
        "poisson", description="Arrival process."
    )
    cv: float = Field(
        1.0, gt=0, description="Gamma arrivals: coefficient of variation of the gaps."
    )
    num_requests: int = Field(1000, ge=1, description="Requests per simulation.")
    input_len: str | None = Field(
        None,
        description="Prompt-length distribution (e.g. 'lognormal:1024:0.5'); default: the workload's input_len.",
    )
    output_len: str | None = Field(
        None, description="Output-length distribution; default: the workload's output_len."
    )
    trace: str | None = Field(
        None, description="Trace file (CSV/JSONL) for lengths and, without a rate, arrivals."
    )
    seed: int = Field(0, ge=0, description="Random seed.")
    engine: Literal["vllm", "sglang", "trtllm"] = Field("vllm", description="Scheduler defaults.")
    max_num_batched_tokens: IntAxis | None = Field(
        None, description="Token budgets per step (default: the engine's)."
    )
    max_num_seqs: IntAxis | None = Field(None, description="Sequence caps (default: the engine's).")
    ttft_slo_s: float | None = Field(
        None, gt=0, description="TTFT SLO for goodput (default: slo.ttft_s)."
    )
    tpot_slo_s: float | None = Field(
        None, gt=0, description="TPOT SLO for goodput (default: slo.tpot_s)."
    )

    @model_validator(mode="after")
    def _one_load(self) -> SimulateSpec:
        if self.rate_per_s is None and self.concurrency is None and self.trace is None:
            raise ValueError("give rate_per_s, concurrency or a trace with arrival times")
        return self


class Scenario(_Strict):
    """A sweep over models x hardware x layouts x workloads."""

    name: str = Field(description="Short name of the scenario (used in outputs).")
    description: str = Field("", description="What the scenario asks.")
    models: list[
        Annotated[
            ModelEntry, BeforeValidator(_model_entry, json_schema_input_type=str | ModelEntry)
        ]
    ] = Field(
        min_length=1,
        description="Models: preset names, paths, or {name|spec, overrides, dense_equivalent, label}.",
    )
    hardware: list[str] = Field(
        min_length=1, description="Hardware profile names (moesim hw list) or YAML paths."
    )
    framework: Literal["trtllm", "vllm", "sglang"] | None = Field(
        None,
        description="Engine whose measured kernels the hardware names mean: a name resolves to "
        "NAME.<framework> where that fitted profile ships (NAME.datasheet: the datasheet "
        "profile). None: the names as written.",
    )
    layouts: list[LayoutSpec] = Field([LayoutSpec()], min_length=1, description="Layout families.")
    workloads: list[WorkloadSpec] = Field(
        [WorkloadSpec()], min_length=1, description="Workload families."
    )
    sweep: SweepSpec = Field(SweepSpec(), description="How the axes combine.")
    slo: SloSpec = Field(SloSpec(), description="Service-level objectives (the meets_slo column).")
    outputs: OutputSpec = Field(OutputSpec(), description="Tables and charts to write.")
    simulate: SimulateSpec | None = Field(
        None, description="Request-level simulation of the points (moesim simulate --scenario)."
    )

    @model_validator(mode="before")
    @classmethod
    def _single_to_list(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("models", "hardware", "layouts", "workloads"):
                if isinstance(data.get(key), (str, dict)):
                    data[key] = [data[key]]
        return data


LAYOUT_AXES = (
    "tp",
    "ep",
    "pp",
    "dp",
    "replicas",
    "redundant_experts",
    "offload_fraction",
    "weight_dtype",
    "kv_dtype",
    "act_dtype",
    "dispatch_dtype",
    "overlap",
)
WORKLOAD_AXES = (
    "batch",
    "input_len",
    "output_len",
    "context_len",
    "phase",
    "routing",
    "capacity_factor",
    "block_m",
    "concurrency",
    "engine",
    "token_budget",
    "max_batch",
)
AXES = ("model", "hardware", *LAYOUT_AXES, *WORKLOAD_AXES)
# Axes whose values are not arrays in the cost path: one vectorised call per combination.
CATEGORICAL = (
    "model",
    "hardware",
    "weight_dtype",
    "kv_dtype",
    "act_dtype",
    "dispatch_dtype",
    "overlap",
    "phase",
    "routing",
    "capacity_factor",
    "block_m",
    "engine",
)


def json_schema() -> dict:
    """The scenario JSON Schema (for editor completion, e.g. yaml-language-server)."""
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "moesim scenario"
    return schema


def did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------- loading
@dataclass
class _Source:
    """The raw round-trip document, to map field paths back to lines."""

    display: str
    doc: Any

    def locate(self, loc: Sequence[Any]) -> tuple[int, str]:
        """(1-based line, 'a[0].b' path) for a pydantic error location."""
        node, line, parts = self.doc, 1, []
        for i, part in enumerate(loc):
            if isinstance(node, dict) and part in node:
                line = _key_line(node, part, line)
                parts.append(f".{part}" if parts else str(part))
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                line = _item_line(node, part, line)
                parts.append(f"[{part}]")
                node = node[part]
            elif isinstance(part, str) and _is_type_tag(part):
                continue
            elif isinstance(part, int):
                continue  # index into a scalar that was widened to a list
            else:
                parts.append(f".{part}" if parts else str(part))
                if i == len(loc) - 1:
                    break
        return line, "".join(parts)

    def error(self, loc: Sequence[Any], message: str) -> MoesimError:
        line, path = self.locate(loc)
        where = f"{self.display}:{line}"
        return MoesimError(f"{where}: {path}: {message}" if path else f"{where}: {message}")


def _key_line(node, key, default: int) -> int:
    try:
        return node.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return default


def _item_line(node, index: int, default: int) -> int:
    try:
        return node.lc.item(index)[0] + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return default


def _is_type_tag(part: str) -> bool:
    return (
        any(c in part for c in "[]-")
        or part in {"int", "float", "str", "bool", "list", "dict", "none"}
        or part[:1].isupper()
    )


def parse_yaml(text: str, display: str):
    """The round-trip document of a scenario (line numbers kept), read through the shared safe
    loader (:mod:`moesim.spec.safe_io`: size, depth and alias limits, only core tags, no
    duplicate keys). Returns the ruamel document; :func:`moesim.spec.safe_io.to_plain` gives
    plain data."""
    from moesim.spec.safe_io import parse_yaml as safe_parse

    doc = safe_parse(text, display)
    if not isinstance(doc, dict):
        raise MoesimError(f"{display}:1: a scenario is a mapping (name:, models:, hardware:, ...)")
    return doc


def _display(path: Path) -> str:
    from moesim.spec.safe_io import display_path

    return display_path(path)


@dataclass
class LoadedScenario:
    """A validated scenario with its models and hardware resolved."""

    scenario: Scenario
    text: str
    path: Path | None
    models: list  # ModelSpec, one per scenario.models entry
    model_labels: list[str]
    hardware: list  # HardwareProfile
    hardware_labels: list[str]
    routing: dict = field(default_factory=dict)  # routing string -> distribution

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def load_scenario(path_or_text: str | Path, *, text: str | None = None) -> LoadedScenario:
    """Read, validate and resolve a scenario file (or ``text`` with ``path_or_text`` as its name)."""
    from moesim.spec.safe_io import MAX_YAML_BYTES, read_text, to_plain

    path = Path(path_or_text)
    display = _display(path)
    if text is None:
        text = read_text(path, what="scenario", max_bytes=MAX_YAML_BYTES, display=display)
    elif len(text) > MAX_YAML_BYTES:
        raise MoesimError(f"{display}: a scenario is at most {MAX_YAML_BYTES:,} bytes")
    source = _Source(display, parse_yaml(text, display))
    try:
        scenario = Scenario.model_validate(to_plain(source.doc))
    except ValidationError as exc:
        err = _best_error(exc.errors())
        raise source.error(err["loc"], _message(err)) from None
    except MoesimError as exc:
        raise MoesimError(f"{display}: {exc}") from None
    return _resolve(scenario, text, path if path.is_file() else None, source)


_TYPE_MISMATCH = {
    "list_type",
    "model_type",
    "dict_type",
    "model_attributes_type",
    "string_type",
    "tuple_type",
}


def _best_error(errors: list[dict]) -> dict:
    """Among union branches, the error that is about the value rather than about its shape."""
    for err in errors:
        if err["type"] not in _TYPE_MISMATCH:
            return err
    return errors[0]


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field" + _field_hint(err)
    if err["type"] == "missing":
        return "required field is missing"
    return msg[0].lower() + msg[1:] if msg[:2] != msg[:2].upper() else msg


def _field_hint(err: dict) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and _is_type_tag(p))]
    model: type[BaseModel] | None = Scenario
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        model = _submodel(info.annotation) if info else None
    if model is None:
        return ""
    return did_you_mean(str(loc[-1]), list(model.model_fields))


def _submodel(annotation) -> type[BaseModel] | None:
    import typing

    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack += list(typing.get_args(a))
    return None


def _resolve(scenario: Scenario, text: str, path: Path | None, source: _Source) -> LoadedScenario:
    from moesim.spec.hardware import list_hardware, load_hardware
    from moesim.spec.model import ModelSpec, check_limits, list_models, load_model

    base = path.parent if path else Path.cwd()
    models, labels = [], []
    for i, entry in enumerate(scenario.models):
        try:
            if entry.spec is not None:
                spec = dict(entry.spec)
                spec.setdefault("name", entry.label or f"inline-{i}")
                check_limits(spec, "inline spec")  # the ceilings config.json files get
                m = ModelSpec.model_validate(spec)
            else:
                target = entry.name
                if target not in list_models():
                    candidate = base / target
                    if not candidate.exists():
                        raise MoesimError(
                            f"unknown model {target!r}{did_you_mean(target, list_models())}"
                        )
                    target = str(candidate)
                m = load_model(target)
            if entry.overrides:
                m = m.with_overrides(**entry.overrides)
            if entry.dense_equivalent:
                m = m.dense_equivalent()
        except ValidationError as exc:
            err = exc.errors()[0]
            raise source.error(["models", i, "spec", *err["loc"]], _message(err)) from None
        except MoesimError as exc:
            raise source.error(["models", i], _strip_known(str(exc))) from None
        models.append(m)
        labels.append(entry.label or m.name)
    _check_unique(labels, "models", source)

    hardware, hw_labels = [], []
    for i, name in enumerate(scenario.hardware):
        try:
            if name not in list_hardware() and not name.endswith(".datasheet"):
                candidate = base / name
                if not candidate.is_file():
                    raise MoesimError(
                        f"unknown hardware {name!r}{did_you_mean(name, list_hardware())}"
                    )
                name = str(candidate)
            if scenario.framework is not None or name.endswith(".datasheet"):
                from moesim.spec.hardware import measured_name

                name = measured_name(name, scenario.framework)
            hw = load_hardware(name)
        except MoesimError as exc:
            raise source.error(["hardware", i], _strip_known(str(exc))) from None
        hardware.append(hw)
        hw_labels.append(hw.name)
    _check_unique(hw_labels, "hardware", source)

    routing = {}
    for j, w in enumerate(scenario.workloads):
        for r_i, spec in enumerate(w.routing):
            if spec in routing:
                continue
            try:
                routing[spec] = _parse_routing(spec, base)
            except MoesimError as exc:
                raise source.error(["workloads", j, "routing", r_i], str(exc)) from None

    axis_names = set(AXES)
    for g, group in enumerate(scenario.sweep.zip):
        for a, name in enumerate(group):
            if name not in axis_names:
                raise source.error(
                    ["sweep", "zip", g, a], f"unknown axis {name!r}{did_you_mean(name, AXES)}"
                )
    loaded = LoadedScenario(scenario, text, path, models, labels, hardware, hw_labels, routing)
    try:
        build_plan(loaded)
    except _PlanError as exc:
        raise source.error(exc.loc, exc.message) from None
    return loaded


def _parse_routing(spec: str, base: Path):
    from moesim.cost.routing import parse_routing

    kind, _, arg = spec.partition(":")
    if kind == "hist" and arg and not Path(arg).is_absolute():
        spec = f"hist:{base / arg}"
    return parse_routing(spec)


def _strip_known(message: str) -> str:
    """Drop the long '; known: ...' list of a name error (the hint already names the nearest)."""
    head, sep, _ = message.partition("; known: ")
    return head if sep else message


def _check_unique(labels: list[str], key: str, source: _Source) -> None:
    seen = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise source.error(
                [key, i],
                f"{label!r} appears twice; give one a 'label'"
                if key == "models"
                else f"{label!r} appears twice",
            )
        seen[label] = i


# ---------------------------------------------------------------------------- expansion
class _PlanError(Exception):
    def __init__(self, loc, message):
        self.loc, self.message = loc, message


@dataclass
class Block:
    """One (layout, workload) pair: its axes, how they combine, and its number of points."""

    layout_index: int
    workload_index: int
    axes: dict[str, np.ndarray]  # axis -> values (codes for categorical axes)
    dims: list[tuple[str, ...]]  # axes that move together, slowest first
    shape: tuple[int, ...]
    size: int
    offset: int = 0
    ep_spans_stage: bool = False


@dataclass
class Plan:
    """The points of a scenario, generated on demand by row number (deterministic)."""

    loaded: LoadedScenario
    blocks: list[Block]
    categories: dict[str, list]  # categorical axis -> its values (codes index these)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Input columns of points ``start .. stop-1``; categorical axes as integer codes."""
        stop = min(stop, self.size)
        parts = []
        for b in self.blocks:
            lo, hi = max(start, b.offset), min(stop, b.offset + b.size)
            if lo >= hi:
                continue
            local = np.arange(lo - b.offset, hi - b.offset)
            idx = np.unravel_index(local, b.shape) if b.shape else ()
            cols = {
                "layout_index": np.full(hi - lo, b.layout_index),
                "workload_index": np.full(hi - lo, b.workload_index),
            }
            for d, names in enumerate(b.dims):
                for name in names:
                    cols[name] = b.axes[name][idx[d]]
            for name, values in b.axes.items():
                if name not in cols:
                    cols[name] = np.repeat(values[:1], hi - lo)
            if b.ep_spans_stage:
                cols["ep"] = cols["tp"] * cols["dp"]
            parts.append(cols)
        if not parts:
            return {}
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def chunks(self, chunk_size: int) -> list[tuple[int, int]]:
        return [(s, min(s + chunk_size, self.size)) for s in range(0, self.size, chunk_size)]


def build_plan(loaded: LoadedScenario) -> Plan:
    """Expand the scenario's axes into blocks (no points are materialised here)."""
    sc = loaded.scenario
    categories: dict[str, list] = {name: [] for name in CATEGORICAL}
    categories["model"] = list(loaded.model_labels)
    categories["hardware"] = list(loaded.hardware_labels)

    def codes(name, values):
        cat = categories[name]
        out = []
        for v in values:
            if v not in cat:
                cat.append(v)
            out.append(cat.index(v))
        return np.asarray(out, dtype=np.int64)

    blocks, offset = [], 0
    for li, lay in enumerate(sc.layouts):
        for wi, work in enumerate(sc.workloads):
            axes: dict[str, np.ndarray] = {
                "model": np.arange(len(loaded.models)),
                "hardware": np.arange(len(loaded.hardware)),
            }
            where: dict[str, list] = {"model": ["models"], "hardware": ["hardware"]}
            for spec, names, key, idx in (
                (lay, LAYOUT_AXES, "layouts", li),
                (work, WORKLOAD_AXES, "workloads", wi),
            ):
                for name in names:
                    values = getattr(spec, name)
                    if values is None:  # context_len unset: the phase's default context
                        values = (math.nan,)
                    where[name] = [key, idx, name]
                    if name in CATEGORICAL:
                        axes[name] = codes(name, values)
                    else:
                        axes[name] = np.asarray(values, dtype=float)
            dims = _dims(sc.sweep, axes, where)
            shape = tuple(len(axes[d[0]]) for d in dims)
            size = math.prod(shape)  # Python ints: a product of many axes never wraps
            tokens = float(np.max(axes["batch"])) * (
                float(np.max(axes["input_len"])) + float(np.max(axes["output_len"]))
            )
            if tokens > MAX_TOKENS_IN_FLIGHT:
                raise _PlanError(
                    ["workloads", wi, "batch"],
                    f"batch x (input_len + output_len) reaches {tokens:,.0f} tokens in flight; "
                    f"the limit is {MAX_TOKENS_IN_FLIGHT:,}",
                )
            for model in loaded.models:
                try:
                    check_memory_scale(model, tokens)
                except MoesimError as exc:
                    raise _PlanError(["workloads", wi, "batch"], str(exc)) from None
            blocks.append(Block(li, wi, axes, dims, shape, size, offset, lay.ep_spans_stage))
            offset += size
    return Plan(loaded, blocks, categories)


def check_points(plan: Plan, max_points: int | None = DEFAULT_MAX_POINTS) -> None:
    """Refuse a plan of more than ``max_points`` points before anything is evaluated
    (``None``: no limit). The count is exact (a product of axis lengths, no expansion)."""
    if max_points is not None and plan.size > max_points:
        loaded = plan.loaded
        where = _display(loaded.path) if loaded.path else loaded.scenario.name
        raise MoesimError(
            f"{where}: the scenario has {plan.size:,} points; the limit is {max_points:,} "
            f"(narrow its axes, or raise the limit with --max-points {plan.size})"
        )


def _dims(
    sweep: SweepSpec, axes: dict[str, np.ndarray], where: dict[str, list]
) -> list[tuple[str, ...]]:
    multi = [a for a in axes if len(axes[a]) > 1]
    if sweep.mode == "zip":
        if not multi:
            return []
        lengths = {a: len(axes[a]) for a in multi}
        if len(set(lengths.values())) > 1:
            a, b = multi[0], next(x for x in multi if lengths[x] != lengths[multi[0]])
            raise _PlanError(
                where[b],
                f"zip needs equal lengths: {a} has {lengths[a]} values, {b} has {lengths[b]}",
            )
        return [tuple(multi)]
    grouped: dict[str, tuple[str, ...]] = {}
    for g, group in enumerate(sweep.zip):
        present = [a for a in group if a in axes]
        lengths = {a: len(axes[a]) for a in present}
        if len(set(lengths.values())) > 1:
            a = present[0]
            b = next(x for x in present if lengths[x] != lengths[a])
            raise _PlanError(
                ["sweep", "zip", g],
                f"zip needs equal lengths: {a} has {lengths[a]} values, {b} has {lengths[b]}",
            )
        for a in present:
            if a in grouped:
                raise _PlanError(["sweep", "zip", g], f"axis {a!r} is in two zip groups")
            grouped[a] = tuple(present)
    dims, seen = [], set()
    for a in axes:
        group = grouped.get(a, (a,))
        if group[0] in seen or len(axes[a]) == 1 and len(group) == 1:
            continue
        seen.add(group[0])
        dims.append(group)
    return dims
