"""The side-by-side CPU benchmark: ``python -m benchmarks.harness`` (``make bench``).

One invocation, one machine: it builds the benchmark model and data (:mod:`benchmarks.workload`),
measures this machine's matmul peak in fp32 and bf16, runs every tool for LoRA and for full
fine-tuning in a subprocess of its own (:mod:`benchmarks.tools`), scores every saved model with one
scorer, and writes ``benchmarks/results/<date>-<machine>.json`` and the table in ``BENCHMARKS.md``.

How the runs are made equal:
    - the same model file, the same records (the same token ids), one epoch: every tool trains on
      exactly the same samples and the same real tokens;
    - the same optimizer (AdamW, fused), lr, cosine schedule with 5% warmup, clip 1.0, seed, LoRA r/alpha/
      dropout on all seven projections;
    - the batch is equal in *tokens*: padded tools take ``--seq-batch`` sequences per step; packing tools
      (llmft, TRL) take ``round(seq_batch * mean length / 512)`` rows of 512 tokens per step, which hold
      about as many real tokens. Packing therefore takes a few more or fewer optimizer steps for the same
      samples; every step count is reported, and the losses are compared at equal samples seen.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import report, workload
from benchmarks.tools import TOOLS

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("hf", "hf_grouped", "trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=160, help="training records (one epoch); default 160")
    parser.add_argument("--eval-samples", type=int, default=48, help="held-out records for the eval loss")
    parser.add_argument("--seq-batch", type=int, default=8, help="sequences per step of the padded tools")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    parser.add_argument("--methods", default="lora,full", help="comma list of lora, full")
    parser.add_argument("--lr-lora", type=float, default=1e-3)
    parser.add_argument("--lr-full", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--peer-fp32", action="store_true", help="peers without bf16 autocast")
    parser.add_argument("--llmft-precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--peak-rounds", type=int, default=3, help="rounds of the matmul peak measurement")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each tool early (plumbing tests)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (default benchmarks/results/...)"
    )
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="table to update")
    parser.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and data here")
    return parser.parse_args(argv)


def machine_info() -> dict[str, Any]:
    import peft
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__}  # fmt: skip
    for name in ("trl", "accelerate", "datasets"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # torch's own probes, as llmft's train.precision auto uses them (llmft.precision.cpu_has_fast_bf16).
    flags = {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
             for name in ("avx512_bf16", "amx_tile")}  # fmt: skip
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "versions": versions,
        "llmft_commit": git.stdout.strip() or None,
    }


def run_tool(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one tool in its own process; its result, the harness-side wall time, or the error."""
    name = f"{spec['tool']}-{spec['method']}"
    spec_path = workdir / f"{name}.spec.json"
    spec["result_path"] = str(workdir / f"{name}.result.json")
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tools", str(spec_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    # The machine may be shared: the 1-minute load average around each run says how much it was.
    load = {"load_1m_before": load_before, "load_1m_after": os.getloadavg()[0]}
    (workdir / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}", "wall_s": wall, **load}
    result = json.loads(Path(spec["result_path"]).read_text())
    result["wall_s"] = wall
    return {**result, **load}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [t for t in tools if t not in TOOLS] + [m for m in methods if m not in ("lora", "full")]
    if unknown:
        raise SystemExit(f"unknown tool or method: {', '.join(unknown)}")
    started_at = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()
    began = time.perf_counter()
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="llmft-bench-")
    workdir = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = _run(args, tools, methods, workdir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    info = machine_info()
    doc = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": info,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "harness_wall_s": time.perf_counter() - began,
        "command": "make bench"
        if argv is None and len(sys.argv) == 1
        else "python -m benchmarks.harness " + " ".join(sys.argv[1:] if argv is None else argv),  # fmt: skip
        "plumbing_only": args.max_steps is not None,
        **results,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"{started_at:%Y-%m-%d}-{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(report.console_table(doc))
    print(f"wrote {out}")
    if not args.no_markdown:
        report.update_markdown(args.markdown, doc, out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
        print(f"updated {args.markdown}")
    return doc


def _run(args: argparse.Namespace, tools: list[str], methods: list[str], workdir: Path) -> dict[str, Any]:
    model_dir = workload.build_model(workdir / "model")
    train, held_out = workload.make_dataset(workdir, model_dir, args.samples, args.eval_samples, args.seed)
    tokens_path = workdir / "train_tokens.json"
    tokens_path.write_text(json.dumps({"input_ids": train.input_ids, "labels": train.labels}))
    mean_length = train.tokens / len(train.lengths)
    packed_rows = max(1, round(args.seq_batch * mean_length / workload.MAX_TOKENS))
    train_subset = workload.Tokenized(train.input_ids[: args.eval_samples], train.labels[: args.eval_samples])
    peaks = {"fp32": workload.matmul_peak(torch.float32, rounds=args.peak_rounds),
             "bf16": workload.matmul_peak(torch.bfloat16, rounds=args.peak_rounds)}  # fmt: skip
    hp_base = {
        "max_seq_len": workload.MAX_TOKENS,
        "seq_batch": args.seq_batch,
        "packed_rows": packed_rows,
        "warmup_ratio": 0.05,
        "seed": args.seed,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "peer_bf16": not args.peer_fp32,
        "llmft_precision": args.llmft_precision,
    }
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        hp = {**hp_base, "lr": args.lr_lora if method == "lora" else args.lr_full}
        flops = workload.useful_flops(model_dir, method, train.lengths, hp["lora_r"])
        for tool in tools:
            spec = {"tool": tool, "method": method, "model_dir": str(model_dir),
                    "train_jsonl": str(workdir / "train.jsonl"), "train_tokens": str(tokens_path),
                    "prompt_template": workload.PROMPT_TEMPLATE, "output_dir": str(workdir / f"out-{tool}-{method}"),
                    "hp": hp, "max_steps": args.max_steps}  # fmt: skip
            print(f"[bench] {tool} {method} ...", flush=True)
            result = run_tool(spec, workdir)
            if "error" not in result:
                out_dir = Path(spec["output_dir"])
                result["eval_loss"] = workload.score(out_dir, model_dir, held_out)
                result["train_subset_loss"] = workload.score(out_dir, model_dir, train_subset)
                _derive(result, train.tokens, flops["total"], peaks)
                result.pop("losses", None)
            rows[f"{tool}/{method}"] = {"tool": tool, "method": method, "lr": hp["lr"], **result}
            print(f"[bench] {tool} {method}: {report.short(rows[f'{tool}/{method}'])}", flush=True)
    return {
        "workload": {
            "model": {
                **workload.BENCH_ARCHITECTURE,
                "parameters": int(flops["parameters"]),
                "vocab_size": len(json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]),
                "init_std": workload.INIT_STD,
            },  # fmt: skip
            "train_samples": len(train.lengths),
            "eval_samples": len(held_out.lengths),
            "train_real_tokens": train.tokens,
            "length_min_mean_max": [min(train.lengths), round(mean_length, 1), max(train.lengths)],
            "prompt_template": workload.PROMPT_TEMPLATE,
            "hyperparameters": {
                **hp_base,
                "lr_lora": args.lr_lora,
                "lr_full": args.lr_full,
                "epochs": 1,
                "schedule": "cosine",
                "optimizer": "AdamW (fused), wd 0",
                "max_grad_norm": 1.0,
            },  # fmt: skip
            "flops_formula": "per document of n tokens: n * (dense + attention_per_position * n); dense = 2N "
            "forward + 2N input-gradient + 2N weight-gradient of each trained matrix (6N full; 4N + 6 x adapter "
            "parameters for LoRA); attention 4 * q_dim per layer and position forward, 3x that with backward "
            "(llmft.memory.flops.flops_model, the same numerator for every tool)",
        },
        "matmul_peak_flops": peaks,
        "runs": rows,
        "comparisons": compare(rows, methods),
    }


def _derive(result: dict[str, Any], real_tokens: int, flops_total: float, peaks: dict[str, float]) -> None:
    """Tokens/s and FLOP shares from the tool's own training time (the same numerators for all)."""
    seconds = result["train_s"]
    result["real_tokens_per_s"] = real_tokens / seconds
    result["achieved_flops"] = flops_total / seconds
    result["share_of_fp32_peak"] = result["achieved_flops"] / peaks["fp32"]
    result["share_of_bf16_peak"] = result["achieved_flops"] / peaks["bf16"]
    # CPU MFU: against the peak of the precision the tool computed in.
    result["cpu_mfu"] = result["achieved_flops"] / peaks["bf16" if result["precision"] == "bf16" else "fp32"]


def compare(rows: dict[str, dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """llmft / each peer, per method: tokens/s, wall time, peak memory, eval loss; and the targets."""
    out: dict[str, Any] = {}
    for method in methods:
        mine = rows.get(f"llmft/{method}")
        if not mine or "error" in mine:
            continue
        per_peer = {}
        for peer in PEERS:
            other = rows.get(f"{peer}/{method}")
            if not other or "error" in other:
                continue
            per_peer[peer] = {
                "tokens_per_s_ratio": mine["real_tokens_per_s"] / other["real_tokens_per_s"],
                "train_time_ratio": mine["train_s"] / other["train_s"],
                "process_wall_ratio": mine["wall_s"] / other["wall_s"],
                "peak_rss_ratio": mine["peak_rss_mib"] / other["peak_rss_mib"],
                "eval_loss_rel_diff": (mine["eval_loss"] - other["eval_loss"]) / other["eval_loss"],
            }
        hf = [p for p in ("hf", "hf_grouped") if p in per_peer]
        target = None
        if hf:
            best = max(hf, key=lambda p: rows[f"{p}/{method}"]["real_tokens_per_s"])
            ratio = per_peer[best]
            target = {
                "best_hf_trainer": best,
                "speed_1_5x": ratio["tokens_per_s_ratio"] >= 1.5,
                "equal_loss_3pct": abs(ratio["eval_loss_rel_diff"]) <= 0.03,
                "memory_not_higher": ratio["peak_rss_ratio"] <= 1.0,
            }
            target["met"] = all(target[k] for k in ("speed_1_5x", "equal_loss_3pct", "memory_not_higher"))
        out[method] = {"vs": per_peer, "target_vs_best_hf": target}
    return out


if __name__ == "__main__":
    main()
