"""Reading input files safely: the one place where bytes from a user become Python values.

Every loader of the project (scenarios, hardware profiles, model presets, Hugging Face
``config.json``, routing histograms) reads its file through here, so that nothing past the
loaders has to defend itself against a hostile or broken file:

- a file is read as bytes, with a size limit, then decoded as UTF-8 with an error that names
  the file and the offset of the first bad byte (binary files are refused as such);
- YAML is checked on its event stream *before* anything is built: one document, nesting depth,
  number of aliases, and the size the document would have once every alias is expanded (a
  "billion laughs" file is refused in microseconds instead of exhausting memory), an alias to
  a node that contains it (a recursive structure) is refused, explicit tags other than YAML's
  core ones are refused (nothing is ever constructed from a tag), duplicate keys are refused;
  the document is YAML 1.2 (``yes``/``no``/``on`` are strings) read by ruamel's round-trip
  loader, which keeps line numbers for error messages;
- JSON is parsed with NaN/Infinity refused, depth limited, and the top-level type checked.

Errors are :class:`~moesim.errors.MoesimError` with ``file:line:`` in front, so the CLI prints
one line. Limits are module constants; they are far above anything a real input needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moesim.errors import MoesimError

MAX_YAML_BYTES = 1 << 20  # 1 MiB: the largest shipped YAML is ~11 kB
MAX_JSON_BYTES = 8 << 20  # HF config.json files are a few kB; histograms of 61 x 256 ~100 kB
MAX_CSV_BYTES = 64 << 20  # measurement CSVs of a full profile run are ~1 MB
MAX_DEPTH = 64  # nesting levels of mappings/sequences (real files use < 10)
MAX_ALIASES = 1_000  # alias references in one YAML document
MAX_NODES = 100_000  # nodes of a YAML document with every alias expanded
_CORE_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
) | {"!"}


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


# ---------------------------------------------------------------------------- bytes and text
def read_bytes(path: str | Path, *, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; MoesimError naming ``what`` else."""
    p = Path(path)
    try:
        if not p.exists():
            raise MoesimError(f"{what} not found: {p}")
        if p.is_dir():
            raise MoesimError(f"{what} {p} is a directory, not a file")
        if not p.is_file():
            raise MoesimError(f"{what} {p} is not a regular file")
        size = p.stat().st_size
        if size > max_bytes:
            raise MoesimError(
                f"{what} {p} is {size:,} bytes; the limit is {max_bytes:,} (is it the right file?)"
            )
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except MoesimError:
        raise
    except (OSError, ValueError) as exc:  # permission denied, name too long, NUL in the name
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise MoesimError(f"cannot read {what} {p}: {reason}") from None
    if len(data) > max_bytes:  # grew while being read (a pipe, /dev/zero)
        raise MoesimError(f"{what} {p} is larger than the limit of {max_bytes:,} bytes")
    return data


def decode_text(data: bytes, display: str) -> str:
    """UTF-8 text of ``data`` (a leading BOM dropped); a clear error for binary or other encodings."""
    if b"\x00" in data[:8192]:
        raise MoesimError(f"{display}: binary file (NUL bytes), expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MoesimError(
            f"{display}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def read_text(path: str | Path, *, what: str, max_bytes: int, display: str | None = None) -> str:
    """Bounded read of a UTF-8 text file (see :func:`read_bytes`, :func:`decode_text`)."""
    data = read_bytes(path, what=what, max_bytes=max_bytes)
    return decode_text(data, display or display_path(path))


# ---------------------------------------------------------------------------- YAML
def _bracket_depth(text: str) -> int:
    """Upper bound of flow nesting (``[``/``{`` not yet closed), computed without the parser:
    ruamel's scanner is slow on deeply nested flow collections, so they are refused first."""
    depth = top = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > top:
                top = depth
                if top > 4 * MAX_DEPTH:
                    break
        elif ch in "]}":
            depth -= 1
    return top


def check_yaml(text: str, display: str) -> None:
    """Refuse, before construction: several documents, nesting deeper than MAX_DEPTH, more than
    MAX_ALIASES aliases, more than MAX_NODES nodes with aliases expanded, recursive aliases and
    explicit non-core tags. Raises MoesimError with the line of the offending node."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        DocumentStartEvent,
        ScalarEvent,
    )

    if _bracket_depth(text) > 4 * MAX_DEPTH:
        raise MoesimError(f"{display}: nested more than {MAX_DEPTH} levels deep")
    # Each open collection: [anchor, nodes so far]; sizes of finished anchored nodes.
    stack: list[list] = []
    sizes: dict[str, int] = {}
    total = aliases = documents = 0

    def fail(event, message: str) -> MoesimError:
        return MoesimError(f"{display}:{event.start_mark.line + 1}: {message}")

    def add(n: int) -> None:
        nonlocal total
        total += n
        if stack:
            stack[-1][1] += n

    try:
        for event in YAML(typ="safe", pure=True).parse(text):  # no comment bookkeeping: faster
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise fail(event, "more than one YAML document ('---'); use one per file")
                continue
            tag = getattr(event, "tag", None)
            if tag is not None and tag not in _CORE_TAGS:
                shown = tag.replace("tag:yaml.org,2002:", "!!")
                raise fail(event, f"YAML tag {shown!r} is not allowed (only plain data)")
            if isinstance(event, AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise fail(event, f"more than {MAX_ALIASES} YAML aliases")
                if any(frame[0] == event.anchor for frame in stack):
                    raise fail(event, f"alias *{event.anchor} refers to a node that contains it")
                if event.anchor not in sizes:
                    raise fail(
                        event, f"alias *{event.anchor} has no anchor &{event.anchor} before it"
                    )
                add(sizes[event.anchor])
            elif isinstance(event, ScalarEvent):
                add(1)
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise fail(event, f"nested more than {MAX_DEPTH} levels deep")
                stack.append([event.anchor, 1])
            elif isinstance(event, CollectionEndEvent):
                anchor, n = stack.pop()
                add(n)
                if anchor is not None:
                    sizes[anchor] = n
            if total > MAX_NODES:
                raise fail(
                    event,
                    f"the document has more than {MAX_NODES:,} nodes once its aliases are "
                    "expanded (an alias bomb?)",
                )
    except MarkedYAMLError as exc:
        raise _syntax_error(exc, display) from None
    except YAMLError as exc:
        raise MoesimError(f"{display}: not valid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise MoesimError(f"{display}: nested too deeply") from None


def parse_yaml(text: str, display: str, *, round_trip: bool = True) -> Any:
    """The round-trip document of ``text`` (ruamel CommentedMap/Seq, line numbers in ``.lc``),
    after :func:`check_yaml`; with ``round_trip=False`` plain data from ruamel's safe loader
    (faster; for files whose errors need no line numbers). Duplicate keys, bad numbers and
    syntax errors are MoesimErrors."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    check_yaml(text, display)
    yaml = YAML(typ="rt" if round_trip else "safe", pure=True)
    yaml.version = (1, 2)
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        raise _syntax_error(exc, display) from None
    except YAMLError as exc:
        raise MoesimError(f"{display}: not valid YAML: {_first_line(exc)}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of 5,000 digits
        reason = _first_line(exc)
        if "integer string conversion" in reason:
            reason = "an integer has more than 4,300 digits"
        raise MoesimError(f"{display}: a value cannot be read: {reason}") from None
    except RecursionError:
        raise MoesimError(f"{display}: nested too deeply") from None


def _syntax_error(exc, display: str) -> MoesimError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
    if "duplicate key" in problem:
        problem = problem.split(" with value")[0]
    return MoesimError(f"{display}:{line}: YAML syntax error (not valid YAML): {problem}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def to_plain(node: Any, _depth: int = 0) -> Any:
    """A ruamel round-trip tree as plain ``dict``/``list``/``str``/``int``/``float``/``bool``/
    ``None`` (aliases become copies, merge keys are applied, keys become strings)."""
    if _depth > MAX_DEPTH + 2:
        raise MoesimError("nested too deeply")
    if isinstance(node, dict):
        return {_plain_key(k): to_plain(v, _depth + 1) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [to_plain(v, _depth + 1) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node  # None, dates (validation names them as the wrong type)


def _plain_key(key: Any) -> str:
    if isinstance(key, (dict, list, tuple)):
        raise MoesimError("a mapping key must be a plain value, not a mapping or a list")
    return str(key)


def load_yaml_file(
    path: str | Path, *, what: str, display: str | None = None, mapping: bool = True
) -> tuple[Any, Any]:
    """(plain data, round-trip document) of a YAML file; ``mapping``: the top must be a mapping."""
    shown = display or display_path(path)
    text = read_text(path, what=what, max_bytes=MAX_YAML_BYTES, display=shown)
    return load_yaml_text(text, shown, what=what, mapping=mapping)


def load_yaml_text(
    text: str, display: str, *, what: str, mapping: bool = True, round_trip: bool = True
) -> tuple[Any, Any]:
    """As :func:`load_yaml_file`, for text already read."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise MoesimError(f"{display}: {what} is larger than {MAX_YAML_BYTES:,} bytes")
    doc = parse_yaml(text, display, round_trip=round_trip)
    if mapping and not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {_kind(doc)}"
        raise MoesimError(f"{display}:1: a {what} is a mapping of fields, but this file is {kind}")
    try:
        return to_plain(doc), doc
    except MoesimError as exc:
        raise MoesimError(f"{display}: {exc}") from None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


# ---------------------------------------------------------------------------- JSON
def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return _kind(value)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, display: str, *, top: type | tuple[type, ...] = dict) -> Any:
    """``json.loads`` with NaN/Infinity refused, depth bounded and the top-level type checked."""
    if _bracket_depth(text) > 4 * MAX_DEPTH:
        raise MoesimError(f"{display}: nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise MoesimError(f"{display}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (ValueError, OverflowError) as exc:
        reason = _first_line(exc)
        if "integer string conversion" in reason:
            reason = "an integer has more than 4,300 digits"
        raise MoesimError(f"{display}: invalid JSON: {reason}") from None
    except RecursionError:
        raise MoesimError(f"{display}: nested too deeply") from None
    if not isinstance(data, top):
        wanted = " or ".join(_json_kind(t()) for t in (top if isinstance(top, tuple) else (top,)))
        got = _json_kind(data)
        raise MoesimError(f"{display}:1: expected a JSON {wanted} at the top level, got {got}")
    return data


def load_json_file(
    path: str | Path,
    *,
    what: str,
    top: type | tuple[type, ...] = dict,
    max_bytes: int = MAX_JSON_BYTES,
    display: str | None = None,
) -> Any:
    """A JSON file read through :func:`read_text` and :func:`parse_json`."""
    shown = display or display_path(path)
    text = read_text(path, what=what, max_bytes=max_bytes, display=shown)
    return parse_json(text, shown, top=top)
