"""``llmft export RUN_OR_CHECKPOINT --out DIR [--merge]``: folders that plain transformers/peft load.

From a step checkpoint (sharded by any number of ranks: DCP reshards it into one process) or from a
finished run folder, it writes either the PEFT adapter (``PeftModel.from_pretrained``) or, for full
fine-tuning or with ``--merge``, a whole HF model (``AutoModelForCausalLM.from_pretrained``), with the
tokenizer and generation config.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from llmft.errors import UserError

log = logging.getLogger("llmft")

# A hidden file in every folder that export writes: --overwrite replaces only such a folder.
EXPORT_MARKER = ".llmft-export"
# What a finished run folder holds besides the model: never copied into an export.
_RUN_ONLY = {"checkpoints", "tensorboard", "metrics.jsonl", "train.log", "summary.json", ".llmft-run"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "export",
        help="Write an HF model or PEFT adapter folder from a run or checkpoint.",
        description="Write an HF model folder (or a PEFT adapter folder) that plain transformers/peft load, "
        "from a finished run folder or a step checkpoint (sharded or not): "
        "llmft export RUN_OR_CHECKPOINT --out DIR [--merge]",
    )
    parser.add_argument(
        "source", metavar="RUN_OR_CHECKPOINT", help="a run folder or a checkpoints/step-N folder"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    parser.add_argument(
        "--merge", action="store_true", help="fold the adapter into the base weights (LoRA, DoRA, IA3)"
    )
    parser.add_argument(
        "--checkpoint",
        action="store_true",
        help="with a run folder: export its latest checkpoint, not its final artifacts",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="the dtype of a merged or full model's weights (default: as trained)",
    )
    return parser


def _check_out(out: Path, source: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"export --out: '{out}' is a file; choose a folder")
    real = out.resolve()
    if real == source.resolve() or real in source.resolve().parents or source.resolve() in real.parents:
        raise UserError(f"export --out: '{out}' overlaps the source '{source}'; choose a folder outside it")
    if out.is_dir() and any(out.iterdir()):
        if not (out / EXPORT_MARKER).is_file():
            raise UserError(
                f"export --out: '{out}' is not empty and was not written by llmft export; choose another folder"
            )
        if not overwrite:
            raise UserError(f"export --out: '{out}' holds an earlier export; pass --overwrite to replace it")


def _has_final_model(run_dir: Path) -> bool:
    return (run_dir / "adapter_config.json").is_file() or (run_dir / "config.json").is_file()


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


def _merge(model, dtype: str | None):
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise UserError("export --merge: this run trained the model's own weights (no adapter); drop --merge")
    import torch

    from llmft.peft.merge import merge_adapter

    merged, notes = merge_adapter(model, dtype=getattr(torch, dtype) if dtype else None)
    for note in notes:
        log.info("merge: %s", note)
    return merged


def _write(model, tokenizer, out: Path, classifier) -> list[str]:
    from llmft.checkpoint.outputs import save_artifacts
    from llmft.models.heads import CLASSIFIER_FILE

    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():  # an earlier export (checked by _check_out)
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    (out / EXPORT_MARKER).write_text("llmft export\n", encoding="utf-8")
    written = [p.name for p in save_artifacts(model, tokenizer, out)]
    if classifier is not None:
        (out / CLASSIFIER_FILE).write_text(
            json.dumps(classifier.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        written.append(CLASSIFIER_FILE)
    return written


def _method(checkpoint: Path | None, run_dir: Path) -> str:
    """The PEFT method of a checkpoint or finished run, read from its resolved config (no model loaded)."""
    if checkpoint is not None:
        from llmft.checkpoint.state import verify_checkpoint
        from llmft.config import Config

        return Config.model_validate(verify_checkpoint(checkpoint).config).peft.method
    from llmft.inference.loading import run_config

    return run_config(run_dir, flag="export").peft.method


def run(args: argparse.Namespace) -> int:
    from llmft.checkpoint.state import is_complete, latest_checkpoint, resolve_resume

    source = Path(args.source).expanduser()
    out = Path(args.out).expanduser()
    if not source.is_dir():
        raise UserError(f"export: '{source}' not found; pass a run folder or a checkpoints/step-N folder")
    _check_out(out, source, args.overwrite)
    if is_complete(source) or (source / "trainer_state.json").exists() or source.name.startswith("step-"):
        checkpoint = resolve_resume(str(source), source.parent.parent)
    elif args.checkpoint or not _has_final_model(source):
        checkpoint = latest_checkpoint(source)
        if checkpoint is None:
            raise UserError(
                f"export: '{source}' has neither a final model (adapter_config.json / config.json) nor a "
                f"complete checkpoint; pass a finished run or a checkpoints/step-N folder"
            )
    else:
        checkpoint = None

    if args.dtype and not args.merge and _method(checkpoint, source) != "none":  # before any loading
        raise UserError(
            f"export --dtype {args.dtype}: an adapter keeps its trained dtype; add --merge to write a whole "
            f"model in {args.dtype}"
        )
    if checkpoint is not None:
        log.info("exporting checkpoint %s", checkpoint)
        model, tokenizer, cfg, classifier = model_from_checkpoint(checkpoint)
    elif args.merge or args.dtype:
        model, tokenizer, cfg, classifier = _model_from_run(source, adapter=args.merge)
    else:  # the run's final artifacts already are the export: copy them
        return _copy_run(source, out)
    full = cfg.peft.method == "none"
    if args.merge:
        model = _merge(model, args.dtype)
    elif args.dtype:
        import torch

        model = model.to(getattr(torch, args.dtype))
    written = _write(model, tokenizer, out, classifier)
    kind = "merged model" if args.merge else "model" if full else "PEFT adapter"
    dtype = f" ({args.dtype})" if args.dtype else ""
    print(f"Wrote {kind}{dtype} to {out}/: {', '.join(sorted(written))}")
    return 0


def _model_from_run(run_dir: Path, adapter: bool):
    """The finished run's model as plain users load it: its base with the saved adapter through PEFT,
    or its own weights (the loaders of ``llmft generate`` / ``llmft predict``). ``adapter``: the run
    must have one (to merge it)."""
    import torch

    from llmft.inference.loading import load_run_model, run_config
    from llmft.inference.predict import load_classifier
    from llmft.models.heads import ClassifierSpec

    cfg = run_config(run_dir, flag="export")
    if adapter and not (run_dir / "adapter_config.json").is_file():
        raise UserError("export --merge: this run trained the model's own weights (no adapter); drop --merge")
    if cfg.task == "classification":
        model, tokenizer = load_classifier(run_dir, torch.device("cpu"))
        return model, tokenizer, cfg, ClassifierSpec.read(run_dir)
    model, tokenizer = load_run_model(run_dir, cfg, torch.device("cpu"))
    return model, tokenizer, cfg, None


def _copy_run(run_dir: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    copied = []
    for item in sorted(run_dir.iterdir()):
        if item.name in _RUN_ONLY or item.suffix == ".png" or item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
        copied.append(item.name)
    (out / EXPORT_MARKER).write_text("llmft export\n", encoding="utf-8")
    print(f"Wrote {out}/: {', '.join(copied)}")
    return 0
