"""Hardware profiles: every shipped one loads with a source per number; bad files fail clearly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from moesim.errors import MoesimError
from moesim.spec.hardware import (
    KERNEL_CLASSES,
    Efficiency,
    KernelEfficiency,
    list_hardware,
    load_hardware,
    numeric_fields,
)

SHIPPED = ["h100-sxm", "h100-pcie", "h200", "h800", "a100-sxm-80gb", "b200", "mi300x", "l40s"]
H100 = Path(__file__).parent.parent / "hwprofiles" / "h100-sxm.yaml"


def test_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(list_hardware())


@pytest.mark.parametrize("name", list_hardware())
def test_every_profile_loads_with_provenance(name):
    hw = load_hardware(name)
    assert hw.missing_provenance() == []
    for field in numeric_fields(hw):
        key = field if field in hw.provenance else field.split(".")[0]
        assert hw.provenance[key].strip(), field
    for kernel_class in KERNEL_CLASSES:
        assert f"efficiency.{kernel_class}" in hw.provenance or hw.efficiency.source
    assert hw.efficiency.source


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_numbers_are_plausible(name):
    hw = load_hardware(name)
    assert 1e14 < hw.peak("bf16") < 1e16  # dense tensor-core bf16
    assert hw.peak("fp16") == hw.peak("bf16")
    assert 5e11 < hw.hbm_bandwidth_bytes_per_s < 1e13
    assert 16e9 <= hw.hbm_capacity_bytes <= 300e9
    assert hw.scaleup_bandwidth_bytes_per_s <= 1e12  # per direction
    assert hw.gpus_per_node >= 1 and hw.scaleup_domain_size >= 1
    assert hw.price_usd_per_hour > 0
    if "fp8" in hw.peak_flops_per_s:
        assert hw.peak("fp8") == pytest.approx(2 * hw.peak("bf16"), rel=0.02)


def test_h100_numbers_in_si():
    hw = load_hardware("h100-sxm")
    assert hw.peak("bf16") == 989.4e12
    assert hw.peak("bfloat16") == hw.peak("bf16")
    assert hw.hbm_bandwidth_bytes_per_s == 3.35e12
    assert hw.hbm_capacity_bytes == pytest.approx(79.11 * 2**30)  # as the runtime reports it
    assert hw.l2_bytes == 50e6
    assert hw.scaleup_bandwidth_bytes_per_s == 450e9
    assert hw.scaleout_bandwidth_bytes_per_s == 50e9
    assert hw.tdp_w == 700
    assert hw.scaleup_in_switch_reduction
    assert hw.efficiency.gemm.compute_eff("fp8") == 0.78
    assert hw.efficiency.gemm.compute_eff("bf16") == 0.80
    assert hw.efficiency.collectives.scaleup_latency_s == 5e-6


def test_h800_has_reduced_nvlink():
    h800, h100 = load_hardware("h800"), load_hardware("h100-sxm")
    assert h800.scaleup_bandwidth_bytes_per_s == 200e9
    achievable = (
        h800.scaleup_bandwidth_bytes_per_s
        * h800.efficiency.collectives.scaleup_bandwidth_efficiency
    )
    assert achievable == pytest.approx(160e9)  # DeepEP#16
    assert h800.peak("fp8") == h100.peak("fp8")


def test_a100_has_no_fp8():
    hw = load_hardware("a100-sxm-80gb")
    with pytest.raises(MoesimError, match="a100-sxm-80gb has no fp8 tensor cores"):
        hw.peak("fp8")
    with pytest.raises(MoesimError, match="no fp8"):
        hw.peak("float8_e4m3fn")


def test_l40s_has_no_nvlink():
    hw = load_hardware("l40s")
    assert hw.scaleup_bandwidth_bytes_per_s == hw.host_link_bandwidth_bytes_per_s == 32e9
    assert hw.hbm_bandwidth_bytes_per_s == 864e9
    assert not hw.scaleup_in_switch_reduction


def test_load_by_path_and_instance(tmp_path):
    hw = load_hardware(H100)
    assert hw == load_hardware(str(H100)) == load_hardware("h100-sxm")
    assert load_hardware(hw) is hw


def test_unknown_name_lists_known():
    with pytest.raises(MoesimError, match=r"did you mean 'h100-sxm'.*known: .*h200"):
        load_hardware("h100-sxn")


def test_missing_file():
    with pytest.raises(MoesimError, match="not found"):
        load_hardware("nowhere/h100.yaml")


@pytest.mark.parametrize("name", list_hardware())
def test_round_trip_through_yaml(name, tmp_path):
    hw = load_hardware(name)
    path = hw.save_yaml(tmp_path / f"{name}.yaml")
    again = load_hardware(path)
    assert again == hw
    assert again.to_yaml_dict() == hw.to_yaml_dict()


def test_to_yaml_dict_uses_human_units():
    d = load_hardware("h100-sxm").to_yaml_dict()
    assert d["hbm_bandwidth_TBps"] == 3.35
    assert d["bf16_dense_TFLOPS"] == 989.4
    assert d["l2_MB"] == 50
    assert d["efficiency"]["gemm"]["launch_overhead_us"] == 4
    assert "hbm_bandwidth_TBps" in d["provenance"]


def test_with_efficiency_and_measured_profile(tmp_path):
    hw = load_hardware("h100-sxm")
    gemm = KernelEfficiency(compute_efficiency=0.75, launch_overhead_s=6e-6, tile_m=128)
    eff = Efficiency(source="measured: H100 SXM driver 550 2025-01-01", gemm=gemm,
                     fit_report={"heldout_mape": 0.07})  # fmt: skip
    measured = hw.with_efficiency(eff).model_copy(update={"measurement": {"driver": "550"}})
    assert measured.efficiency.gemm.compute_eff("bf16") == 0.75
    assert hw.efficiency.gemm.compute_efficiency == 0.80  # original untouched (frozen)
    path = measured.save_yaml(tmp_path / "h100-sxm.measured.yaml")
    again = load_hardware(path)
    assert again == measured
    assert again.efficiency.fit_report == {"heldout_mape": 0.07}


def test_measured_from_is_kept_as_measurement(tmp_path):
    text = H100.read_text() + "measured_from: {device: H100, date: 2025-01-01}\n"
    path = tmp_path / "x.measured.yaml"
    path.write_text(text)
    assert load_hardware(path).measurement["measured_from"]["device"] == "H100"


def test_efficiency_defaults_and_for_class():
    eff = Efficiency()
    assert eff.source == "datasheet defaults"
    for kernel_class in KERNEL_CLASSES:
        k = eff.for_class(kernel_class)
        assert 0 < k.compute_efficiency <= 1 and 0 < k.memory_efficiency <= 1
    assert eff.gemm.compute_eff("fp8") == 0.8
    with pytest.raises(MoesimError, match="unknown kernel class 'gem'"):
        eff.for_class("gem")


def test_profiles_are_frozen():
    hw = load_hardware("h100-sxm")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        hw.tdp_w = 1.0


# --- malformed files: one line naming file, line and field -------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def _error(path: Path) -> str:
    with pytest.raises(MoesimError) as info:
        load_hardware(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_yaml_syntax_error(tmp_path):
    text = H100.read_text().replace("num_sms: 132", "num_sms: [132")
    message = _error(_write(tmp_path, text))
    assert "bad.yaml:" in message and "YAML syntax error" in message


def test_unknown_key_suggests_nearest(tmp_path):
    text = H100.read_text().replace("hbm_bandwidth_TBps:", "hbm_bandwith_TBps:", 1)
    message = _error(_write(tmp_path, text))
    line = _line_of(text, "hbm_bandwith_TBps")
    assert f"bad.yaml:{line}: unknown field 'hbm_bandwith_TBps'" in message
    assert "did you mean 'hbm_bandwidth_TBps'" in message


def test_unknown_nested_key(tmp_path):
    text = H100.read_text().replace("    compute_efficiency: 0.70\n", "    compute_eff: 0.70\n", 1)
    message = _error(_write(tmp_path, text))
    assert "unknown field 'efficiency.grouped_gemm.compute_eff'" in message
    assert "did you mean 'compute_efficiency'" in message


def test_wrong_type(tmp_path):
    text = H100.read_text().replace("hbm_bandwidth_TBps: 3.35", "hbm_bandwidth_TBps: fast")
    message = _error(_write(tmp_path, text))
    line = _line_of(text, "hbm_bandwidth_TBps")
    assert f"bad.yaml:{line}: field 'hbm_bandwidth_TBps': expected a number" in message


def test_wrong_type_unitless(tmp_path):
    text = H100.read_text().replace("num_sms: 132", "num_sms: many")
    message = _error(_write(tmp_path, text))
    assert f"bad.yaml:{_line_of(text, 'num_sms')}: field 'num_sms'" in message


def test_negative_bandwidth(tmp_path):
    text = H100.read_text().replace("scaleup_bandwidth_GBps: 450", "scaleup_bandwidth_GBps: -450")
    message = _error(_write(tmp_path, text))
    line = _line_of(text, "scaleup_bandwidth_GBps")
    assert f"bad.yaml:{line}: field 'scaleup_bandwidth_GBps'" in message
    assert "greater than 0" in message


def test_efficiency_out_of_range(tmp_path):
    text = H100.read_text().replace(
        "    compute_efficiency: 0.80\n", "    compute_efficiency: 1.5\n", 1
    )
    message = _error(_write(tmp_path, text))
    assert "field 'efficiency.gemm.compute_efficiency'" in message
    assert "less than or equal to 1" in message


def test_missing_field(tmp_path):
    text = "\n".join(line for line in H100.read_text().splitlines() if not line.startswith("tdp_W"))
    message = _error(_write(tmp_path, text))
    assert "field 'tdp_W': missing" in message


def test_missing_provenance(tmp_path):
    text = "\n".join(
        line for line in H100.read_text().splitlines() if not line.startswith("  tdp_W:")
    )
    message = _error(_write(tmp_path, text))
    assert "field 'tdp_W' has no source" in message


def test_unknown_dtype(tmp_path):
    text = H100.read_text().replace("\nint8_dense_TFLOPS: ", "\nfp6_dense_TFLOPS: ")
    message = _error(_write(tmp_path, text))
    line = _line_of(text, "fp6_dense_TFLOPS")
    assert f"bad.yaml:{line}: field 'fp6_dense_TFLOPS': unknown dtype 'fp6'" in message


# --- CLI ------------------------------------------------------------------------------------


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from moesim.cli import main

    monkeypatch.setattr(sys, "argv", ["moesim", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "hw", "list")
    assert code == 0
    for name in SHIPPED:
        assert name in out


def test_cli_list_json(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "hw", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["name"] for r in rows} >= set(SHIPPED)
    a100 = next(r for r in rows if r["name"] == "a100-sxm-80gb")
    assert a100["fp8_dense_TFLOPS"] is None and a100["bf16_dense_TFLOPS"] == 312


def test_cli_show(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "hw", "show", "h800")
    assert code == 0
    assert "scaleup_bandwidth_GBps" in out and "grouped_gemm" in out and "DeepEP" in out


def test_cli_show_json(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "hw", "show", "h100-sxm", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["si"]["hbm_bandwidth_bytes_per_s"] == 3.35e12
    assert data["yaml"]["hbm_bandwidth_TBps"] == 3.35
    row = next(r for r in data["fields"] if r["field"] == "hbm_bandwidth_bytes_per_s")
    assert row["value"] == 3.35 and row["unit"] == "TBps" and row["si_unit"] == "B/s"
    assert "R145" in row["source"]
    assert all(r["source"] for r in data["fields"])
    assert math.isclose(data["si"]["efficiency"]["gemm"]["compute_efficiency"], 0.8)


def test_cli_unknown_name(monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "hw", "show", "h100-sxn")
    assert code == 2
    assert "unknown hardware profile 'h100-sxn'" in err and "h100-sxm" in err and "mi300x" in err


def test_parsed_profile_cache_gives_the_same_profile_and_survives_damage(tmp_path, monkeypatch):
    """A measured profile's parse is cached as JSON; the cached tree goes through every check,
    and a damaged entry is ignored and rewritten."""
    from moesim.spec import hardware as H

    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path))
    path = H._profile_paths()["h200.trtllm"]
    H._load_file.cache_clear()
    first = H._load_file(str(path), 0, "h200.trtllm")  # parses, writes the entry
    entry = H._parsed_cache(str(path))[1]
    assert entry.is_file()
    H._load_file.cache_clear()
    again = H._load_file(str(path), 0, "h200.trtllm")  # from the entry
    assert again == first
    entry.write_text("{not json")
    H._load_file.cache_clear()
    assert H._load_file(str(path), 0, "h200.trtllm") == first
    assert entry.read_text().startswith("{")  # rewritten
    json_ok = __import__("json").loads(entry.read_text())
    assert json_ok["name"] == "h200.trtllm"
    monkeypatch.setenv("MOESIM_CACHE_DIR", "off")
    assert H._parsed_cache(str(path)) is None
    H._load_file.cache_clear()
