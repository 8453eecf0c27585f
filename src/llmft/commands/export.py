"""``llmft export RUN_OR_CHECKPOINT --out DIR [--merge]``: folders that plain transformers/peft load.

From a step checkpoint or a finished run folder it writes either the PEFT adapter or, for full
fine-tuning or with ``--merge``, a whole HF model (:mod:`llmft.checkpoint.export`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llmft.checkpoint.layout import STATE_FILE, STEP_PREFIX
from llmft.checkpoint.outputs import ADAPTER_CONFIG, EXPORT_MARKER, MODEL_CONFIG, has_final_model
from llmft.commands.common import setup_logging
from llmft.errors import UserError

log = logging.getLogger("llmft")


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


def _method(checkpoint: Path | None, run_dir: Path) -> str:
    """The PEFT method of a checkpoint or finished run, read from its resolved config (no model loaded)."""
    if checkpoint is not None:
        from llmft.checkpoint.state import verify_checkpoint
        from llmft.config import Config

        return Config.model_validate(verify_checkpoint(checkpoint).config).peft.method
    from llmft.checkpoint.loading import run_config

    return run_config(run_dir, flag="export").peft.method


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Find the checkpoint or final model to export, load it if it must change, write it, say what."""
    if extra:
        raise UserError(f"export: unknown argument '{extra[0]}' (see llmft export --help)")
    setup_logging()
    from llmft.checkpoint.export import copy_run, merge, model_from_checkpoint, model_from_run, write_export
    from llmft.checkpoint.state import is_complete, latest_checkpoint, resolve_resume

    source = Path(args.source).expanduser()
    out = Path(args.out).expanduser()
    if not source.is_dir():
        raise UserError(f"export: '{source}' not found; pass a run folder or a checkpoints/step-N folder")
    _check_out(out, source, args.overwrite)
    if is_complete(source) or (source / STATE_FILE).exists() or source.name.startswith(STEP_PREFIX):
        checkpoint = resolve_resume(str(source), source.parent.parent)
    elif args.checkpoint or not has_final_model(source):
        checkpoint = latest_checkpoint(source)
        if checkpoint is None:
            raise UserError(
                f"export: '{source}' has neither a final model ({ADAPTER_CONFIG} / {MODEL_CONFIG}) nor a "
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
        model, tokenizer, cfg, classifier = model_from_run(source, adapter=args.merge)
    else:  # the run's final artifacts already are the export: copy them
        print(f"Wrote {out}/: {', '.join(copy_run(source, out))}")
        return 0
    full = cfg.peft.method == "none"
    if args.merge:
        model = merge(model, args.dtype)
    elif args.dtype:
        import torch

        model = model.to(getattr(torch, args.dtype))
    written = write_export(model, tokenizer, out, classifier)
    kind = "merged model" if args.merge else "model" if full else "PEFT adapter"
    dtype = f" ({args.dtype})" if args.dtype else ""
    print(f"Wrote {kind}{dtype} to {out}/: {', '.join(sorted(written))}")
    return 0
