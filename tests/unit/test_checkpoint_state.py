"""Checkpoint bookkeeping without training: which checkpoint is the latest, integrity checks, config
changes, what --resume auto does with the folder it finds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmft.checkpoint.outputs import RUN_MARKER
from llmft.checkpoint.resume import check_resume_config, config_changes
from llmft.checkpoint.state import CheckpointInfo, check_safetensors, latest_checkpoint, resolve_resume
from llmft.errors import UserError
from llmft.finetune import _plan_resume


def _checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    folder = run / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"format": 1, "step": step}))
    return folder


def test_latest_follows_the_marker_and_survives_a_kill_between_rename_and_marker(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 2)
    four = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, complete=False)  # killed while saving
    (tmp_path / "checkpoints" / ".tmp-step-000008").mkdir()  # killed earlier still
    assert latest_checkpoint(tmp_path) == four  # no marker: the newest complete one
    (tmp_path / "checkpoints" / "latest").write_text("step-000002\n")
    # Renamed but the marker not yet moved: the newer complete folder wins over the marker.
    assert latest_checkpoint(tmp_path) == four
    (tmp_path / "checkpoints" / "latest").write_text("step-000004\n")
    assert latest_checkpoint(tmp_path) == four
    assert resolve_resume("auto", tmp_path) == four
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere") == four
    with pytest.raises(UserError, match="is not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "step-000006"), tmp_path)
    with pytest.raises(UserError, match="not found"):
        resolve_resume(str(tmp_path / "nothing"), tmp_path)


def test_safetensors_integrity_is_checked_against_the_header(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"x": torch.arange(10.0), "y": torch.ones(3, 3)}, path)
    check_safetensors(path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-4])
    with pytest.raises(UserError, match=r"a\.safetensors' is corrupted or truncated"):
        check_safetensors(path)
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(UserError, match="header longer than the file"):
        check_safetensors(path)


def test_config_changes_sort_breaking_from_harmless():
    saved = {
        "model": {"name": "a"},
        "peft": {"lora": {"r": 8}},
        "train": {"epochs": 1, "seed": 1},
        "output_dir": "/x",
    }
    more_epochs = {**saved, "train": {"epochs": 3, "seed": 1}, "output_dir": "/y"}
    assert config_changes(saved, more_epochs) == ["train.epochs"]
    info = CheckpointInfo(Path("/ck"), {"world_size": 2}, saved)
    warnings = check_resume_config(info, more_epochs, world_size=1)
    assert warnings[0] == "resuming with changed settings: train.epochs"
    assert "resuming on 1 process(es) a run saved by 2" in warnings[1]
    with pytest.raises(UserError, match=r"peft\.lora\.r \(8 -> 4\)"):
        check_resume_config(info, {**saved, "peft": {"lora": {"r": 4}}}, world_size=2)
    with pytest.raises(UserError, match=r"train\.seed \(1 -> 2\)"):
        check_resume_config(info, {**saved, "train": {"epochs": 1, "seed": 2}}, world_size=2)


def test_resume_auto_restarts_an_interrupted_run_but_never_clears_a_finished_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).write_text("{}")
    (run / "train.log").write_text("killed before the first checkpoint")
    assert _plan_resume("auto", run, False, {}) == (None, True)  # started again, folder cleared
    (run / "summary.json").write_text("{}")  # a finished run
    with pytest.raises(UserError, match="pass --overwrite"):
        _plan_resume("auto", run, False, {})
    with pytest.raises(UserError, match="pass only one of them"):
        _plan_resume("auto", run, True, {})
    checkpoint = _checkpoint(run, 3)
    plan, clear = _plan_resume("auto", run, False, {})
    assert plan.checkpoint == checkpoint and plan.in_place and not clear
    assert _plan_resume(None, tmp_path / "new", False, {}) == (None, False)
