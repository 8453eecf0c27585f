"""`llmft generate` and `llmft eval` through the real CLI, on short tiny-llama runs (alpaca, JFLEG grammar).

The runs evaluate with generation (task metrics, samples) every 2 of 4 steps; generate and eval must
then reproduce what the run itself computed: the closing sample token for token, the final eval loss,
the greedy answers whose scores were logged. Metrics are checked against the libraries called here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nltk.translate.gleu_score import corpus_gleu
from rouge_score import rouge_scorer

from helpers import run_cli
from llmft.cli import main
from llmft.data.instruct import ALPACA_TEMPLATES

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "llmft" / "data" / "samples"
RUN = [
    "--train.max_steps", "4",
    "--train.eval_every", "2",
    "--train.precision", "fp32",
    "--train.progress", "false",
    "--generation.max_new_tokens", "8",
    "--eval.max_new_tokens", "8",
    "--eval.max_generations", "4",
    "--eval.log_samples", "2",
    "--logging.plot", "false",
]  # fmt: skip
PROMPT = "Give three tips for staying healthy."


def _finetune(out: Path, *flags: str) -> Path:
    result = run_cli("finetune", *RUN, *flags, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def alpaca_run(tmp_path_factory) -> Path:
    return _finetune(
        tmp_path_factory.mktemp("gen") / "alpaca", "--data.format", "alpaca", "--data.max_samples", "48"
    )


@pytest.fixture(scope="module")
def grammar_run(tmp_path_factory) -> Path:
    path = SAMPLES / "grammar_jfleg_sample.jsonl"
    return _finetune(
        tmp_path_factory.mktemp("gen") / "grammar", "--data.format", "grammar", "--data.path", str(path)
    )


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _fails(capsys, *args: str) -> str:
    """The CLI's entry point in this process (a subprocess per case would cost seconds of imports)."""
    capsys.readouterr()
    status = main(list(args))
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmft: error: "), err[-2000:]
    return lines[0]


def test_generate_uses_the_training_template_and_reproduces_the_run_sample(alpaca_run, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}) + "\n"
    )
    result = run_cli("generate", "--run", str(alpaca_run), "--prompt", PROMPT, "--prompt", PROMPT,
                     "--prompts", str(prompts), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first, second, record = _json_lines(result.stdout)
    template = ALPACA_TEMPLATES["alpaca"]
    assert first["prompt"] == template["prompt_no_input"].format(instruction=PROMPT)
    assert first["prompt"].endswith(
        "### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n"
    )
    assert record["prompt"] == template["prompt_input"].format(
        instruction="Add the numbers.", input="2 and 3"
    )
    assert record["references"] == ["5"]
    # Greedy: the same prompt gives the same text, and it is the run's own closing sample (generate_text
    # on the trained model in memory, the same 8 new tokens).
    summary = json.loads((alpaca_run / "summary.json").read_text())
    assert summary["sample"]["prompt"] == PROMPT
    assert first["completion"] == second["completion"] == summary["sample"]["completion"]
    assert first["completion"].strip()

    # The base model + the run's adapter + the alpaca format: the same completion.
    base = json.loads((alpaca_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    same = run_cli("generate", "--model", base, "--adapter", str(alpaca_run), "--format", "alpaca",
                   "--precision", "fp32", "--max-new-tokens", "8", "--prompt", PROMPT, "--json")  # fmt: skip
    assert same.returncode == 0, same.stderr[-3000:]
    assert _json_lines(same.stdout)[0]["completion"] == first["completion"]
    assert _json_lines(same.stdout)[0]["prompt"] == first["prompt"]


def test_generate_raw_and_sampling(alpaca_run):
    result = run_cli("generate", "--run", str(alpaca_run), "--raw", "--prompt", "Hello", "--prompt", "Hello",
                     "--do-sample", "--seed", "3", "--top-k", "20", "--num-return-sequences", "2",
                     "--max-new-tokens", "5", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = _json_lines(result.stdout)
    assert first["prompt"] == "Hello"  # no template
    assert len(first["completions"]) == 2 and first["completions"] == second["completions"]  # seeded


def test_eval_matches_the_run_and_the_libraries(alpaca_run, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--run", str(alpaca_run), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = json.loads((alpaca_run / "summary.json").read_text())
    metrics = report["metrics"]
    # The same loss path as the trainer's evaluation: the final eval loss of the run, to fp32 noise.
    assert metrics["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)
    assert report["split"] == "validation" and report["examples"] == 5  # 10% of 48 records
    generations = report["generations"]
    assert len(generations) == 5
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score_multi(g["references"], g["completion"])["rougeL"].fmeasure for g in generations]
    assert metrics["eval_rougeL"] == pytest.approx(sum(expected) / len(expected))
    assert "eval_rougeL" in result.stdout and "eval_loss" in result.stdout

    # The run logged the same greedy answers (its first prompts) with its eval rows.
    evals = [r for r in _rows(alpaca_run) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for row in evals:
        assert 0.0 <= row["eval_rougeL"] <= 1.0 and len(row["eval_samples"]) == 2
        assert set(row["eval_samples"][0]) == {"prompt", "completion", "references"}
    assert evals[-1]["eval_samples"] == generations[:2]
    assert evals[-1]["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
    assert summary["eval_rougeL"] == evals[-1]["eval_rougeL"]


def test_run_logs_samples_to_tensorboard(alpaca_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(alpaca_run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    texts = events.Tensors("eval/samples/text_summary")
    assert [t.step for t in texts] == [2, 4]
    first = _rows(alpaca_run)[-1]["eval_samples"][0]
    assert first["prompt"] in texts[-1].tensor_proto.string_val[0].decode()
    assert [s.step for s in events.Scalars("eval/rougeL")] == [2, 4]


def test_eval_grammar_with_several_references(grammar_run, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--run", str(grammar_run), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    generations = report["generations"]
    assert len(generations) == report["examples"] == 7  # 10% of the 72 JFLEG records
    assert all(len(g["references"]) >= 2 for g in generations)  # every correction is a reference
    predictions = [g["completion"] for g in generations]
    references = [g["references"] for g in generations]
    gleu = corpus_gleu([[r.split() for r in refs] for refs in references], [p.split() for p in predictions])
    hits = sum(p.strip() in {r.strip() for r in refs} for p, refs in zip(predictions, references))
    metrics = report["metrics"]
    assert metrics["eval_gleu"] == pytest.approx(gleu)
    assert metrics["eval_exact_match"] == hits / len(predictions)
    summary = json.loads((grammar_run / "summary.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)
    rows = [r for r in _rows(grammar_run) if "eval_loss" in r]
    assert {"eval_gleu", "eval_exact_match", "eval_samples"} <= rows[-1].keys()

    # Other data is scored whole: the bundled JFLEG sample's first 10 records, all held out.
    data = SAMPLES / "grammar_jfleg_sample.jsonl"
    whole = run_cli("eval", "--run", str(grammar_run), "--data.path", str(data), "--data.max_samples", "10",
                    "--no-generate")  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "(all records: 10 examples)" in whole.stdout and "eval_gleu" not in whole.stdout


def test_bad_input_is_one_line(alpaca_run, tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert "run folder" in _fails(capsys, "generate", "--run", str(missing), "--prompt", "x")
    assert "--prompt TEXT" in _fails(capsys, "generate", "--run", str(alpaca_run))
    assert "either --run" in _fails(capsys, "generate", "--prompt", "x")
    assert "not found" in _fails(
        capsys, "generate", "--run", str(alpaca_run), "--prompts", str(tmp_path / "p.txt")
    )
    assert "add --do-sample" in _fails(capsys, "generate", "--run", str(alpaca_run), "--prompt", "x",
                                       "--num-return-sequences", "2")  # fmt: skip
    # Sampling settings out of range, or without --do-sample (greedy decoding would ignore them).
    sample = ["generate", "--run", str(alpaca_run), "--prompt", "x"]
    assert "--temperature -1.0: give a value above 0" in _fails(
        capsys, *sample, "--do-sample", "--temperature", "-1"
    )
    assert "--temperature 0.0: give a value above 0" in _fails(
        capsys, *sample, "--do-sample", "--temperature", "0"
    )
    assert "--top-p 2.0: give a probability mass in (0, 1]" in _fails(
        capsys, *sample, "--do-sample", "--top-p", "2"
    )
    assert "--top-p 0.0" in _fails(capsys, *sample, "--do-sample", "--top-p", "0")
    assert "--top-k 0: give 1 or more" in _fails(capsys, *sample, "--do-sample", "--top-k", "0")
    assert "--temperature, --top-k: greedy decoding ignores sampling settings; add --do-sample" in _fails(
        capsys, *sample, "--temperature", "0.7", "--top-k", "5"
    )
    assert "no llmft_config.yaml" in _fails(capsys, "eval", "--run", str(tmp_path))
    assert "--model.name cannot change" in _fails(
        capsys, "eval", "--run", str(alpaca_run), "--model.name", "x"
    )
    typo = _fails(capsys, "eval", "--run", str(alpaca_run), "--max-generation", "2")
    assert "unknown flag '--max-generation'" in typo
    # A classifier run labels texts; generate says so (checked before any model is loaded).
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    shutil.copy(alpaca_run / "llmft_config.yaml", classifier)
    (classifier / "classifier.json").write_text("{}")
    assert "llmft predict" in _fails(capsys, "generate", "--run", str(classifier), "--prompt", "x")
