"""Model shapes for the memory planner: a built-in table of public LLaMA-family architectures, and the
shape of a preset, a local Hugging Face folder or a ``config.json``.

Only the numbers that decide memory and FLOPs are kept (no weights are read). The table's figures are
those of each model's published ``config.json``; a test checks that they give the published parameter
counts (e.g. 6,738,415,616 for Llama-2-7B).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmft.errors import UserError


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a LLaMA-style decoder (RMSNorm, rotary attention with GQA, SwiGLU MLP)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None  # None: hidden_size // num_heads
    attention_bias: bool = False  # q/k/v/o biases (LlamaConfig.attention_bias)
    mlp_bias: bool = False

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        """Width of the query (and attention output) projection: heads x head size."""
        return self.num_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections (grouped-query attention: fewer heads)."""
        return self.num_kv_heads * self.head_size

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each linear layer of one decoder block, by its HF name."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (self.q_dim, h),
            "k_proj": (self.kv_dim, h),
            "v_proj": (self.kv_dim, h),
            "o_proj": (h, self.q_dim),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _llama(name, hidden, intermediate, layers, heads, kv_heads, vocab, tied=False) -> ModelShape:
    return ModelShape(name, hidden, intermediate, layers, heads, kv_heads, vocab, tied)


# Published config.json figures. Mistral and TinyLlama share the LLaMA block; so does every model here.
KNOWN_ARCHITECTURES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        _llama("llama-2-7b", 4096, 11008, 32, 32, 32, 32000),
        _llama("llama-2-13b", 5120, 13824, 40, 40, 40, 32000),
        _llama("llama-2-70b", 8192, 28672, 80, 64, 8, 32000),
        _llama("codellama-7b", 4096, 11008, 32, 32, 32, 32016),
        _llama("codellama-34b", 8192, 22016, 48, 64, 8, 32000),
        _llama("llama-3-8b", 4096, 14336, 32, 32, 8, 128256),
        _llama("llama-3-70b", 8192, 28672, 80, 64, 8, 128256),
        _llama("llama-3.1-8b", 4096, 14336, 32, 32, 8, 128256),
        _llama("llama-3.1-70b", 8192, 28672, 80, 64, 8, 128256),
        _llama("llama-3.1-405b", 16384, 53248, 126, 128, 8, 128256),
        _llama("llama-3.2-1b", 2048, 8192, 16, 32, 8, 128256, tied=True),
        _llama("llama-3.2-3b", 3072, 8192, 28, 24, 8, 128256, tied=True),
        _llama("llama-3.3-70b", 8192, 28672, 80, 64, 8, 128256),
        _llama("mistral-7b", 4096, 14336, 32, 32, 8, 32000),
        _llama("mistral-7b-v0.3", 4096, 14336, 32, 32, 8, 32768),
        _llama("tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000),
    )
}


def llama_shaped(hidden_size: int, num_layers: int | None = None, name: str | None = None) -> ModelShape:
    """A LLaMA-2-proportioned model of width ``hidden_size``: MLP 8/3 x hidden (rounded up to 256),
    heads of 128, as many layers as hidden/128 unless given, vocabulary 32000. Used to ask "what is the
    largest model that fits"."""
    intermediate = -(-(8 * hidden_size // 3) // 256) * 256
    heads = max(1, hidden_size // 128)
    layers = num_layers or max(1, hidden_size // 128)
    return ModelShape(name or f"llama-h{hidden_size}-l{layers}", hidden_size, intermediate, layers, heads,
                      heads, 32000)  # fmt: skip


def shape_from_hf_config(config: dict[str, Any], name: str) -> ModelShape:
    """The shape of a Hugging Face ``config.json`` (as a dict) of a LLaMA-style model."""
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            name=name,
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim"),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
        )
    except KeyError as exc:
        raise UserError(
            f"--model: '{name}' has no {exc.args[0]} in its config; the planner needs a LLaMA-style "
            f"config.json (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size)"
        ) from None


def _preset_shape(name: str) -> ModelShape:
    from transformers import AutoTokenizer

    from llmft.models.presets import PRESETS, _tokenizer_dir

    preset = PRESETS[name]
    # The preset's vocabulary is its tokenizer's (as materialize builds it), without writing the model.
    vocab = len(AutoTokenizer.from_pretrained(_tokenizer_dir(preset)))
    return shape_from_hf_config({**preset.architecture, "vocab_size": vocab}, name)


def resolve_shape(model: str) -> ModelShape:
    """The shape behind ``--model``: a preset, a name from the table, a folder, or a config.json file."""
    from llmft.models.presets import PRESETS

    if model in PRESETS:
        return _preset_shape(model)
    if model.lower() in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[model.lower()]
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"--model: '{path}' is not valid JSON: {exc}") from None
        return shape_from_hf_config(config, model)
    names = [*PRESETS, *KNOWN_ARCHITECTURES]
    close = difflib.get_close_matches(model.lower(), names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(
        f"--model: '{model}' is not a preset, a known architecture, a model folder or a config.json; "
        f"{hint}known: {', '.join(names)}"
    )
