"""Trivial baselines, sequence-level agreement, bootstrap intervals and the scalar collapse of annotations
(``trl_text2grad.reward.evaluation`` / ``trl_text2grad.reward.data``), used by the pipeline evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trl_text2grad.reward.data import collapse_to_sequence_label
from trl_text2grad.reward.evaluation import (
    bootstrap_mean_ci,
    constant_predictions,
    random_baseline_metrics,
    random_sequence_baseline,
    reference_spans,
    sequence_agreement,
    sequence_verdict,
    span_metrics,
    token_label_rates,
)

RESPONSES = ["The waves roll in. Water is blue.", "Grey waves crash on rocks.", "It is wet and blue"]
REFERENCES = [[(4, 9, 1.0), (20, 33, -1.0)], [(5, 10, 1.0)], [(14, 18, -1.0)]]


def test_constant_predictions_are_the_all_good_and_all_poor_baselines(smollm2_tokenizer):
    rates = token_label_rates(RESPONSES, REFERENCES, smollm2_tokenizer)
    assert rates["tokens"] > rates["good"] + rates["poor"] > 0
    assert constant_predictions(["abc", ""], -1.0) == [[(0, 3, -1.0)], []]
    poor = span_metrics(RESPONSES, constant_predictions(RESPONSES, -1.0), REFERENCES, smollm2_tokenizer)
    assert poor["poor_recall"] == 1.0 and poor["good_recall"] == 0.0
    assert poor["poor_precision"] == pytest.approx(rates["poor"] / rates["tokens"])
    good = span_metrics(RESPONSES, constant_predictions(RESPONSES, 1.0), REFERENCES, smollm2_tokenizer)
    assert good["good_recall"] == 1.0 and good["good_precision"] == pytest.approx(rates["good_rate"])


def test_random_baseline_is_the_expectation_of_random_labels():
    reference = {"tokens": 200.0, "good": 20.0, "poor": 60.0}
    metrics = random_baseline_metrics(reference, p_good=0.25, p_poor=0.5)
    assert metrics["good_precision"] == pytest.approx(0.1) and metrics["good_recall"] == 0.25
    assert metrics["good_f1"] == pytest.approx(2 * 0.1 * 0.25 / 0.35)
    assert metrics["poor_precision"] == pytest.approx(0.3) and metrics["poor_recall"] == 0.5
    # Monte Carlo: label tokens at random and count
    rng = np.random.default_rng(0)
    truth = np.array([1] * 20 + [-1] * 60 + [0] * 120)
    tp = pred = 0
    for _ in range(2000):
        draw = rng.choice([1, -1, 0], size=truth.size, p=[0.25, 0.5, 0.25])
        tp += int(((draw == 1) & (truth == 1)).sum())
        pred += int((draw == 1).sum())
    assert tp / pred == pytest.approx(0.1, abs=0.01)
    assert tp / (2000 * 20) == pytest.approx(0.25, abs=0.01)
    none = random_baseline_metrics(reference, p_good=0.0, p_poor=0.5)
    assert none["good_precision"] is None and none["good_f1"] == 0.0
    with pytest.raises(ValueError, match="p_good"):
        random_baseline_metrics(reference, p_good=0.7, p_poor=0.5)


def test_sequence_verdict_and_agreement():
    assert sequence_verdict([]) == (0, False)
    assert sequence_verdict([(0, 1, 1.0)]) == (1, True)
    assert sequence_verdict([(0, 1, 1.0), (2, 3, -1.0)]) == (0, False)
    assert sequence_verdict([(0, 1, -1.0), (2, 3, -1.0), (4, 5, 1.0)]) == (-1, False)
    same = sequence_agreement(REFERENCES, REFERENCES)
    assert same["sign_accuracy"] == 1.0 and same["success_accuracy"] == 1.0
    assert same["reference_success_rate"] == pytest.approx(1 / 3)
    # the second row is a success; predicting "all poor" gets the two failures right
    poor = sequence_agreement(constant_predictions(RESPONSES, -1.0), REFERENCES)
    assert poor["success_accuracy"] == pytest.approx(2 / 3) and poor["success_precision"] is None
    assert poor["sign_accuracy"] == pytest.approx(1 / 3)  # row 1 is 0, row 2 is +, row 3 is -
    with pytest.raises(ValueError, match="2 predictions, 3 references"):
        sequence_agreement(REFERENCES[:2], REFERENCES)


def test_random_sequence_baseline():
    train = [[(0, 1, 1.0)], [(0, 1, -1.0)], [(0, 1, -1.0)], []]  # signs +, -, -, 0; success 1/4
    test = [[(0, 1, 1.0)], [(0, 1, 1.0)]]  # all + and successes
    base = random_sequence_baseline(train, test)
    assert base["sign_accuracy"] == pytest.approx(0.25)
    assert base["success_accuracy"] == pytest.approx(0.25)
    assert base["predicted_success_rate"] == 0.25 and base["reference_success_rate"] == 1.0


def test_bootstrap_mean_ci():
    mean, low, high = bootstrap_mean_ci([0.1, 0.2, 0.3, 0.4, 0.5], num_resamples=5000, seed=1)
    assert mean == pytest.approx(0.3) and low < mean < high
    assert 0.1 <= low and high <= 0.5
    assert bootstrap_mean_ci([0.1, 0.2, 0.3, 0.4, 0.5], num_resamples=5000, seed=1) == (mean, low, high)
    assert bootstrap_mean_ci([0.7]) == (0.7, 0.7, 0.7)
    wide = bootstrap_mean_ci([0.0, 1.0] * 3)
    narrow = bootstrap_mean_ci([0.5] * 6)
    assert wide[2] - wide[1] > 0.3 and narrow[1] == narrow[2] == 0.5
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([0.1, math.nan])
    with pytest.raises(ValueError, match="no values"):
        bootstrap_mean_ci([])


def _row(response, good=(), poor=()):
    return {"prompt": "p", "response": response, "critique": "c", "good_spans": list(good), "poor_spans": list(poor)}


def test_collapse_to_sequence_label(smollm2_tokenizer):
    positive = collapse_to_sequence_label(_row("  The waves roll in.  ", good=["waves"]), fuzzy_threshold=90.0)
    assert positive["collapsed_score"] == 1.0
    assert positive["good_spans"] == ["The waves roll in."] and positive["poor_spans"] == []
    assert positive["located_spans"] == [[2, 20, 1.0]] and positive["prompt"] == "p"
    negative = collapse_to_sequence_label(_row("Water waves. More.", good=["waves"], poor=["Water", "More."]))
    assert negative["collapsed_score"] == pytest.approx(-1 / 3)
    assert negative["poor_spans"] == ["Water waves. More."] and negative["good_spans"] == []
    tied = collapse_to_sequence_label(_row("Blue waves.", good=["waves"], poor=["Blue"]))
    assert tied["collapsed_score"] == 0.0 and tied["good_spans"] == tied["poor_spans"] == []
    # rows that carry only character spans
    spans_only = {"prompt": "p", "response": "abc def", "located_spans": [[0, 3, -1.0]]}
    assert collapse_to_sequence_label(spans_only)["poor_spans"] == ["abc def"]
    # the collapsed row labels every response token with the verdict's polarity, as the reference sees it
    rates = token_label_rates([negative["response"]], [reference_spans(negative)], smollm2_tokenizer)
    assert rates["poor"] == rates["tokens"] > 0 and rates["good"] == 0
    with pytest.raises(ValueError, match="no response string"):
        collapse_to_sequence_label({"prompt": "p", "response": None})
