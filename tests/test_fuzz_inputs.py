"""A hostile-input corpus: malformed scenarios, HF configs, hardware profiles and CLI arguments.

Every input is wrong in exactly one way; each must end with a non-zero exit, ONE line on stderr
starting ``error:``, no traceback, no file written outside ``--out``, and within 10 s of CPU.
The named cases reproduce every failure issue 13 lists; the hypothesis strategies generate more
of each kind. A representative subset runs by default (a few seconds, in-process through
``moesim.cli.run``); the big corpus is marked ``slow``; three cases go through the real entry
point in a subprocess to show what a user sees.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moesim.cli._report  # noqa: F401 - loaded as after a printed table; must not change errors
from moesim.cli import run

ROOT = Path(__file__).resolve().parents[1]
HF = Path("/work/shared/reference/hf_configs")
HF_DIR = HF if HF.is_dir() else ROOT / "tests" / "data" / "hf_configs"
H100_YAML = (ROOT / "hwprofiles" / "h100-sxm.yaml").read_text()
CPU_LIMIT_S = 10.0
FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BIG = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------- the harness
def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(argv: list[str], where: Path, out: Path | None = None) -> str:
    """Run ``moesim argv`` in-process in folder ``where``; assert the refusal contract."""
    before = _listing(where)
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(where)
    start = time.process_time()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = run([str(a) for a in argv])
    finally:
        os.chdir(cwd)
    cpu_s = time.process_time() - start
    err = stderr.getvalue()
    lines = err.strip().splitlines()
    assert rc != 0, (argv, stdout.getvalue()[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert "Traceback" not in err + stdout.getvalue()
    assert "internal error" not in err, (argv, err)  # a hostile input is a user error, not a bug
    assert cpu_s < CPU_LIMIT_S, (argv, cpu_s)
    new = _listing(where) - before
    if out is not None:
        prefix = str(out.relative_to(where))
        new = {p for p in new if p != prefix and not p.startswith(prefix + os.sep)}
    assert not new, (argv, new)  # nothing written outside --out
    return lines[0]


# ---------------------------------------------------------------------------- named cases
SCENARIO = {
    "name": "fuzz",
    "models": ["mixtral-8x7b"],
    "hardware": ["h100-sxm"],
    "layouts": [{"tp": [1, 2]}],
    "workloads": [{"batch": [1, 8], "input_len": 512, "output_len": 64}],
}


def _yaml(doc) -> str:
    """JSON is YAML 1.2; the special floats are written as YAML spells them."""
    text = json.dumps(doc, indent=1)
    return text.replace('"__INF__"', ".inf").replace('"__NAN__"', ".nan")


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _with(path: list, value) -> dict:
    doc = json.loads(json.dumps(SCENARIO))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


SCENARIO_TEXTS = {
    "alias_bomb": _bomb() + _yaml(SCENARIO).strip("{}\n").replace('\n "', '\n"'),
    "self_alias": "name: &n [x, *n]\nmodels: [mixtral-8x7b]\nhardware: [h100-sxm]\n",
    "deep_nesting": "name: x\nmodels: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "python_tag": "name: !!python/object/apply:os.system ['touch pwned']\n",
    "duplicate_key": "name: a\nname: b\nmodels: [mixtral-8x7b]\nhardware: [h100-sxm]\n",
    "two_documents": "name: a\n---\nname: b\n",
    "top_level_list": "- name: a\n",
    "empty": "",
    "tp_2_63": _yaml(_with(["layouts", 0, "tp"], 2**63)),
    "batch_1e12": _yaml(_with(["workloads", 0, "batch"], 10**12)),
    "capacity_inf": _yaml(_with(["workloads", 0, "capacity_factor"], "__INF__")),
    "capacity_nan": _yaml(_with(["workloads", 0, "capacity_factor"], "__NAN__")),
    "axis_1e9_values": _yaml(
        _with(["workloads", 0, "batch"], {"start": 1, "stop": 10**9, "step": 1})
    ),
    "redundant_1e9": _yaml(_with(["layouts", 0, "redundant_experts"], 10**9)),
    "bool_tp": _yaml(_with(["layouts", 0, "tp"], True)),
    "unknown_model": _yaml(_with(["models"], ["mixtral-8x7c"])),
    "unknown_key": _yaml(_with(["sloo"], {"ttft_s": 1})),
    "slo_inf": _yaml(_with(["slo"], {"ttft_s": "__INF__"})),
    "three_billion_points": _yaml(
        _with(
            ["layouts"],
            [
                {
                    "tp": {"start": 1, "stop": 1000, "step": 1},
                    "dp": {"start": 1, "stop": 1000, "step": 1},
                }
            ],
        )
        | {"workloads": [{"batch": {"start": 1, "stop": 3000, "step": 1}}]}
    ),
}


@pytest.mark.parametrize("case", sorted(SCENARIO_TEXTS))
def test_named_hostile_scenarios(tmp_path, case):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO_TEXTS[case])
    out = tmp_path / "out"
    message = refused(["sweep", path, "--out", out, "--no-charts"], tmp_path, out)
    assert "s.yaml" in message
    refused(["scenario", "check", path], tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_binary_and_latin1_scenarios(tmp_path):
    for name, data in (
        ("bin.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x01"),
        ("l1.yaml", b"name: caf\xe9\n"),
    ):
        (tmp_path / name).write_bytes(data)
        refused(["scenario", "check", tmp_path / name], tmp_path)


HW_MUTATIONS = {
    "alias_bomb": lambda t: _bomb() + t,
    "self_alias": lambda t: t.replace("name: h100-sxm", "name: &n [x, *n]"),
    "inf_latency": lambda t: t.replace("scaleup_latency_us: 5", "scaleup_latency_us: .inf"),
    "inf_price": lambda t: t.replace("price_usd_per_hour: 2.4", "price_usd_per_hour: .inf"),
    "tiny_bandwidth": lambda t: t.replace("hbm_bandwidth_TBps: 3.35", "hbm_bandwidth_TBps: 1e-300"),
    "nan_peak": lambda t: t.replace("bf16_dense_TFLOPS: 989.4", "bf16_dense_TFLOPS: .nan"),
    "huge_int": lambda t: t.replace("tdp_W: 700", "tdp_W: 1" + "0" * 400),
    "5000_digits": lambda t: t.replace("num_sms: 132", "num_sms: 1" + "0" * 5000),
    "duplicate": lambda t: t.replace("l2_MB: 50", "l2_MB: 50\nl2_MB: 60"),
    "negative": lambda t: t.replace("num_sms: 132", "num_sms: -132"),
    "string": lambda t: t.replace("hbm_capacity_GiB: 79.11", "hbm_capacity_GiB: lots"),
    "missing": lambda t: t.replace("hbm_capacity_GiB: 79.11\n", ""),
    "tag": lambda t: t.replace("name: h100-sxm", "name: !!binary aGk="),
}


@pytest.mark.parametrize("case", sorted(HW_MUTATIONS))
def test_named_hostile_hardware_profiles(tmp_path, case):
    text = HW_MUTATIONS[case](H100_YAML)
    assert text != H100_YAML
    path = tmp_path / "hw.yaml"
    path.write_text(text)
    message = refused(["hw", "show", path, "--json"], tmp_path)
    assert "hw.yaml" in message
    refused(["predict", "-m", "llama-3.1-8b", "-H", path, "-b", "1"], tmp_path)


def _config(name: str) -> dict:
    return json.loads((HF_DIR / f"{name}.json").read_text())


HF_TEXTS = {
    "json_list": "[1, 2, 3]",
    "json_null": "null",
    "json_string": '"mixtral"',
    "json_number": "42",
    "truncated": json.dumps(_config("mixtral-8x7b"))[:100],
    "nan": json.dumps(_config("mixtral-8x7b")).replace('"hidden_size": 4096', '"hidden_size": NaN'),
    "dbrx_attn_list": json.dumps(_config("dbrx") | {"attn_config": [1, 2]}),
    "dbrx_ffn_string": json.dumps(_config("dbrx") | {"ffn_config": "x"}),
    "huge_hidden": json.dumps(_config("mixtral-8x7b") | {"hidden_size": 10**30}),
    "bool_layers": json.dumps(_config("llama-2-70b") | {"num_hidden_layers": True}),
    "zero_heads": json.dumps(_config("llama-2-70b") | {"num_attention_heads": 0}),
    "no_vocab": json.dumps({k: v for k, v in _config("llama-2-70b").items() if k != "vocab_size"}),
    "deep": "[" * 50_000 + "]" * 50_000,
}


@pytest.mark.parametrize("case", sorted(HF_TEXTS))
def test_named_hostile_hf_configs(tmp_path, case):
    path = tmp_path / "config.json"
    path.write_text(HF_TEXTS[case])
    refused(["model", "show", path, "--json"], tmp_path)
    refused(["predict", "-m", path, "-H", "h100-sxm", "-b", "4"], tmp_path)


PREDICT = ["predict", "-m", "mixtral-8x7b", "-H", "h100-sxm"]
CLI_CASES = {
    "tp_2_63": [*PREDICT, "-b", "4", "--tp", str(2**63)],
    "batch_1e12": [*PREDICT, "-b", str(10**12)],
    "batch_float": [*PREDICT, "-b", "1e3"],
    "capacity_inf": [*PREDICT, "-b", "4", "--capacity-factor", "inf"],
    "capacity_nan": [*PREDICT, "-b", "4", "--capacity-factor", "nan"],
    "rate_inf": [*PREDICT, "-b", "4", "--rate", "inf"],
    "redundant_1e9": [*PREDICT, "-b", "4", "--redundant-experts", "1000000000"],
    "tokens_in_flight": [*PREDICT, "-b", "16000000", "--input-len", "16000000"],
    "zero_instance_pool": [*PREDICT, "-b", "8", "--disaggregate", "prefill=tp2,x0;decode=tp2"],
    "bad_pool": [*PREDICT, "-b", "8", "--disaggregate", "prefill=tp2;decode=banana"],
    "zipf_negative": [*PREDICT, "-b", "4", "--routing", "zipf:-1"],
    "zipf_nan": [*PREDICT, "-b", "4", "--routing", "zipf:nan"],
    "hist_missing": [*PREDICT, "-b", "4", "--routing", "hist:/nonexistent/h.csv"],
    "dtype": [*PREDICT, "-b", "4", "--dtype", "fp7"],
    "unknown_option": [*PREDICT, "-b", "4", "--tpp", "2"],
    "missing_batch": PREDICT,
    "ep_on_dense": ["predict", "-m", "llama-3.1-8b", "-H", "h100-sxm", "-b", "4", "--ep", "2"],
    "kernel_huge": ["kernel", "gemm", "--m", str(2**40), "--n", "1", "--k", "1", "-H", "h100-sxm"],
    "routing_tokens": ["routing", "--tokens", "1e300", "--experts", "8", "--top-k", "2"],
    "routing_mc": ["routing", "--tokens", "65536", "--experts", "8", "-k", "2", "--monte-carlo", "999999"],
    "plan_inf_slo": ["plan", "-m", "mixtral-8x7b", "-H", "h100-sxm", "--ttft-slo", "inf",
                     "--tpot-slo", "0.05", "--rate", "1"],
    "unknown_command": ["predictt"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_named_hostile_cli_arguments(tmp_path, case):
    refused(CLI_CASES[case], tmp_path)


def test_hist_with_a_huge_expert_index(tmp_path):
    (tmp_path / "h.csv").write_text("layer,expert,count\n0,100000000000,5\n")
    refused([*PREDICT, "-b", "4", "--routing", f"hist:{tmp_path / 'h.csv'}"], tmp_path)


def test_out_that_is_a_file_or_cannot_be_made(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(_yaml(SCENARIO))
    (tmp_path / "file").write_text("x")
    refused(["sweep", scenario, "--out", tmp_path / "file"], tmp_path)
    refused(["sweep", scenario, "--out", tmp_path / "file" / "sub"], tmp_path)
    refused(["sweep", scenario, "--out", "/proc/moesim-out"], tmp_path)
    refused(["scenario", "schema", "--out", tmp_path], tmp_path)
    refused(["profile", "--device", "cpu", "--out", tmp_path / "file", "--quick"], tmp_path)


def test_a_million_row_measurement_csv_is_refused_fast(tmp_path):
    folder = tmp_path / "meas"
    folder.mkdir()
    row = b"gemm,matmul,bf16,m1_n1_k1,2,6,1e-05,ok\n"
    head = b"kernel_class,impl,dtype,shape_key,flops,hbm_bytes,median_s,status\n"
    (folder / "gemm.csv").write_bytes(head + row * 1_000_000)
    message = refused(["calibrate", folder, "--out", tmp_path / "p.yaml"], tmp_path)
    assert "200,000 rows" in message


# ---------------------------------------------------------------------------- generated cases
BAD_INTS = [0, -1, -(2**63), 2**63, 2**64 + 7, 10**30, 1.5, "two", [], {}, True]
BAD_FLOATS = ["__INF__", "__NAN__", -1.0, 1e308 * 10, "x", [[1]], {"a": 1}]
SCENARIO_FIELDS = [
    (["layouts", 0, "tp"], BAD_INTS),
    (["layouts", 0, "ep"], BAD_INTS),
    (["layouts", 0, "pp"], BAD_INTS),
    (["layouts", 0, "dp"], BAD_INTS),
    (["layouts", 0, "replicas"], BAD_INTS),
    (["layouts", 0, "offload_fraction"], ["__INF__", "__NAN__", -0.5, 1.5, "x"]),
    (["layouts", 0, "memory_utilization"], ["__NAN__", 0, 2, -1, "x"]),
    (["layouts", 0, "weight_dtype"], ["fp7", 3, [], ""]),
    (["workloads", 0, "batch"], BAD_INTS),
    (["workloads", 0, "input_len"], BAD_INTS),
    (["workloads", 0, "output_len"], BAD_INTS),
    (["workloads", 0, "block_m"], BAD_INTS),
    (["workloads", 0, "capacity_factor"], [*BAD_FLOATS, 0]),
    (["workloads", 0, "routing"], ["zipf:-1", "zipf:x", "dirichlet:0", "hist:", "nope", 5]),
    (["workloads", 0, "phase"], ["decodee", 1]),
    (["models"], [[], ["nope-7b"], "", [{"name": "mixtral-8x7b", "spec": {}}]]),
    (["hardware"], [[], ["h9000"], [5]]),
    (["sweep"], [{"mode": "spiral"}, {"zip": [["tp", "bogus"]]}, "grid"]),
    (["slo", "ttft_s"], [*BAD_FLOATS, 0]),
    (["name"], [None, 5, []]),
]


@st.composite
def bad_scenarios(draw):
    path, values = draw(st.sampled_from(SCENARIO_FIELDS))
    value = draw(st.sampled_from(values))
    if path == ["slo", "ttft_s"]:
        return _yaml(_with(["slo"], {"ttft_s": value}))
    if path == ["sweep"]:
        return _yaml(_with(["sweep"], value))
    return _yaml(_with(path, value))


def _check_scenario(tmp_path, text):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    refused(["sweep", path, "--out", out, "--no-charts"], tmp_path, out)


@FAST
@given(text=bad_scenarios())
def test_generated_scenarios_fast(tmp_path, text):
    _check_scenario(tmp_path, text)


@pytest.mark.slow
@BIG
@given(text=bad_scenarios())
def test_generated_scenarios_corpus(tmp_path, text):
    _check_scenario(tmp_path, text)


HW_NUMERIC = [
    "bf16_dense_TFLOPS: 989.4", "hbm_bandwidth_TBps: 3.35", "hbm_capacity_GiB: 79.11", "num_sms: 132",
    "l2_MB: 50", "scaleup_domain_size: 8", "scaleup_bandwidth_GBps: 450",
    "scaleout_bandwidth_GBps: 50", "host_link_bandwidth_GBps: 64", "host_memory_GB: 256",
    "gpus_per_node: 8", "tdp_W: 700", "scaleup_latency_us: 5", "scaleout_latency_us: 10",
]  # fmt: skip
HW_BAD = ["0", "-1", "1e-300", ".inf", "-.inf", ".nan", "1e999", "x", "[1]", "{a: 1}", "true",
          "1" + "0" * 400, "~"]  # fmt: skip


@st.composite
def bad_profiles(draw):
    line = draw(st.sampled_from(HW_NUMERIC))
    key = line.split(":")[0]
    value = draw(st.sampled_from(HW_BAD))
    if key.endswith("_us") and value in ("0", "1e-300"):  # a (near) zero latency is legitimate
        value = "-1"
    return H100_YAML.replace(line, f"{key}: {value}", 1)


def _check_profile(tmp_path, text):
    path = tmp_path / "hw.yaml"
    path.write_text(text)
    refused(["hw", "show", path, "--json"], tmp_path)


@FAST
@given(text=bad_profiles())
def test_generated_profiles_fast(tmp_path, text):
    _check_profile(tmp_path, text)


@pytest.mark.slow
@BIG
@given(text=bad_profiles())
def test_generated_profiles_corpus(tmp_path, text):
    _check_profile(tmp_path, text)


HF_REQUIRED = ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
               "intermediate_size", "num_key_value_heads"]  # fmt: skip
HF_BAD = [0, -1, 10**30, 2**63, 1.5, "x", [], {}, True, None]


@st.composite
def bad_configs(draw):
    name = draw(st.sampled_from(["mixtral-8x7b", "llama-2-70b", "qwen3-30b-a3b", "deepseek-v3"]))
    cfg = _config(name)
    key = draw(st.sampled_from(HF_REQUIRED))
    value = draw(st.sampled_from(HF_BAD))
    if value is None and key == "num_key_value_heads":  # None means "= attention heads" in HF
        value = 0
    cfg[key] = value
    return json.dumps(cfg)


def _check_config(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    refused(["model", "show", path, "--json"], tmp_path)


@FAST
@given(text=bad_configs())
def test_generated_hf_configs_fast(tmp_path, text):
    _check_config(tmp_path, text)


@pytest.mark.slow
@BIG
@given(text=bad_configs())
def test_generated_hf_configs_corpus(tmp_path, text):
    _check_config(tmp_path, text)


INT_OPTIONS = ["--batch", "--input-len", "--output-len", "--tp", "--ep", "--pp", "--dp",
               "--replicas", "--block-m", "--nodes", "--gpus-per-node", "--context-len"]  # fmt: skip
FLOAT_OPTIONS = ["--capacity-factor", "--rate", "--offload", "--prefix-cache-hit-rate"]
INT_BAD = ["0", "-1", "abc", "", "1.5", "nan", str(2**63), str(10**40), "1e3"]
FLOAT_BAD = ["inf", "-inf", "nan", "-1", "1e400", "x", "2e9"]


@st.composite
def bad_predict_args(draw):
    args = [*PREDICT, "-b", "4"]
    if draw(st.booleans()):
        option, value = draw(st.sampled_from(INT_OPTIONS)), draw(st.sampled_from(INT_BAD))
    else:
        option, value = draw(st.sampled_from(FLOAT_OPTIONS)), draw(st.sampled_from(FLOAT_BAD))
        if option == "--rate" and value == "2e9":
            value = "-1"
    return [*args, option, value]


@FAST
@given(argv=bad_predict_args())
def test_generated_cli_arguments_fast(tmp_path, argv):
    refused(argv, tmp_path)


@pytest.mark.slow
@BIG
@given(argv=bad_predict_args())
def test_generated_cli_arguments_corpus(tmp_path, argv):
    refused(argv, tmp_path)


# ---------------------------------------------------------------------------- the real entry point
@pytest.mark.parametrize("case", ["alias_bomb_profile", "usage_error", "zero_instance_pool"])
def test_what_a_user_sees_in_a_terminal(tmp_path, case):
    if case == "alias_bomb_profile":
        (tmp_path / "hw.yaml").write_text(_bomb() + H100_YAML)
        argv = ["hw", "show", str(tmp_path / "hw.yaml")]
    elif case == "usage_error":
        argv = [*PREDICT, "-b", "4", "--tp", str(2**63)]
    else:
        argv = CLI_CASES["zero_instance_pool"]
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", *argv], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
