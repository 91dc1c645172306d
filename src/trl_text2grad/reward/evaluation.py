"""Evaluation of span reward models against annotations.

Metrics (all micro-averaged over the evaluated rows):

* ``good_precision`` / ``good_recall`` / ``good_f1`` and the same for ``poor``: **token-level, by position**. Both
  the predicted and the reference character spans are projected onto the tokens of the response (the reward
  model's tokenizer, alignment rule of ``DESIGN.md``); a predicted good token counts as correct only if the same
  token is good in the reference. No bag-of-words matching.
* ``exact_span_precision`` / ``exact_span_recall``: a predicted span matches when a reference span of the same
  polarity has exactly the same character range (outer whitespace trimmed on both sides).
* ``parse_rate``: fraction of model outputs that parsed (always 1 for the token head).
* ``critique_rougeL``: ROUGE-L F-measure of the predicted critique against the annotator's, over rows where both
  are non-empty (``None`` when there are none, e.g. a token head without critique generation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..alignment import token_rewards_from_offsets
from ..spans import Critique, ScoredSpan, locate_critique

__all__ = ["span_metrics", "evaluate_span_reward_model", "reference_spans"]


def _trim(response: str, start: int, end: int) -> tuple[int, int]:
    while start < end and response[start].isspace():
        start += 1
    while end > start and response[end - 1].isspace():
        end -= 1
    return start, end


def reference_spans(row: Mapping[str, Any], fuzzy_threshold: float = 90.0) -> list[tuple[int, int, float]]:
    """Reference character spans of an annotated row: ``located_spans``/``spans`` if present, else located quotes."""
    response = row["response"]
    if row.get("good_spans") is not None or row.get("poor_spans") is not None:
        located = locate_critique(response, Critique.from_dict(row), fuzzy_threshold=fuzzy_threshold)
        return [(s.start, s.end, s.score) for s in located.spans]
    for key in ("located_spans", "spans"):
        if row.get(key) is not None:
            return [(int(s[0]), int(s[1]), float(s[2])) for s in row[key]]
    return []


def _as_spans(response: str, prediction: Any, fuzzy_threshold: float) -> list[tuple[int, int, float]]:
    if prediction is None:
        return []
    if hasattr(prediction, "spans") and hasattr(prediction, "critique"):  # SpanPrediction
        return [(s.start, s.end, s.score) for s in prediction.spans]
    if isinstance(prediction, Critique):
        located = locate_critique(response, prediction, fuzzy_threshold=fuzzy_threshold)
        return [(s.start, s.end, s.score) for s in located.spans]
    spans = []
    for span in prediction:
        if isinstance(span, ScoredSpan):
            spans.append(span.as_tuple())
        else:
            spans.append((int(span[0]), int(span[1]), float(span[2])))
    return spans


def span_metrics(
    responses: Sequence[str],
    predictions: Sequence[Any],
    references: Sequence[Sequence[tuple[int, int, float]]],
    tokenizer,
    predicted_critiques: Sequence[str] | None = None,
    reference_critiques: Sequence[str] | None = None,
    parsed: Sequence[bool] | None = None,
    fuzzy_threshold: float = 90.0,
) -> dict[str, float | None]:
    """Compare predicted spans with reference spans (see the module docstring for the definitions).

    Args:
        responses: The response texts.
        predictions: Per row a ``SpanPrediction``, a ``Critique`` (quotes located here) or ``(start, end, score)``
            spans.
        references: Per row reference ``(start, end, score)`` character spans (score sign = polarity).
        tokenizer: Fast tokenizer whose tokens define "token-level".
        predicted_critiques, reference_critiques: Critique texts for ROUGE-L (optional).
        parsed: Per row whether the model output parsed (optional).
        fuzzy_threshold: Used when predictions are Critiques.
    """
    if not (len(responses) == len(predictions) == len(references)):
        raise ValueError(
            f"span_metrics: {len(responses)} responses, {len(predictions)} predictions, {len(references)} references."
        )
    counts = {name: {"tp": 0, "fp": 0, "fn": 0} for name in ("good", "poor")}
    exact = {"tp": 0, "pred": 0, "ref": 0}
    encoding = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True) if responses else None
    for i, (response, prediction, reference) in enumerate(zip(responses, predictions, references)):
        predicted = _as_spans(response, prediction, fuzzy_threshold)
        offsets = encoding["offset_mapping"][i]
        pred_tokens = token_rewards_from_offsets(response, offsets, predicted)
        ref_tokens = token_rewards_from_offsets(response, offsets, reference)
        for name, sign in (("good", 1), ("poor", -1)):
            p = np.sign(pred_tokens) == sign
            r = np.sign(ref_tokens) == sign
            counts[name]["tp"] += int((p & r).sum())
            counts[name]["fp"] += int((p & ~r).sum())
            counts[name]["fn"] += int((~p & r).sum())
        pred_set = {(*_trim(response, s, e), np.sign(score)) for s, e, score in predicted if score != 0}
        ref_set = {(*_trim(response, s, e), np.sign(score)) for s, e, score in reference if score != 0}
        pred_set = {x for x in pred_set if x[1] > x[0]}
        ref_set = {x for x in ref_set if x[1] > x[0]}
        exact["tp"] += len(pred_set & ref_set)
        exact["pred"] += len(pred_set)
        exact["ref"] += len(ref_set)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    metrics: dict[str, float | None] = {}
    for name, c in counts.items():
        precision = ratio(c["tp"], c["tp"] + c["fp"])
        recall = ratio(c["tp"], c["tp"] + c["fn"])
        metrics[f"{name}_precision"] = precision
        metrics[f"{name}_recall"] = recall
        if c["tp"] + c["fp"] + c["fn"] == 0:
            metrics[f"{name}_f1"] = None  # no such spans predicted or annotated
        elif c["tp"] == 0:
            metrics[f"{name}_f1"] = 0.0
        else:
            metrics[f"{name}_f1"] = 2 * precision * recall / (precision + recall)
        metrics[f"{name}_predicted_tokens"] = float(c["tp"] + c["fp"])
        metrics[f"{name}_reference_tokens"] = float(c["tp"] + c["fn"])
    tp = counts["good"]["tp"] + counts["poor"]["tp"]
    fp = counts["good"]["fp"] + counts["poor"]["fp"]
    fn = counts["good"]["fn"] + counts["poor"]["fn"]
    metrics["span_precision"] = ratio(tp, tp + fp)
    metrics["span_recall"] = ratio(tp, tp + fn)
    metrics["exact_span_precision"] = ratio(exact["tp"], exact["pred"])
    metrics["exact_span_recall"] = ratio(exact["tp"], exact["ref"])
    metrics["parse_rate"] = float(np.mean(parsed)) if parsed is not None and len(parsed) else None
    metrics["critique_rougeL"] = None
    if predicted_critiques is not None and reference_critiques is not None:
        pairs = [
            (p, r) for p, r in zip(predicted_critiques, reference_critiques) if p and p.strip() and r and r.strip()
        ]
        if pairs:
            from rouge_score import rouge_scorer

            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            metrics["critique_rougeL"] = float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs]))
    metrics["num_samples"] = float(len(responses))
    return metrics


def evaluate_span_reward_model(model, rows: Any, fuzzy_threshold: float = 90.0) -> dict[str, float | None]:
    """Score annotated ``rows`` (a ``datasets.Dataset`` or list of dicts) with a ``SpanRewardModel`` and compare."""
    rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
    if not rows:
        raise ValueError("evaluate_span_reward_model: no rows to evaluate.")
    prompts = [r.get("prompt", r.get("messages")) for r in rows]
    responses = [r["response"] for r in rows]
    predictions = model.predict(prompts, responses)
    references = [reference_spans(r, fuzzy_threshold) for r in rows]
    return span_metrics(
        responses,
        predictions,
        references,
        model.tokenizer,
        predicted_critiques=[p.critique.text for p in predictions],
        reference_critiques=[r.get("critique") or "" for r in rows],
        parsed=[p.parsed for p in predictions],
        fuzzy_threshold=fuzzy_threshold,
    )
