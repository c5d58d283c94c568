"""`moesim plan --emit`: the launch commands parse with each engine's documented flags.

The flag lists in tests/data/engine_flags/ are copied from the engines' argument definitions
(sources in each file's header). Every emitted command is parsed by an argparse parser built
from that list, with abbreviations off, so a misspelt or invented flag, a value outside a
flag's documented choices, or a missing argument fails the test.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.plan.emit import ENGINES, emit

FLAGS = Path(__file__).parent / "data" / "engine_flags"
ROOT = Path(__file__).resolve().parents[1]


def _read_flags(name: str) -> dict[str, list[tuple]]:
    """Sections of a flag-list file: {section: [(names, kind, choices)]}."""
    sections: dict[str, list[tuple]] = {"": []}
    current = ""
    for raw in (FLAGS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        parts = line.split()
        choices = parts[2].split(",") if len(parts) > 2 else None
        sections[current].append((parts[0].split(","), parts[1], choices))
    return sections


def _parser(*specs: list[tuple]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False, exit_on_error=False)
    for spec in specs:
        for names, kind, choices in spec:
            if kind == "positional":
                parser.add_argument(names[0])
            elif kind == "bool":
                parser.add_argument(*names, action=argparse.BooleanOptionalAction)
            elif kind == "flag":
                parser.add_argument(*names, action="store_true")
            else:
                parser.add_argument(*names, choices=choices)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:  # unknown flags exit even so
        raise AssertionError(f"engine parser rejects {shlex.join(argv)}: {exc}") from None


VLLM = _read_flags("vllm.txt")
PROGRAMS = {
    ("vllm", "serve"): lambda: _parser(VLLM[""], VLLM["vllm serve"]),
    ("python", "-m", "sglang.launch_server"): lambda: _parser(_read_flags("sglang.txt")[""]),
    ("trtllm-serve",): lambda: _parser(_read_flags("trtllm.txt")[""]),
    ("python", "-m", "dynamo.frontend"): lambda: _parser(
        _read_flags("dynamo.txt")["dynamo.frontend"]
    ),
    ("python", "-m", "dynamo.vllm"): lambda: _parser(
        VLLM[""], _read_flags("dynamo.txt")["dynamo.vllm"]
    ),
}


def _commands(script: str) -> list[list[str]]:
    """Shell commands of an emitted script (comments and here-documents skipped)."""
    out, in_heredoc = [], False
    for line in script.splitlines():
        if in_heredoc:
            in_heredoc = line != "EOF"
            continue
        if line.startswith("cat >"):
            in_heredoc = True
            continue
        if not line.strip() or line.startswith("#"):
            continue
        argv = shlex.split(line.split("  #")[0].replace("$HEAD_IP", "10.0.0.1"))
        if argv[0] == "mpirun":  # mpirun -n N trtllm-llmapi-launch trtllm-serve ...
            argv = argv[argv.index("trtllm-serve") :]
        out.append(argv)
    return out


def _check_script(script: str) -> list[tuple[tuple, argparse.Namespace]]:
    parsed = []
    for argv in _commands(script):
        prog = next((p for p in PROGRAMS if tuple(argv[: len(p)]) == p), None)
        assert prog is not None, f"unknown program in {argv}"
        parsed.append((prog, _parse(PROGRAMS[prog](), argv[len(prog) :])))
    assert parsed, "no command emitted"
    return parsed


def _yaml_keys(text: str) -> dict:
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(text)
    flat = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _check_trtllm_yaml(files: dict) -> None:
    known = {}
    for raw in (FLAGS / "trtllm_llm_api.txt").read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            parts = raw.split()
            known[parts[0]] = (parts[1], parts[2].split(",") if len(parts) > 2 else None)
    assert files, "trtllm-serve needs its --config YAML"
    for text in files.values():
        for key, value in _yaml_keys(text).items():
            assert key in known, f"{key} is not an LLM API option"
            kind, choices = known[key]
            assert {"bool": bool, "float": float, "int": int, "str": str}[kind] is type(value)
            if choices:
                assert value in choices


AGG = {
    "hardware": "h200",
    "mode": "aggregated",
    "tp": 1,
    "ep": 8,
    "pp": 1,
    "dp": 8,
    "replicas": 2,
    "batch": 512,
    "offload_fraction": 0.0,
}
DISAGG = {
    **AGG,
    "mode": "disaggregated",
    "ep": 16,
    "dp": 16,
    "replicas": 1,
    "prefill": {"hardware": "h200", "tp": 8, "ep": 1, "pp": 1, "dp": 1, "replicas": 3},
}
NATIVE = {
    "weight_dtype": "fp8-block",
    "weight_dtype_origin": "checkpoint",
    "kv_dtype": "fp8",
    "kv_dtype_origin": "--kv-dtype",
    "act_dtype": "bf16",
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("plan", [AGG, DISAGG], ids=["aggregated", "disaggregated"])
def test_emitted_commands_parse_with_the_engine_flags(engine, plan):
    launch = emit(
        engine,
        plan,
        model_id="deepseek-ai/DeepSeek-V3",
        formats=NATIVE,
        gpus_per_node=8,
        memory_utilization=0.85,
        max_model_len=4096,
    )
    parsed = _check_script(launch.text())
    if engine == "trtllm":
        _check_trtllm_yaml(launch.files)
    if engine == "vllm" and plan is AGG:
        ns = parsed[0][1]
        # the plan's numbers, under the engine's names
        assert (ns.tensor_parallel_size, ns.data_parallel_size) == ("1", "8")
        assert ns.enable_expert_parallel is True
        assert ns.max_num_seqs == "64"  # 512 sequences over 8 DP ranks
        assert ns.gpu_memory_utilization == "0.85"
        assert ns.kv_cache_dtype == "fp8"
        assert ns.quantization is None  # the checkpoint carries its own quantization_config


def test_sglang_group_is_tp_times_dp():
    launch = emit("sglang", AGG, model_id="m", formats=NATIVE, gpus_per_node=8)
    (_, ns), *_ = _check_script(launch.text())
    assert (ns.tp_size, ns.dp_size, ns.ep_size) == ("8", "8", "8")
    assert ns.enable_dp_attention is True
    assert ns.max_running_requests == "512"
    assert ns.kv_cache_dtype == "fp8_e4m3"


def test_multi_node_vllm_gets_one_command_per_node():
    plan = {**AGG, "dp": 16, "ep": 16}
    launch = emit("vllm", plan, model_id="m", formats=NATIVE, gpus_per_node=8)
    parsed = _check_script(launch.text())
    assert len(parsed) == 2
    assert parsed[0][1].data_parallel_size_local == "8"
    assert parsed[1][1].headless is True and parsed[1][1].data_parallel_start_rank == "8"


def test_online_fp8_and_other_overrides():
    fp8 = {**NATIVE, "weight_dtype": "fp8", "weight_dtype_origin": "--dtype"}
    ns = _check_script(emit("vllm", AGG, model_id="m", formats=fp8, gpus_per_node=8).text())
    assert ns[0][1].quantization == "fp8"
    awq = {**NATIVE, "weight_dtype": "int4-awq", "weight_dtype_origin": "--dtype"}
    launch = emit("vllm", AGG, model_id="m", formats=awq, gpus_per_node=8)
    assert any("checkpoint quantised to int4-awq" in n for n in launch.notes)


def test_a_wrong_flag_would_fail():
    """The parsers are strict: the test above can fail."""
    with pytest.raises(AssertionError):
        _check_script("vllm serve m --tensor-parallel 2")  # abbreviation
    with pytest.raises(AssertionError):
        _check_script("vllm serve m --kv-cache-dtype fp4")  # outside the choices
    with pytest.raises(AssertionError):
        _check_script("trtllm-serve m --max-batch-size 8")  # dashes, not underscores


def test_plan_cli_emit_prints_only_the_script(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "moesim",
            "plan",
            "--model",
            "mixtral-8x7b",
            "--hardware",
            "h100-sxm",
            "--ttft-slo",
            "2",
            "--tpot-slo",
            "0.1",
            "--rate",
            "2",
            "--max-gpus",
            "8",
            "--mode",
            "aggregated",
            "--emit",
            "vllm",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("# vllm launch")
    assert "mixtral" in p.stderr.lower()  # the plan table went to stderr
    _check_script(p.stdout)
    js = subprocess.run(
        [*p.args[:-2], "--emit", "sglang", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    assert js.returncode == 0, js.stderr
    launch = json.loads(js.stdout)["launch"]
    assert launch["engine"] == "sglang" and launch["commands"]


def test_unknown_engine_is_one_line_error():
    p = subprocess.run(
        [sys.executable, "-m", "moesim", "plan", "--model", "mixtral-8x7b", "--hardware",
         "h100-sxm", "--ttft-slo", "2", "--tpot-slo", "0.1", "--rate", "1", "--emit", "tgi"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.startswith("error: --emit takes one of vllm, sglang, trtllm, dynamo")
