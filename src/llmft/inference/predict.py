"""Classification: label texts with a trained classifier (``llmft predict RUN_DIR --text ...``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from llmft.errors import UserError
from llmft.hf import quiet_progress_bars
from llmft.models.heads import CLASSIFIER_FILE, ClassifierSpec, fp32_head, mlp_head
from llmft.precision import autocast


@torch.no_grad()
def classify(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
) -> list[tuple[str, float]]:
    """(label, probability) of each text, tokenized as in training (BOS + text, no EOS), right-padded."""
    was_training = model.training
    model.eval()
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    try:
        with autocast(device, compute_dtype):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        model.train(was_training)
    probs = logits.float().softmax(-1)
    config = getattr(model, "config", None) or model.get_base_model().config
    names = getattr(config, "id2label", None) or {}
    return [(names.get(int(i), str(int(i))), float(p[i])) for p, i in zip(probs, probs.argmax(-1))]


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
    adapter = (folder / "adapter_config.json").is_file()
    base = (
        json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        if adapter
        else folder
    )
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
        from peft import PeftModel

        with warnings.catch_warnings():  # peft calls a method transformers 5 deprecates; nothing to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, folder)
    elif spec.head.type == "mlp":
        from safetensors.torch import load_file

        state = {}
        for file in sorted(folder.glob("*.safetensors")):
            state.update(load_file(file))
        model.load_state_dict(state, strict=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device), tokenizer
