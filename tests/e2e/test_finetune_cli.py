"""The real `llmft` command end to end: golden losses, the files of a run, the overwrite guard."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_cli

# A short fp32 run on the first 64 bundled quotes. The values change only when behaviour does
# (data, masking, loss normalisation, init, schedule); the tolerance is far above fp32 noise.
SHORT_RUN = [
    "--train.max_steps", "6",
    "--train.precision", "fp32",
    "--train.eval_every", "3",
    "--data.max_samples", "64",
    "--generation.max_new_tokens", "8",
]  # fmt: skip
GOLDEN_LOSSES = [
    7.970589029130025,
    7.893789117986506,
    7.834894420144087,
    7.781558213730204,
    7.833896298951741,
    7.794725523603724,
]
GOLDEN_EVAL = {3: 7.935900196525621, 6: 7.920300975349379}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quotes"
    result = run_cli("finetune", *SHORT_RUN, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_golden_losses(short_run):
    out, _ = short_run
    rows = _rows(out)
    train = [r for r in rows if "loss" in r]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in train] == pytest.approx(GOLDEN_LOSSES, abs=TOLERANCE)
    assert evals == pytest.approx(GOLDEN_EVAL, abs=TOLERANCE)
    for row in train:
        assert {
            "step",
            "loss",
            "lr",
            "tokens_per_s",
            "grad_norm",
            "real_tokens",
            "target_tokens",
        } <= row.keys()
        assert row["tokens_per_s"] > 0 and row["target_tokens"] <= row["real_tokens"]
    # Warmup (1 step = 5% of 6, rounded up) reaches the peak at step 1, then cosine decay.
    assert [r["lr"] for r in train] == pytest.approx(
        [3e-4 * f for f in (1, 0.9330127, 0.75, 0.5, 0.25, 0.0669873)]
    )


def test_files_of_a_run(short_run):
    out, result = short_run
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 16
    assert (out / adapter_config["base_model_name_or_path"] / "config.json").is_file()
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    resolved = (out / "llmft_config.yaml").read_text()
    assert f"output_dir: {out}" in resolved and "max_steps: 6" in resolved
    assert json.loads((out / ".llmft-run").read_text())["run_id"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["final_loss"] == pytest.approx(GOLDEN_LOSSES[-1], abs=TOLERANCE)
    assert "eval loss" in (out / "train.log").read_text()
    assert not (out / ".export-tmp").exists()

    # The console: a live bar with loss and tokens/s, then where things went and a sample.
    assert "finetune:" in result.stderr and "loss=" in result.stderr and "tok_s=" in result.stderr
    assert f"Wrote {out}/" in result.stdout
    assert "adapter_model.safetensors" in result.stdout and "Sample (prompt '“The'):" in result.stdout
    # The run ends with a checkpoint at its last step (checkpoint.every_steps 100, at_epoch_end: the end).
    assert "checkpoints/  (latest step-000006; continue with --resume auto)" in result.stdout
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000006"
    assert summary["sample"]["prompt"] == "“The"


def test_a_run_reports_its_memory_estimate_throughput_and_plots(short_run):
    out, result = short_run
    summary = json.loads((out / "summary.json").read_text())
    memory = summary["memory"]
    assert memory["estimate"]["schema"] == "llmft.estimate/1"
    assert memory["estimate"]["setup"]["method"] == "lora" and memory["estimate"]["setup"]["device"] == "cpu"
    assert memory["measured"]["peak_rss_mib"] > 0  # on CPU: the process's host RSS peak
    assert summary["throughput"]["flops_per_token_dense"] > 0
    train = [r for r in _rows(out) if "loss" in r]
    for row in train:
        assert row["flops_per_token"] > 0
        assert row["tflops_per_device"] > 0 and row["peak_rss_mib"] > 0
        assert row["mfu"] is None  # CPU without logging.measure_cpu_peak: no peak, no MFU
    log = (out / "train.log").read_text()
    assert "Memory estimate: tiny-llama, lora" in log and "FLOPs per token" in log
    assert "Memory (rank 0): estimated" in result.stdout and "host RSS peak" in result.stdout
    for name in ("loss.png", "lr.png", "throughput.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overwrite_guard(short_run, tmp_path):
    out, _ = short_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = run_cli("finetune", *SHORT_RUN, "--output_dir", str(out))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"llmft: error: output_dir: '{out}' holds an earlier run; pass --overwrite to replace it, "
        f"or choose another --output_dir"
    ]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched

    # A user's project folder that holds a config named like ours is still not an llmft run.
    project = tmp_path / "my-project"
    (project / "src").mkdir(parents=True)
    (project / "thesis.tex").write_text("precious")
    (project / "llmft_config.yaml").write_text((out / "llmft_config.yaml").read_text())
    refused = run_cli("finetune", *SHORT_RUN, "--config", str(project / "llmft_config.yaml"),
                      "--output_dir", str(project), "--overwrite")  # fmt: skip
    assert refused.returncode == 2 and "is not an llmft run folder" in refused.stderr
    assert (project / "thesis.tex").read_text() == "precious" and (project / "src").is_dir()


def test_overwrite_replaces_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    first = run_cli("finetune", *SHORT_RUN, "--train.max_steps", "2", "--output_dir", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    (out / "stale.txt").write_text("from the earlier run")
    second = run_cli(
        "finetune", *SHORT_RUN, "--train.max_steps", "3", "--output_dir", str(out), "--overwrite"
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert not (out / "stale.txt").exists()
    assert [r["step"] for r in _rows(out) if "loss" in r] == [1, 2, 3]


def test_user_errors_are_one_line_exit_2(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"quote": "“a”", "author": "b"}\n{"quote": oops}\n')
    cases = {
        ("--model.name", "meta-llama/Llama-2-7b-hf"): "is not a preset (tiny-llama) or a local folder",
        ("--model.name", "tiny_llama"): "did you mean the preset 'tiny-llama'?",
        ("--data.path", str(tmp_path / "missing.jsonl")): "data.path: file",
        ("--data.path", str(empty)): "holds no records",
        ("--data.path", str(broken)): "could not be read as JSON",
        ("--train.seed", "-1"): "train.seed: Input should be greater than or equal to 0",
        ("--peft.lora.target_modules", "qproj"): "'qproj' matches no linear layer",
        ("--train.lr", "fast"): "train.lr:",
        ("--train.lr",): "--train.lr needs a value",
        ("--output_dir", str(a_file / "run")): "which is a file",
        ("--config",): "argument --config: expected one argument",
    }
    for args, fragment in cases.items():
        out = ("--output_dir", str(tmp_path / "never")) if "--output_dir" not in args else ()
        result = run_cli("finetune", *out, *args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        # Exactly one line: every check that needs no weights runs before anything is logged.
        assert result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith("llmft: error: ") and fragment in result.stderr, (args, result.stderr)
        assert not (tmp_path / "never").exists()  # bad input leaves nothing behind


def _wandb_records(path):
    """The records of a W&B ``.wandb`` file: wandb 0.31 has no Python reader for its own run log (the
    reading side moved into the Go ``wandb-core``), so this follows the documented LevelDB log layout
    it uses: a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks ``crc32c (4) | length (2, little
    endian) | type (1: full, 2: first, 3: middle, 4: last)``, each whole payload a protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32 * 1024, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_wandb_offline_tensorboard_and_measured_cpu_mfu(tmp_path, monkeypatch):
    """One short run with W&B (offline, no network), TensorBoard and a measured CPU peak: W&B's own
    run log and TensorBoard's events hold, at each logged step, what metrics.jsonl holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = run_cli("finetune", *SHORT_RUN, "--train.max_steps", "3", "--data.max_samples", "32",
                     "--generation.max_new_tokens", "4", "--logging.wandb", "true",
                     "--logging.measure_cpu_peak", "true", "--output_dir", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in evals] == [3]
    assert all(r["mfu"] > 0 for r in train)  # a measured peak gives MFU on CPU
    throughput = json.loads((out / "summary.json").read_text())["throughput"]
    assert throughput["peak_source"] == "measured CPU matmul" and throughput["peak_tflops_per_device"] > 0
    assert throughput["mean_mfu"] == pytest.approx(sum(r["mfu"] for r in train) / 3)
    assert "(measured CPU matmul)" in (out / "train.log").read_text()

    # TensorBoard: every number of a row under train/ (eval_* under eval/), stored as float32.
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for tag, key, source in (("train/loss", "loss", train), ("train/tokens_per_s", "tokens_per_s", train),
                             ("train/mfu", "mfu", train), ("eval/loss", "eval_loss", evals)):  # fmt: skip
        logged = {e.step: e.value for e in events.Scalars(tag)}
        assert logged == pytest.approx({r["step"]: r[key] for r in source}, rel=1e-6), tag

    # W&B: the offline run's log, read back: config, one history row per step (train and eval rows of
    # a step merge), and the end-of-run summary.
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "llmft" and run.display_name == "run"
    assert _items(run.config.update)["train"]["max_steps"] == 3
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = _items(r.history.item)
            history.setdefault(row["_step"], {}).update(row)
    assert sorted(history) == [1, 2, 3]
    for row in train:
        for key in ("loss", "tokens_per_s", "mfu", "lr", "real_tokens"):
            assert history[row["step"]][f"train/{key}"] == row[key], key
    assert history[3]["eval/loss"] == evals[0]["eval_loss"]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["mean_mfu"] == throughput["mean_mfu"] and summary["peak_source"] == "measured CPU matmul"
    assert summary["estimated_total_bytes"] > 0 and summary["peak_rss_mib"] > 0
    assert summary["train/loss"] == train[-1]["loss"]  # W&B's own last-value summary
