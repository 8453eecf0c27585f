"""Export: the model of a step checkpoint (sharded by any number of ranks: DCP reshards it into one
process) or of a finished run folder, merged or not, written as a folder that plain transformers/peft
load: the PEFT adapter (``PeftModel.from_pretrained``) or, for full fine-tuning or a merge, a whole HF
model (``AutoModelForCausalLM.from_pretrained``), with the tokenizer and generation config.
``llmft export`` (:mod:`llmft.commands.export`) chooses the source and prints what was written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from llmft.checkpoint.outputs import ADAPTER_CONFIG, EXPORT_MARKER, RUN_RECORDS
from llmft.errors import UserError

log = logging.getLogger("llmft")


def _classifier(path: Path, run_dir: Path | None, cfg):
    """The classifier spec of a classification run (its label names are kept with the model)."""
    if cfg.task != "classification":
        return None
    from llmft.models.heads import CLASSIFIER_FILE, ClassifierSpec

    for folder in (path, run_dir):
        if folder is not None and (folder / CLASSIFIER_FILE).is_file():
            return ClassifierSpec.read(folder)
    raise UserError(f"export: '{path}' is a classification run without {CLASSIFIER_FILE}")


def model_from_checkpoint(checkpoint: Path):
    """(model, tokenizer, config, classifier) rebuilt in this process from a step checkpoint: the base
    from its source, the trainable weights from the checkpoint (resharded from any layout)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    from llmft.build import build_model
    from llmft.checkpoint.state import STATE_DIR, dcp_failure, quiet_dcp, verify_checkpoint
    from llmft.config import Config
    from llmft.distributed.env import DistEnv
    from llmft.models.loader import load_tokenizer, resolve_model

    info = verify_checkpoint(checkpoint)
    cfg = Config.model_validate(info.config)
    source = resolve_model(cfg.model)
    tokenizer = load_tokenizer(source, cfg.model)
    run_dir = checkpoint.parent.parent
    classifier = _classifier(checkpoint, run_dir, cfg)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    model = build_model(cfg, source, env, classifier, checkpointing=False)
    from llmft.models.quantize import without_quantization_state

    options = StateDictOptions(ignore_frozen_params=True)
    with without_quantization_state(model):  # a bitsandbytes base's frozen scales
        weights = {f"model.{k}": v for k, v in get_model_state_dict(model, options=options).items()}
    try:
        with quiet_dcp():
            dcp.load(weights, storage_reader=HuggingFaceStorageReader(str(checkpoint / STATE_DIR)))
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        raise UserError(
            f"export: cannot read the weights of checkpoint '{checkpoint / STATE_DIR}' ({dcp_failure(exc)}); "
            f"export it with the model, peft and freeze settings it was written with"
        ) from None
    # Not strict: the frozen base is not in the checkpoint (it came from its source above); every
    # trainable weight was, or dcp.load would have failed.
    loaded = {k[len("model.") :]: v for k, v in weights.items()}
    with without_quantization_state(model):
        set_model_state_dict(model, loaded, options=StateDictOptions(ignore_frozen_params=True, strict=False))
    return model, tokenizer, cfg, classifier


def model_from_run(run_dir: Path, adapter: bool):
    """The finished run's model as plain users load it: its base with the saved adapter through PEFT,
    or its own weights (the loaders of ``llmft generate`` / ``llmft predict``). ``adapter``: the run
    must have one (to merge it)."""
    import torch

    from llmft.checkpoint.loading import load_classifier, load_run_model, run_config
    from llmft.models.heads import ClassifierSpec

    cfg = run_config(run_dir, flag="export")
    if adapter and not (run_dir / ADAPTER_CONFIG).is_file():
        raise UserError("export --merge: this run trained the model's own weights (no adapter); drop --merge")
    if cfg.task == "classification":
        model, tokenizer = load_classifier(run_dir, torch.device("cpu"))
        return model, tokenizer, cfg, ClassifierSpec.read(run_dir)
    model, tokenizer = load_run_model(run_dir, cfg, torch.device("cpu"))
    return model, tokenizer, cfg, None


def merge(model, dtype: str | None):
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise UserError("export --merge: this run trained the model's own weights (no adapter); drop --merge")
    import torch

    from llmft.peft.merge import merge_adapter

    merged, notes = merge_adapter(model, dtype=getattr(torch, dtype) if dtype else None)
    for note in notes:
        log.info("merge: %s", note)
    return merged


def write_export(model, tokenizer, out: Path, classifier) -> list[str]:
    from llmft.checkpoint.outputs import save_artifacts
    from llmft.models.heads import CLASSIFIER_FILE

    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():  # an earlier export (checked by the command)
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    (out / EXPORT_MARKER).write_text("llmft export\n", encoding="utf-8")
    written = [p.name for p in save_artifacts(model, tokenizer, out)]
    if classifier is not None:
        (out / CLASSIFIER_FILE).write_text(
            json.dumps(classifier.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        written.append(CLASSIFIER_FILE)
    return written


def copy_run(run_dir: Path, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    copied = []
    for item in sorted(run_dir.iterdir()):
        if item.name in RUN_RECORDS or item.suffix == ".png" or item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
        copied.append(item.name)
    (out / EXPORT_MARKER).write_text("llmft export\n", encoding="utf-8")
    return copied
