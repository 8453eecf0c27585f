"""Resuming a run: where it continues from (``--resume``), and which config changes it may make (the
ones that break it are errors, the rest warnings)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.checkpoint.outputs import CHECKPOINTS_DIR, RUN_MARKER, SUMMARY_FILE, check_output_dir
from llmft.checkpoint.state import CheckpointInfo, resolve_resume
from llmft.errors import UserError

log = logging.getLogger(__name__)

# Changing these makes the checkpoint meaningless for this run: other weights or parameter names
# (model, method, freezing, head), another data stream (data, seed), or another step <-> sample mapping
# and schedule (global batch).
BREAKING = ("model.", "peft.", "freeze.", "head.", "task", "data.", "train.seed", "train.batch_size")
# Never compared: where the run is written.
IGNORED = ("output_dir",)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ (a field only one side has counts too)."""
    old, new = _flatten(saved), _flatten(current)
    return sorted(
        k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not k.startswith(IGNORED)
    )


def check_resume_config(info: CheckpointInfo, current: dict[str, Any], world_size: int) -> list[str]:
    """Refuse a resume that cannot continue the checkpoint's run; warn about harmless changes.

    Returns the warnings (also logged). A different number of processes or strategy is allowed: DCP
    reshards the state and the data position is kept in samples, but the losses then differ from the
    uninterrupted run by reduction order (and by dropout, drawn per rank).
    """
    changes = config_changes(info.config, current)
    breaking = [k for k in changes if k.startswith(BREAKING)]
    if breaking:
        shown = ", ".join(
            f"{k} ({_flatten(info.config).get(k)!r} -> {_flatten(current).get(k)!r})" for k in breaking[:4]
        )
        raise UserError(
            f"--resume: {info.path} was written with other settings that it cannot continue under: {shown}; "
            f"resume with the checkpoint's own settings ({info.path / 'llmft_config.yaml'}) or start a new run"
        )
    _check_data_position(info, current, world_size)
    warnings = []
    if changes:
        warnings.append(f"resuming with changed settings: {', '.join(changes)}")
    saved_world = int(info.state.get("world_size", world_size))
    if saved_world != world_size:
        warnings.append(
            f"resuming on {world_size} process(es) a run saved by {saved_world}: the state is resharded; "
            f"losses match the uninterrupted run only up to reduction order"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _check_data_position(info: CheckpointInfo, current: dict[str, Any], world_size: int) -> None:
    """Refuse, before the model loads, a layout that cannot continue the checkpoint's data position.

    Each of the W processes reads every W-th sample of one global order, so a position of S samples
    into the epoch continues only when S is a whole number of micro-batches of all processes together
    (the trainer's ``load_data_state`` makes the same check when it restores the position).
    """
    samples = int(info.state.get("samples_done", 0) or 0)
    micro = int((current.get("train") or {}).get("micro_batch_size") or 1)
    if samples % (micro * world_size):
        raise UserError(
            f"--resume: {info.path} stopped {samples} samples into epoch {info.state.get('epoch')}, which "
            f"{world_size} process(es) x train.micro_batch_size {micro} cannot continue from; resume with the "
            f"number of processes and micro_batch_size it was written with "
            f"({info.state.get('world_size')} x {_flatten(info.config).get('train.micro_batch_size')})"
        )


@dataclass
class ResumePlan:
    """Where a resumed run continues from, and whether it continues in its own run folder."""

    checkpoint: Path
    in_place: bool


def plan_resume(
    resume: str | None, output_dir: Path, overwrite: bool, inputs: dict[str, Path]
) -> tuple[ResumePlan | None, bool]:
    """Check the output folder against ``--resume`` and ``--overwrite``; returns the resume plan (None:
    a fresh run) and whether an earlier run in the folder may be cleared.

    ``inputs``: what the run reads, by config field (see :func:`~llmft.checkpoint.outputs.check_output_dir`).
    """
    if resume is None:
        check_output_dir(output_dir, overwrite, inputs)
        return None, overwrite
    if overwrite:
        raise UserError("--resume continues a run and --overwrite deletes it: pass only one of them")
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is None:  # --resume auto, nothing saved yet
        interrupted = (output_dir / RUN_MARKER).is_file() and not (output_dir / SUMMARY_FILE).exists()
        if interrupted:
            log.warning("--resume auto: %s holds no checkpoint yet; starting the run again", output_dir)
        check_output_dir(output_dir, interrupted, inputs)
        return None, interrupted
    in_place = output_dir.resolve() in checkpoint.resolve().parents
    own_steps = (output_dir / CHECKPOINTS_DIR).resolve()
    if in_place and checkpoint.resolve().parent != own_steps:
        # A copy kept inside the run folder (e.g. run/saved/best): continuing there would leave the run's
        # own `latest` and later step folders pointing at another continuation.
        raise UserError(
            f"--resume: '{checkpoint}' lies inside the run folder {output_dir} but is not one of its "
            f"{CHECKPOINTS_DIR}/step-N checkpoints; continue it into a new --output_dir instead"
        )
    if not in_place:  # a new run folder that starts from another run's checkpoint
        check_output_dir(output_dir, False, {**inputs, "--resume": checkpoint})
    return ResumePlan(checkpoint, in_place), False
