"""``moesim model list`` and ``moesim model show``: presets, parameter counts, KV-cache size."""

from __future__ import annotations

import typer

ORDER = 10

BF16_BYTES = 2
FP8_BYTES = 1

ARCH_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "attn_head_dim",
    "vocab_size",
    "num_experts",
    "top_k",
    "expert_intermediate_size",
    "shared_intermediate_size",
    "dense_residual_intermediate_size",
    "num_moe_layers",
    "num_dense_layers",
    "num_sliding_layers",
    "is_mla",
)


def _summary(spec) -> dict:
    return {
        "name": spec.name,
        "model_type": spec.model_type,
        "is_moe": spec.is_moe,
        "total_params": spec.total_params,
        "active_params": spec.active_params,
        "active_compute_params": spec.active_compute_params,
    }


def _details(spec) -> dict:
    return {
        **_summary(spec),
        "breakdown": spec.param_breakdown(),
        "active_breakdown": spec.active_params_breakdown(),
        "kv_cache_bytes_per_token_bf16": spec.kv_cache_bytes_per_token(BF16_BYTES),
        "kv_cache_bytes_per_token_fp8": spec.kv_cache_bytes_per_token(FP8_BYTES),
        "architecture": {k: getattr(spec, k) for k in ARCH_FIELDS},
        "config": spec.model_dump(),
    }


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(
        help="Model presets: parameter counts (total, active) and KV-cache size."
    )
    app.add_typer(model_app, name="model")

    @model_app.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the model presets with their total and active parameter counts."""
        from rich.table import Table

        from moesim.cli._common import console, print_json, si
        from moesim.spec.model import list_models, load_model

        rows = [_summary(load_model(name)) for name in list_models()]
        if as_json:
            print_json(rows)
            return
        table = Table(title="model presets", title_justify="left")
        for col in ("name", "type", "MoE", "total", "active", "active (compute)"):
            table.add_column(col, justify="left" if col in ("name", "type") else "right")
        for r in rows:
            table.add_row(
                r["name"],
                r["model_type"],
                "yes" if r["is_moe"] else "no",
                si(r["total_params"], ""),
                si(r["active_params"], ""),
                si(r["active_compute_params"], ""),
            )
        console.print(table)

    @model_app.command("show")
    def show_cmd(
        name_or_path: str = typer.Argument(
            ..., help="Preset name, preset-style YAML, or HF config.json."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Show one model: parameters by component, KV bytes per token, key architecture fields."""
        from moesim.cli._common import console, kv_table, print_json
        from moesim.spec.model import load_model

        info = _details(load_model(name_or_path))
        if as_json:
            print_json(info)
            return
        console.print(
            kv_table(
                f"{info['name']}: parameters",
                [
                    ("total", info["total_params"]),
                    ("active (both embeddings)", info["active_params"]),
                    ("active compute (no input embedding)", info["active_compute_params"]),
                ],
            )
        )
        console.print(
            kv_table(
                "by component (total / active)",
                [
                    (k, f"{v:,} / {info['active_breakdown'][k]:,}")
                    for k, v in info["breakdown"].items()
                ],
            )
        )
        console.print(
            kv_table(
                "KV cache bytes per token",
                [
                    ("bf16, all layers", round(info["kv_cache_bytes_per_token_bf16"])),
                    ("fp8, all layers", round(info["kv_cache_bytes_per_token_fp8"])),
                ],
            )
        )
        console.print(kv_table("architecture", list(info["architecture"].items())))
