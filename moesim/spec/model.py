"""Model architecture: ``ModelSpec``, its parameter counts and KV-cache size, presets, HF import.

Field names are the Hugging Face ``config.json`` names; the few that HF has no key for are spelled
out (``mlp_gated``, ``dense_residual_intermediate_size``, ``expert_bias`` ...). Parameter formulas
follow the HF ``modeling_*.py`` file of each family, cited on the line.

Conventions for "active" parameters (publishers differ, so both are offered):

- ``active_params`` counts both embedding tables (input embedding and LM head, once if tied) plus
  every weight a token passes through: the convention of Mistral, Qwen, Databricks, AllenAI, Meta.
- ``active_compute_params`` counts the weights multiplied per token: no input-embedding lookup, LM
  head included. This is the convention of OpenAI's gpt-oss card ("unembedding but not embedding")
  and of DeepSeek.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moesim.errors import MoesimError, unknown_name

# Alternative spellings used by model families -> the canonical field name.
FIELD_ALIASES: dict[str, str] = {
    "n_routed_experts": "num_local_experts",  # DeepSeek-V2/V3
    "num_experts": "num_local_experts",  # Qwen2/3-MoE, OLMoE
    "moe_num_experts": "num_local_experts",  # DBRX ffn_config
    "moe_top_k": "num_experts_per_tok",  # DBRX ffn_config
    "experts_per_token": "num_experts_per_tok",  # gpt-oss (duplicates num_experts_per_tok)
    "moe_layer_frequency": "decoder_sparse_step",  # Arctic: MoE iff (i + 1) % f == 0
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "d_model": "hidden_size",
    "dtype": "torch_dtype",  # transformers >= 4.56 writes "dtype"
}

REQUIRED_HF_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "intermediate_size",
)

LAYER_TYPES = ("full_attention", "sliding_attention")


class ModelSpec(BaseModel):
    """A decoder-only transformer, dense or Mixture-of-Experts, described by its HF config fields.

    A dense model is the special case ``num_local_experts == 1`` (its FFN is one "expert" always
    taken), so the cost model runs one code path for both.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model_type: str = "custom"

    # Trunk
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)  # defaults to num_attention_heads (HF convention)
    head_dim: int | None = Field(default=None, gt=0)
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int | None = Field(default=None, gt=0)
    tie_word_embeddings: bool = False
    norms_per_layer: int = Field(default=2, ge=0)  # pre-attn + pre-FFN RMSNorm; Grok-1 has 4
    qk_norm: Literal["none", "per_head", "full"] = "none"  # Qwen3: per head; OLMoE: full width

    # Attention
    attention_bias: bool = False
    attention_output_bias: bool | None = None  # None: same as attention_bias (Qwen2: False)
    attention_sinks: bool = False  # gpt-oss: one learned sink logit per head per layer
    q_lora_rank: int | None = Field(default=None, gt=0)  # MLA; None: plain q_proj (V2-Lite)
    kv_lora_rank: int | None = Field(default=None, gt=0)  # set => Multi-head Latent Attention
    qk_rope_head_dim: int | None = Field(default=None, gt=0)
    qk_nope_head_dim: int | None = Field(default=None, gt=0)
    v_head_dim: int | None = Field(default=None, gt=0)
    sliding_window: int | None = Field(default=None, gt=0)
    layer_types: tuple[str, ...] | None = None

    # FFN (dense layers; also the expert width when moe_intermediate_size is None)
    intermediate_size: int = Field(gt=0)
    hidden_act: str = "silu"
    mlp_gated: bool = True  # SwiGLU/GeGLU: gate, up, down = 3 matrices; plain MLP = 2
    mlp_bias: bool = False

    # Mixture of Experts
    num_local_experts: int = Field(default=1, gt=0)
    num_experts_per_tok: int = Field(default=1, gt=0)
    moe_intermediate_size: int | None = Field(default=None, gt=0)
    expert_bias: bool = False  # gpt-oss experts carry gate_up and down biases
    router_bias: bool = False  # gpt-oss router bias; DeepSeek-V3 e_score_correction_bias
    n_shared_experts: int = Field(default=0, ge=0)  # DeepSeek: shared experts of moe width
    shared_expert_intermediate_size: int = Field(default=0, ge=0)  # Qwen2-MoE: one gated shared
    first_k_dense_replace: int = Field(default=0, ge=0)  # DeepSeek: first k layers dense
    moe_layer_freq: int = Field(default=1, gt=0)  # DeepSeek: MoE iff i % freq == 0
    decoder_sparse_step: int = Field(default=1, gt=0)  # Qwen/Arctic: MoE iff (i + 1) % step == 0
    mlp_only_layers: tuple[int, ...] = ()  # Qwen-MoE: these layers are dense
    dense_residual_intermediate_size: int = Field(default=0, ge=0)  # Arctic parallel dense MLP

    # How the released checkpoint stores its weights (config.json keys, verbatim): the default
    # formats a prediction uses when no --dtype is given (see ``native_format``).
    torch_dtype: str | None = None
    quantization_config: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _canonical_names(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for alias, canonical in FIELD_ALIASES.items():
            if alias not in data:
                continue
            value = data.pop(alias)
            if canonical in data and data[canonical] != value:
                raise ValueError(
                    f"{alias}={value!r} contradicts {canonical}={data[canonical]!r} "
                    f"(both name the same field)"
                )
            data[canonical] = value
        if data.get("num_key_value_heads") is None and "num_attention_heads" in data:
            data["num_key_value_heads"] = data["num_attention_heads"]
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        h, kv = self.num_attention_heads, self.num_key_value_heads
        if h % kv:
            raise ValueError(
                f"num_attention_heads={h} is not divisible by num_key_value_heads={kv}"
            )
        if self.num_experts_per_tok > self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} exceeds "
                f"num_local_experts={self.num_local_experts}"
            )
        if self.kv_lora_rank is not None:
            missing = [
                k
                for k in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
                if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(f"MLA (kv_lora_rank set) also needs {', '.join(missing)}")
        elif self.q_lora_rank is not None:
            raise ValueError("q_lora_rank is an MLA field: set kv_lora_rank too")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries but "
                    f"num_hidden_layers={self.num_hidden_layers}"
                )
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ValueError(f"unknown layer_types {bad}; known: {', '.join(LAYER_TYPES)}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError(
                    "layer_types has sliding_attention layers but sliding_window is not set"
                )
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError(
                f"first_k_dense_replace={self.first_k_dense_replace} exceeds "
                f"num_hidden_layers={self.num_hidden_layers}"
            )
        out_of_range = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if out_of_range:
            raise ValueError(
                f"mlp_only_layers {out_of_range} outside 0..{self.num_hidden_layers - 1}"
            )
        if (self.n_shared_experts or self.shared_expert_intermediate_size) and not self.is_moe:
            raise ValueError(
                "shared experts need num_local_experts > 1 (fold them into intermediate_size)"
            )
        if self.n_shared_experts and self.shared_expert_intermediate_size:
            raise ValueError("set n_shared_experts or shared_expert_intermediate_size, not both")
        return self

    # ------------------------------------------------------------------ shape
    @property
    def attn_head_dim(self) -> int:
        """Query/key head dim: MLA nope + rope (DeepSeek-V2 paper §2.1.3); else head_dim or hidden/heads."""
        if self.is_mla:
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def v_head_dim_eff(self) -> int:
        """Per-head value dim."""
        return self.v_head_dim if self.is_mla else self.attn_head_dim

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 1

    @property
    def num_experts(self) -> int:
        return self.num_local_experts

    @property
    def top_k(self) -> int:
        return self.num_experts_per_tok

    @property
    def expert_intermediate_size(self) -> int:
        """Width of one routed expert (or of the dense FFN when num_local_experts == 1)."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def dense_intermediate_size(self) -> int:
        """Width of the FFN on a non-MoE layer; a one-expert model's FFN is that expert."""
        return self.intermediate_size if self.is_moe else self.expert_intermediate_size

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.mlp_gated else 2

    @property
    def moe_layer_mask(self) -> tuple[bool, ...]:
        """Per layer, True if its FFN is MoE. DeepSeek rule (modeling_deepseek.py DeepseekV2DecoderLayer):
        i >= first_k_dense_replace and i % moe_layer_freq == 0; Qwen-MoE rule (modeling_qwen2_moe.py):
        i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0."""
        if not self.is_moe:
            return (False,) * self.num_hidden_layers
        dense = set(self.mlp_only_layers)
        return tuple(
            i >= self.first_k_dense_replace
            and i % self.moe_layer_freq == 0
            and (i + 1) % self.decoder_sparse_step == 0
            and i not in dense
            for i in range(self.num_hidden_layers)
        )

    @property
    def num_moe_layers(self) -> int:
        return sum(self.moe_layer_mask)

    @property
    def num_dense_layers(self) -> int:
        return self.num_hidden_layers - self.num_moe_layers

    @property
    def sliding_layer_mask(self) -> tuple[bool, ...]:
        """Per layer, True if attention is windowed; without layer_types a set window applies to all
        layers (Mistral-7B style)."""
        if self.layer_types is not None:
            return tuple(t == "sliding_attention" for t in self.layer_types)
        return (self.sliding_window is not None,) * self.num_hidden_layers

    @property
    def num_sliding_layers(self) -> int:
        return sum(self.sliding_layer_mask)

    @property
    def shared_intermediate_size(self) -> int:
        """Total width of the always-on shared experts of an MoE layer (0 if none)."""
        return (
            self.n_shared_experts * self.expert_intermediate_size
            + self.shared_expert_intermediate_size
        )

    # ------------------------------------------------------------------ parameters per layer
    @property
    def attention_params_per_layer(self) -> int:
        d, hd, heads, kv = (
            self.hidden_size,
            self.attn_head_dim,
            self.num_attention_heads,
            self.num_key_value_heads,
        )
        if self.is_mla:
            # modeling_deepseek.py DeepseekV2Attention: q_proj or q_a_proj + q_a_layernorm + q_b_proj,
            # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj (no biases when attention_bias=False)
            if self.q_lora_rank is None:
                q = d * heads * hd
            else:
                q = d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * heads * hd
            kv_a = d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            o = heads * self.v_head_dim * d
            # attention_bias puts biases on q_a_proj, kv_a_proj_with_mqa and o_proj only
            a_bias = (self.q_lora_rank or 0) + self.kv_lora_rank + self.qk_rope_head_dim + d
            return q + kv_a + kv_b + o + (a_bias if self.attention_bias else 0)
        vd = self.v_head_dim_eff
        # modeling_llama.py LlamaAttention: q, k, v, o projections
        weights = d * heads * hd + d * kv * hd + d * kv * vd + heads * vd * d
        qkv_bias = heads * hd + kv * hd + kv * vd if self.attention_bias else 0
        out_bias = (
            self.attention_bias
            if self.attention_output_bias is None
            else self.attention_output_bias
        )
        sinks = heads if self.attention_sinks else 0  # modeling_gpt_oss.py GptOssAttention.sinks
        return weights + qkv_bias + (d if out_bias else 0) + sinks

    def _ffn_params(self, width: int, bias: bool) -> int:
        # gated: gate + up + down = 3*d*I (LlamaMLP); plain: up + down = 2*d*I
        weights = self.ffn_matrices * self.hidden_size * width
        biases = (self.ffn_matrices - 1) * width + self.hidden_size if bias else 0
        return weights + biases

    @property
    def expert_params(self) -> int:
        """One routed expert (gpt-oss: gate_up_proj_bias + down_proj_bias, modeling_gpt_oss.py)."""
        return self._ffn_params(self.expert_intermediate_size, self.expert_bias)

    @property
    def router_params_per_layer(self) -> int:
        """Gate Linear(hidden, E) on an MoE layer (MixtralSparseMoeBlock.gate); 0 for dense."""
        if not self.is_moe:
            return 0
        return self.hidden_size * self.num_experts + (self.num_experts if self.router_bias else 0)

    @property
    def shared_expert_params_per_layer(self) -> int:
        """Shared experts of one MoE layer; Qwen2-MoE adds shared_expert_gate Linear(hidden, 1)."""
        if not self.is_moe or self.shared_intermediate_size == 0:
            return 0
        gate = self.hidden_size if self.shared_expert_intermediate_size else 0
        return self._ffn_params(self.shared_intermediate_size, self.expert_bias) + gate

    @property
    def dense_ffn_params_per_layer(self) -> int:
        """FFN of one non-MoE layer."""
        return self._ffn_params(self.dense_intermediate_size, self.mlp_bias)

    @property
    def dense_residual_params_per_layer(self) -> int:
        """Arctic's dense MLP in parallel with the MoE (modeling_arctic.py ArcticMLP(is_residual_mlp=True))."""
        if self.dense_residual_intermediate_size == 0:
            return 0
        return self._ffn_params(self.dense_residual_intermediate_size, self.mlp_bias)

    @property
    def norm_params_per_layer(self) -> int:
        """RMSNorm weights of one layer: the layer norms, Arctic's residual_layernorm, QK-norm."""
        d = self.hidden_size
        norms = self.norms_per_layer * d + (d if self.dense_residual_intermediate_size else 0)
        if self.qk_norm == "per_head":  # modeling_qwen3_moe.py: q_norm, k_norm over head_dim
            norms += 2 * self.attn_head_dim
        elif self.qk_norm == "full":  # modeling_olmoe.py: q_norm over heads*hd, k_norm over kv*hd
            norms += (self.num_attention_heads + self.num_key_value_heads) * self.attn_head_dim
        return norms

    # ------------------------------------------------------------------ totals
    def param_breakdown(self) -> dict[str, int]:
        """Parameters stored, by component, summed over the model (tied LM head counted once)."""
        embed = self.vocab_size * self.hidden_size
        L, n_moe = self.num_hidden_layers, self.num_moe_layers
        return {
            "embedding": embed,
            "lm_head": 0 if self.tie_word_embeddings else embed,
            "attention": L * self.attention_params_per_layer,
            "router": n_moe * self.router_params_per_layer,
            "routed_experts": n_moe * self.num_experts * self.expert_params,
            "shared_experts": n_moe * self.shared_expert_params_per_layer,
            "dense_ffn": self.num_dense_layers * self.dense_ffn_params_per_layer,
            "dense_residual": L * self.dense_residual_params_per_layer,
            "norms": L * self.norm_params_per_layer + self.hidden_size,  # + final norm
        }

    def active_params_breakdown(self) -> dict[str, int]:
        """Parameters one token uses, by component: top_k routed experts instead of all of them."""
        active = self.param_breakdown()
        active["routed_experts"] = self.num_moe_layers * self.top_k * self.expert_params
        return active

    @property
    def total_params(self) -> int:
        return sum(self.param_breakdown().values())

    @property
    def active_params(self) -> int:
        """Active per token, both embedding tables counted (Mistral/Qwen/Databricks/Meta convention)."""
        return sum(self.active_params_breakdown().values())

    @property
    def active_compute_params(self) -> int:
        """Weights multiplied per token: no input-embedding lookup, LM head (tied or not) included
        (gpt-oss model card convention: "unembedding but not embedding")."""
        active = self.active_params_breakdown()
        embed = active.pop("embedding")
        if self.tie_word_embeddings:
            active["lm_head"] = embed
        return sum(active.values())

    # ------------------------------------------------------------------ KV cache
    @property
    def kv_cache_elements_per_token_per_layer(self) -> int:
        """GQA: K and V of every KV head; MLA: the compressed latent plus the shared RoPE key, which
        is what DeepSeek serves (DeepSeek-V2 paper Table 1: (d_c + d_h^R) per layer)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_key_value_heads * (self.attn_head_dim + self.v_head_dim_eff)

    def kv_cache_bytes_per_token(self, kv_dtype_bytes: float) -> float:
        """KV bytes one token adds, over all layers (sliding layers too; callers cap their context)."""
        return float(
            self.num_hidden_layers * self.kv_cache_elements_per_token_per_layer * kv_dtype_bytes
        )

    # ------------------------------------------------------------------ checkpoint formats
    @property
    def native_format(self) -> CheckpointFormat:
        """The formats the released checkpoint is served in (see :func:`checkpoint_format`)."""
        return checkpoint_format(self.torch_dtype, self.quantization_config, self.name)

    def weight_bytes(
        self, weight_dtype: str, unquantized: tuple[str, ...] = (), act_dtype: str = "bf16"
    ) -> float:
        """Bytes of all stored weights when quantised parts use ``weight_dtype`` (scales
        included) and ``unquantized`` parts and the norms stay in ``act_dtype``."""
        from moesim.spec.dtypes import dtype_bytes

        parts = {
            "embedding": "embedding",
            "lm_head": "lm_head",
            "attention": "attention",
            "router": "router",
            "routed_experts": "experts",
            "shared_experts": "shared_experts",
            "dense_ffn": "dense_ffn",
            "dense_residual": "dense_ffn",
        }
        total = 0.0
        for key, params in self.param_breakdown().items():
            kept = key == "norms" or parts[key] in unquantized
            total += params * dtype_bytes(act_dtype if kept else weight_dtype)
        return total

    @property
    def checkpoint_bytes(self) -> float:
        """Bytes of the released checkpoint's weights in its native formats."""
        f = self.native_format
        return self.weight_bytes(f.weight_dtype, f.unquantized, f.act_dtype)

    # ------------------------------------------------------------------ derived models
    def dense_equivalent(self) -> ModelSpec:
        """A dense model with the same attention, norms and embeddings whose FFN width W on every
        layer gives the same active compute params per token: W folds the top_k routed experts,
        shared experts, Arctic's dense residual, the router and any dense-first layers into one width.
        """
        if not self.is_moe and not self.dense_residual_intermediate_size:
            return self.with_overrides(name=f"{self.name}-dense-equiv")
        active = self.active_params_breakdown()
        ffn_active = sum(
            active[k]
            for k in ("router", "routed_experts", "shared_experts", "dense_ffn", "dense_residual")
        )
        bias = self.expert_bias or self.mlp_bias
        per_unit_width = self.ffn_matrices * self.hidden_size + (
            (self.ffn_matrices - 1) if bias else 0
        )
        fixed = self.hidden_size if bias else 0
        width = round((ffn_active / self.num_hidden_layers - fixed) / per_unit_width)
        return self.with_overrides(
            name=f"{self.name}-dense-equiv",
            intermediate_size=width,
            mlp_bias=bias,
            num_local_experts=1,
            num_experts_per_tok=1,
            moe_intermediate_size=None,
            expert_bias=False,
            router_bias=False,
            n_shared_experts=0,
            shared_expert_intermediate_size=0,
            first_k_dense_replace=0,
            moe_layer_freq=1,
            decoder_sparse_step=1,
            mlp_only_layers=(),
            dense_residual_intermediate_size=0,
        )

    def with_overrides(self, **fields: Any) -> ModelSpec:
        """A validated copy with some fields changed (HF aliases accepted)."""
        data = self.model_dump()
        for key, value in fields.items():
            data[FIELD_ALIASES.get(key, key)] = value
        return _validate(data, where=f"overrides of {self.name!r}")

    @classmethod
    def from_hf_config(
        cls, path_or_dict: str | Path | Mapping[str, Any], name: str | None = None
    ) -> ModelSpec:
        """Read a Hugging Face ``config.json`` (path or already-parsed dict). Unknown keys are ignored."""
        if isinstance(path_or_dict, Mapping):
            cfg, where = dict(path_or_dict), "config dict"
        else:
            from moesim.spec.safe_io import load_json_file

            path = Path(path_or_dict)
            where = str(path)
            # bytes read with a size limit, UTF-8 checked, NaN refused, top level a JSON object
            cfg = load_json_file(path, what="model config", top=dict, display=where)
            if name is None and not cfg.get("name"):
                name = path.parent.name if path.stem == "config" else path.stem
        if name is None:
            name = str(cfg.get("name") or cfg.get("_name_or_path") or "custom")
            name = name.rstrip("/").split("/")[-1]
        data = _hf_to_fields(cfg, where)
        data["name"] = name
        return _validate(data, where=where)


@dataclass(frozen=True)
class CheckpointFormat:
    """Formats a checkpoint is served in when nothing is overridden.

    weight_dtype : format of the quantised weights (a :data:`moesim.spec.dtypes.FORMATS` name)
    unquantized : parts kept in ``act_dtype`` (embedding, LM head, router, and the checkpoint's
        ``modules_to_not_convert``)
    kv_dtype : KV-cache format engines pick by default (vLLM ``--kv-cache-dtype auto``: the
        model's dtype, unless the checkpoint ships KV scales)
    act_dtype : activation dtype (``torch_dtype``; bf16 when unset)
    source : the config keys this was read from
    """

    weight_dtype: str
    unquantized: tuple[str, ...]
    kv_dtype: str
    act_dtype: str
    source: str

    def describe(self) -> str:
        kept = f", {'/'.join(self.unquantized)} in {self.act_dtype}" if self.unquantized else ""
        return f"{self.weight_dtype}{kept}, KV {self.kv_dtype}"


_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16"}
# Parts HF quantisers and vLLM never quantise: nn.Embedding, the LM head ("all Linear modules
# except the final lm_head", vLLM FP8 docs) and the MoE router gate (DeepSeek-V3 keeps MoEGate
# in bf16; gpt-oss lists mlp.router in modules_to_not_convert).
_ALWAYS_KEPT = ("embedding", "lm_head", "router")
_MODULE_PARTS = (
    ("self_attn", "attention"),
    ("attention", "attention"),
    ("router", "router"),
    ("shared_expert", "shared_experts"),
    ("experts", "experts"),
    ("embed_tokens", "embedding"),
    ("lm_head", "lm_head"),
)


def checkpoint_format(
    torch_dtype: str | None, quantization_config: Mapping[str, Any] | None, where: str = "model"
) -> CheckpointFormat:
    """Read a config.json's ``torch_dtype`` and ``quantization_config`` into served formats.

    Understood ``quant_method`` values: ``fp8`` (``weight_block_size`` [128, 128] -> fp8-block,
    DeepSeek-V3), ``mxfp4`` (gpt-oss), ``awq`` / ``gptq`` (4-bit -> int4-awq / int4-gptq),
    ``modelopt`` (``quant_algo`` FP8 / NVFP4, ``kv_cache_quant_algo`` FP8). Anything else is
    refused rather than guessed.
    """
    act = _TORCH_DTYPES.get(str(torch_dtype).lower(), "bf16") if torch_dtype else "bf16"
    if act == "fp32":
        act = "bf16"  # engines serve fp32 checkpoints in bf16 (vLLM --dtype auto)
    if not quantization_config:
        src = f"torch_dtype {torch_dtype}" if torch_dtype else "no torch_dtype: bf16 assumed"
        return CheckpointFormat(act, (), act, act, src)
    q = dict(quantization_config)
    method = str(q.get("quant_method", "")).lower()
    kv = act
    if method == "fp8":
        block = q.get("weight_block_size")
        weight = "fp8-block" if block else "fp8"
        if block and list(block) != [128, 128]:
            raise MoesimError(
                f"{where}: fp8 weight_block_size {block} is not modelled (only [128, 128])"
            )
    elif method == "mxfp4":
        weight = "mxfp4"
    elif method in ("awq", "gptq"):
        bits = int(q.get("bits", q.get("w_bit", 4)))
        if bits != 4:
            raise MoesimError(f"{where}: {method} with {bits}-bit weights is not modelled")
        weight = f"int4-{method}"
    elif method == "modelopt":
        algo = str(q.get("quant_algo", "")).upper()
        weight = {"FP8": "fp8", "NVFP4": "nvfp4"}.get(algo)
        if weight is None:
            raise MoesimError(f"{where}: modelopt quant_algo {algo!r} is not modelled")
        if str(q.get("kv_cache_quant_algo", "")).upper() == "FP8":
            kv = "fp8"
    else:
        raise MoesimError(
            f"{where}: quantization_config quant_method {method!r} is not modelled; "
            "pass --dtype to choose a format"
        )
    kept = set(_ALWAYS_KEPT)
    for pattern in q.get("modules_to_not_convert") or q.get("ignore") or ():
        for needle, part in _MODULE_PARTS:
            if needle in str(pattern):
                kept.add(part)
                break
    keys = ", ".join(f"{k} {v}" for k, v in q.items() if k != "modules_to_not_convert")
    return CheckpointFormat(weight, tuple(sorted(kept)), kv, act, f"quantization_config: {keys}")


def _hf_to_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Map one config.json onto ModelSpec fields, with the per-family facts HF leaves implicit."""
    cfg = dict(cfg)
    model_type = cfg.get("model_type") or ""
    if not isinstance(model_type, str):
        raise MoesimError(f"{where}: model_type must be a string, got {type(model_type).__name__}")
    if model_type == "dbrx":  # configuration_dbrx.py nests attention and FFN settings
        attn, ffn = cfg.pop("attn_config", {}) or {}, cfg.pop("ffn_config", {}) or {}
        for key, block in (("attn_config", attn), ("ffn_config", ffn)):
            if not isinstance(block, Mapping):
                raise MoesimError(
                    f"{where}: {key} must be a JSON object, got {type(block).__name__}"
                )
        cfg["num_key_value_heads"] = attn.get("kv_n_heads", cfg.get("n_heads"))
        cfg["intermediate_size"] = ffn.get("ffn_hidden_size")
        cfg["moe_num_experts"] = ffn.get("moe_num_experts")
        cfg["moe_top_k"] = ffn.get("moe_top_k")
        cfg["max_position_embeddings"] = cfg.pop("max_seq_len", None)
    if not model_type and "attn_output_multiplier" in cfg:
        model_type = "grok-1"  # xai-org/grok-1 run.py; key names as in the hpcai-tech port
    cfg["model_type"] = model_type or "custom"

    values = {FIELD_ALIASES.get(k, k): v for k, v in cfg.items()}
    missing = [k for k in REQUIRED_HF_KEYS if values.get(k) is None]
    if missing:
        raise MoesimError(f"{where}: missing required key {missing[0]!r}")

    known = set(ModelSpec.model_fields) | set(FIELD_ALIASES)
    data = {k: v for k, v in cfg.items() if k in known}
    if isinstance(data.get("layer_types"), list):
        data["layer_types"] = tuple(data["layer_types"])
    if isinstance(data.get("mlp_only_layers"), list):
        data["mlp_only_layers"] = tuple(data["mlp_only_layers"])
    if cfg.get("use_sliding_window") is False:  # Qwen: window present in config but unused
        data["sliding_window"] = None
    if data.get("n_shared_experts") is None:
        data.pop("n_shared_experts", None)

    if model_type == "arctic" and cfg.get("use_residual"):
        # modeling_arctic.py: ArcticMLP(is_residual_mlp=True) uses hidden_size as its width
        data["dense_residual_intermediate_size"] = cfg["hidden_size"]
    if model_type == "gpt_oss":
        # modeling_gpt_oss.py: GptOssExperts gate_up/down biases, GptOssTopKRouter bias, sinks
        data.update(expert_bias=True, router_bias=True, attention_sinks=True)
    if model_type == "deepseek_v3" and cfg.get("topk_method") == "noaux_tc":
        data["router_bias"] = True  # MoEGate.e_score_correction_bias (n_routed_experts)
    if model_type in ("qwen2", "qwen2_moe"):
        # modeling_qwen2.py: q/k/v have bias=True, o_proj bias=False, whatever the config says
        data.update(attention_bias=True, attention_output_bias=False)
    if model_type in ("qwen3", "qwen3_moe"):
        data["qk_norm"] = "per_head"
    if model_type == "olmoe":
        data["qk_norm"] = "full"
    if model_type == "grok-1":
        data["norms_per_layer"] = 4  # model.py DecoderLayer: rms_norm before and after attn and MoE
    return data


# Ceilings of the integer fields: 10-1000x beyond the largest published model, far below where
# parameter counts and bytes per token would leave the range float64 sums are exact in.
FIELD_LIMITS: dict[str, int] = {
    "hidden_size": 1 << 20,
    "num_hidden_layers": 1 << 14,
    "num_attention_heads": 1 << 14,
    "num_key_value_heads": 1 << 14,
    "head_dim": 1 << 14,
    "vocab_size": 1 << 26,
    "max_position_embeddings": 1 << 34,
    "norms_per_layer": 64,
    "q_lora_rank": 1 << 20,
    "kv_lora_rank": 1 << 20,
    "qk_rope_head_dim": 1 << 14,
    "qk_nope_head_dim": 1 << 14,
    "v_head_dim": 1 << 14,
    "sliding_window": 1 << 34,
    "intermediate_size": 1 << 22,
    "num_local_experts": 1 << 13,
    "num_experts_per_tok": 1 << 10,
    "moe_intermediate_size": 1 << 22,
    "n_shared_experts": 1 << 10,
    "shared_expert_intermediate_size": 1 << 22,
    "first_k_dense_replace": 1 << 14,
    "moe_layer_freq": 1 << 14,
    "decoder_sparse_step": 1 << 14,
    "dense_residual_intermediate_size": 1 << 22,
}
MAX_TOTAL_PARAMS = 1e15  # 1,000x the largest open-weight MoE


def check_limits(data: dict[str, Any], where: str) -> None:
    """Refuse counts beyond :data:`FIELD_LIMITS` and booleans given as counts (MoesimError)."""
    for key, value in data.items():
        limit = FIELD_LIMITS.get(FIELD_ALIASES.get(key, key))
        if limit is None:
            continue
        if isinstance(value, bool):  # pydantic would read true as 1: a silent wrong number
            raise MoesimError(f"{where}: invalid model: {key}={value!r} is a boolean, not a count")
        if isinstance(value, (int, float)) and value > limit:
            raise MoesimError(
                f"{where}: invalid model: {key}={value!r:.30} exceeds the ceiling {limit:,}"
            )


def _validate(data: dict[str, Any], where: str) -> ModelSpec:
    check_limits(data, where)
    try:
        spec = ModelSpec.model_validate(data)
        if spec.total_params > MAX_TOTAL_PARAMS:
            raise MoesimError(
                f"{where}: invalid model: {spec.total_params:.3g} parameters; the ceiling is "
                f"{MAX_TOTAL_PARAMS:.0e}"
            )
        return spec
    except ValidationError as exc:
        problems = "; ".join(
            (".".join(str(p) for p in err["loc"]) + ": " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise MoesimError(f"{where}: invalid model: {problems}") from None


# ---------------------------------------------------------------------- presets
PRESET_META_KEYS = ("source", "published")


def _presets_dir():
    return resources.files("moesim") / "presets"


def list_models() -> list[str]:
    """Names of the shipped presets."""
    return sorted(
        p.name[: -len(".yaml")] for p in _presets_dir().iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    from moesim.spec.safe_io import load_yaml_text

    # limits, tags, duplicate keys; plain data (model errors name fields, not lines)
    doc, _ = load_yaml_text(text, where, what="model preset", round_trip=False)
    return doc


def preset_metadata(name: str) -> dict[str, Any]:
    """The ``source`` and ``published`` blocks of a preset (provenance and published param counts)."""
    if name not in list_models():
        raise unknown_name("model", name, list_models())
    doc = _read_yaml((_presets_dir() / f"{name}.yaml").read_text(), where=f"preset {name}")
    return {k: doc.get(k) for k in PRESET_META_KEYS}


def _spec_from_yaml(text: str, where: str, default_name: str) -> ModelSpec:
    doc = _read_yaml(text, where)
    doc.setdefault("name", default_name)
    for key in PRESET_META_KEYS:
        doc.pop(key, None)
    for key in ("layer_types", "mlp_only_layers"):
        if isinstance(doc.get(key), list):
            doc[key] = tuple(doc[key])
    return _validate(doc, where=where)


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by name, a preset-style YAML file, or a Hugging Face config.json."""
    text = str(name_or_path)
    if text in list_models():
        return _spec_from_yaml(
            (_presets_dir() / f"{text}.yaml").read_text(), where=f"preset {text}", default_name=text
        )
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        from moesim.spec.safe_io import MAX_YAML_BYTES, read_text

        text = read_text(path, what="model preset", max_bytes=MAX_YAML_BYTES, display=str(path))
        return _spec_from_yaml(text, where=str(path), default_name=path.stem)
    if path.suffix.lower() == ".json" and path.is_file():
        return ModelSpec.from_hf_config(path)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSpec.from_hf_config(path / "config.json")
    raise unknown_name("model", text, list_models())
