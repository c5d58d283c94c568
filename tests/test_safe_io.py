"""moesim.spec.safe_io: the one loader every input file goes through (limits, encodings, tags)."""

from __future__ import annotations

import time

import pytest

from moesim.errors import MoesimError
from moesim.spec import safe_io


def _bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (_bomb(), "aliases are expanded"),  # 10**9 nodes: refused from the event stream
        ("a: &x [1, *x]\n", "refers to a node that contains it"),
        ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "levels deep"),
        ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 200)), "levels deep"),
        ("a: 1\na: 2\n", "duplicate key"),
        ("a: !!python/object/apply:os.system ['true']\n", "not allowed"),
        ("a: !custom 1\n", "not allowed"),
        ("a: 1\n---\na: 2\n", "more than one YAML document"),
        ("a: [1, 2\n", "YAML syntax error"),
        ("a: *nowhere\n", "no anchor"),
        ("a: 1" + "0" * 5000 + "\n", "cannot be read"),
    ],
)
def test_hostile_yaml_is_refused_quickly(text, fragment):
    start = time.process_time()
    with pytest.raises(MoesimError, match=fragment) as info:
        safe_io.load_yaml_text(text, "x.yaml", what="test file")
    assert "\n" not in str(info.value) and str(info.value).startswith("x.yaml")
    assert time.process_time() - start < 5  # generous: each is milliseconds


def test_legitimate_aliases_and_merge_keys_load_as_plain_data():
    text = "base: &b {tp: 2, batch: [1, 8]}\nother:\n  <<: *b\n  batch: [4]\nboth: [*b, *b]\n"
    plain, doc = safe_io.load_yaml_text(text, "x.yaml", what="test file")
    assert plain["other"] == {"tp": 2, "batch": [4]}
    assert plain["both"] == [{"tp": 2, "batch": [1, 8]}] * 2
    assert type(plain["base"]) is dict and type(plain["base"]["batch"]) is list
    plain["both"][0]["tp"] = 99  # copies, not shared nodes
    assert plain["both"][1]["tp"] == 2
    assert doc.lc.key("other")[0] == 1  # the round-trip document keeps line numbers


def test_yaml_1_2_booleans_stay_strings():
    plain, _ = safe_io.load_yaml_text("a: yes\nb: on\nc: true\n", "x.yaml", what="f")
    assert plain == {"a": "yes", "b": "on", "c": True}


def test_top_level_must_be_a_mapping():
    for text, kind in (("- 1\n", "list"), ("", "empty"), ("3\n", "number")):
        with pytest.raises(MoesimError, match=kind):
            safe_io.load_yaml_text(text, "x.yaml", what="scenario")


def test_bytes_are_checked_before_decoding(tmp_path):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(MoesimError, match="binary"):
        safe_io.read_text(binary, what="f", max_bytes=100)
    latin = tmp_path / "l.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(MoesimError, match=r"l.yaml:1: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        safe_io.read_text(latin, what="f", max_bytes=100, display="l.yaml")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffa: 1\n".encode())
    assert safe_io.read_text(bom, what="f", max_bytes=100) == "a: 1\n"
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a" * 101)
    with pytest.raises(MoesimError, match="limit is 100"):
        safe_io.read_text(big, what="f", max_bytes=100)
    with pytest.raises(MoesimError, match="is a directory"):
        safe_io.read_text(tmp_path, what="f", max_bytes=100)
    with pytest.raises(MoesimError, match="not found"):
        safe_io.read_text(tmp_path / "missing.yaml", what="f", max_bytes=100)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "expected a JSON object at the top level, got array"),
        ("null", "got null"),
        ('"s"', "got string"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "levels deep"),
        ('{"a": 1' + "0" * 5000 + "}", "invalid JSON"),
        ('{"a": 1,}', "invalid JSON"),
    ],
)
def test_hostile_json_is_refused(text, fragment):
    with pytest.raises(MoesimError, match=fragment) as info:
        safe_io.parse_json(text, "c.json", top=dict)
    assert "\n" not in str(info.value)


def test_json_accepts_the_requested_top_types():
    assert safe_io.parse_json("[1, 2]", "c.json", top=(list, dict)) == [1, 2]
    assert safe_io.parse_json('{"a": 1}', "c.json") == {"a": 1}
