"""The run folder: the names of its files, the overwrite guard, and the final artifacts that plain
transformers/peft load.

Every file name of a run folder is defined here, except two that their own code owns: the classifier's
``classifier.json`` (:data:`llmft.models.heads.CLASSIFIER_FILE`, read by
:class:`~llmft.models.heads.ClassifierSpec`) and the plots (``*.png``, :func:`llmft.train.metrics.plot_run`).
``llmft finetune`` writes them; ``llmft export`` and the loaders of a finished run read them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from llmft.errors import UserError
from llmft.hf import quiet_progress_bars

if TYPE_CHECKING:
    from torch import Tensor, nn

# A hidden file that only llmft writes, in every run folder. --overwrite deletes a folder only when
# it holds this file: a folder that merely contains a config named like ours (a user's project
# folder, say) is never deleted.
RUN_MARKER = ".llmft-run"
# The resolved config of the run, reusable with `llmft finetune --config` (a step checkpoint has one too).
CONFIG_FILE = "llmft_config.yaml"
# The run's records: the log, the closing summary, one metrics row per logged step, TensorBoard events,
# the step checkpoints (:mod:`llmft.checkpoint.layout`).
TRAIN_LOG = "train.log"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
# What save_pretrained writes first of all: PEFT's adapter config, transformers' model config. Loaders
# look for these first; they are moved into place last, so a folder that has one is whole.
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
_INDEX_FILES = (ADAPTER_CONFIG, MODEL_CONFIG)
# What a run folder holds besides the model (and its plots, *.png): never copied into an export.
RUN_RECORDS = frozenset({CHECKPOINTS_DIR, TENSORBOARD_DIR, METRICS_FILE, TRAIN_LOG, SUMMARY_FILE, RUN_MARKER})
# A hidden file in every folder that `llmft export` writes: its --overwrite replaces only such a folder.
EXPORT_MARKER = ".llmft-export"


def is_tokenizer_file(name: str) -> bool:
    """Whether ``name`` is one of the files a tokenizer's save_pretrained writes."""
    return name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges"))


def has_final_model(run_dir: Path) -> bool:
    """Whether a run folder holds its final model: an adapter or a whole model."""
    return (run_dir / ADAPTER_CONFIG).is_file() or (run_dir / MODEL_CONFIG).is_file()


class RunLog:
    """The run folder's train.log, including what was logged before the folder could be claimed
    (those records wait in memory, and are dropped if the run stops before writing anything)."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("llmft")
        self.buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        self.file: logging.Handler | None = None
        self.logger.addHandler(self.buffer)
        # The file keeps INFO whatever the console shows (the console handler has its own level).
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)

    def open(self, output_dir: Path) -> None:
        self.file = logging.FileHandler(output_dir / TRAIN_LOG, encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        self.logger.removeHandler(self.buffer)
        self.logger.addHandler(self.file)

    def close(self) -> None:
        for handler in (self.buffer, self.file):
            if handler is not None:
                self.logger.removeHandler(handler)
                handler.close()


def _writable_parent(path: Path) -> None:
    """Refuse a path whose nearest existing ancestor is a file or cannot be written."""
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(
            f"output_dir: '{path}' lies under '{ancestor}', which is a file; choose another --output_dir"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(
            f"output_dir: cannot write in '{ancestor}' (permission denied); choose another --output_dir"
        )


def check_output_dir(path: Path, overwrite: bool, inputs: dict[str, Path] | None = None) -> None:
    """Refuse, before any work, an output folder that would lose an earlier run or anything else.

    Args:
        path: the run folder.
        overwrite: whether an earlier llmft run there may be replaced.
        inputs: what the run reads, by config field (``{"model.name": folder, ...}``); a folder that
            holds one of them is never cleared.
    """
    if path.is_symlink():
        raise UserError(f"output_dir: '{path}' is a symbolic link; pass the folder it points to")
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir: '{path}' is a file, not a folder; choose another --output_dir")
    _writable_parent(path)
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
    real = path.resolve()
    if real in Path.cwd().resolve().parents:
        raise UserError(
            f"output_dir: '{path}' holds the current folder; --overwrite would delete it; choose another --output_dir"
        )
    for field, item in (inputs or {}).items():
        item = item.expanduser().resolve()
        if item == real or real in item.parents:
            raise UserError(
                f"output_dir: '{path}' holds {field} '{item}', which this run reads; --overwrite would "
                f"delete it; choose another --output_dir"
            )


def claim_output_dir(path: Path, overwrite: bool, inputs: dict[str, Path] | None = None) -> Path:
    """Create the run folder with its marker, clearing an earlier run when ``overwrite`` allows.

    An earlier run's contents are deleted, not the folder itself, so that ``--output_dir .`` works.
    """
    check_output_dir(path, overwrite, inputs)
    try:
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)
        marker = {"run_id": uuid.uuid4().hex, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (path / RUN_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"output_dir: cannot create '{path}': {exc.strerror or exc}") from None
    return path


def save_artifacts(
    model: nn.Module, tokenizer, output_dir: Path, state_dict: dict[str, Tensor] | None = None
) -> list[Path]:
    """Save the trained model (a PEFT adapter, or the whole model) and the tokenizer into ``output_dir``.

    ``state_dict``: the full weights to write instead of the model's own (a sharded model's weights,
    gathered on this rank).

    Everything is written to a staging folder first and then moved into place, weights before the
    config files that loaders read first (``adapter_config.json`` / ``config.json``): an interrupted
    save leaves either no loadable model or a whole one, never a config without its weights.
    """
    staging = output_dir / ".export-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with quiet_progress_bars():
        model.save_pretrained(
            staging, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {})
        )
        tokenizer.save_pretrained(staging)
    items = sorted(staging.iterdir(), key=lambda p: (p.name in _INDEX_FILES, p.name))
    written = []
    for item in items:
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
        written.append(target)
    staging.rmdir()
    return written
