"""``llmft eval``: score a finished run: loss and perplexity as in training, plus task metrics of
greedy answers, on its validation split or on other data (see docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmft.commands.common import device_flags, positive, runtime, setup_logging
from llmft.config import parse_overrides
from llmft.errors import UserError

EVAL_EXAMPLES = """examples:
  llmft eval --run runs/tiny-llama-grammar-lora                 # the run's validation split
  llmft eval --run RUN --data.path jfleg_test.jsonl --out eval.json   # every record of other data"""
# What `llmft eval` may change in the run's config: the data and how it is scored, not the model.
_EVAL_OVERRIDABLE = ("data.", "eval.", "train.micro_batch_size", "train.precision", "distributed.device")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
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
    device_flags(ev)
    return ev


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


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """``llmft eval``: print a table of the run's eval metrics; ``--out`` writes them as JSON."""
    setup_logging()
    from llmft.checkpoint.loading import is_classifier_run, load_classifier, load_run_model, run_config
    from llmft.data.pipeline import eval_loader, prepare_data
    from llmft.evaluation.generations import answer_and_score
    from llmft.evaluation.metrics import metric_names
    from llmft.models.heads import ClassifierSpec
    from llmft.train.evaluate import evaluate_split

    positive(args.max_generations, "--max-generations")
    positive(args.max_new_tokens, "--max-new-tokens")
    overrides = _eval_overrides(extra)
    run_dir = Path(args.run)
    cfg = run_config(run_dir, overrides)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UserError(f"--out: '{out}' is a folder; give a file name such as eval.json")
    # Other data than the run's (another file, split or subset) is scored whole; the run's own data is
    # split as in training (same seed), so the validation records are the ones the run evaluated.
    own_data = not any(k in overrides for k in ("data.path", "data.split", "data.subset"))
    device, dtype = runtime(cfg, args)
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
