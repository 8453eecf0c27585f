"""task: classification end to end: exact losses of a short run, exports that plain transformers / peft
load with the label names, `llmft predict`, MLP heads and LoRA classifiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "--train.max_steps", "4", "--train.precision", "fp32", "--train.eval_every", "2",
    "--data.max_samples", "64", "--train.micro_batch_size", "8", "--train.batch_size", "8",
    "--logging.tensorboard", "false", "--logging.plot", "false",
]  # fmt: skip
# classifier_head.yaml (linear head on the frozen tiny-llama), 4 steps of 8 on the first 64 records.
GOLDEN_LOSSES = [1.062714695930481, 0.9686191082000732, 0.9927574992179871, 1.135006308555603]
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["The soup was cold and the waiter ignored us.", "An excellent film, I loved every minute."]


def _run(tmp_path_factory, name: str, *args: str) -> Path:
    out = tmp_path_factory.mktemp("cls") / name
    result = run_cli("finetune", *args, *SHORT, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def head_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, "head", "--config", str(ROOT / "configs/classifier_head.yaml"))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _predict(out: Path) -> list[tuple[str, float]]:
    result = run_cli("predict", str(out), *[a for t in TEXTS for a in ("--text", t)])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [line[2] for line in lines] == TEXTS and all(line[0] in LABELS for line in lines)
    return [(line[0], float(line[1])) for line in lines]


def test_short_run_has_exact_losses_and_classification_metrics(head_run):
    rows = _rows(head_run)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=1e-4)
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["eval_accuracy"] <= 1 and 0 <= r["eval_macro_f1"] <= 1 for r in evals)  # values: below
    summary = json.loads((head_run / "summary.json").read_text())
    assert summary["eval_accuracy"] == evals[-1]["eval_accuracy"]


def test_classification_metrics_have_known_values():
    from llmft.train.loss import IGNORE_INDEX, classification_metrics

    # Worked by hand (scikit-learn's accuracy_score / f1_score(average="macro") give the same): F1 of
    # class 0 = 2*1/(2+1), class 1 = 2*1/(1+2), class 2 = 1; class 3 occurs nowhere and is left out;
    # the ignored position counts for nothing.
    predicted = torch.tensor([0, 0, 1, 2, 3])
    expected = torch.tensor([0, 1, 1, 2, IGNORE_INDEX])
    metrics = classification_metrics(predicted, expected, num_classes=4)
    assert metrics["eval_accuracy"] == 0.75
    assert metrics["eval_macro_f1"] == pytest.approx(7 / 9, abs=1e-12)  # 0.7778
    assert classification_metrics(torch.tensor([1, 1]), torch.tensor([0, 0]), 2) == {
        "eval_accuracy": 0.0,
        "eval_macro_f1": 0.0,
    }


def test_plain_transformers_loads_the_classifier_with_its_labels(head_run, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(head_run)
    assert [model.config.id2label[i] for i in range(3)] == LABELS
    assert json.loads((head_run / "classifier.json").read_text())["labels"] == LABELS
    # head_only: the backbone is bit-identical to the base model; the head is new.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for name, tensor in base.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], tensor), name
    batch = tiny_tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    expected = [(LABELS[int(p.argmax())], float(p.max())) for p in probs]
    predicted = _predict(head_run)
    assert [label for label, _ in predicted] == [label for label, _ in expected]
    assert [p for _, p in predicted] == pytest.approx([p for _, p in expected], abs=1e-3)


def test_mlp_head_and_lora_classifiers_predict(tmp_path_factory):
    mlp = _run(tmp_path_factory, "mlp", "--config", str(ROOT / "configs/classifier_mlp.yaml"))
    config = json.loads((mlp / "config.json").read_text())
    assert config["llmft_head"]["type"] == "mlp" and config["id2label"]["2"] == "positive"
    # The same probabilities from a classifier built by hand (the recipe's head: 256 -> 256 -> 3, gelu)
    # with the saved weights loaded strictly (every key used, none missing).
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    model = LlamaForSequenceClassification(AutoConfig.from_pretrained(mlp))
    model.score = torch.nn.Sequential(
        torch.nn.Dropout(),
        torch.nn.Linear(256, 256),
        torch.nn.GELU(),
        torch.nn.Dropout(),
        torch.nn.Linear(256, 3),
    )
    model.load_state_dict(load_file(mlp / "model.safetensors"), strict=True)
    model.eval()
    with torch.no_grad():
        probs = model(**AutoTokenizer.from_pretrained(mlp)(TEXTS, return_tensors="pt", padding=True)).logits
    probs = probs.float().softmax(-1)
    predicted = _predict(mlp)
    assert [label for label, _ in predicted] == [LABELS[int(p.argmax())] for p in probs]
    # predict prints 3 decimals: equal up to its rounding
    assert [p for _, p in predicted] == pytest.approx([float(p.max()) for p in probs], abs=5e-4 + 1e-6)

    lora = _run(tmp_path_factory, "lora", "--task", "classification", "--data.format", "classification")
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = json.loads((lora / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=3), lora
    )
    tokenizer = AutoTokenizer.from_pretrained(lora)
    model.eval()
    with torch.no_grad():
        probs = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1)
    assert [label for label, _ in _predict(lora)] == [LABELS[int(p.argmax())] for p in probs]


def test_predict_errors_are_one_line(tmp_path):
    result = run_cli("predict", str(tmp_path), "--text", "hi")
    assert result.returncode == 2 and "holds no classifier.json" in result.stderr
    result = run_cli("predict", str(tmp_path))
    assert result.returncode == 2 and "give texts with --text" in result.stderr


def test_eval_of_a_classifier_run_gives_its_own_metrics(head_run, tmp_path):
    # `llmft eval` loads the saved classifier and scores the run's validation split with the trainer's
    # evaluation function: the run's final loss, accuracy and macro-F1.
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--run", str(head_run), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    summary = json.loads((head_run / "summary.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)
    assert metrics["eval_accuracy"] == summary["eval_accuracy"]
    assert metrics["eval_macro_f1"] == pytest.approx(summary["eval_macro_f1"])
    assert "eval_accuracy" in result.stdout


def test_patterns_on_an_mlp_head_train_exactly_what_they_match(tmp_path_factory, tiny_model_dir):
    # The skeleton check sees the configured MLP head (score.1 / score.4), not HF's plain `score`.
    from safetensors.torch import load_file
    from transformers import set_seed

    from llmft.config import HeadSection
    from llmft.models.heads import mlp_head

    out = _run(
        tmp_path_factory, "patterns", "--task", "classification", "--data.format", "classification",
        "--peft.method", "none", "--head.type", "mlp", "--freeze.strategy", "patterns",
        "--freeze.include", "score\\.4\\.", "--freeze.include", "layers\\.3\\.", "--train.max_steps", "2",
    )  # fmt: skip
    saved = load_file(out / "model.safetensors")
    base = {
        f"model.{k.removeprefix('model.')}": v
        for k, v in load_file(tiny_model_dir / "model.safetensors").items()
    }
    # The head as the run initialised it (seeded just before), to tell trained from frozen.
    set_seed(42)
    init = {f"score.{k}": v for k, v in mlp_head(HeadSection(type="mlp"), 256, 3).state_dict().items()}
    trained = {k for k in saved if not torch.equal(saved[k], init[k] if k in init else base[k])}
    assert trained == {k for k in saved if k.startswith(("score.4.", "model.layers.3."))}
    log = (out / "train.log").read_text()
    count = sum(saved[k].numel() for k in trained)
    assert f"none: trainable parameters: {count:,} of" in log
