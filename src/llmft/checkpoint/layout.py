"""Where checkpoints live in a run folder and which one a run continues from.

``<output_dir>/checkpoints/step-<N>/`` folders, a ``latest`` marker naming the one to continue from,
``.tmp-*`` folders being written (or deleted), ``.old-step-<N>`` while a step is saved again. What a
checkpoint folder holds is described in :mod:`llmft.checkpoint.state`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

# A step checkpoint holds the run's config file too (CONFIG_FILE; state.py and verify.py take it from here).
from llmft.checkpoint.outputs import CHECKPOINTS_DIR, CONFIG_FILE  # noqa: F401
from llmft.errors import UserError

log = logging.getLogger(__name__)

LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
STATE_DIR = "state"
GROUPS_FILE = "optimizer_groups.json"
RNG_DIR = "rng"
FORMAT_VERSION = 1
STEP_PREFIX = "step-"  # checkpoints/step-000012
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}(\d+)$")
_OLD_PREFIX = ".old-"


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


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
    # The marker first: a kill during the deletions below then leaves `latest` at the resumed checkpoint,
    # never at a folder being deleted. Rewritten only when it changes (a resume that replaces nothing
    # leaves the checkpoints folder as it was).
    marker = folder / LATEST_FILE
    current = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
    if (
        checkpoint.parent.resolve() == folder.resolve()
        and is_complete(checkpoint)
        and current != checkpoint.name
    ):
        write_marker(folder, checkpoint.name)
    for path in newer:
        # Renamed out of the step-* namespace first, so a kill during the deletion leaves no half folder
        # that could be taken for a checkpoint.
        doomed = path.with_name(f".tmp-discard-{path.name}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
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


def write_marker(folder: Path, name: str) -> None:
    """Point ``latest`` at ``name`` atomically (a temporary file renamed over it)."""
    marker = folder / f".{LATEST_FILE}.tmp"
    marker.write_text(name + "\n", encoding="utf-8")
    os.replace(marker, folder / LATEST_FILE)
