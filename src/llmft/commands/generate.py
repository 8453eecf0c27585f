"""``llmft generate``: complete prompts with a trained run (or a model and an adapter).

It reads a finished run folder (``--run DIR``) and uses the run's own prompt format: alpaca's template
for alpaca runs, the chat template for chat runs, and so on (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmft.commands.common import device_flags, positive, runtime, setup_logging
from llmft.errors import UserError

GENERATE_EXAMPLES = """examples:
  llmft generate --run runs/tiny-llama-alpaca-lora --prompt "Give three tips for staying healthy."
  llmft generate --run RUN --prompts prompts.jsonl --json      # records with the format's fields
  llmft generate --model tiny-llama --adapter RUN --format alpaca --prompt "..." --do-sample --seed 1"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    gen = sub.add_parser("generate", help="Complete prompts with a trained run (or a model + adapter).",
                         description="Complete prompts in the run's training prompt format.",
                         epilog=GENERATE_EXAMPLES, formatter_class=fmt, allow_abbrev=False)  # fmt: skip
    source = gen.add_argument_group("model")
    source.add_argument("--run", metavar="DIR", help="a finished run folder (its adapter or model, format)")
    source.add_argument("--model", metavar="NAME", help="a preset, model folder or hub id (instead of --run)")
    source.add_argument("--adapter", metavar="DIR", help="with --model: a PEFT adapter folder to load on it")
    source.add_argument("--format", metavar="NAME",
                        help="with --model: put prompts in this data format's template (alpaca, chat, ...)")  # fmt: skip
    gen.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    gen.add_argument("--prompts", metavar="FILE", help="one prompt per line, or JSONL records of the format")
    gen.add_argument("--raw", action="store_true", help="send prompts as given, without the template")
    gen.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                     help="default: the run's generation.max_new_tokens (48)")  # fmt: skip
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's train.seed)")
    gen.add_argument("--num-return-sequences", type=int, default=1, metavar="N",
                     help="completions per prompt (needs --do-sample for N > 1)")  # fmt: skip
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt (JSON lines)")
    device_flags(gen)
    return gen


def _check_sampling(args: argparse.Namespace) -> None:
    """The sampling flags' ranges (transformers would fail later with a traceback, or accept a top-p
    above 1), and no sampling flag without --do-sample (greedy decoding would ignore it silently)."""
    if args.temperature is not None and not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: give a value above 0 (e.g. 0.7)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p}: give a probability mass in (0, 1] (e.g. 0.9)")
    positive(args.top_k, "--top-k")
    given = [flag for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p),
                                      ("--top-k", args.top_k)) if value is not None]  # fmt: skip
    if given and not args.do_sample:
        raise UserError(f"{', '.join(given)}: greedy decoding ignores sampling settings; add --do-sample")


def _generate_inputs(args: argparse.Namespace):
    """(config or None, model, tokenizer, data format or None) of the generate flags."""
    from llmft.checkpoint.loading import (
        is_classifier_run,
        load_adapter_model,
        load_run_model,
        run_config,
        tokenizer_for,
    )
    from llmft.config import Config, DataSection, ModelSection
    from llmft.data.formats import get_format

    if bool(args.run) == bool(args.model):
        raise UserError("generate: give either --run DIR (a finished run) or --model NAME [--adapter DIR]")
    if args.run:
        if args.adapter or args.format:
            raise UserError("generate: --adapter and --format go with --model; --run uses the run's own")
        run_dir = Path(args.run)
        cfg = run_config(run_dir)
        if cfg.task == "classification" or is_classifier_run(run_dir):
            raise UserError(
                f"generate: '{run_dir}' is a classifier run (task classification), which labels texts instead "
                f"of generating; use llmft predict {run_dir} --text '...'"
            )
        device, dtype = runtime(cfg, args)
        model, tokenizer = load_run_model(run_dir, cfg, device)
        return cfg, model, tokenizer, get_format(cfg.data, tokenizer), device, dtype
    cfg = Config(model=ModelSection(name=args.model))
    adapter = Path(args.adapter) if args.adapter else None
    if adapter is not None and not adapter.is_dir():
        raise UserError(f"--adapter: folder '{adapter}' not found; pass a PEFT adapter folder")
    tokenizer = tokenizer_for(cfg.model, adapter)
    data_format = get_format(DataSection(format=args.format), tokenizer) if args.format else None
    device, dtype = runtime(cfg, args)
    return None, load_adapter_model(cfg.model, adapter, device), tokenizer, data_format, device, dtype


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """``llmft generate``: print (or emit as JSON lines) each prompt and its completion(s)."""
    setup_logging()
    from llmft.config import GenerationSection
    from llmft.inference.generate import generate_completions
    from llmft.inference.prompts import PromptItem, read_prompts

    if extra:
        raise UserError(f"generate: unexpected argument {extra[0]!r} (see llmft generate --help)")
    if not args.prompt and not args.prompts:
        raise UserError("generate: give prompts with --prompt TEXT (repeatable) or --prompts FILE")
    positive(args.max_new_tokens, "--max-new-tokens")
    positive(args.num_return_sequences, "--num-return-sequences")
    if args.num_return_sequences > 1 and not args.do_sample:
        raise UserError(
            f"--num-return-sequences {args.num_return_sequences}: greedy decoding gives one answer; "
            f"add --do-sample"
        )
    _check_sampling(args)
    if args.prompts and not Path(args.prompts).is_file():  # before loading a model
        raise UserError(f"--prompts: file '{args.prompts}' not found")
    cfg, model, tokenizer, data_format, device, dtype = _generate_inputs(args)
    template = None if args.raw else data_format
    items = [PromptItem(template.generation_prompt(p) if template else p) for p in args.prompt]
    if args.prompts:
        items += read_prompts(Path(args.prompts), template)
    generation = cfg.generation if cfg is not None else GenerationSection()
    seed = args.seed if args.seed is not None else (cfg.train.seed if cfg is not None else 0)
    for item in items:
        completions = generate_completions(
            model,
            tokenizer,
            item.prompt,
            max_new_tokens=args.max_new_tokens or generation.max_new_tokens,
            device=device,
            compute_dtype=dtype,
            do_sample=args.do_sample,
            temperature=args.temperature if args.temperature is not None else generation.temperature,
            top_p=args.top_p if args.top_p is not None else generation.top_p,
            top_k=args.top_k,
            num_return_sequences=args.num_return_sequences,
            seed=seed,
        )
        if args.json:
            record = {"prompt": item.prompt, "completion": completions[0], "completions": completions}
            if item.references is not None:
                record["references"] = item.references
            print(json.dumps(record, ensure_ascii=False), flush=True)
            continue
        print(f"=== prompt\n{item.prompt}")
        for i, completion in enumerate(completions, start=1):
            label = f"completion {i}" if len(completions) > 1 else "completion"
            print(f"=== {label}\n{completion}")
        print(flush=True)
    return 0
