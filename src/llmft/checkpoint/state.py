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
``trainer_state.json``, renames the folder to ``step-<N>/`` and only then moves the ``latest`` marker.
A kill at any moment leaves the previous complete checkpoint untouched and named by ``latest``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmft import __version__
from llmft.errors import UserError

if TYPE_CHECKING:
    from llmft.train.trainer import Trainer, TrainSummary

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
STATE_DIR = "state"
GROUPS_FILE = "optimizer_groups.json"
RNG_DIR = "rng"
CONFIG_FILE = "llmft_config.yaml"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_OLD_PREFIX = ".old-"
# torch.distributed.checkpoint warns on every single-process save and load; that is how llmft uses it.
_SINGLE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


# -------------------------------------------------------------------------------------------------
# Finding checkpoints


def is_complete(path: Path) -> bool:
    """A ``step-N`` folder is complete once its trainer_state.json exists (it is written last)."""
    return _STEP_DIR.match(path.name) is not None and (path / STATE_FILE).is_file()


def is_checkpoint(path: Path) -> bool:
    """Any folder that holds a complete checkpoint, whatever its name (a copied or renamed one too)."""
    return (path / STATE_FILE).is_file() and (path / STATE_DIR).is_dir()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run continues from, or None.

    The ``latest`` marker is authoritative: a run resumed from an earlier checkpoint moves it back, and
    ``step-*`` folders above it belong to the abandoned continuation. Only when the marker is missing
    or names a folder that is not complete (a kill before the new folder was renamed into place) does
    the highest complete ``step-*`` folder serve. A re-save of a step killed half-way is repaired first.
    """
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    _repair_resave(folder)
    marker = folder / LATEST_FILE
    if marker.is_file():
        named = folder / marker.read_text(encoding="utf-8").strip()
        if is_complete(named):
            return named
    complete = _complete(folder)
    return complete[-1] if complete else None


def _step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else -1


def _complete(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_complete(p)), key=_step_of)


def _aside(final: Path) -> Path:
    """Where a complete ``step-N`` folder waits while the same step is written again."""
    return final.with_name(f"{_OLD_PREFIX}{final.name}")


def _repair_resave(folder: Path) -> None:
    """Undo a re-save of the same step that was killed between moving the old folder aside and
    renaming the new one into place: the old complete folder goes back under its name.

    Every rank may call this at once (before the process group exists): a rename that another process
    already made fails with FileNotFoundError / OSError and is harmless.
    """
    for aside in folder.glob(f"{_OLD_PREFIX}step-*"):
        final = folder / aside.name[len(_OLD_PREFIX) :]
        if not final.exists() and (aside / STATE_FILE).is_file():
            with contextlib.suppress(OSError):
                os.replace(aside, final)
                log.warning("restored checkpoint %s (its re-save was interrupted)", final)


def discard_newer(checkpoint: Path, run_dir: Path) -> list[Path]:
    """Before a run continues in place from ``checkpoint``, delete the run's ``step-*`` checkpoints of
    later steps (they belong to the continuation being replaced) and point ``latest`` at ``checkpoint``
    when it is one of the run's own step folders. Returns the deleted folders. Rank 0 only."""
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    step = int(json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))["step"])
    newer = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and _step_of(p) > step]
    for path in newer:
        # Renamed out of the step-* namespace first, so a kill during the deletion leaves no half folder
        # that could be taken for a checkpoint.
        doomed = path.with_name(f".tmp-discard-{path.name}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    if checkpoint.parent.resolve() == folder.resolve() and is_complete(checkpoint):
        _write_marker(folder, checkpoint.name)
    return sorted(newer, key=_step_of)


def resolve_resume(value: str, output_dir: Path) -> Path | None:
    """The checkpoint that ``--resume VALUE`` names.

    ``auto``: the latest complete checkpoint in ``output_dir`` (None when there is none: a fresh start).
    A path: a checkpoint folder (a ``step-N`` folder, or any folder holding trainer_state.json and
    state/, e.g. a copied one), or a run folder (its latest checkpoint).
    """
    if value == "auto":
        return latest_checkpoint(output_dir) if output_dir.is_dir() else None
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"--resume: '{path}' not found; pass a checkpoint folder, a run folder or 'auto'")
    if is_checkpoint(path):
        return path
    if (path / CHECKPOINTS_DIR).is_dir() or not _STEP_DIR.match(path.name):
        found = latest_checkpoint(path)
        if found is None:
            raise UserError(
                f"--resume: '{path}' holds no complete checkpoint (no {STATE_FILE} and {STATE_DIR}/, nor "
                f"{CHECKPOINTS_DIR}/step-*/{STATE_FILE}); pass a checkpoint folder or start without --resume"
            )
        return found
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"--resume: '{path}' is not a complete checkpoint ({STATE_FILE} is missing: it was interrupted "
            f"while saving); pass an earlier checkpoint or --resume auto"
        )
    return path


# -------------------------------------------------------------------------------------------------
# Reading what a checkpoint says about itself


@dataclass
class CheckpointInfo:
    path: Path
    state: dict[str, Any]  # trainer_state.json
    config: dict[str, Any]  # llmft_config.yaml, as plain data


def read_info(path: Path) -> CheckpointInfo:
    """The checkpoint's trainer state and config; a missing or unreadable file is a UserError naming it."""
    import yaml

    state_file = path / STATE_FILE
    config_file = path / CONFIG_FILE
    for item in (state_file, config_file):
        if not item.is_file():
            raise UserError(f"checkpoint file '{item}' is missing; resume from another checkpoint") from None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} llmft trainer state")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"checkpoint file '{state_file}' is corrupted ({exc}); resume from another checkpoint"
        ) from None
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"checkpoint file '{config_file}' is corrupted ({exc}); resume from another checkpoint"
        ) from None
    return CheckpointInfo(path, state, config)


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or damaged safetensors file before DCP reads it, naming the file.

    The format is an 8-byte little-endian header length, a JSON header whose ``data_offsets`` give each
    tensor's byte range, then the data: the file must be exactly as long as the header says. (The
    safetensors library checks this only when it reads each tensor, with a message that names no file.)
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"{size} bytes, expected {8 + header_len + end}")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise UserError(
            f"checkpoint file '{path}' is corrupted or truncated ({exc}); resume from another checkpoint"
        ) from None


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
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    env = trainer.env
    folder = run_dir / CHECKPOINTS_DIR
    name = checkpoint_name(trainer.step)
    final = folder / name
    staging = folder / f".tmp-{name}"
    if env.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        _repair_resave(folder)
        # An earlier save or discard that was killed; an old folder whose re-save completed.
        for leftover in [*folder.glob(".tmp-*"), *folder.glob(f"{_OLD_PREFIX}step-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        (staging / RNG_DIR).mkdir(parents=True)
    env.barrier()

    tensors, settings = _state_dicts(trainer)
    # Every rank writes the shards it owns to a file of its own; replicated tensors (DDP, the
    # optimizer's step counts) are written once.
    with quiet_dcp():
        dcp.save(
            tensors,
            storage_writer=HuggingFaceStorageWriter(str(staging / STATE_DIR), save_distributed=True),
        )
    _write_json(staging / RNG_DIR / f"rank-{env.rank:05d}.json", _rng_state())
    env.barrier()

    if env.is_main:
        _write_json(staging / GROUPS_FILE, settings)
        (staging / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        state = {
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
        _write_json(staging / STATE_FILE, state)  # last: its presence marks the folder complete
        # The marker moves first: until the rename below it names a folder that is not there, and
        # latest_checkpoint falls back to the newest complete one (the previous checkpoint).
        _write_marker(folder, name)
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
    env.barrier()
    return final


def _write_marker(folder: Path, name: str) -> None:
    """Point ``latest`` at ``name`` atomically (a temporary file renamed over it)."""
    marker = folder / f".{LATEST_FILE}.tmp"
    marker.write_text(name + "\n", encoding="utf-8")
    os.replace(marker, folder / LATEST_FILE)


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


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """Read and check every file of a checkpoint before any work (a one-line error names the bad one)."""
    info = read_info(path)
    state_dir = path / STATE_DIR
    files = sorted(state_dir.glob("*.safetensors")) if state_dir.is_dir() else []
    if not files:
        raise UserError(
            f"checkpoint folder '{state_dir}' holds no .safetensors files; resume from another checkpoint"
        ) from None
    for name in _expected_state_files(info.state):
        if not (state_dir / name).is_file():
            raise UserError(
                f"checkpoint file '{state_dir / name}' is missing (the checkpoint was written by "
                f"{info.state.get('world_size')} process(es), each with a file of its own); restore it or "
                f"resume from another checkpoint"
            ) from None
    for file in files:
        check_safetensors(file)
    groups_file = path / GROUPS_FILE
    try:
        json.loads(groups_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"checkpoint file '{groups_file}' is missing or corrupted ({exc}); resume from another checkpoint"
        ) from None
    for rng_file in sorted((path / RNG_DIR).glob("rank-*.json")):
        try:
            state = json.loads(rng_file.read_text(encoding="utf-8"))
            missing = {"torch", "python", "numpy"} - set(state)
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))} state")
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(
                f"checkpoint file '{rng_file}' is corrupted ({exc}); resume from another checkpoint"
            ) from None
    return info


def _expected_state_files(state: dict[str, Any]) -> list[str]:
    """The tensor files a checkpoint must hold: those it recorded, else (a checkpoint written before
    they were recorded) one per rank of an FSDP run, in DCP's naming (shards numbered from 1)."""
    if isinstance(state.get("state_files"), list):
        return [str(name) for name in state["state_files"]]
    if state.get("strategy") == "fsdp":
        return [
            f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"
            for rank in range(int(state["world_size"]))
        ]
    return []


def dcp_failure(exc: BaseException) -> str:
    """The gist of a DCP load failure in one line: DCP wraps each rank's error in CheckpointException
    (a BaseException), whose text holds tracebacks."""
    text = " ".join(str(exc).split())
    missing = re.search(r"Missing key in checkpoint state_dict: ([\w.]+?)\.?(?:\s|$)", text)
    if missing:
        return f"it has no '{missing.group(1)}'"
    size = re.search(r"Size mismatch between saved (torch\.Size\(\[[\d, ]*\]\)) and current: "
                     r"(torch\.Size\(\[[\d, ]*\]\)) for ([\w.]+?)\.?(?:\s|$)", text)  # fmt: skip
    if size:
        return f"'{size.group(3)}' has the shape {size.group(1)[11:-1]} there, {size.group(2)[11:-1]} here"
    return text[:300]


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
