"""Loading what a run wrote: a finished run folder, a classifier run, or a model and an adapter
folder, for ``llmft generate``, ``eval``, ``predict`` and ``export``.

A run folder holds its resolved config (``llmft_config.yaml``), the tokenizer, and either a PEFT
adapter (``adapter_config.json`` + weights, loaded onto the run's base model) or a whole model
(``config.json`` + weights); a classifier run also its ``classifier.json``. Everything loads through
:mod:`llmft.models.loader` (or transformers' sequence classification class) and
``PeftModel.from_pretrained``, the same path as training. The file names are those of
:mod:`llmft.checkpoint.outputs`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from llmft.checkpoint.outputs import ADAPTER_CONFIG, CONFIG_FILE, MODEL_CONFIG
from llmft.config import Config, ModelSection, load_config
from llmft.errors import UserError
from llmft.hf import quiet_progress_bars
from llmft.models.heads import CLASSIFIER_FILE, ClassifierSpec, fp32_head, mlp_head
from llmft.models.loader import ModelSource, load_causal_lm, load_tokenizer, resolve_model


def run_config(run_dir: Path, overrides: dict[str, Any] | None = None, flag: str = "--run") -> Config:
    """The resolved config of a finished run, with dotted ``overrides`` applied."""
    if not run_dir.is_dir():
        raise UserError(f"{flag}: run folder '{run_dir}' not found; pass the output_dir of an llmft run")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(
            f"{flag}: '{run_dir}' has no {CONFIG_FILE}, so it is not a finished llmft run; pass the "
            f"output_dir of a run (or use --model NAME --adapter DIR)"
        )
    return load_config(run_dir / CONFIG_FILE, overrides)


def is_classifier_run(run_dir: Path) -> bool:
    return (run_dir / CLASSIFIER_FILE).is_file()


def _with_adapter(model, adapter: Path):
    from peft import PeftModel

    with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates; nothing to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, adapter)


def load_adapter_model(model_cfg: ModelSection, adapter: Path | None, device: torch.device):
    """The causal LM named by ``model_cfg`` (preset, folder or hub id) with the adapter at ``adapter``."""
    source = resolve_model(model_cfg)
    with quiet_progress_bars():
        model = load_causal_lm(source, model_cfg, device)
    if adapter is None:
        return model
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise UserError(
            f"--adapter: '{adapter}' holds no {ADAPTER_CONFIG}; pass a PEFT adapter folder (a LoRA run's "
            f"output_dir)"
        )
    return _with_adapter(model, adapter).to(device)


def load_run_model(run_dir: Path, cfg: Config, device: torch.device):
    """(model, tokenizer) of a finished causal-LM run: its adapter on its base model, or its full model."""
    if (run_dir / ADAPTER_CONFIG).is_file():
        model = load_adapter_model(cfg.model, run_dir, device)
    elif (run_dir / MODEL_CONFIG).is_file():
        source = ModelSource("local", str(run_dir), str(run_dir))
        with quiet_progress_bars():
            model = load_causal_lm(source, cfg.model, device)
    else:
        raise UserError(
            f"--run: '{run_dir}' holds no adapter ({ADAPTER_CONFIG}) or model ({MODEL_CONFIG}); the run did "
            f"not finish - export a checkpoint of it with llmft export"
        )
    tokenizer = load_tokenizer(ModelSource("local", str(run_dir), str(run_dir)), cfg.model)
    return model, tokenizer


def tokenizer_for(model_cfg: ModelSection, adapter: Path | None):
    """The adapter folder's tokenizer when it has one (a run saves it), else the model's."""
    if adapter is not None and any(
        (adapter / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")
    ):
        return load_tokenizer(ModelSource("local", str(adapter), str(adapter)), model_cfg)
    return load_tokenizer(resolve_model(model_cfg), model_cfg)


def load_classifier(folder: Path, device: torch.device):
    """(model, tokenizer) of a classifier run folder: a full model, or a PEFT adapter on its base."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (folder / CLASSIFIER_FILE).is_file():
        raise UserError(
            f"predict: '{folder}' holds no {CLASSIFIER_FILE}; point it at the output_dir of a run with "
            f"task classification"
        )
    spec = ClassifierSpec.read(folder)
    adapter = (folder / ADAPTER_CONFIG).is_file()
    base = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] if adapter else folder
    config = AutoConfig.from_pretrained(base, **spec.config_kwargs())
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # an mlp head is not in the file's layout for HF's `score`; loaded below
    try:
        with quiet_progress_bars():
            model = AutoModelForSequenceClassification.from_pretrained(base, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    if spec.head.type == "mlp":
        model.score = fp32_head(mlp_head(spec.head, config.hidden_size, len(spec.labels)))
    if adapter:
        model = _with_adapter(model, folder)
    elif spec.head.type == "mlp":
        from safetensors.torch import load_file

        state = {}
        for file in sorted(folder.glob("*.safetensors")):
            state.update(load_file(file))
        model.load_state_dict(state, strict=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device), tokenizer
