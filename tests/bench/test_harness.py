"""The benchmark harness's plumbing on a tiny workload (no timing is asserted: speed is measured by
``make bench``, never in a test): one step of llmft and of HF Trainer + PEFT, each in its own process,
scored by the shared scorer, written to a results file and a markdown table with the ratios."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import harness, report, workload  # noqa: E402


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    markdown = tmp / "BENCHMARKS.md"
    markdown.write_text(
        f"# Benchmarks\n\nnotes above\n\n{report.START}\nold table\n{report.END}\n\nnotes below\n"
    )
    argv = ["--samples", "12", "--eval-samples", "6", "--tools", "llmft,hf", "--methods", "lora", "--seq-batch", "2",
            "--peak-rounds", "1",
            "--max-steps", "1", "--out", str(tmp / "results.json"), "--markdown", str(markdown),
            "--workdir", str(tmp / "work")]  # fmt: skip
    doc = harness.main(argv)
    return doc, tmp


def test_results_file_has_every_run_scored_and_the_ratios(bench_run):
    doc, tmp = bench_run
    assert json.loads((tmp / "results.json").read_text()) == doc
    assert doc["plumbing_only"] is True
    assert set(doc["load_average"]) == {"start", "end"}
    assert doc["matmul_peak_flops"]["fp32"] > 0 and doc["matmul_peak_flops"]["bf16"] > 0
    assert doc["workload"]["train_samples"] == 12 and doc["workload"]["eval_samples"] == 6
    llmft, hf = doc["runs"]["llmft/lora"], doc["runs"]["hf/lora"]
    for row in (llmft, hf):
        assert "error" not in row, row
        assert row["steps"] == 1
        assert math.isfinite(row["eval_loss"]) and math.isfinite(row["train_subset_loss"])
        assert row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0
        assert row["load_1m_before"] >= 0 and row["load_1m_after"] >= 0
        # The same numerator (real tokens, FLOPs) for every tool: the rates differ only by time.
        assert row["real_tokens_per_s"] * row["train_s"] == pytest.approx(
            doc["workload"]["train_real_tokens"]
        )
        assert row["cpu_mfu"] == pytest.approx(
            row["achieved_flops"] / doc["matmul_peak_flops"][row["precision"]]
        )
    vs = doc["comparisons"]["lora"]["vs"]["hf"]
    assert vs["tokens_per_s_ratio"] == pytest.approx(llmft["real_tokens_per_s"] / hf["real_tokens_per_s"])
    assert vs["peak_rss_ratio"] == pytest.approx(llmft["peak_rss_mib"] / hf["peak_rss_mib"])
    assert vs["eval_loss_rel_diff"] == pytest.approx((llmft["eval_loss"] - hf["eval_loss"]) / hf["eval_loss"])
    target = doc["comparisons"]["lora"]["target_vs_best_hf"]
    assert target["best_hf_trainer"] == "hf"
    assert target["met"] == (
        target["speed_1_5x"] and target["equal_loss_3pct"] and target["memory_not_higher"]
    )


def test_markdown_section_is_replaced_in_place(bench_run):
    doc, tmp = bench_run
    text = (tmp / "BENCHMARKS.md").read_text()
    assert "old table" not in text and text.count(report.START) == 1
    assert (
        text.index("notes above")
        < text.index(report.START)
        < text.index(report.END)
        < text.index("notes below")
    )
    assert "| llmft (packing), lora |" in text and "HF Trainer (random), lora" in text


def test_scorer_is_the_token_weighted_mean_loss(bench_run):
    """The shared scorer on the untrained model equals per-example HF losses weighted by their targets."""
    _, tmp = bench_run
    model_dir = tmp / "work" / "model"
    data = workload.tokenize_records(tmp / "work" / "eval.jsonl", model_dir)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total = targets = 0.0
    with torch.no_grad():
        for ids, labels in zip(data.input_ids, data.labels, strict=True):
            n = sum(1 for x in labels[1:] if x != -100)
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            total, targets = total + float(loss) * n, targets + n
    assert workload.score(model_dir, model_dir, data, batch_size=4) == pytest.approx(
        total / targets, rel=1e-5
    )


def test_the_table_shows_process_and_wall_time_and_benchmarks_md_is_the_results_files():
    """Each time column holds its own figure from the results file (process s: the tool's own timer,
    wall s: the harness's), a slower llmft wall ratio is flagged, and BENCHMARKS.md's generated section
    is what the committed results file renders to (no run needed)."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    results = text.split("Raw numbers: [`", 1)[1].split("`", 1)[0]  # the file the table came from
    doc = json.loads((ROOT / results).read_text())
    section = report.markdown(doc, results)
    assert section in text
    assert "| train s | process s | wall s |" in section
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    table = {cells[0]: cells for cells in rows[1:]}
    process, wall = report.HEADER.index("process s"), report.HEADER.index("wall s")
    for row in doc["runs"].values():
        cells = table[f"{report.NAMES[row['tool']]}, {row['method']}"]
        assert cells[process] == f"{row['process_s']:.1f}" and cells[wall] == f"{row['wall_s']:.1f}"
        assert row["process_s"] < row["wall_s"]
    # Where llmft's whole process is slower (2026-11-28: full, 1.02x grouped HF Trainer) the table says so.
    for method, comparison in doc["comparisons"].items():
        for peer, vs in comparison["vs"].items():
            cell = table[f"{report.NAMES[peer]}, {method}"][-1]
            ratio = f"/ {vs['process_wall_ratio']:.2f}x"
            slower = vs["process_wall_ratio"] > 1
            assert cell.endswith(ratio + " (**llmft slower**)" if slower else ratio), cell
            sentence = f"llmft's whole process takes {vs['process_wall_ratio']:.2f}x its wall time"
            assert (sentence in section) == slower
