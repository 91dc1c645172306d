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

Trivial baselines and sequence-level agreement (to tell whether a reward model learned anything):

* :func:`constant_predictions` marks every response wholly good or wholly poor ("all good" / "all poor");
* :func:`token_label_rates` counts the reference's good / poor tokens (the base rates of a training split), and
  :func:`random_baseline_metrics` gives the *expected* token-level precision / recall / F1 of labelling each token
  good with probability ``p_good`` and poor with ``p_poor`` independently of the text ("random at the same rate");
* :func:`sequence_agreement` collapses predicted and reference spans per response to the sign of their normalised
  sum of scores (``sum(scores) / number of spans``, 0 without spans) and to a verdict "success" = at least one good
  span and no poor span, and reports how often the two agree; :func:`random_sequence_baseline` is the expected
  agreement of guessing at a training split's rates;
* :func:`bootstrap_mean_ci` is a percentile bootstrap confidence interval of a mean (e.g. over seeds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..alignment import token_rewards_from_offsets
from ..spans import Critique, ScoredSpan, locate_critique

__all__ = [
    "bootstrap_mean_ci",
    "constant_predictions",
    "evaluate_span_reward_model",
    "random_baseline_metrics",
    "random_sequence_baseline",
    "reference_spans",
    "sequence_agreement",
    "sequence_verdict",
    "span_metrics",
    "token_label_rates",
]


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


# ----------------------------------------------------------------------------------------------------------------
# Trivial baselines, sequence-level agreement, confidence intervals
# ----------------------------------------------------------------------------------------------------------------


def constant_predictions(responses: Sequence[str], score: float) -> list[list[tuple[int, int, float]]]:
    """One span over each whole response with ``score`` (the "all good" / "all poor" baseline); ``[]`` for an
    empty response."""
    return [[(0, len(r), float(score))] if r else [] for r in responses]


def token_label_rates(
    responses: Sequence[str], references: Sequence[Sequence[tuple[int, int, float]]], tokenizer
) -> dict[str, float]:
    """Token counts of the reference labels, projected on ``tokenizer``'s tokens as :func:`span_metrics` does.

    Returns ``tokens`` (all response tokens), ``good`` / ``poor`` (tokens of each polarity) and their rates
    ``good_rate`` / ``poor_rate`` (0 when there are no tokens).
    """
    if len(responses) != len(references):
        raise ValueError(f"token_label_rates: {len(responses)} responses, {len(references)} references.")
    counts = {"tokens": 0, "good": 0, "poor": 0}
    if responses:
        encoding = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True)
        for i, (response, reference) in enumerate(zip(responses, references)):
            labels = np.sign(token_rewards_from_offsets(response, encoding["offset_mapping"][i], reference))
            counts["tokens"] += len(labels)
            counts["good"] += int((labels > 0).sum())
            counts["poor"] += int((labels < 0).sum())
    total = counts["tokens"]
    return {
        "tokens": float(total),
        "good": float(counts["good"]),
        "poor": float(counts["poor"]),
        "good_rate": counts["good"] / total if total else 0.0,
        "poor_rate": counts["poor"] / total if total else 0.0,
    }


def _prf(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_baseline_metrics(reference: Mapping[str, float], p_good: float, p_poor: float) -> dict[str, float | None]:
    """Expected token-level metrics of labelling each token good with probability ``p_good``, poor with ``p_poor``
    (neutral otherwise), independently of the text, against references with the counts ``reference`` (the output
    of :func:`token_label_rates` on the evaluated rows).

    Precision is the ratio of expected counts (``E[TP] / E[predicted]`` = the reference rate of the polarity),
    recall is ``p``; F1 is computed from the two. ``None`` where undefined (no tokens, ``p = 0``).
    """
    if not (0.0 <= p_good <= 1.0 and 0.0 <= p_poor <= 1.0 and p_good + p_poor <= 1.0):
        raise ValueError(
            f"random_baseline_metrics: need 0 <= p_good, p_poor and p_good + p_poor <= 1, got {p_good}, {p_poor}."
        )
    total = float(reference["tokens"])
    metrics: dict[str, float | None] = {}
    for name, p in (("good", p_good), ("poor", p_poor)):
        positives = float(reference[name])
        precision = positives / total if total and p > 0 else None
        recall = p if positives else None
        metrics[f"{name}_precision"] = precision
        metrics[f"{name}_recall"] = recall
        metrics[f"{name}_f1"] = 0.0 if p == 0 and positives else _prf(precision, recall)
    return metrics


def sequence_verdict(spans: Sequence[tuple[int, int, float]]) -> tuple[int, bool]:
    """``(sign, success)`` of one response's spans: the sign of their normalised sum of scores (0 without spans),
    and success = at least one good span and no poor span."""
    scores = [float(s[2]) for s in spans if float(s[2]) != 0]
    sign = int(np.sign(sum(scores) / len(scores))) if scores else 0
    return sign, bool(scores) and all(s > 0 for s in scores)


def sequence_agreement(
    predictions: Sequence[Sequence[tuple[int, int, float]]],
    references: Sequence[Sequence[tuple[int, int, float]]],
) -> dict[str, float | None]:
    """How often the collapsed verdicts (:func:`sequence_verdict`) of predicted and reference spans agree.

    Returns ``sign_accuracy`` (same sign of the normalised score, three classes -/0/+), ``success_accuracy``
    (same success verdict), ``success_precision`` / ``success_recall`` (of predicted success against the
    reference's; None when undefined), ``predicted_success_rate``, ``reference_success_rate`` and ``num_samples``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"sequence_agreement: {len(predictions)} predictions, {len(references)} references.")
    if not predictions:
        raise ValueError("sequence_agreement: no rows.")
    pred = [sequence_verdict(p) for p in predictions]
    ref = [sequence_verdict(r) for r in references]
    tp = sum(p[1] and r[1] for p, r in zip(pred, ref))
    n_pred = sum(p[1] for p in pred)
    n_ref = sum(r[1] for r in ref)
    n = len(pred)
    return {
        "sign_accuracy": sum(p[0] == r[0] for p, r in zip(pred, ref)) / n,
        "success_accuracy": sum(p[1] == r[1] for p, r in zip(pred, ref)) / n,
        "success_precision": tp / n_pred if n_pred else None,
        "success_recall": tp / n_ref if n_ref else None,
        "predicted_success_rate": n_pred / n,
        "reference_success_rate": n_ref / n,
        "num_samples": float(n),
    }


def random_sequence_baseline(
    train_references: Sequence[Sequence[tuple[int, int, float]]],
    references: Sequence[Sequence[tuple[int, int, float]]],
) -> dict[str, float | None]:
    """Expected :func:`sequence_agreement` accuracies of guessing each verdict at the rates of
    ``train_references`` (sign drawn from its -/0/+ frequencies, success from its success rate), independently of
    the response, against ``references``."""
    if not train_references or not references:
        raise ValueError("random_sequence_baseline: needs training and evaluated references.")
    train = [sequence_verdict(r) for r in train_references]
    test = [sequence_verdict(r) for r in references]
    sign_p = {c: sum(t[0] == c for t in train) / len(train) for c in (-1, 0, 1)}
    sign_q = {c: sum(t[0] == c for t in test) / len(test) for c in (-1, 0, 1)}
    q = sum(t[1] for t in train) / len(train)
    s = sum(t[1] for t in test) / len(test)
    return {
        "sign_accuracy": sum(sign_p[c] * sign_q[c] for c in (-1, 0, 1)),
        "success_accuracy": q * s + (1 - q) * (1 - s),
        "success_precision": s if q > 0 else None,
        "success_recall": q if s > 0 else None,
        "predicted_success_rate": q,
        "reference_success_rate": s,
        "num_samples": float(len(test)),
    }


def bootstrap_mean_ci(
    values: Sequence[float], confidence: float = 0.95, num_resamples: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap confidence interval.

    NaN values are an error (drop them explicitly first); one value gives ``(v, v, v)``.
    """
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_mean_ci: no values.")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"bootstrap_mean_ci: values must be finite, got {data.tolist()}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_mean_ci: confidence must be in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(int(num_resamples), data.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(data.mean()), float(low), float(high)
