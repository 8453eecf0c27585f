"""Built-in model presets: small randomly initialised LLaMA models that need no download.

A preset is materialised once into a real Hugging Face model folder (config.json, model.safetensors,
tokenizer) under ``$LLMFT_HOME/presets`` (default ``~/.cache/llmft``). From then on it is loaded like
any local folder, with the same ``from_pretrained`` code as a hub model, and an adapter trained on it
records that folder as its base (``PeftModel.from_pretrained`` finds it).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from llmft.errors import UserError
from llmft.hf import quiet_progress_bars

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    name: str
    # Bump when the weights or the tokenizer change: the cache folder name carries it.
    version: int
    architecture: dict[str, Any]
    tokenizer_resource: str  # folder under llmft/models/presets holding tokenizer.json
    init_std: float = 0.02
    init_seed: int = 0
    description: str = ""

    @property
    def folder_name(self) -> str:
        return f"{self.name}-v{self.version}"


PRESETS: dict[str, Preset] = {
    "tiny-llama": Preset(
        name="tiny-llama",
        version=2,  # v2: adds a chat template; weights and vocabulary as in v1
        architecture=dict(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        tokenizer_resource="tiny_llama",
        # Wider than the usual 0.02 so that a few hundred LoRA steps at a standard lr (3e-4) move the
        # loss of this random model visibly (measured: 0.02 barely moves it, 0.1 starts above ln V).
        init_std=0.05,
        description="LlamaForCausalLM, 4 layers, hidden 256, GQA 8/4 heads, byte-level BPE vocab 1948",
    ),
}


def llmft_home() -> Path:
    """Where llmft keeps materialised presets: ``$LLMFT_HOME`` or ``~/.cache/llmft``."""
    return Path(os.environ.get("LLMFT_HOME") or Path.home() / ".cache" / "llmft")


def _tokenizer_dir(preset: Preset) -> Path:
    return Path(str(resources.files("llmft.models").joinpath("presets", preset.tokenizer_resource)))


def deterministic_init_(model: torch.nn.Module, seed: int, std: float) -> None:
    """Initialise every weight from its own name-seeded generator.

    Written by hand (not the model's ``_init_weights``) so that a preset's weights depend only on
    (seed, parameter name, shape) and stay the same across transformers releases and module order.
    """
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if "norm" in name:
                tensor.fill_(1.0)
            elif name.endswith(".bias"):
                tensor.zero_()
            else:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


def materialize(preset: Preset) -> Path:
    """The preset's model folder, written on first use (atomically: temp folder, then rename)."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    target = llmft_home() / "presets" / preset.folder_name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as exc:
        raise UserError(
            f"LLMFT_HOME: cannot write presets under '{llmft_home()}' ({exc.strerror or exc}); "
            f"point LLMFT_HOME at a writable folder"
        ) from None
    tmp = target.parent / f".{preset.folder_name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(preset))
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **preset.architecture,
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream as it was
            model = LlamaForCausalLM(config)
        deterministic_init_(model, preset.init_seed, preset.init_std)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with quiet_progress_bars():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process materialised it first; theirs is identical.
            if not (target / "model.safetensors").is_file():
                raise
        log.debug("materialised preset %s in %s", preset.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
