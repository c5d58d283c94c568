"""``moesim model list`` / ``moesim model show`` through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from moesim.cli import app
from moesim.errors import MoesimError
from moesim.spec.model import list_models, load_model

runner = CliRunner()


def _moesim(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point (``moesim.cli:main``) in a subprocess."""
    code = "import sys; from moesim.cli import main; sys.argv = ['moesim', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_list_json_has_every_preset():
    result = runner.invoke(app, ["model", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list_models()
    for row in rows:
        spec = load_model(row["name"])
        assert (row["total_params"], row["active_params"]) == (
            spec.total_params,
            spec.active_params,
        )
        assert row["model_type"] == spec.model_type


def test_list_table():
    result = runner.invoke(app, ["model", "list"])
    assert result.exit_code == 0, result.output
    for name in list_models():
        assert name in result.stdout


@pytest.mark.parametrize("name", ["deepseek-v3", "llama-3.1-70b", "gpt-oss-20b"])
def test_show_json(name):
    result = runner.invoke(app, ["model", "show", name, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    spec = load_model(name)
    assert info["name"] == name
    assert info["total_params"] == spec.total_params == sum(info["breakdown"].values())
    assert info["active_params"] == spec.active_params
    assert info["active_compute_params"] == spec.active_compute_params
    assert info["kv_cache_bytes_per_token_bf16"] == 2 * info["kv_cache_bytes_per_token_fp8"]
    assert info["kv_cache_bytes_per_token_bf16"] == spec.kv_cache_bytes_per_token(2)
    assert info["config"]["hidden_size"] == spec.hidden_size
    assert info["config"]["num_hidden_layers"] == spec.num_hidden_layers


def test_show_kv_llama_31_70b_bf16():
    info = json.loads(runner.invoke(app, ["model", "show", "llama-3.1-70b", "--json"]).stdout)
    assert info["kv_cache_bytes_per_token_bf16"] == 80 * 2 * 8 * 128 * 2


def test_show_table_mentions_components():
    result = runner.invoke(app, ["model", "show", "mixtral-8x7b"])
    assert result.exit_code == 0, result.output
    for word in ("routed_experts", "attention", "bf16", "num_key_value_heads"):
        assert word in result.stdout


def test_show_yaml_path(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(
        "hidden_size: 128\nnum_hidden_layers: 2\nnum_attention_heads: 4\nvocab_size: 100\n"
        "intermediate_size: 64\nnum_local_experts: 4\nnum_experts_per_tok: 2\n"
    )
    info = json.loads(runner.invoke(app, ["model", "show", str(path), "--json"]).stdout)
    assert info["name"] == "toy"
    assert info["active_params"] < info["total_params"]


def test_show_unknown_raises_moesim_error():
    result = runner.invoke(app, ["model", "show", "no-such-model"])
    assert isinstance(result.exception, MoesimError)


def test_entry_point_unknown_model_exits_2():
    proc = _moesim("model", "show", "mixtral-8x7")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'mixtral-8x7'")
    assert "Traceback" not in proc.stderr


def test_entry_point_list_json():
    proc = _moesim("model", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == len(list_models())
