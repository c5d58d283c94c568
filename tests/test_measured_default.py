"""``--hardware NAME`` means the profile fitted to the engine's measured kernels where one ships;
``NAME.datasheet`` the datasheet-only profile; the prediction says which it used."""

from __future__ import annotations

import json

import pytest

from moesim.cli import run
from moesim.spec.hardware import list_hardware, load_hardware, measured_name


def test_names_resolve_to_the_measured_profile_of_the_engine():
    assert "h100-sxm.trtllm" in list_hardware()
    assert measured_name("h100-sxm") == "h100-sxm.trtllm"
    assert measured_name("h100-sxm", "trtllm") == "h100-sxm.trtllm"
    if "h100-sxm.vllm" in list_hardware():
        assert measured_name("h100-sxm", "vllm") == "h100-sxm.vllm"
    assert measured_name("h100-sxm.datasheet") == "h100-sxm"
    assert measured_name("h100-sxm.trtllm") == "h100-sxm.trtllm"  # explicit names stay
    assert measured_name("h200.measured") == "h200.measured"
    assert measured_name("mi300x") == "mi300x"  # no measured profile ships for it
    assert measured_name("some/dir/h100-sxm.yaml") == "some/dir/h100-sxm.yaml"


def _predict(capsys, hardware: str) -> dict:
    argv = ["predict", "-m", "llama-3.1-8b", "-H", hardware, "--batch", "8", "--input-len",
            "512", "--output-len", "64", "--json"]  # fmt: skip
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_says_which_profile_it_used(capsys):
    measured = _predict(capsys, "h100-sxm")
    assert measured["hardware"] == "h100-sxm.trtllm"
    assert measured["calibration"].startswith("measured:")
    assert "aiconfigurator-core" in measured["calibration"]
    datasheet = _predict(capsys, "h100-sxm.datasheet")
    assert datasheet["hardware"] == "h100-sxm"
    assert not datasheet["calibration"].startswith("measured:")
    # measured kernels are slower than the best-case datasheet fractions at this shape
    assert measured["tpot_s"] > datasheet["tpot_s"]


def test_scenario_framework_picks_the_measured_profiles(tmp_path):
    from moesim.plan.scenario import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\nmodels: [llama-3.1-8b]\nhardware: [h100-sxm, h200.datasheet]\nframework: trtllm\n"
    )
    sc = load_scenario(path)
    names = [h.name for h in sc.hardware]
    assert names[0] == "h100-sxm.trtllm"
    assert names[1] == "h200"
    assert load_hardware("h100-sxm").name == "h100-sxm"  # the Python API loads what it is told


@pytest.mark.parametrize("bad", ["h100-sxm.nonsense", "nope.datasheet"])
def test_unknown_names_still_fail_in_one_line(capsys, bad):
    argv = ["predict", "-m", "llama-3.1-8b", "-H", bad, "--batch", "1", "--json"]
    assert run(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hardware" in err[0]
