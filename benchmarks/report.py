"""Tables of a benchmark results document: for the console and for ``BENCHMARKS.md``.

``BENCHMARKS.md`` keeps its hand-written notes; only the part between the ``results:start`` and
``results:end`` markers is rewritten by each run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"
NAMES = {
    "llmft": "llmft (packing)",
    "hf": "HF Trainer (random)",
    "hf_grouped": "HF Trainer (group_by_length)",
    "trl": "TRL SFTTrainer (packing)",
}


def short(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    return (
        f"{row['real_tokens_per_s']:,.0f} tok/s, train {row['train_s']:.1f}s, {row['steps']} steps, "
        f"rss {row['peak_rss_mib']:,.0f} MiB, eval loss {row['eval_loss']:.4f}"
    )


def _rows(doc: dict[str, Any]) -> list[list[str]]:
    table = []
    for row in doc["runs"].values():
        name = f"{NAMES.get(row['tool'], row['tool'])}, {row['method']}"
        if "error" in row:
            table.append([name, "failed: " + row["error"][:80], *[""] * (len(HEADER) - 2)])
            continue
        ratio = ""
        if row["tool"] != "llmft":
            vs = doc["comparisons"].get(row["method"], {}).get("vs", {}).get(row["tool"])
            if vs:
                speed, memory = vs["tokens_per_s_ratio"], vs["peak_rss_ratio"]
                ratio = f"{speed:.2f}x" + (" (**llmft slower**)" if speed < 1 else "")
                ratio += f" / {memory:.2f}x" + (" (**llmft more**)" if memory > 1 else "")
                wall = vs.get("process_wall_ratio")
                if wall is not None:
                    ratio += f" / {wall:.2f}x" + (" (**llmft slower**)" if wall > 1 else "")
        table.append(
            [
                name,
                f"{row['real_tokens_per_s']:,.0f}",
                f"{row['train_s']:.1f}",
                f"{row['process_s']:.1f}" if "process_s" in row else "-",
                f"{row['wall_s']:.1f}",
                str(row["steps"]),
                f"{row['peak_rss_mib']:,.0f}",
                f"{row['train_loss_last']:.3f}" if row.get("train_loss_last") is not None else "-",
                f"{row['train_subset_loss']:.3f}",
                f"{row['eval_loss']:.3f}",
                f"{100 * row['cpu_mfu']:.1f}% ({row['precision']})",
                f"{row['load_1m_before']:.1f} / {row['load_1m_after']:.1f}"
                if "load_1m_before" in row
                else "-",
                ratio,
            ]
        )
    return table


HEADER = [
    "tool, method",
    "real tok/s",
    "train s",
    "process s",
    "wall s",
    "steps",
    "peak RSS MiB",
    "own final loss",
    "train loss*",
    "eval loss*",
    "CPU MFU",
    "load before / after",
    "llmft / this: tok/s, peak RSS, wall s",
]


def console_table(doc: dict[str, Any]) -> str:
    rows = [HEADER, *_rows(doc)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)


def markdown(doc: dict[str, Any], results_path: Path | str) -> str:
    """The generated section: setup line, the table, the target check, the reproduce command."""
    m, w = doc["machine"], doc["workload"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    peaks = doc["matmul_peak_flops"]
    lines = [
        START,
        f"**Machine:** {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['torch_threads']} torch threads), "
        f"{m['memory_gib']} GiB; bf16 instructions: "
        f"{', '.join(k for k, v in m['cpu_flags'].items() if v) or 'none'}. "
        f"Measured matmul peak: {peaks['fp32'] / 1e9:.0f} GFLOP/s fp32, {peaks['bf16'] / 1e9:.0f} GFLOP/s bf16. "
        f"Load average {doc['load_average']['start'][0]:.2f} at start, {doc['load_average']['end'][0]:.2f} at end.",
        "",
        f"**Date:** {doc['date']} (llmft {m['llmft_commit']}). **Versions:** {versions}.",
        "",
        f"**Workload:** {w['model']['parameters'] / 1e6:.1f}M-parameter LLaMA (random init), "
        f"{w['train_samples']} alpaca-style records ({w['train_real_tokens']:,} real tokens, lengths "
        f"{w['length_min_mean_max'][0]}/{w['length_min_mean_max'][1]}/{w['length_min_mean_max'][2]} min/mean/max), "
        f"one epoch; {w['eval_samples']} held-out records for the eval loss. Padded tools: "
        f"{w['hyperparameters']['seq_batch']} sequences per step; packing tools: "
        f"{w['hyperparameters']['packed_rows']} rows of {w['hyperparameters']['max_seq_len']} tokens per step. "
        f"lr {w['hyperparameters']['lr_lora']:g} (LoRA r16/alpha32, all projections) and "
        f"{w['hyperparameters']['lr_full']:g} (full), cosine, 5% warmup, fused AdamW, clip 1.0.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r) + " |" for r in _rows(doc)),
        "",
        "HF Trainer rows use PEFT's LoRA for lora and the plain model for full. "
        "\\* scored by the harness's one scorer (fp32, loss per target token) on the saved model or adapter; "
        "the train loss on the first held-in records, the eval loss on the held-out ones. "
        '"own final loss": the tool\'s own logged loss, mean of the last tenth of its steps. '
        '"process s": the tool\'s own timer around load, data, train and save; "wall s": the harness\'s '
        "timer around the whole subprocess (interpreter start and imports too); the wall ratio is of these.",
        "",
    ]
    for method, comparison in doc["comparisons"].items():
        target = comparison["target_vs_best_hf"]
        if not target:
            continue
        vs = comparison["vs"][target["best_hf_trainer"]]
        verdict = "met" if target["met"] else "not met"
        lines.append(
            f"- **{method}** vs the faster HF Trainer setup ({NAMES[target['best_hf_trainer']]}): "
            f"{vs['tokens_per_s_ratio']:.2f}x real tokens/s (target 1.5x), eval loss "
            f"{100 * vs['eval_loss_rel_diff']:+.1f}% (target within 3%), peak memory "
            f"{vs['peak_rss_ratio']:.2f}x (target at most 1x): target **{verdict}**."
        )
    for method, comparison in doc["comparisons"].items():
        for peer, vs in comparison["vs"].items():
            wall = vs.get("process_wall_ratio", 0)
            if vs["tokens_per_s_ratio"] < 1 or vs["peak_rss_ratio"] > 1 or wall > 1:
                worse = []
                if vs["tokens_per_s_ratio"] < 1:
                    worse.append(f"llmft reaches {vs['tokens_per_s_ratio']:.2f}x its real tokens/s")
                if vs["peak_rss_ratio"] > 1:
                    worse.append(f"llmft's peak memory is {vs['peak_rss_ratio']:.2f}x its")
                if wall > 1:
                    worse.append(f"llmft's whole process takes {wall:.2f}x its wall time")
                lines.append(
                    f"- **{method}**: {NAMES[peer]} is ahead of llmft here: {' and '.join(worse)} "
                    f"(see the notes for why)."
                )
    lines += [
        "",
        f"Reproduce: `{doc['command']}` (harness {doc['harness_wall_s'] / 60:.1f} min). "
        f"Raw numbers: [`{results_path}`]({results_path}).",
        END,
    ]
    return "\n".join(lines)


def update_markdown(path: Path, doc: dict[str, Any], results_path: Path | str) -> None:
    """Replace the generated section of ``path`` (or append one) with this run's table."""
    section = markdown(doc, results_path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.report RESULTS.json [BENCHMARKS.md]``: redraw the table of a results file."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("markdown", type=Path, nargs="?", default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    doc = json.loads(args.results.read_text(encoding="utf-8"))
    print(console_table(doc))
    update_markdown(args.markdown, doc, args.results)


if __name__ == "__main__":
    main()
