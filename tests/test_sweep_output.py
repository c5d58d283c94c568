"""Sweeps that never crash or mix runs: one-point blocks, chunks along any axis, size limits,
atomic staged output, --overwrite, CSV written through Arrow, and impossible numbers refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from moesim.errors import MoesimError
from moesim.plan import sweep as sweep_mod
from moesim.plan.scenario import build_plan, check_points, load_scenario
from moesim.plan.sweep import block_chunks, run_plan, run_scenario

SINGLE = """\
name: single
models: [mixtral-8x7b]
hardware: [h100-sxm]
layouts: [{tp: 2}]
workloads: [{batch: 8}]
"""
GRID = """\
name: grid
models: [llama-3.1-8b]
hardware: [h100-sxm, h200]
layouts:
  - tp: [1, 2, 4]
    pp: [1, 2]
workloads:
  - batch: [1, 4, 16, 64, 256]
    input_len: [256, 2048]
    output_len: [64, 512]
"""


def _write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_single_point_block_sweeps(tmp_path):
    df, manifest = run_scenario(_write(tmp_path, SINGLE), tmp_path / "out")
    assert len(df) == 1 and manifest["points"] == 1
    assert bool(df["feasible"].iloc[0]) and df["tpot_s"].iloc[0] > 0
    assert isinstance(df["reason"].iloc[0], str)


@pytest.mark.parametrize("chunk_rows", [1, 5, 7, 48, 10_000])
def test_chunks_along_any_axis_are_bounded_and_exact(tmp_path, chunk_rows):
    plan = build_plan(load_scenario(_write(tmp_path, GRID)))
    chunks = block_chunks(plan, plan.size, chunk_rows)
    assert chunks[0][0] == 0 and chunks[-1][1] == plan.size
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))  # contiguous
    assert max(e - s for s, e in chunks) <= chunk_rows  # bounded, whatever the shape
    for s, e in chunks:  # every chunk is a dense sub-grid (the broadcast path takes it)
        assert sweep_mod._aligned_block(plan, s, e) is not None
    frame = run_plan(plan, chunk_rows=chunk_rows)
    reference = run_plan(plan, chunk_rows=plan.size)
    pd.testing.assert_frame_equal(frame, reference, check_categorical=False)


def test_chunked_broadcast_equals_flat_rows(tmp_path, monkeypatch):
    plan = build_plan(load_scenario(_write(tmp_path, GRID)))
    fast = run_plan(plan, chunk_rows=7)
    monkeypatch.setattr(sweep_mod, "_aligned_block", lambda *args: None)
    slow = run_plan(plan, chunk_rows=7)
    metrics = list(sweep_mod.METRICS)
    np.testing.assert_allclose(
        fast[metrics].to_numpy(float), slow[metrics].to_numpy(float), rtol=1e-9, equal_nan=True
    )


def test_point_limit_is_checked_before_expansion(tmp_path):
    text = SINGLE.replace(
        "layouts: [{tp: 2}]",
        "layouts:\n  - tp: {start: 1, stop: 1000, step: 1}\n    dp: {start: 1, stop: 1000, step: 1}",
    ).replace("workloads: [{batch: 8}]", "workloads:\n  - batch: {start: 1, stop: 3000, step: 1}")
    path = _write(tmp_path, text)
    plan = build_plan(load_scenario(path))  # the axes exist, the 3e9 points do not
    assert plan.size == 3_000_000_000
    with pytest.raises(MoesimError, match=r"3,000,000,000 points; the limit is 5,000,000"):
        check_points(plan)
    with pytest.raises(MoesimError, match="--max-points"):
        run_scenario(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_axis_of_a_billion_values_is_refused_with_its_count(tmp_path):
    path = _write(
        tmp_path,
        SINGLE.replace("[{batch: 8}]", "\n  - batch: {start: 1, stop: 1000000000, step: 1}"),
    )
    with pytest.raises(MoesimError, match=r"1,000,000,000 values; the limit per axis is 1,000,000"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        ("layouts: [{tp: 9223372036854775808}]", "values must be <= 65,536"),
        ("workloads: [{batch: 1000000000000}]", "values must be <= 16,777,216"),
        ("workloads: [{batch: 8, capacity_factor: .inf}]", "finite"),
        ("workloads: [{batch: 8, capacity_factor: .nan}]", "finite"),
        ("layouts: [{tp: 2, redundant_experts: 1000000000}]", "values must be <= 4,096"),
        ("workloads: [{batch: 4000000, input_len: 4000000}]", "tokens in flight"),
    ],
)
def test_out_of_range_numbers_are_refused_at_load(tmp_path, field, fragment):
    text = SINGLE
    key = field.split(":")[0]
    text = "\n".join(line for line in text.splitlines() if not line.startswith(key)) + "\n"
    path = _write(tmp_path, text + field + "\n")
    with pytest.raises(MoesimError, match=fragment) as info:
        load_scenario(path)
    assert "s.yaml:" in str(info.value)


def test_output_is_staged_and_replaced_whole(tmp_path):
    path = _write(tmp_path, GRID)
    out = tmp_path / "out"
    _, first = run_scenario(path, out, csv=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(first["files"])
    with pytest.raises(MoesimError, match="--overwrite"):
        run_scenario(path, out)
    small = _write(tmp_path, SINGLE, "small.yaml")
    _, second = run_scenario(small, out, overwrite=True, csv=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(second["files"]) and "results.csv" not in names  # no earlier file left
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["points"] == 1 and manifest["scenario"] == "single"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".moesim-")]  # no staging left


def test_foreign_or_file_out_is_refused_before_work(tmp_path, monkeypatch):
    path = _write(tmp_path, SINGLE)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    calls = []
    monkeypatch.setattr(sweep_mod, "run_plan", lambda *a, **k: calls.append(1))
    for out, fragment in ((foreign, "other files"), (path, "is a file")):
        with pytest.raises(MoesimError, match=fragment):
            run_scenario(path, out, overwrite=True)
    assert not calls and (foreign / "notes.txt").read_text() == "keep me"


def test_a_run_failing_mid_write_leaves_the_earlier_output_intact(tmp_path, monkeypatch):
    path = _write(tmp_path, SINGLE)
    out = tmp_path / "out"
    run_scenario(path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def torn(df, out_dir, loaded, formats=(), chunk_rows=0):
        (out_dir / "results.parquet").write_bytes(b"PAR1 torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "write_results", torn)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(path, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".moesim-")]


def test_csv_is_on_for_small_sweeps_off_for_huge_unless_asked(tmp_path, monkeypatch):
    path = _write(tmp_path, GRID)
    _, small = run_scenario(path, tmp_path / "a")
    assert small["formats"] == ["parquet", "csv"]
    monkeypatch.setattr(sweep_mod, "CSV_AUTO_MAX_POINTS", 10)
    _, huge = run_scenario(path, tmp_path / "b")
    assert huge["formats"] == ["parquet"] and "--csv" in huge["note"]
    _, forced = run_scenario(path, tmp_path / "c", csv=True)
    csv = pd.read_csv(tmp_path / "c" / "results.csv")
    back, _ = sweep_mod.read_results(tmp_path / "c" / "results.parquet")
    assert len(csv) == len(back) == forced["points"]
    np.testing.assert_allclose(csv["tpot_s"], back["tpot_s"], rtol=1e-15)


def test_feasible_rows_never_carry_impossible_numbers(tmp_path, monkeypatch):
    """The last line of defence: a metric the model returns as inf or negative on a feasible
    point turns the point infeasible with a reason; it is never written as a number."""
    plan = build_plan(load_scenario(_write(tmp_path, GRID)))
    real = sweep_mod._predict

    def broken(*args, **kwargs):
        res = dict(real(*args, **kwargs))
        res["tpot_s"] = np.where(np.asarray(res["tpot_s"]) > 0.01, math.inf, res["tpot_s"])
        return res

    monkeypatch.setattr(sweep_mod, "_predict", broken)
    df = run_plan(plan)
    assert not (df["feasible"] & ~np.isfinite(df["tpot_s"])).any()
    flagged = df[~np.isfinite(df["tpot_s"])]
    assert len(flagged) and (flagged["reason"].astype(str) != "").all()


def test_legitimate_aliases_and_merge_keys_sweep_like_the_expanded_file(tmp_path):
    aliased = """\
name: aliased
models: [llama-3.1-8b]
hardware: [h100-sxm]
layouts:
  - &small {tp: [1, 2], pp: 1}
  - <<: *small
    label: deep
    pp: 2
workloads:
  - &w {batch: &b [1, 16], input_len: 512, output_len: 64}
  - {batch: *b, input_len: 2048, output_len: 64}
"""
    expanded = """\
name: aliased
models: [llama-3.1-8b]
hardware: [h100-sxm]
layouts:
  - {tp: [1, 2], pp: 1}
  - {tp: [1, 2], pp: 2, label: deep}
workloads:
  - {batch: [1, 16], input_len: 512, output_len: 64}
  - {batch: [1, 16], input_len: 2048, output_len: 64}
"""
    a = run_plan(build_plan(load_scenario(_write(tmp_path, aliased, "a.yaml"))))
    b = run_plan(build_plan(load_scenario(_write(tmp_path, expanded, "b.yaml"))))
    assert len(a) == 16
    pd.testing.assert_frame_equal(a, b)
