"""The GPU benchmark behind ``benchmarks/gpu.sh``: LLaMA-shaped random models at 2048 tokens, packed.

``python -m benchmarks.gpu_bench --shapes 1b,8b`` builds each shape from its published config values
(random init, bf16, saved once into a work folder with the tiny preset's tokenizer: token ids stay
below 1948, which changes no FLOP or byte), writes alpaca-style records, and runs, each in a process of
its own so that each peak is its own:

    1b  llmft LoRA, llmft full fine-tuning, HF Trainer + PEFT LoRA (the ratio)
    8b  llmft LoRA, llmft QLoRA (skipped, with the reason, where the installed llmft has no QLoRA)

For each it prints real tokens/s, MFU and peak memory against llmft's own estimate, and writes all of
it to ``--out`` (JSON). ``--shapes tiny`` runs the same plumbing on CPU in a minute or so.

MFU = achieved FLOP/s / peak, peak 989 TFLOP/s (H100/H200 dense bf16 datasheet; a measured bf16
matmul peak on CPU). Achieved FLOP/s = real tokens/s x FLOPs per token, FLOPs per token from llmft's
``flops_model`` (6N full, 4N + 6 per adapter parameter, frozen base; attention 12 x q_dim per layer and
position, PaLM's count) with the attention length of each *document* (sum n^2 / sum n over the data),
since packed documents do not attend to each other: useful FLOPs, the same formula for both tools.
llmft's own observer counts attention over the whole packed row; its MFU is printed beside, for
reference. The first ``--warmup`` steps (allocator and kernel warm-up) are left out of the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
H200_BF16_PEAK = 989e12

# Published config.json values (Llama-3.2-1B, Llama-3.1-8B); "tiny" exercises the plumbing on CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
               rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
               rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=4096, tie_word_embeddings=False,
                 rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=4096),
}  # fmt: skip
# (run name, shape, tool, method, packed rows per step): rows chosen to keep each run a few seconds.
RUNS = [
    ("1b-lora", "1b", "llmft", "lora", 8),
    ("1b-full", "1b", "llmft", "full", 8),
    ("1b-lora-hf", "1b", "hf", "lora", 8),
    ("8b-lora", "8b", "llmft", "lora", 4),
    ("8b-qlora", "8b", "llmft", "qlora", 4),
    ("tiny-lora", "tiny", "llmft", "lora", 2),
    ("tiny-full", "tiny", "llmft", "full", 2),
    ("tiny-lora-hf", "tiny", "hf", "lora", 2),
    ("tiny-qlora", "tiny", "llmft", "qlora", 2),
]


def build_model(shape: str, folder: Path) -> Path:
    """Random-init bf16 model of ``shape`` (built on the GPU when there is one) and a tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmft.models.presets import PRESETS, _tokenizer_dir

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(PRESETS["tiny-llama"]))
    config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)  # transformers' own init (normal, std 0.02)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def write_records(path: Path, count: int) -> Path:
    from benchmarks.workload import generate_records, write_jsonl

    return write_jsonl(path, generate_records(count, seed=0))


def attention_length(model_dir: Path, records: Path, template: str) -> float:
    """sum n^2 / sum n over the documents: the per-token attention length of unpacked documents."""
    from benchmarks.workload import tokenize_records

    lengths = tokenize_records(records, model_dir, max_seq_len=2048).lengths
    return sum(n * n for n in lengths) / sum(lengths)


def flops_per_token(model_dir: Path, method: str, attn_len: float) -> float:
    from llmft.memory.architectures import resolve_shape
    from llmft.memory.flops import flops_model
    from llmft.memory.params import MethodSpec, inventory

    shape = resolve_shape(str(model_dir))
    spec = MethodSpec("full") if method == "full" else MethodSpec("qlora" if method == "qlora" else "lora")
    return flops_model(shape, inventory(shape, spec, "bf16")).per_token(attn_len)


def llmft_command(
    model_dir: Path, data: Path, method: str, rows: int, steps: int, out: Path
) -> list[list[str]]:
    """The ``llmft finetune`` command lines to try, in order (QLoRA: the spellings a build may accept)."""
    base = [sys.executable, "-m", "llmft", "finetune", "--overwrite",
            "--model.name", str(model_dir), "--data.format", "alpaca", "--data.path", str(data),
            "--data.prompt_template", "alpaca_short", "--data.val_set_size", "0",
            "--data.max_seq_len", "2048", "--data.batching", "packing",
            "--train.micro_batch_size", str(rows), "--train.batch_size", str(rows),
            "--train.max_steps", str(steps), "--train.precision", "bf16", "--train.eval_every", "0",
            "--train.progress", "false", "--logging.tensorboard", "false", "--logging.plot", "false",
            "--logging.measure_cpu_peak", "true", "--generation.max_new_tokens", "1",
            "--output_dir", str(out)]  # fmt: skip
    if method == "full":
        return [[*base, "--peft.method", "none", "--model.dtype", "float32", "--train.lr", "2e-5"]]
    lora = [*base, "--train.lr", "2e-4", "--model.dtype", "bfloat16"]
    if method == "lora":
        return [[*lora, "--peft.method", "lora"]]
    return [
        [*lora, "--peft.method", "qlora"],
        [*lora, "--peft.method", "lora", "--model.quantization", "4bit"],
    ]


def run_llmft(model_dir: Path, data: Path, method: str, rows: int, steps: int, warmup: int,
              work: Path) -> dict[str, Any]:  # fmt: skip
    out = work / f"run-{model_dir.name}-{method}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    reasons = []
    for command in llmft_command(model_dir, data, method, rows, steps, out):
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        reasons.append((proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
    else:
        return {"skipped": " / ".join(r[0] for r in reasons)}
    summary = json.loads((out / "summary.json").read_text())
    rows_ = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in rows_ if "real_tokens" in r and r["step"] > warmup] or [
        r for r in rows_ if "real_tokens" in r
    ]
    tokens = sum(r["real_tokens"] for r in steps_)
    seconds = sum(r["step_time_s"] for r in steps_)
    measured = summary["memory"]["measured"]
    mfus = [r["mfu"] for r in steps_ if r.get("mfu") is not None]
    return {
        "command": " ".join(command[2:]),
        "steps_timed": len(steps_),
        "tokens_per_s": tokens / seconds,
        "observer_mfu": sum(mfus) / len(mfus) if mfus else None,
        "peak_allocated_gib": measured.get("peak_allocated_mib", 0) / 1024 or None,
        "peak_reserved_gib": measured.get("peak_reserved_mib", 0) / 1024 or None,
        "peak_rss_gib": measured["peak_rss_mib"] / 1024,
        "estimate_gib": summary["memory"]["estimate"]["per_rank_bytes"]["total"] / 2**30,
        "final_loss": summary["final_loss"],
    }


def run_hf(model_dir: Path, data: Path, rows: int, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    """HF Trainer + PEFT LoRA on the same records: padded, length-grouped batches (its best setting)
    of about as many real tokens per step as llmft's packed rows, bf16 autocast, fused AdamW."""
    code = f"from benchmarks.gpu_hf import main; main({str(model_dir)!r}, {str(data)!r}, {rows}, {steps}, {warmup}, {str(work)!r})"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"skipped": ((proc.stderr or proc.stdout).strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench")
    parser.add_argument("--shapes", default="1b,8b", help="comma list of 1b, 8b, tiny")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the rates")
    parser.add_argument("--records", type=int, default=6000, help="alpaca-style records to write")
    parser.add_argument(
        "--runs", default="", help="comma list of run names to keep (default: all of the shapes)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmft-gpu-bench"))
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args(argv)
    import torch

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = write_records(args.workdir / "records.jsonl", args.records)
    cuda = torch.cuda.is_available()
    if cuda:
        peak, peak_source = H200_BF16_PEAK, "989 TFLOP/s (H100/H200 dense bf16 datasheet)"
    else:
        from llmft.train.observe import measure_cpu_peak

        peak, peak_source = measure_cpu_peak(torch.bfloat16), "measured CPU bf16 matmul (no CUDA: a dry run)"
    doc: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "peak_flops": peak,
                           "peak_source": peak_source, "torch": torch.__version__, "runs": {}}  # fmt: skip
    print(f"device {doc['device']}; MFU against {peak_source}", flush=True)
    header = f"{'run':<14}{'tokens/s':>12}{'MFU':>8}{'(observer)':>11}{'peak GiB':>10}{'estimate GiB':>14}"
    lines = [header]
    for shape in shapes:
        started = time.perf_counter()
        model_dir = build_model(shape, args.workdir / f"llama-{shape}")
        attn_len = attention_length(model_dir, data, "alpaca_short")
        print(f"[{shape}] model ready in {time.perf_counter() - started:.0f}s; attention length {attn_len:.0f}",
              flush=True)  # fmt: skip
        for name, run_shape, tool, method, rows in RUNS:
            if run_shape != shape or (args.runs and name not in args.runs.split(",")):
                continue
            started = time.perf_counter()
            if tool == "llmft":
                result = run_llmft(model_dir, data, method, rows, args.steps, args.warmup, args.workdir)
            else:
                result = run_hf(model_dir, data, rows, args.steps, args.warmup, args.workdir)
            result["wall_s"] = time.perf_counter() - started
            if "tokens_per_s" in result:
                result["mfu"] = result["tokens_per_s"] * flops_per_token(model_dir, method, attn_len) / peak
                peak_gib = result.get("peak_allocated_gib") or result.get("peak_rss_gib")
                observer = f"{100 * result['observer_mfu']:.1f}%" if result.get("observer_mfu") else "-"
                estimate = f"{result['estimate_gib']:.1f}" if result.get("estimate_gib") else "-"
                line = (f"{name:<14}{result['tokens_per_s']:>12,.0f}{100 * result['mfu']:>7.1f}%{observer:>11}"
                        f"{peak_gib:>10.1f}{estimate:>14}")  # fmt: skip
            else:
                line = f"{name:<14}  skipped: {result.get('skipped')}"
            print(line, flush=True)
            lines.append(line)
            doc["runs"][name] = result
    lora, hf = doc["runs"].get("1b-lora", {}), doc["runs"].get("1b-lora-hf", {})
    if "tokens_per_s" in lora and "tokens_per_s" in hf:
        doc["ratio_llmft_over_hf_1b_lora"] = lora["tokens_per_s"] / hf["tokens_per_s"]
        lines.append(
            f"1B LoRA: llmft / HF Trainer + PEFT = {doc['ratio_llmft_over_hf_1b_lora']:.2f}x tokens/s"
        )
    print("\n" + "\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
