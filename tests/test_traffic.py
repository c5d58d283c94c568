"""Traffic for the request-level simulator: seeded synthetic arrivals and lengths, trace files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.engine import traffic as tr
from moesim.errors import MoesimError


def test_same_seed_same_traffic_bit_for_bit():
    a = tr.synthetic(
        5000, rate_per_s=3.0, input_len="lognormal:800:0.7", output_len="uniform:10:300", seed=7
    )
    b = tr.synthetic(
        5000, rate_per_s=3.0, input_len="lognormal:800:0.7", output_len="uniform:10:300", seed=7
    )
    c = tr.synthetic(
        5000, rate_per_s=3.0, input_len="lognormal:800:0.7", output_len="uniform:10:300", seed=8
    )
    for x, y in (
        (a.arrival_s, b.arrival_s),
        (a.input_tokens, b.input_tokens),
        (a.output_tokens, b.output_tokens),
    ):
        assert x.tobytes() == y.tobytes()
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_streams_are_independent():
    """Changing the output-length distribution leaves arrivals and prompts as they were."""
    a = tr.synthetic(1000, rate_per_s=2.0, input_len="exponential:300", output_len=100, seed=1)
    b = tr.synthetic(
        1000, rate_per_s=2.0, input_len="exponential:300", output_len="normal:100:20", seed=1
    )
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(
        a.input_tokens, b.input_tokens
    )


def test_poisson_and_gamma_gaps():
    n = 200_000
    rng = np.random.default_rng(0)
    for kind, cv in (("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5)):
        gaps = np.diff(tr.arrival_times(rng, n, 4.0, kind, cv), prepend=0.0)
        assert gaps.mean() == pytest.approx(0.25, rel=0.03)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert np.allclose(np.diff(tr.arrival_times(rng, 10, 2.0, "constant")), 0.5)


@pytest.mark.parametrize(
    "spec, mean",
    [("512", 512), ("fixed:64", 64), ("uniform:1:99", 50), ("exponential:200", 200),
     ("lognormal:1000:0.6", 1000), ("normal:300:30", 300)],
)  # fmt: skip
def test_length_distributions(spec, mean):
    x = tr.parse_lengths(spec).sample(np.random.default_rng(3), 100_000)
    assert x.dtype == np.int64 and x.min() >= 1
    assert x.mean() == pytest.approx(mean, rel=0.02)


def test_length_cap_and_errors():
    x = tr.parse_lengths("lognormal:1000:1.5:max=2000").sample(np.random.default_rng(0), 10_000)
    assert x.max() == 2000
    for bad in (
        "zipf:3",
        "uniform:5",
        "uniform:9:3",
        "0",
        "fixed:1.5",
        "lognormal:10:-1",
        "abc",
        "normal:nan:1",
    ):
        with pytest.raises(MoesimError):
            tr.parse_lengths(bad)


def test_synthetic_load_forms():
    with pytest.raises(MoesimError, match="a concurrency, or both"):
        tr.synthetic(10, input_len=5, output_len=5)
    closed = tr.synthetic(10, concurrency=4, ramp_up_s=2.0)
    assert closed.concurrency == 4 and np.isnan(closed.arrival_s).all()
    capped = tr.synthetic(10, rate_per_s=1.0, concurrency=4)
    assert capped.concurrency == 4 and np.isfinite(capped.arrival_s).all()
    assert "at most 4 in flight" in capped.source
    for bad in (dict(rate_per_s=-1.0), dict(rate_per_s=float("nan")), dict(concurrency=0)):
        with pytest.raises(MoesimError):
            tr.synthetic(10, **bad)


def test_azure_trace_with_datetimes(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:47.1805900,879,20\n"
    )
    t = tr.from_trace(path)
    assert np.allclose(t.arrival_s, [0.0, 0.5, 4.314579])
    assert t.input_tokens.tolist() == [374, 879, 396]  # sorted by time, stably
    assert t.output_tokens.tolist() == [44, 20, 109]
    assert any("sorted" in n for n in t.notes)
    with pytest.raises(MoesimError, match="backwards at row 4"):
        tr.from_trace(path, sort=False)
    fast = tr.from_trace(path, rate_scale=2.0)
    assert np.allclose(fast.arrival_s, t.arrival_s / 2)


def test_sharegpt_lengths_replayed_at_a_rate(tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    rows = [{"prompt_tokens": 10 + i, "completion_tokens": 5 + i} for i in range(50)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(MoesimError, match="no arrival-time column"):
        tr.from_trace(path)
    t = tr.from_trace(path, rate_per_s=10.0, seed=2, num_requests=20)
    assert t.num_requests == 20 and t.input_tokens[0] == 10 and np.all(np.diff(t.arrival_s) > 0)
    c = tr.from_trace(path, concurrency=5)
    assert c.concurrency == 5 and c.num_requests == 50
    # Other spellings of the columns.
    other = tmp_path / "lens.csv"
    other.write_text("input_len,output_len,arrival_time_ms\n3,4,1000\n5,6,1500\n")
    t2 = tr.from_trace(other, time_unit="ms")
    assert np.allclose(t2.arrival_s, [0.0, 0.5]) and t2.max_context_tokens == 11


@pytest.mark.parametrize(
    "body, message",
    [
        ("input_len,output_len\n10,-3\n", "row 2"),
        ("input_len,output_len\n10,5\nnan,4\n", "row 3"),
        ("input_len,output_len\n10.5,5\n", "whole numbers"),
        ("prompt,answer\n10,5\n", "no input-token column"),
        ("input_len,output_len,timestamp\n1,2,0\n3,4,later\n", "must be a time"),
        ("input_len,output_len\n", "no rows"),
    ],
)
def test_bad_traces_are_one_line_errors(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(MoesimError, match=message) as exc:
        tr.from_trace(path, rate_per_s=1.0)
    assert "\n" not in str(exc.value)


def test_trace_file_limits(tmp_path):
    with pytest.raises(MoesimError, match="not found"):
        tr.read_trace(tmp_path / "missing.csv")
    big = tmp_path / "big.csv"
    big.write_text("input_len,output_len\n" + "10,10\n" * 1000)
    with pytest.raises(MoesimError, match="limit"):
        tr.read_trace(big, max_bytes=100)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MoesimError, match="empty"):
        tr.read_trace(tmp_path / "empty.csv")
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(MoesimError, match="unknown format"):
        tr.read_trace(tmp_path / "x.parquet")
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(MoesimError, match="cannot be parsed"):
        tr.read_trace(tmp_path / "junk.jsonl")
