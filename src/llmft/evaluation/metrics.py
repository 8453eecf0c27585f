"""Task metrics of generated text against references, computed with the field's libraries.

- grammar correction: exact match (a prediction equal to one of the references, whitespace-trimmed)
  and GLEU (``nltk.translate.gleu_score.corpus_gleu``, Wu et al.'s sentence-level BLEU variant, over
  every reference of a record: JFLEG-style multi-reference data counts a match against any);
- instructions and chat (alpaca, chat, your own formats): ROUGE-L F-measure (``rouge_score``, Google's
  reference implementation; the best reference per example, averaged over examples);
- classification as text (``data.format classification`` with ``task: causal_lm``): exact match of the
  generated label.

A classifier head (``task: classification``) has accuracy and macro-F1 from its logits instead
(:func:`llmft.train.loss.classification_metrics`); plain-text formats (quotes, text) have no prompt to
complete, so only loss and perplexity.

Both libraries are pure Python and read no data files (no ``nltk.download``): words are split on
whitespace for GLEU, and rouge_score uses its own tokenizer (lower-case alphanumeric words, no stemmer).
"""

from __future__ import annotations

from collections.abc import Sequence

# The metrics of each format that completes a prompt; formats not named here get DEFAULT_METRICS.
METRICS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "grammar": ("exact_match", "gleu"),
    "classification": ("exact_match",),
    "alpaca": ("rougeL",),
    "chat": ("rougeL",),
}
DEFAULT_METRICS: tuple[str, ...] = ("rougeL",)
# Formats whose examples are plain text (every token trained): nothing to complete.
NO_PROMPT_FORMATS = frozenset({"quotes", "text"})


def metric_names(format_name: str) -> tuple[str, ...]:
    """The task metrics of a data format (empty for plain-text formats)."""
    if format_name in NO_PROMPT_FORMATS:
        return ()
    return METRICS_BY_FORMAT.get(format_name, DEFAULT_METRICS)


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Share of predictions equal to one of their references, after trimming surrounding whitespace."""
    if not predictions:
        return 0.0
    hits = sum(p.strip() in {r.strip() for r in refs} for p, refs in zip(predictions, references))
    return hits / len(predictions)


def gleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus GLEU (nltk) over whitespace-split words, every reference of an example counted."""
    from nltk.translate.gleu_score import corpus_gleu

    if not predictions:
        return 0.0
    return float(
        corpus_gleu(
            [[r.split() for r in refs] for refs in references],
            [p.split() for p in predictions],
        )
    )


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure (rouge_score), each prediction scored against its best reference."""
    from rouge_score import rouge_scorer

    if not predictions:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        scorer.score_multi(list(refs), p)["rougeL"].fmeasure for p, refs in zip(predictions, references)
    ]
    return sum(scores) / len(scores)


_FUNCTIONS = {"exact_match": exact_match, "gleu": gleu, "rougeL": rouge_l}


def task_metrics(
    format_name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """``{metric: value}`` of the format's metrics (see :data:`METRICS_BY_FORMAT`)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    return {name: _FUNCTIONS[name](predictions, references) for name in metric_names(format_name)}
