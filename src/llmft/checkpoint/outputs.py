"""The run folder: the overwrite guard and the final artifacts that plain transformers/peft load."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn

from llmft.errors import UserError

# Present in every folder llmft writes; --overwrite only ever deletes folders that have it.
RUN_MARKER = "llmft_config.yaml"


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that would lose an earlier run or foreign files."""
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir: '{path}' is a file, not a folder; choose another --output_dir")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not (path / RUN_MARKER).is_file():
        raise UserError(
            f"output_dir: '{path}' is not empty and is not an llmft run folder (no {RUN_MARKER}); "
            f"llmft will not delete it even with --overwrite; choose another --output_dir"
        )
    if not overwrite:
        raise UserError(
            f"output_dir: '{path}' holds an earlier run; pass --overwrite to replace it, "
            f"or choose another --output_dir"
        )


def claim_output_dir(path: Path, overwrite: bool) -> Path:
    """Create the folder, clearing an earlier run when ``overwrite`` allows (checked again here)."""
    check_output_dir(path, overwrite)
    if path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_artifacts(model: nn.Module, tokenizer, output_dir: Path) -> list[Path]:
    """Save the trained model (a PEFT adapter, or the whole model) and the tokenizer into ``output_dir``.

    Files are written to a temporary folder first and moved into place once complete, so an
    interrupted save never leaves a half-written adapter where a reader expects a whole one.
    """
    staging = output_dir / ".export-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    written = []
    for item in sorted(staging.iterdir()):
        target = output_dir / item.name
        if target.is_dir() and not item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
        written.append(target)
    staging.rmdir()
    return written
