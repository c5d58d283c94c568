"""Scenario files: malformed input gives one line with file:line and field path; expansion counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moesim.cli import app
from moesim.errors import MoesimError
from moesim.plan.scenario import build_plan, json_schema, load_scenario

HEAD = "name: t\nmodels: [llama-3.1-8b]\nhardware: [h100-sxm]\n"

BAD = {
    "syntax": (HEAD + "workloads:\n  - batch: [1, 2\n", ":6:", "not valid YAML"),
    "unknown_field": (
        HEAD + "workloads:\n  - batch: 4\n    inptu_len: 3\n",
        ":6:",
        "workloads[0].inptu_len: unknown field (did you mean 'input_len'?)",
    ),
    "wrong_type": (HEAD + "layouts:\n  - tp: fast\n", ":5:", "layouts[0].tp"),
    "negative_batch": (
        HEAD + "workloads:\n  - batch: -4\n",
        ":5:",
        "workloads[0].batch: values must be >= 1",
    ),
    "unknown_model": (
        "name: t\nmodels:\n  - mixtrall-8x7b\nhardware: [h100-sxm]\n",
        ":3:",
        "models[0]: unknown model 'mixtrall-8x7b' (did you mean 'mixtral-8x7b'?)",
    ),
    "python_tag": (
        "name: !!python/object/apply:os.system [echo hi]\nmodels: [llama-3.1-8b]\nhardware: [h100-sxm]\n",
        ":1:",
        "tag",
    ),
    "custom_tag": (HEAD + "slo: {ttft_s: !secret 2}\n", ":4:", "tag '!secret'"),
    "unknown_hardware": (
        "name: t\nmodels: [llama-3.1-8b]\nhardware: [h100-sx]\n",
        ":3:",
        "hardware[0]: unknown hardware 'h100-sx'",
    ),
    "zip_mismatch": (
        HEAD
        + "layouts:\n  - tp: [1, 2]\nworkloads:\n  - batch: [1, 2, 3]\nsweep:\n  zip: [[tp, batch]]\n",
        ":9:",
        "sweep.zip[0]: zip needs equal lengths",
    ),
    "unknown_axis": (HEAD + "sweep:\n  zip: [[tp, bacth]]\n", ":5:", "did you mean 'batch'"),
    "bad_range": (
        HEAD + "workloads:\n  - batch: {start: 1, stop: 8}\n",
        ":5:",
        "exactly one of 'num' or 'step'",
    ),
    "missing_models": (
        "name: t\nhardware: [h100-sxm]\n",
        ":1:",
        "models: required field is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_scenarios_name_file_line_and_field(tmp_path, case):
    text, line, fragment = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["scenario", "check", str(path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, MoesimError), result.exception
    message = str(result.exception)
    assert f"{case}.yaml{line}" in message and fragment in message, message
    assert "\n" not in message


def test_check_subprocess_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["python_tag"][0])
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "from moesim.cli import main; main()",
            "scenario",
            "check",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "bad.yaml:1:" in p.stderr
    ok = tmp_path / "ok.yaml"
    ok.write_text(HEAD + "layouts:\n  - tp: [1, 2]\nworkloads:\n  - batch: [1, 2, 4]\n")
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "from moesim.cli import main; main()",
            "scenario",
            "check",
            str(ok),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["points"] == 6


def test_schema_export(tmp_path):
    schema = json_schema()
    assert {"models", "hardware", "layouts", "workloads", "sweep", "slo", "outputs"} <= set(
        schema["properties"]
    )
    assert all(f.get("description") for f in schema["$defs"]["WorkloadSpec"]["properties"].values())
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(app, ["scenario", "schema", "--out", str(out)])
    assert result.exit_code == 0
    assert json.loads(out.read_text())["title"] == "moesim scenario"


def test_relative_paths_and_inline_specs(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 1024,
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 8,
                "intermediate_size": 4096,
                "vocab_size": 32000,
            }
        )
    )
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nmodels:\n  - m/config.json\n  - {spec: {name: tiny, hidden_size: 512, num_hidden_layers: 2, "
        "num_attention_heads: 4, intermediate_size: 1024, vocab_size: 1000}}\n"
        "  - {name: mixtral-8x7b, dense_equivalent: true}\nhardware: [h100-sxm]\n"
    )
    loaded = load_scenario(path)
    assert loaded.models[0].hidden_size == 1024 and loaded.model_labels[1] == "tiny"
    assert not loaded.models[2].is_moe


def _scenario(tmp_path, axes: dict, zip_groups=None, mode="grid"):
    lay = {k: v for k, v in axes.items() if k in ("tp", "pp", "dp", "replicas")}
    work = {k: v for k, v in axes.items() if k in ("batch", "input_len", "output_len")}
    text = HEAD + f"layouts: [{json.dumps(lay)}]\nworkloads: [{json.dumps(work)}]\n"
    text += f"sweep: {json.dumps({'mode': mode, 'zip': zip_groups or []})}\n"
    path = tmp_path / "h.yaml"
    path.write_text(text)
    return build_plan(load_scenario(path))


axis_values = st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True)


@settings(max_examples=25, deadline=None)
@given(tp=axis_values, batch=axis_values, input_len=axis_values)
def test_grid_count_is_product(tmp_path_factory, tp, batch, input_len):
    plan = _scenario(
        tmp_path_factory.mktemp("g"), {"tp": tp, "batch": batch, "input_len": input_len}
    )
    assert plan.size == len(tp) * len(batch) * len(input_len)
    rows = plan.rows(0, plan.size)
    combos = set(zip(rows["tp"], rows["batch"], rows["input_len"], strict=True))
    assert len(combos) == plan.size


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 5), data=st.data())
def test_zip_count_is_length(tmp_path_factory, n, data):
    tp = data.draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
    batch = data.draw(st.lists(st.integers(1, 512), min_size=n, max_size=n))
    out = data.draw(axis_values)
    plan = _scenario(
        tmp_path_factory.mktemp("z"),
        {"tp": tp, "batch": batch, "output_len": out},
        [["tp", "batch"]],
    )
    assert plan.size == n * len(out)
    rows = plan.rows(0, plan.size)
    assert set(zip(rows["tp"], rows["batch"], strict=True)) <= set(
        zip(map(float, tp), map(float, batch), strict=True)
    )


def test_zip_mode_and_mismatch(tmp_path):
    plan = _scenario(tmp_path, {"tp": [1, 2, 4], "batch": [8, 16, 32]}, mode="zip")
    assert plan.size == 3
    with pytest.raises(MoesimError, match="zip needs equal lengths"):
        _scenario(tmp_path, {"tp": [1, 2], "batch": [8, 16, 32]}, mode="zip")


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            {"start": 1, "stop": 1024, "num": 11, "log": True},
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
        ),
        ({"start": 64, "stop": 256, "step": 64}, [64, 128, 192, 256]),
        (
            {"start": 1, "stop": 4, "num": 7},
            [1, 2, 3, 4],
        ),  # integer axes round and keep each value once
    ],
)
def test_ranges(tmp_path, spec, expected):
    plan = _scenario(tmp_path, {"batch": spec})
    assert plan.rows(0, plan.size)["batch"].tolist() == expected


def test_chunks_cover_rows_deterministically(tmp_path):
    plan = _scenario(tmp_path, {"tp": [1, 2, 4], "batch": [1, 2, 3, 4, 5], "input_len": [10, 20]})
    whole = plan.rows(0, plan.size)
    parts = [plan.rows(s, e) for s, e in plan.chunks(7)]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)


def test_example_scenarios_check():
    for path in sorted(Path(__file__).resolve().parents[1].glob("scenarios/*.yaml")):
        assert build_plan(load_scenario(path)).size > 0
