"""Step checkpoints for real: resume equality, signals, SIGKILL at random moments, export, bad input.

Every comparison is against the uninterrupted run with the same settings, in fp32 and with LoRA
dropout on (so the restored random state matters): the per-step losses must be identical.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import run_cli
from llmft.checkpoint.state import latest_checkpoint
from llmft.config import build_config
from llmft.finetune import finetune
from llmft.launch.stop import EXIT_PREEMPTED, Preempted
from llmft.train.trainer import Trainer

COMMON = {
    "train.max_steps": 6,
    "train.precision": "fp32",
    "train.batch_size": 4,
    "train.micro_batch_size": 2,
    "train.eval_every": 3,
    "train.progress": False,
    "data.max_samples": 40,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 3,
    "generation.max_new_tokens": 4,
    "logging.tensorboard": False,
    "logging.plot": False,
}
LORA = {"train.lr": 1e-2}
FULL = {"peft.method": "none", "train.lr": 1e-3}
TEXTS = ["“Well done is better than well said.” ― Benjamin Franklin", "“Know thyself.”"]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _rows(out) if "loss" in r}


def _evals(out: Path) -> dict[int, float]:
    return {r["step"]: r["eval_loss"] for r in _rows(out) if "eval_loss" in r}


def _run(out: Path, settings: dict, resume: str | None = None):
    return finetune(build_config({}, {**settings, "output_dir": str(out)}), resume=resume)


def _flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value).lower())]


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _stop_after(monkeypatch, step: int, sig: int = signal.SIGUSR1) -> None:
    """Send this process a real ``sig`` right after optimizer step ``step`` (as a scheduler would)."""
    original = Trainer.train_step

    def train_step(self, micro_batches):
        result = original(self, micro_batches)
        if result.step == step:
            os.kill(os.getpid(), sig)
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.fixture(scope="module")
def straight_lora(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "lora"
    _run(out, {**COMMON, **LORA})
    return out


@pytest.fixture(scope="module")
def straight_full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "full"
    _run(out, {**COMMON, **FULL})
    return out


def test_checkpoints_hold_the_whole_state_and_only_the_last_k_stay(straight_lora):
    folder = straight_lora / "checkpoints"
    # every 2 steps of 6, keep 3: steps 2, 4 and 6 (also the end); nothing half-written is left.
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-000002", "step-000004", "step-000006"]
    assert (folder / "latest").read_text().strip() == "step-000006"
    assert latest_checkpoint(straight_lora) == folder / "step-000006"
    step4 = folder / "step-000004"
    state = json.loads((step4 / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 1 and state["reason"] == "interval"
    assert state["summary"]["losses"] == pytest.approx(list(_losses(straight_lora).values())[:4], abs=0)
    assert (step4 / "rng" / "rank-00000.json").is_file() and (step4 / "llmft_config.yaml").is_file()
    from safetensors.torch import load_file

    (shard,) = (step4 / "state").glob("*.safetensors")
    tensors = load_file(shard)
    assert any(k.startswith("model.") and "lora_A" in k for k in tensors)
    assert any(k.startswith("optim.state.") and k.endswith("exp_avg_sq") for k in tensors)
    # Only trainable weights: the frozen base is not duplicated into every checkpoint.
    assert not any("embed_tokens" in k for k in tensors)


def test_lora_stopped_by_a_signal_resumes_in_place_with_identical_losses(
    tmp_path, monkeypatch, straight_lora
):
    out = tmp_path / "run"
    _stop_after(monkeypatch, 3)
    with pytest.raises(Preempted) as stop:
        _run(out, {**COMMON, **LORA})
    assert stop.value.step == 3 and stop.value.signal_name == "SIGUSR1"
    assert stop.value.checkpoint == out / "checkpoints" / "step-000003"
    assert not (out / "adapter_config.json").exists()  # stopped before the final artifacts
    monkeypatch.undo()
    _run(out, {**COMMON, **LORA}, resume="auto")
    assert _losses(out) == _losses(straight_lora)  # bit-identical, steps 1-6, one row each
    assert _evals(out) == _evals(straight_lora)
    assert [r["step"] for r in _rows(out) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_full_finetune_resumed_from_a_checkpoint_into_a_new_folder(tmp_path, straight_full):
    out = tmp_path / "continued"
    _run(out, {**COMMON, **FULL}, resume=str(straight_full / "checkpoints" / "step-000002"))
    expected = {s: v for s, v in _losses(straight_full).items() if s > 2}
    assert _losses(out) == expected
    # The exported final models are the same weights.
    a = AutoModelForCausalLM.from_pretrained(straight_full)
    b = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.equal(_logits(a, tokenizer), _logits(b, tokenizer))


def test_resume_in_place_from_an_earlier_checkpoint_abandons_the_later_ones(
    tmp_path, monkeypatch, caplog, straight_lora
):
    """A finished 6-step run continued in place from step 2 with max_steps 3: the checkpoints of steps 4
    and 6 belong to the replaced continuation; they are deleted (said so), and --resume auto and the
    closing report then follow the new run (step 3), not the higher abandoned folder."""
    out = tmp_path / "run"
    shutil.copytree(straight_lora, out)
    monkeypatch.setattr(logging.getLogger("llmft"), "propagate", True)  # the CLI may have turned it off
    short = {**COMMON, **LORA, "train.max_steps": 3}
    with caplog.at_level(logging.WARNING, logger="llmft"):
        result = _run(out, short, resume=str(out / "checkpoints" / "step-000002"))
    assert (
        "deleted the later checkpoint(s) step-000004, step-000006 of the run that continued from step 2"
        in (caplog.text)
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000002", "step-000003"]
    assert "latest step-000003;" in result.files["checkpoints"]
    expected = {s: v for s, v in _losses(straight_lora).items() if s <= 3}
    assert _losses(out) == expected
    again = _run(out, short, resume="auto")  # from step 3: nothing left to train
    assert "latest step-000003;" in again.files["checkpoints"]
    assert _losses(out) == expected


EPOCHS = {**{k: v for k, v in COMMON.items() if k != "train.max_steps"}, **LORA, "train.epochs": 2,
          "train.lr_scheduler": "constant", "train.warmup_steps": 0, "train.eval_every": 0,
          "data.max_samples": 18, "checkpoint.every_steps": 0}  # fmt: skip


@pytest.fixture(scope="module")
def straight_epochs(tmp_path_factory) -> Path:
    """2 epochs of 4 steps (16 training records, batch 4) with a constant learning rate, so that a run
    of 1 epoch continued with 2 follows the same schedule."""
    out = tmp_path_factory.mktemp("ckpt") / "epochs"
    _run(out, EPOCHS)
    assert sorted(_losses(out)) == list(range(1, 9))
    return out


def test_resume_from_an_epoch_end_checkpoint_continues_epoch_2_with_identical_losses(
    tmp_path, straight_epochs
):
    checkpoint = straight_epochs / "checkpoints" / "step-000004"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["reason"], state["epoch"], state["micro_batches_done"]) == ("epoch_end", 1, 0)
    out = tmp_path / "continued"
    _run(out, EPOCHS, resume=str(checkpoint))
    assert _losses(out) == {s: v for s, v in _losses(straight_epochs).items() if s > 4}
    rows = [r for r in _rows(out) if "loss" in r]
    assert [r["epoch"] for r in rows] == [1.25, 1.5, 1.75, 2.0]


def test_a_resume_after_the_end_changes_nothing_and_more_epochs_continue(
    tmp_path, straight_lora, straight_epochs
):
    out = tmp_path / "again"
    _run(out, {**COMMON, **LORA}, resume=str(straight_lora))  # its latest checkpoint is the end
    assert _losses(out) == {}  # nothing left to train; the model is written again
    assert (out / "adapter_model.safetensors").is_file()
    # A finished 1-epoch run continued in place with train.epochs 2 trains the second epoch: the same
    # losses as the straight 2-epoch run.
    one = tmp_path / "one-epoch"
    _run(one, {**EPOCHS, "train.epochs": 1})
    assert _losses(one) == {s: v for s, v in _losses(straight_epochs).items() if s <= 4}
    _run(one, EPOCHS, resume="auto")
    assert _losses(one) == _losses(straight_epochs)
    assert latest_checkpoint(one) == one / "checkpoints" / "step-000008"


def _cli_flags(settings: dict, out: Path) -> list[str]:
    return [*_flags(settings), "--output_dir", str(out)]


def _launch(settings: dict, out: Path, *extra: str) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("llmft")), "finetune", *_cli_flags(settings, out), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(out: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").is_file() and any(s >= step for s in _steps_logged(out)):
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("no progress")


def _steps_logged(out: Path) -> list[int]:
    steps = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut short by a kill
            steps.append(json.loads(line).get("step", 0))
    return steps


LONG = {**COMMON, **LORA, "train.max_steps": 12, "train.eval_every": 0, "checkpoint.every_steps": 0,
        "checkpoint.at_epoch_end": False}  # fmt: skip


@pytest.fixture(scope="module")
def straight_long(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "long"
    _run(out, LONG)
    return out


def test_sigterm_saves_exits_75_and_resume_finishes_with_the_same_losses(tmp_path, straight_long):
    out = tmp_path / "run"
    process = _launch(LONG, out)
    _wait_for_step(out, 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("llmft: stopped by SIGTERM after step") and "--resume auto" in last
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert (
        2 <= stopped_at < 12
        and json.loads((checkpoint / "trainer_state.json").read_text())["reason"] == "preempted"
    )
    result = run_cli("finetune", *_cli_flags(LONG, out), "--resume", "auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {checkpoint} at step {stopped_at}" in result.stderr
    assert _losses(out) == _losses(straight_long)


def _step(checkpoint: Path | None) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["step"] if checkpoint else 0


def test_sigkill_at_random_moments_always_resumes_from_the_last_complete_checkpoint(tmp_path, straight_long):
    """Killed four times, once while a checkpoint is being written, the run still ends with the
    uninterrupted run's losses; each restart continues from the newest complete checkpoint."""
    settings = {**LONG, "checkpoint.every_steps": 1, "checkpoint.keep": 2}
    out = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    for attempt in range(4):
        before = _step(latest_checkpoint(out) if out.exists() else None)
        process = _launch(settings, out, "--resume", "auto")
        staging = out / "checkpoints"
        if attempt == 1:  # during a save: the moment a staging folder appears
            deadline = time.monotonic() + 300
            while not (staging.is_dir() and list(staging.glob(".tmp-step-*"))):
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.001)
        else:
            # A row for step before+2 means the checkpoint of step before+1 is complete (rows of the
            # killed attempt reach at most before+1); then kill at a random moment.
            _wait_for_step(out, before + 2, process)
            time.sleep(rng.uniform(0.0, 0.5))
        process.kill()
        process.wait()
        if process.returncode == 0:
            break  # finished before the kill landed
        kills += 1
        after = latest_checkpoint(out)
        assert after is not None and _step(after) >= before + (attempt != 1)
        state = json.loads((after / "trainer_state.json").read_text())
        assert set(state) >= {"step", "epoch", "scheduler", "summary"}  # complete and readable
    assert kills >= 3
    result = run_cli("finetune", *_cli_flags(settings, out), "--resume", "auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _losses(out) == _losses(straight_long)


# -------------------------------------------------------------------------------------------------
# Export


def test_export_of_a_checkpoint_loads_in_plain_peft_with_the_runs_logits(tmp_path, straight_lora):
    out = tmp_path / "adapter"
    result = run_cli("export", str(straight_lora / "checkpoints" / "step-000006"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    final = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), straight_lora)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.equal(_logits(exported, tokenizer), _logits(final, tokenizer))
    # A mid-run checkpoint is another model.
    mid = tmp_path / "mid"
    assert (
        run_cli("export", str(straight_lora / "checkpoints" / "step-000002"), "--out", str(mid)).returncode
        == 0
    )
    earlier = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), mid)
    assert not torch.allclose(_logits(earlier, tokenizer), _logits(final, tokenizer))


def test_export_of_a_full_finetune_checkpoint_is_an_hf_model_folder(tmp_path, straight_full):
    out = tmp_path / "model"
    result = run_cli("export", str(straight_full), "--checkpoint", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    exported = AutoModelForCausalLM.from_pretrained(out)
    final = AutoModelForCausalLM.from_pretrained(straight_full)
    assert torch.equal(_logits(exported, tokenizer), _logits(final, tokenizer))
    # --out is never overwritten without --overwrite, and only an earlier export.
    again = run_cli("export", str(straight_full), "--checkpoint", "--out", str(out))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    assert (
        run_cli("export", str(straight_full), "--checkpoint", "--out", str(out), "--overwrite").returncode
        == 0
    )
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    refused = run_cli("export", str(straight_full), "--out", str(stranger), "--overwrite")
    assert refused.returncode == 2 and "not written by llmft export" in refused.stderr
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_export_of_a_finished_run_copies_its_model_without_run_files(tmp_path, straight_lora):
    out = tmp_path / "copy"
    assert run_cli("export", str(straight_lora), "--out", str(out)).returncode == 0
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert not names & {"checkpoints", "metrics.jsonl", "train.log", "summary.json"}


# -------------------------------------------------------------------------------------------------
# Bad input


def _one_line_error(result, loaded: bool = False) -> str:
    """The error: one line, the last, no traceback, and before any work (no training was set up) unless
    ``loaded`` (found only when the checkpoint's tensors are loaded into the built model)."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("llmft: error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and (loaded or "training:" not in result.stderr)
    return errors[0]


def _copy_checkpoint(source: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run" / "checkpoints" / source.name
    shutil.copytree(source, target)
    return target


def test_a_truncated_checkpoint_file_is_named_in_one_line(tmp_path, straight_lora):
    checkpoint = _copy_checkpoint(straight_lora / "checkpoints" / "step-000004", tmp_path)
    (shard,) = (checkpoint / "state").glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:-100])
    result = run_cli(
        "finetune", *_cli_flags({**COMMON, **LORA}, tmp_path / "new"), "--resume", str(checkpoint)
    )
    line = _one_line_error(result)
    assert str(shard) in line and "truncated" in line
    export = run_cli("export", str(checkpoint), "--out", str(tmp_path / "x"))
    assert str(shard) in _one_line_error(export)


def test_tensors_that_do_not_fit_are_one_line_for_resume_and_export(tmp_path, straight_lora):
    """DCP reports a misfit tensor as CheckpointException, a BaseException: still one line, no traceback."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    checkpoint = _copy_checkpoint(straight_lora / "checkpoints" / "step-000004", tmp_path)
    (shard,) = (checkpoint / "state").glob("*.safetensors")
    with safe_open(shard, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    key = next(k for k in sorted(tensors) if k.startswith("model.") and "lora_A" in k)
    rank, width = tensors[key].shape
    tensors[key] = torch.zeros(rank + 1, width)
    save_file(tensors, shard, metadata=metadata)
    result = run_cli(
        "finetune", *_cli_flags({**COMMON, **LORA}, tmp_path / "new"), "--resume", str(checkpoint)
    )
    line = _one_line_error(result, loaded=True)
    shape = f"'{key}' has the shape [{rank + 1}, {width}] there, [{rank}, {width}] here"
    assert str(checkpoint / "state") in line and shape in line, line
    export = _one_line_error(run_cli("export", str(checkpoint), "--out", str(tmp_path / "x")))
    assert str(checkpoint / "state") in export and shape in export


def test_a_renamed_checkpoint_folder_exports_and_resumes(tmp_path, straight_lora):
    renamed = tmp_path / "best-so-far"
    shutil.copytree(straight_lora / "checkpoints" / "step-000004", renamed)
    result = run_cli("export", str(renamed), "--out", str(tmp_path / "adapter"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "torch.distributed is disabled" not in result.stderr  # DCP's single-process warning
    out = tmp_path / "continued"
    _run(out, {**COMMON, **LORA}, resume=str(renamed))
    assert _losses(out) == {s: v for s, v in _losses(straight_lora).items() if s > 4}
    # A copy kept inside a run folder continues into a new folder, not in place over that run.
    inside = out / "saved" / "best"
    shutil.copytree(renamed, inside)
    result = run_cli("finetune", *_cli_flags({**COMMON, **LORA}, out), "--resume", str(inside))
    assert _one_line_error(result) == (
        f"llmft: error: --resume: '{inside}' lies inside the run folder {out} but is not one of its "
        f"checkpoints/step-N checkpoints; continue it into a new --output_dir instead"
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "trainer_state.json").unlink(), "is not a complete checkpoint"),
        (lambda c: (c / "trainer_state.json").write_text("{not json"), "trainer_state.json' is corrupted"),
        (lambda c: (c / "optimizer_groups.json").unlink(), "optimizer_groups.json' is missing"),
        (lambda c: (c / "rng" / "rank-00000.json").write_text("{}"), "rank-00000.json' is corrupted"),
    ],
)
def test_damaged_checkpoint_metadata_is_one_line(tmp_path, straight_lora, damage, message):
    checkpoint = _copy_checkpoint(straight_lora / "checkpoints" / "step-000004", tmp_path)
    damage(checkpoint)
    result = run_cli(
        "finetune", *_cli_flags({**COMMON, **LORA}, tmp_path / "new"), "--resume", str(checkpoint)
    )
    assert message in _one_line_error(result)


def test_resume_refuses_a_breaking_change_and_warns_about_a_harmless_one(tmp_path, straight_lora):
    checkpoint = str(straight_lora / "checkpoints" / "step-000004")
    changed = {**COMMON, **LORA, "peft.lora.r": 4}
    line = _one_line_error(run_cli("finetune", *_cli_flags(changed, tmp_path / "a"), "--resume", checkpoint))
    assert "peft.lora.r (16 -> 4)" in line
    missing = _one_line_error(
        run_cli("finetune", *_cli_flags(COMMON, tmp_path / "b"), "--resume", str(tmp_path))
    )
    assert "holds no complete checkpoint" in missing
    harmless = {**COMMON, **LORA, "train.log_every": 2}
    result = run_cli("finetune", *_cli_flags(harmless, tmp_path / "c"), "--resume", checkpoint)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming with changed settings: train.log_every" in result.stderr
    assert [s for s in _losses(tmp_path / "c")] == [6]  # log_every 2 from step 5: the last step is logged
    # The resumed run's own checkpoint holds the uninterrupted run's data position: 12 of the epoch's 18
    # micro-batches (not "epoch 1": the resumed loader holds only the 10 left), and no early epoch end.
    assert sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir()) == ["latest", "step-000006"]
    position = ("epoch", "micro_batches_done", "samples_done")
    saved = [json.loads((run / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
             for run in (tmp_path / "c", straight_lora)]  # fmt: skip
    assert [saved[0][k] for k in position] == [saved[1][k] for k in position] == [0, 12, 24]


def test_export_merge_writes_a_plain_model_with_the_adapter_models_logits(
    tmp_path, straight_lora, straight_full
):
    base = json.loads((straight_lora / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(straight_lora)
    adapter = _logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), straight_lora), tokenizer
    )
    for source in (straight_lora, straight_lora / "checkpoints" / "step-000006"):
        out = tmp_path / source.name
        result = run_cli("export", str(source), "--merge", "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Wrote merged model" in result.stdout and not (out / "adapter_config.json").exists()
        merged = AutoModelForCausalLM.from_pretrained(out)
        torch.testing.assert_close(_logits(merged, tokenizer), adapter, rtol=0, atol=1e-4)
    full = run_cli("export", str(straight_full), "--merge", "--out", str(tmp_path / "full"))
    assert "no adapter); drop --merge" in _one_line_error(full)  # full fine-tuning has nothing to fold


def _dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118


def test_export_dtype_writes_the_weights_in_that_dtype(tmp_path, straight_lora, straight_full):
    out = tmp_path / "bf16"
    result = run_cli("export", str(straight_lora), "--merge", "--dtype", "bfloat16", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Wrote merged model (bfloat16) to {out}/" in result.stdout
    assert _dtypes(out) == {"BF16"}
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    out = tmp_path / "fp16"
    result = run_cli("export", str(straight_full), "--checkpoint", "--dtype", "float16", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Wrote model (float16) to {out}/" in result.stdout and "merged" not in result.stdout
    assert _dtypes(out) == {"F16"}
    adapter = run_cli("export", str(straight_lora), "--dtype", "float16", "--out", str(tmp_path / "a"))
    assert "an adapter keeps its trained dtype; add --merge" in _one_line_error(adapter)
    step = straight_lora / "checkpoints" / "step-000004"
    adapter = run_cli("export", str(step), "--dtype", "float16", "--out", str(tmp_path / "a"))
    assert "an adapter keeps its trained dtype; add --merge" in _one_line_error(adapter)
    assert "exporting checkpoint" not in adapter.stderr  # refused from the config, before any loading


def test_export_merge_of_a_4bit_lora_run_loads_in_plain_transformers(tmp_path):
    """QLoRA (bitsandbytes nf4 base): the merged model is the dequantized base plus the adapter; its
    logits match the adapter on the quantized base within 1e-3 (the export reports the difference)."""
    from llmft.checkpoint.loading import load_run_model
    from llmft.config import Config

    run = tmp_path / "qlora"
    _run(run, {**COMMON, **LORA, "peft.method": "qlora", "train.max_steps": 2, "train.eval_every": 0,
               "checkpoint.every_steps": 0})  # fmt: skip
    out = tmp_path / "merged"
    result = run_cli("export", str(run), "--merge", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Wrote merged model" in result.stdout
    assert "merge: 4-bit (nf4) bitsandbytes base dequantized to float32" in result.stderr
    assert "merge: max |logit difference| vs the adapter model" in result.stderr
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(merged.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(out)
    cfg = Config.model_validate(__import__("yaml").safe_load((run / "llmft_config.yaml").read_text()))
    adapter, _ = load_run_model(run, cfg, torch.device("cpu"))
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(adapter, tokenizer), rtol=0, atol=1e-3)
