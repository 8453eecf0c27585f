"""Model and tokenizer loading: a preset, a local Hugging Face folder, or a hub id, through one path.

All three end in ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``; a preset
is first materialised into a local folder (:mod:`llmft.models.presets`).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from llmft.config import ModelSection
from llmft.errors import UserError
from llmft.models.presets import PRESETS, materialize
from llmft.precision import DTYPES

log = logging.getLogger(__name__)

# Weight files that from_pretrained reads (single files or the index of a sharded checkpoint).
_WEIGHT_FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)
# Any one of these makes a folder's tokenizer loadable by AutoTokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from. ``ref`` is a folder for presets and local models, else a hub id."""

    kind: Literal["preset", "local", "hub"]
    ref: str
    name: str

    def describe(self) -> str:
        if self.kind == "preset":
            return f"preset {self.name} ({self.ref})"
        return f"{self.kind} {self.ref}"


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with slashes is meant as a folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith("/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _needs_remote_code(exc: BaseException) -> bool:
    """transformers refuses a model whose config names its own code (``auto_map``) without
    ``trust_remote_code``; its message names the argument on a later line."""
    return "trust_remote_code" in str(exc) or "contains custom code" in str(exc)


def _remote_code_error(name: str) -> UserError:
    return UserError(
        f"model.name: '{name}' ships its own code (auto_map in its config.json); review it, then pass "
        f"--model.trust_remote_code true"
    )


def _hub_error(name: str, exc: BaseException) -> UserError:
    reason = _first_line(exc)
    close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.7)
    if close:
        return UserError(
            f"model.name: '{name}' is not a preset or a folder - did you mean the preset '{close[0]}'?"
        )
    if _needs_remote_code(exc):
        return _remote_code_error(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    why = "the Hugging Face Hub is off (HF_HUB_OFFLINE=1)" if offline else f"loading it failed: {reason}"
    return UserError(
        f"model.name: '{name}' is not a preset ({', '.join(PRESETS)}) or a local folder, and {why}; "
        f"download it where there is network (hf download {name} --local-dir DIR) and pass --model.name DIR"
    )


def _check_model_folder(path: Path, name: str) -> None:
    """A local model folder has a readable config.json and weights; checked before any loading."""
    config = path / "config.json"
    if not config.is_file():
        raise UserError(
            f"model.name: folder '{name}' has no config.json; point it at a Hugging Face model folder "
            f"(save_pretrained output)"
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"model.name: '{config}' is not valid JSON: {exc}") from None
    if not any(any(path.glob(pattern)) for pattern in _WEIGHT_FILES):
        raise UserError(
            f"model.name: folder '{name}' has no weights ({', '.join(_WEIGHT_FILES)}); "
            f"save the model there with model.save_pretrained('{name}')"
        )


def resolve_model(cfg: ModelSection) -> ModelSource:
    """Decide what ``model.name`` refers to, with a clear error for anything that cannot load."""
    name = cfg.name
    if name in PRESETS:
        return ModelSource("preset", str(materialize(PRESETS[name])), name)
    path = Path(name).expanduser()
    if path.exists():
        _check_model_folder(path, name)
        return ModelSource("local", str(path), name)
    if _looks_like_path(name):
        raise UserError(f"model.name: folder '{name}' does not exist; check the path")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # hub errors come as OSError, ValueError, HTTP and offline errors
        raise _hub_error(name, exc) from None
    return ModelSource("hub", name, name)


def load_tokenizer(source: ModelSource, cfg: ModelSection):
    """The model's tokenizer, right-padded for training, with a pad token guaranteed.

    LLaMA tokenizers often have no pad token; the unknown token (LLaMA-2) or EOS (LLaMA-3) serves.
    Labels are masked by the attention mask, never by the pad id, so reusing EOS is safe.
    """
    from transformers import AutoTokenizer

    if source.kind != "hub" and not any((Path(source.ref) / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(
            f"model.name: folder '{source.ref}' has no tokenizer ({', '.join(_TOKENIZER_FILES)}); "
            f"save one there with tokenizer.save_pretrained('{source.ref}')"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.ref, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as exc:
        if source.kind == "hub":
            raise _hub_error(source.ref, exc) from None
        if _needs_remote_code(exc):
            raise _remote_code_error(source.name) from None
        raise UserError(f"model.name: no usable tokenizer in '{source.ref}': {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def check_max_seq_len(model_config, max_seq_len: int) -> bool:
    """Warn when ``data.max_seq_len`` exceeds the positions the model was trained on (its config's
    ``max_position_embeddings``); returns whether it does.

    A warning, not an error: RoPE models (LLaMA) run past that length and users extend context on
    purpose (often with ``rope_scaling``), but quality usually drops beyond it without such scaling.
    """
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or max_seq_len <= limit:
        return False
    log.warning(
        "data.max_seq_len %d is longer than the model's max_position_embeddings %d: positions past %d were "
        "never trained (set rope_scaling in the model's config.json to extend the context, or lower "
        "data.max_seq_len)",
        max_seq_len,
        limit,
        limit,
    )
    return True


def _not_causal(name: str) -> UserError:
    return UserError(
        f"model.name: '{name}' is not a causal language model (no AutoModelForCausalLM class for it); "
        f"llmft fine-tunes LLaMA-family decoder models"
    )


@contextlib.contextmanager
def _loading(source: ModelSource, what: str) -> Iterator[None]:
    """Turn the ways a model folder or hub id fails to load into one-line user errors."""
    try:
        yield
    except ValueError as exc:
        if _needs_remote_code(exc):
            raise _remote_code_error(source.name) from None
        if "Unrecognized configuration class" in str(exc):
            raise _not_causal(source.name) from None
        raise UserError(f"model.name: {what} '{source.ref}': {_first_line(exc)}") from None
    except OSError as exc:
        if source.kind == "hub":
            raise _hub_error(source.ref, exc) from None
        raise UserError(f"model.name: {what} '{source.ref}': {_first_line(exc)}") from None
    except Exception as exc:  # e.g. safetensors' SafetensorError for a truncated or corrupt file
        if type(exc).__module__.startswith(("safetensors", "huggingface_hub")):
            raise UserError(
                f"model.name: {what} '{source.ref}': {type(exc).__name__}: {_first_line(exc)}"
            ) from None
        raise


def _auto_class(classifier):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if classifier is not None else AutoModelForCausalLM


def model_skeleton(source: ModelSource, cfg: ModelSection, classifier=None):
    """The model's modules on the meta device, built from its config alone: no weights are read.

    Lets the run check a method against the model (its layer names) before loading gigabytes, and lets
    FSDP ranks build their modules without reading weights; dtype and attention kernel are those of
    :func:`load_causal_lm` (``from_config`` would otherwise take the dtype recorded in config.json).
    ``classifier`` (a :class:`llmft.models.heads.ClassifierSpec`) builds the sequence classifier instead.
    """
    from transformers import AutoConfig

    with _loading(source, "no usable config in"):
        config = AutoConfig.from_pretrained(
            source.ref,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            **(classifier.config_kwargs() if classifier is not None else {}),
        )
        with torch.device("meta"):
            return _auto_class(classifier).from_config(
                config,
                trust_remote_code=cfg.trust_remote_code,
                dtype=DTYPES[cfg.dtype],
                attn_implementation=cfg.attn_implementation,
            )


def load_causal_lm(
    source: ModelSource, cfg: ModelSection, device: torch.device, classifier=None, quantize: bool = True
):
    """The causal LM on ``device`` in ``model.dtype``, every weight as stored, or quantized with
    bitsandbytes as ``model.quantization`` asks (``quantize=False``: never; FSDP quantizes with torchao).

    With ``classifier`` (a :class:`llmft.models.heads.ClassifierSpec`): the sequence classifier over the
    same backbone weights; its new head is initialised later, by :func:`llmft.models.heads.attach_head`.
    """
    from transformers.utils import logging as hf_logging

    from llmft.models.quantize import bnb_config, keep_cpu_layout_, quantize_nf4_

    verbosity = hf_logging.get_verbosity()
    if classifier is not None:
        hf_logging.set_verbosity_error()  # "score.weight newly initialised": expected, and re-done seeded
    # model.quantization: bitsandbytes quantizes while loading, straight onto the device (a quantized
    # model cannot be moved afterwards); the classifier's new head stays unquantized (it trains).
    torchao = quantize and cfg.quantization == "4bit" and cfg.quant_backend == "torchao"
    quantization = (
        bnb_config(cfg, ["score"] if classifier is not None else None) if quantize and not torchao else None
    )
    placement = {"quantization_config": quantization, "device_map": {"": device}} if quantization else {}
    try:
        with _loading(source, "could not load weights from"):
            model = _auto_class(classifier).from_pretrained(
                source.ref,
                revision=cfg.revision,
                trust_remote_code=cfg.trust_remote_code,
                dtype=DTYPES[cfg.dtype],
                attn_implementation=cfg.attn_implementation,
                **placement,
                **(classifier.config_kwargs() if classifier is not None else {}),
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    if torchao:  # one process, quantized as FSDP quantizes (llmft.models.quantize)
        quantize_nf4_(model, 1)
    return keep_cpu_layout_(model) if quantization else model.to(device)
