"""Unit suffixes at the YAML boundary: decimal SI, binary only when spelled so."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moesim.errors import MoesimError
from moesim.spec import units


@pytest.mark.parametrize(
    ("value", "suffix", "si"),
    [
        (3.35, "TBps", 3.35e12),
        (450, "GBps", 450e9),
        (400, "Gbps", 50e9),  # 400 Gb/s NIC = 50 GB/s
        (80, "GB", 80e9),
        (50, "MB", 50e6),
        (1, "GiB", 2**30),
        (1, "MiB", 2**20),
        (989.4, "TFLOPS", 989.4e12),
        (4, "us", 4e-6),
        (700, "W", 700.0),
        (2.5, "ms", 2.5e-3),
    ],
)
def test_to_si(value, suffix, si):
    assert units.to_si(value, suffix) == pytest.approx(si, rel=1e-15)


def test_decimal_conversion_is_exact_for_datasheet_numbers():
    assert units.to_si(3.35, "TBps") == 3.35e12
    assert units.from_si(3.35e12, "TBps") == 3.35
    assert units.to_si(4, "us") == 4e-6


@given(st.floats(min_value=1e-6, max_value=1e6), st.sampled_from(sorted(units.UNITS)))
def test_round_trip(value, suffix):
    assert units.from_si(units.to_si(value, suffix), suffix) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(
    ("key", "si_key"),
    [
        ("hbm_bandwidth_TBps", "hbm_bandwidth_bytes_per_s"),
        ("hbm_capacity_GB", "hbm_capacity_bytes"),
        ("l2_MB", "l2_bytes"),
        ("scaleup_bandwidth_GBps", "scaleup_bandwidth_bytes_per_s"),
        ("tdp_W", "tdp_w"),
        ("launch_overhead_us", "launch_overhead_s"),
        ("bf16_dense_TFLOPS", "bf16_dense_flops_per_s"),
        ("price_usd_per_hour", "price_usd_per_hour"),  # already SI: unchanged
        ("num_sms", "num_sms"),
        ("hbm_capacity_bytes", "hbm_capacity_bytes"),
    ],
)
def test_si_key(key, si_key):
    assert units.si_key(key) == si_key


def test_split_key_without_unit():
    assert units.split_key("scaleup_domain_size") == ("scaleup_domain_size", None)


@pytest.mark.parametrize(
    ("text", "si", "dimension"),
    [
        ("900 GB/s", 900e9, "bytes_per_s"),
        ("400 Gb/s", 50e9, "bytes_per_s"),
        ("4 us", 4e-6, "s"),
        ("4µs", 4e-6, "s"),
        ("80 GB", 80e9, "bytes"),
        ("1.5 TFLOPS", 1.5e12, "flops_per_s"),
    ],
)
def test_parse_quantity(text, si, dimension):
    value, dim = units.parse_quantity(text)
    assert value == pytest.approx(si) and dim == dimension


@pytest.mark.parametrize("text", ["fast", "3 parsecs", ""])
def test_parse_quantity_rejects(text):
    with pytest.raises(MoesimError):
        units.parse_quantity(text)


def test_unknown_suffix_is_a_user_error():
    with pytest.raises(MoesimError, match="unknown unit 'Tbs'"):
        units.to_si(1.0, "Tbs")
