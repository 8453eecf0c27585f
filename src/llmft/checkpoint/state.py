"""Resumable training state: what a step checkpoint holds, how it is written safely, how it is read.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<N>/``::

    state/*.safetensors     trainable weights and optimizer tensors, written by torch.distributed.checkpoint
                            (DCP) in the safetensors format: one file per rank, each holding its shards
    optimizer_groups.json   the optimizer's non-tensor settings (lr of each group, betas, ...)
    rng/rank-<R>.json       every rank's random number generators (torch, CUDA, python, numpy)
    llmft_config.yaml       the resolved config of the run
    trainer_state.json      step, data position, schedule, losses so far; written last

Only safetensors and JSON/YAML are read back, never pickle. DCP reshards on load, so a checkpoint
written by 2 FSDP ranks loads into 1 process (export) or into another layout.

Atomicity: every rank writes into ``.tmp-step-<N>/``; once all have finished, rank 0 writes
``trainer_state.json``, points the ``latest`` marker at ``step-<N>`` and renames the folder into place
(until then the marker dangles and :func:`llmft.checkpoint.layout.latest_checkpoint` falls back to the
newest complete folder). A kill at any moment leaves the previous complete checkpoint untouched.
Finding checkpoints is :mod:`llmft.checkpoint.layout`; checking one, :mod:`llmft.checkpoint.verify`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmft import __version__

# Re-exported: callers import the checkpoint API from here.
from llmft.checkpoint.layout import (  # noqa: F401
    _OLD_PREFIX,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    GROUPS_FILE,
    LATEST_FILE,
    RNG_DIR,
    STATE_DIR,
    STATE_FILE,
    _aside,
    _complete,
    _repair_resave,
    checkpoint_name,
    discard_newer,
    is_checkpoint,
    is_complete,
    latest_checkpoint,
    resolve_resume,
    write_marker,
)
from llmft.checkpoint.verify import (  # noqa: F401
    CheckpointInfo,
    check_safetensors,
    dcp_failure,
    read_info,
    verify_checkpoint,
)
from llmft.errors import UserError

if TYPE_CHECKING:
    from llmft.train.trainer import Trainer, TrainSummary

log = logging.getLogger(__name__)

# torch.distributed.checkpoint warns on every single-process save and load; that is how llmft uses it.
_SINGLE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


# -------------------------------------------------------------------------------------------------
# The tensors: trainable weights and optimizer state, through DCP


def _state_dicts(trainer: Trainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, non-tensor optimizer settings), keyed by parameter names that do not depend on the
    wrapping (DDP's ``module.`` prefix and FSDP are removed by ``get_state_dict``).

    Only trainable parameters are saved: a frozen base is reloaded from its own checkpoint on resume.
    For an optimizer that has not stepped yet, ``get_state_dict`` creates its state (a zero step), so a
    fresh trainer yields the template that a checkpoint is loaded into.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from llmft.models.quantize import without_quantization_state

    options = StateDictOptions(ignore_frozen_params=True, flatten_optimizer_state_dict=True)
    with without_quantization_state(trainer.model):  # a bitsandbytes base's frozen scales
        model_sd, optim_sd = get_state_dict(trainer.model, trainer.optimizer, options=options)
    tensors = {f"model.{k}": v for k, v in model_sd.items()}
    settings = {}
    for key, value in optim_sd.items():
        if isinstance(value, torch.Tensor):
            tensors[f"optim.{key}"] = value
        else:
            settings[key] = value
    return tensors, settings


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "python": [version, list(mt_state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _write_json(path: Path, data: Any) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    trainer: Trainer,
    run_dir: Path,
    config_yaml: str,
    summary: TrainSummary,
    keep: int,
    reason: str,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write the whole training state after ``trainer.step`` (all ranks call this together).

    ``extra_files``: more small text files (name -> content) that describe the model, e.g. a
    classifier's classes. Returns the complete checkpoint folder. The previous ``keep - 1`` complete
    checkpoints stay.

    The checkpoint is written into a ``.tmp-`` folder (every rank its tensors and RNG state, then rank 0
    the small files, ``trainer_state.json`` last) and renamed into place by rank 0.
    """
    env = trainer.env
    folder = run_dir / CHECKPOINTS_DIR
    name = checkpoint_name(trainer.step)
    staging = folder / f".tmp-{name}"
    if env.is_main:
        _clear_staging(folder, staging)
    env.barrier()

    settings = _write_tensors(trainer, staging)
    env.barrier()

    if env.is_main:
        _write_json(staging / GROUPS_FILE, settings)
        (staging / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        for file_name, text in (extra_files or {}).items():
            (staging / file_name).write_text(text, encoding="utf-8")
        state = _trainer_state(trainer, summary, reason, staging)
        _write_json(staging / STATE_FILE, state)  # last: its presence marks the folder complete
        _publish(staging, folder / name, keep)
    env.barrier()
    return folder / name


def _clear_staging(folder: Path, staging: Path) -> None:
    """Make an empty staging folder, after removing what a killed save left behind. Rank 0 only."""
    folder.mkdir(parents=True, exist_ok=True)
    _repair_resave(folder)
    # An earlier save or discard that was killed; an old folder whose re-save completed.
    for leftover in [*folder.glob(".tmp-*"), *folder.glob(f"{_OLD_PREFIX}step-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    (staging / RNG_DIR).mkdir(parents=True)


def _write_tensors(trainer: Trainer, staging: Path) -> dict[str, Any]:
    """This rank's tensors (through DCP) and RNG state into ``staging``; returns the optimizer's
    non-tensor settings (rank 0 writes them)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tensors, settings = _state_dicts(trainer)
    # Every rank writes the shards it owns to a file of its own; replicated tensors (DDP, the
    # optimizer's step counts) are written once.
    with quiet_dcp():
        dcp.save(
            tensors,
            storage_writer=HuggingFaceStorageWriter(str(staging / STATE_DIR), save_distributed=True),
        )
    _write_json(staging / RNG_DIR / f"rank-{trainer.env.rank:05d}.json", _rng_state())
    return settings


def _trainer_state(trainer: Trainer, summary: TrainSummary, reason: str, staging: Path) -> dict[str, Any]:
    """trainer_state.json: the step, the data position, the schedule and the summary so far."""
    env = trainer.env
    return {
        "format": FORMAT_VERSION,
        "llmft_version": __version__,
        "reason": reason,
        "step": trainer.step,
        "total_steps": trainer.total_steps,
        **trainer.data_state(),
        "world_size": env.world_size,
        "strategy": env.strategy,
        # The tensor files every rank wrote: a checkpoint missing one is refused, naming it.
        "state_files": sorted(f.name for f in (staging / STATE_DIR).glob("*.safetensors")),
        "scheduler": trainer.scheduler.state_dict(),
        "summary": {
            "losses": summary.losses,
            "train_time_s": summary.train_time_s,
            "real_tokens": summary.real_tokens,
            "eval_loss": summary.eval_loss,
            "eval_metrics": summary.eval_metrics,
        },
        "evaluated_at": trainer.evaluated_at,
    }


def _publish(staging: Path, final: Path, keep: int) -> None:
    """Rename the complete ``staging`` folder to ``final``, point ``latest`` at it, and delete all but
    the newest ``keep`` complete checkpoints. Rank 0 only."""
    folder = final.parent
    # The marker moves first: until the rename below it names a folder that is not there, and
    # latest_checkpoint falls back to the newest complete one (the previous checkpoint).
    write_marker(folder, final.name)
    aside = _aside(final)
    if final.exists():  # the same step saved again (a resumed run that stopped at once)
        # Moved aside, not deleted, until the new folder is in place: a kill in between leaves the old
        # one, which latest_checkpoint moves back (with keep 1 it is the only checkpoint).
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(staging, final)
    _fsync_dir(folder)
    shutil.rmtree(aside, ignore_errors=True)
    for old in _complete(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def quiet_dcp():
    """Silence DCP's one warning that a save or load runs in a single process (what llmft means to do
    without a process group); every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)
        yield


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_tensors(trainer: Trainer, path: Path) -> dict[str, Any]:
    """Load the checkpoint's weights, optimizer state and RNG into ``trainer``'s (already built) model
    and optimizer, resharding to this run's layout; returns the trainer state (trainer_state.json)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    info = verify_checkpoint(path)
    state_dir = path / STATE_DIR
    settings = json.loads((path / GROUPS_FILE).read_text(encoding="utf-8"))

    from torch.distributed.checkpoint.api import CheckpointException

    tensors, template_settings = _state_dicts(trainer)
    try:
        with quiet_dcp():
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(state_dir)))
    except (Exception, CheckpointException) as exc:  # the gist: a missing or misfit tensor
        raise UserError(
            f"checkpoint '{state_dir}' does not fit this model ({dcp_failure(exc)}); resume with the model, "
            f"peft and freeze settings it was written with"
        ) from None
    for key, value in settings.items():
        if key.endswith(".betas"):
            value = tuple(value)
        template_settings[key] = value
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_sd = {k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")}
    from llmft.models.quantize import without_quantization_state

    options = StateDictOptions(ignore_frozen_params=True, flatten_optimizer_state_dict=True, strict=False)
    with without_quantization_state(trainer.model):
        set_state_dict(
            trainer.model,
            trainer.optimizer,
            model_state_dict=model_sd,
            optim_state_dict={**optim_sd, **template_settings},
            options=options,
        )
    trainer.scheduler.load_state_dict(info.state["scheduler"])
    rng_file = path / RNG_DIR / f"rank-{trainer.env.rank:05d}.json"
    if rng_file.is_file():
        try:
            _set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"checkpoint file '{rng_file}' is corrupted ({exc}); resume from another checkpoint"
            ) from None
    else:  # a run resumed on more processes than it was saved with
        log.warning("no random state saved for rank %d; dropout draws a new stream", trainer.env.rank)
    return info.state
