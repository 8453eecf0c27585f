"""``llmft generate`` and ``llmft eval``: complete prompts with a trained model, score a run.

Both read a finished run folder (``--run DIR``) and use the run's own prompt format: alpaca's
template for alpaca runs, the chat template for chat runs, and so on (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from llmft.config import parse_overrides
from llmft.errors import UserError

log = logging.getLogger("llmft")

GENERATE_EXAMPLES = """examples:
  llmft generate --run runs/tiny-llama-alpaca-lora --prompt "Give three tips for staying healthy."
  llmft generate --run RUN --prompts prompts.jsonl --json      # records with the format's fields
  llmft generate --model tiny-llama --adapter RUN --format alpaca --prompt "..." --do-sample --seed 1"""
EVAL_EXAMPLES = """examples:
  llmft eval --run runs/tiny-llama-grammar-lora                 # the run's validation split
  llmft eval --run RUN --data.path jfleg_test.jsonl --out eval.json   # every record of other data"""
# What `llmft eval` may change in the run's config: the data and how it is scored, not the model.
_EVAL_OVERRIDABLE = ("data.", "eval.", "train.micro_batch_size", "train.precision", "distributed.device")


def _device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="default: the run's distributed.device (auto: CUDA when present)")  # fmt: skip
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                        help="autocast dtype; default: the run's train.precision (auto)")  # fmt: skip


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """The ``generate`` and ``eval`` subcommands."""
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
    _device_flags(gen)

    ev = sub.add_parser("eval", help="Score a run: loss, perplexity and task metrics on validation data.",
                        description="Score a finished run on its validation split (or on other data given "
                        "with --data.path): loss and perplexity as in training, plus task metrics of greedy "
                        "answers (grammar: exact match, GLEU; alpaca, chat: ROUGE-L; classifiers: accuracy, "
                        "macro-F1). Dotted flags override the run's data.* and eval.* settings.",
                        epilog=EVAL_EXAMPLES, formatter_class=fmt, allow_abbrev=False)  # fmt: skip
    ev.add_argument("--run", metavar="DIR", required=True, help="a finished run folder")
    ev.add_argument("--out", metavar="FILE", help="also write the metrics and every generation as JSON")
    ev.add_argument("--max-generations", type=int, default=None, metavar="N",
                    help="answer only the first N prompts (default: all)")  # fmt: skip
    ev.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                    help="default: the run's eval.max_new_tokens (48)")  # fmt: skip
    ev.add_argument("--no-generate", action="store_true", help="loss and perplexity only")
    _device_flags(ev)
    return {"generate": gen, "eval": ev}


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: give 1 or more")


def _check_sampling(args: argparse.Namespace) -> None:
    """The sampling flags' ranges (transformers would fail later with a traceback, or accept a top-p
    above 1), and no sampling flag without --do-sample (greedy decoding would ignore it silently)."""
    if args.temperature is not None and not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature}: give a value above 0 (e.g. 0.7)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p}: give a probability mass in (0, 1] (e.g. 0.9)")
    _positive(args.top_k, "--top-k")
    given = [flag for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p),
                                      ("--top-k", args.top_k)) if value is not None]  # fmt: skip
    if given and not args.do_sample:
        raise UserError(f"{', '.join(given)}: greedy decoding ignores sampling settings; add --do-sample")


def _runtime(cfg, args: argparse.Namespace):
    """(device, compute dtype) from the flags, else from the run's config."""
    from llmft.distributed.env import resolve_device
    from llmft.train.optim import resolve_precision

    device = resolve_device(args.device or cfg.distributed.device)
    return device, resolve_precision(args.precision or cfg.train.precision, device)


# ---------------------------------------------------------------------------------------------------
# llmft generate


def _generate_inputs(args: argparse.Namespace):
    """(config or None, model, tokenizer, data format or None) of the generate flags."""
    from llmft.config import Config, DataSection, ModelSection
    from llmft.data.formats import get_format
    from llmft.inference.loading import (
        is_classifier_run,
        load_adapter_model,
        load_run_model,
        run_config,
        tokenizer_for,
    )

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
        device, dtype = _runtime(cfg, args)
        model, tokenizer = load_run_model(run_dir, cfg, device)
        return cfg, model, tokenizer, get_format(cfg.data, tokenizer), device, dtype
    cfg = Config(model=ModelSection(name=args.model))
    adapter = Path(args.adapter) if args.adapter else None
    if adapter is not None and not adapter.is_dir():
        raise UserError(f"--adapter: folder '{adapter}' not found; pass a PEFT adapter folder")
    tokenizer = tokenizer_for(cfg.model, adapter)
    data_format = get_format(DataSection(format=args.format), tokenizer) if args.format else None
    device, dtype = _runtime(cfg, args)
    return None, load_adapter_model(cfg.model, adapter, device), tokenizer, data_format, device, dtype


def run_generate(args: argparse.Namespace, extra: list[str]) -> int:
    """``llmft generate``: print (or emit as JSON lines) each prompt and its completion(s)."""
    from llmft.config import GenerationSection
    from llmft.inference.generate import generate_completions
    from llmft.inference.prompts import PromptItem, read_prompts

    if extra:
        raise UserError(f"generate: unexpected argument {extra[0]!r} (see llmft generate --help)")
    if not args.prompt and not args.prompts:
        raise UserError("generate: give prompts with --prompt TEXT (repeatable) or --prompts FILE")
    _positive(args.max_new_tokens, "--max-new-tokens")
    _positive(args.num_return_sequences, "--num-return-sequences")
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


# ---------------------------------------------------------------------------------------------------
# llmft eval


def _eval_overrides(extra: list[str]) -> dict:
    overrides = parse_overrides(extra)
    for key in overrides:
        if "." not in key:
            raise UserError(f"eval: unknown flag '--{key}' (see llmft eval --help)")
        if not any(key == prefix or key.startswith(prefix) for prefix in _EVAL_OVERRIDABLE):
            raise UserError(
                f"eval: --{key} cannot change - the run's model and training are what is scored; override "
                f"only data.*, eval.*, train.micro_batch_size, train.precision or distributed.device"
            )
    return overrides


def run_eval(args: argparse.Namespace, extra: list[str]) -> int:
    """``llmft eval``: print a table of the run's eval metrics; ``--out`` writes them as JSON."""
    from llmft.data.pipeline import eval_loader, prepare_data
    from llmft.evaluation.generations import answer_and_score
    from llmft.evaluation.metrics import metric_names
    from llmft.inference.loading import is_classifier_run, load_run_model, run_config
    from llmft.inference.predict import load_classifier
    from llmft.models.heads import ClassifierSpec
    from llmft.train.evaluate import evaluate_split

    _positive(args.max_generations, "--max-generations")
    _positive(args.max_new_tokens, "--max-new-tokens")
    overrides = _eval_overrides(extra)
    run_dir = Path(args.run)
    cfg = run_config(run_dir, overrides)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UserError(f"--out: '{out}' is a folder; give a file name such as eval.json")
    # Other data than the run's (another file, split or subset) is scored whole; the run's own data is
    # split as in training (same seed), so the validation records are the ones the run evaluated.
    own_data = not any(k in overrides for k in ("data.path", "data.split", "data.subset"))
    device, dtype = _runtime(cfg, args)
    classifier = cfg.task == "classification" or is_classifier_run(run_dir)
    if classifier:
        model, tokenizer = load_classifier(run_dir, device)
    else:
        model, tokenizer = load_run_model(run_dir, cfg, device)
    data = prepare_data(cfg.data, tokenizer, cfg.train.seed, cfg.task, hold_out_all=not own_data)
    if classifier and data.label_names != list(ClassifierSpec.read(run_dir).labels):
        raise UserError(
            f"data.path: '{data.source}' has the labels {data.label_names}, but the classifier was trained on "
            f"{list(ClassifierSpec.read(run_dir).labels)}; evaluate on data with the same classes"
        )
    if data.val is None:
        raise UserError(
            f"eval: the run's data has no validation split (data.val_set_size {cfg.data.val_set_size}); pass "
            f"--data.val_set_size N, or other data with --data.path FILE"
        )
    loader = eval_loader(data.val, cfg.train.micro_batch_size, tokenizer.pad_token_id)
    metrics: dict = evaluate_split(model, loader, device, dtype)
    generations: list[dict] = []
    scored = cfg.task == "causal_lm" and not args.no_generate and metric_names(data.format.name)
    if scored and data.val_prompts:
        items = data.val_prompts[: args.max_generations]
        max_new_tokens = args.max_new_tokens or cfg.eval.max_new_tokens
        task, generations = answer_and_score(
            model, tokenizer, data.format.name, items, max_new_tokens, device, dtype
        )
        metrics.update(task)
    split = "validation split" if own_data else "all records"
    header = f"{run_dir}: {data.source} ({split}: {len(data.val)} examples"
    header += f", {len(generations)} answered)" if generations else ")"
    print(header)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.4f}")
    if out is not None:
        report = {
            "run": str(run_dir),
            "data": data.source,
            "split": "validation" if own_data else "all",
            "examples": len(data.val),
            "metrics": metrics,
            "generations": generations,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"Wrote {out}")
    return 0
