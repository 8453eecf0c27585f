"""Checkpoint bookkeeping without training: which checkpoint is the latest, integrity checks, config
changes, what --resume auto does with the folder it finds."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmft.checkpoint.outputs import RUN_MARKER
from llmft.checkpoint.resume import check_resume_config, config_changes, plan_resume
from llmft.checkpoint.state import (
    CheckpointInfo,
    check_safetensors,
    discard_newer,
    latest_checkpoint,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)
from llmft.config import ModelSection, TrainSection, build_config
from llmft.data.pipeline import TokenizedDataset
from llmft.data.tokenize import TokenizedExample
from llmft.distributed.env import DistEnv
from llmft.errors import UserError
from llmft.models.loader import load_causal_lm, resolve_model
from llmft.peft.methods import apply_method
from llmft.train.trainer import Trainer, TrainSummary

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    folder = run / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"format": 1, "step": step}))
    return folder


def test_latest_follows_the_marker_and_falls_back_only_when_it_dangles(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    two = _checkpoint(tmp_path, 2)
    four = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, complete=False)  # killed while saving
    (tmp_path / "checkpoints" / ".tmp-step-000008").mkdir()  # killed earlier still
    assert latest_checkpoint(tmp_path) == four  # no marker: the newest complete one
    # A save moves the marker before renaming its folder into place: killed in between, the marker
    # names a folder that is not there (or not complete), and the newest complete one serves.
    (tmp_path / "checkpoints" / "latest").write_text("step-000006\n")
    assert latest_checkpoint(tmp_path) == four
    (tmp_path / "checkpoints" / "latest").write_text("step-000010\n")
    assert latest_checkpoint(tmp_path) == four
    # The marker is authoritative: a run resumed from step 2 moved it back, and step 4 belongs to the
    # continuation it replaced (it is deleted when that resume starts).
    (tmp_path / "checkpoints" / "latest").write_text("step-000002\n")
    assert latest_checkpoint(tmp_path) == two
    assert resolve_resume("auto", tmp_path) == two
    (tmp_path / "checkpoints" / "latest").write_text("step-000004\n")
    assert resolve_resume("auto", tmp_path) == four
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere") == four
    with pytest.raises(UserError, match="is not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "step-000006"), tmp_path)
    with pytest.raises(UserError, match="not found"):
        resolve_resume(str(tmp_path / "nothing"), tmp_path)


def test_a_copied_or_renamed_checkpoint_folder_is_accepted(tmp_path):
    copy = tmp_path / "best-so-far"
    copy.mkdir()
    (copy / "trainer_state.json").write_text(json.dumps({"format": 1, "step": 4}))
    with pytest.raises(UserError, match="holds no complete checkpoint"):
        resolve_resume(str(copy), tmp_path)  # no state/: not a checkpoint
    (copy / "state").mkdir()
    assert resolve_resume(str(copy), tmp_path / "elsewhere") == copy


def test_discard_newer_deletes_the_abandoned_continuation_and_moves_the_marker(tmp_path):
    two = _checkpoint(tmp_path, 2)
    for step in (4, 6):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 8, complete=False)
    (tmp_path / "checkpoints" / "latest").write_text("step-000006\n")
    dropped = discard_newer(two, tmp_path)
    assert [p.name for p in dropped] == ["step-000004", "step-000006", "step-000008"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000002"]
    assert latest_checkpoint(tmp_path) == two
    marker = tmp_path / "checkpoints" / "latest"
    before = (marker.stat().st_ino, marker.stat().st_mtime_ns)
    assert discard_newer(two, tmp_path) == []
    assert (marker.stat().st_ino, marker.stat().st_mtime_ns) == before  # nothing replaced: nothing rewritten


def _tiny_trainer() -> Trainer:
    model = load_causal_lm(resolve_model(ModelSection()), ModelSection(), torch.device("cpu"))
    model = apply_method(model, build_config({}, {"peft.lora.dropout": 0.0}).peft)
    examples = [TokenizedExample(list(range(1, 9)), list(range(1, 9)), False) for _ in range(4)]
    cfg = TrainSection(progress=False, precision="fp32", batch_size=2, micro_batch_size=2, max_steps=2)
    return Trainer(model, cfg, TokenizedDataset(examples), None, 0, CPU)


def test_saving_the_same_step_again_never_loses_the_only_checkpoint(tmp_path, monkeypatch, recwarn):
    """keep 1: a second save of step 0 (a resumed run that stopped at once) killed between moving the
    old folder aside and renaming the new one into place still leaves a complete checkpoint."""
    trainer = _tiny_trainer()
    warnings.simplefilter("always")
    first = save_checkpoint(trainer, tmp_path, "{}\n", TrainSummary(), keep=1, reason="end")
    # DCP's "torch.distributed is disabled ... single process" warning is silenced (it is the intent).
    assert not [w for w in recwarn if "torch.distributed is disabled" in str(w.message)]
    files = sorted(p.name for p in first.rglob("*"))
    real_replace = os.replace

    def killed(src, dst):
        if Path(src).name.startswith(".tmp-step-"):  # the new folder's rename: the process dies here
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(trainer, tmp_path, "{}\n", TrainSummary(), keep=1, reason="preempted")
    monkeypatch.undo()
    assert not first.exists()  # moved aside, not deleted
    found = latest_checkpoint(tmp_path)  # puts the old folder back
    assert found == first and sorted(p.name for p in first.rglob("*")) == files
    assert verify_checkpoint(first).state["reason"] == "end"
    # The next save completes, replaces the old folder, and leaves nothing else behind.
    save_checkpoint(trainer, tmp_path, "{}\n", TrainSummary(), keep=1, reason="preempted")
    assert verify_checkpoint(first).state["reason"] == "preempted"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", first.name]


def test_the_latest_marker_names_the_checkpoint_when_extra_files_are_saved(tmp_path):
    """A classifier's run saves its classes beside the state; the marker still names the step folder
    (it once named the last extra file, and latest_checkpoint only found the folder by falling back)."""
    extra = {"classifier.json": "{}\n", "notes.txt": "x\n"}
    saved = save_checkpoint(_tiny_trainer(), tmp_path, "{}\n", TrainSummary(), 1, "end", extra_files=extra)
    assert (tmp_path / "checkpoints" / "latest").read_text(encoding="utf-8").strip() == saved.name
    assert (saved / "classifier.json").read_text(encoding="utf-8") == "{}\n"


def test_verify_names_a_missing_rank_file_and_a_corrupt_rng_file(tmp_path):
    trainer = _tiny_trainer()
    checkpoint = save_checkpoint(trainer, tmp_path, "{}\n", TrainSummary(), keep=1, reason="end")
    (shard,) = (checkpoint / "state").glob("*.safetensors")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["state_files"] == [shard.name] == ["shard-00001-model-00001-of-00001.safetensors"]
    # As written by 2 FSDP ranks (each its own file), with rank 1's file lost.
    state.update(
        world_size=2, strategy="fsdp", state_files=[shard.name, shard.name.replace("00001", "00002", 1)]
    )
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"shard-00002-model-00001-of-00001\.safetensors' is missing"):
        verify_checkpoint(checkpoint)
    del state["state_files"]  # a checkpoint that predates the list: one file per FSDP rank expected
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"shard-00002-model-00001-of-00001\.safetensors' is missing"):
        verify_checkpoint(checkpoint)
    state.update(world_size=1, strategy="single")
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    verify_checkpoint(checkpoint)
    rng = checkpoint / "rng" / "rank-00000.json"
    rng.write_text('{"torch": []}')
    with pytest.raises(UserError, match=r"rank-00000\.json' is corrupted \(no numpy, python state\)"):
        verify_checkpoint(checkpoint)


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
    assert plan_resume("auto", run, False, {}) == (None, True)  # started again, folder cleared
    (run / "summary.json").write_text("{}")  # a finished run
    with pytest.raises(UserError, match="pass --overwrite"):
        plan_resume("auto", run, False, {})
    with pytest.raises(UserError, match="pass only one of them"):
        plan_resume("auto", run, True, {})
    checkpoint = _checkpoint(run, 3)
    plan, clear = plan_resume("auto", run, False, {})
    assert plan.checkpoint == checkpoint and plan.in_place and not clear
    assert plan_resume(None, tmp_path / "new", False, {}) == (None, False)


def test_a_data_position_the_new_layout_cannot_continue_is_refused_before_loading():
    saved = {"train": {"micro_batch_size": 2, "seed": 1}}
    info = CheckpointInfo(Path("/ck"), {"world_size": 1, "epoch": 1, "samples_done": 6}, saved)
    assert check_resume_config(info, saved, world_size=1) == []  # 3 micro-batches of 2
    with pytest.raises(UserError, match=r"stopped 6 samples into epoch 1, which 2 process\(es\) x "
                       r"train.micro_batch_size 2 cannot continue from.*\(1 x 2\)"):  # fmt: skip
        check_resume_config(info, saved, world_size=2)
    changed = {"train": {"micro_batch_size": 4, "seed": 1}}
    with pytest.raises(UserError, match="1 process"):
        check_resume_config(info, changed, world_size=1)
