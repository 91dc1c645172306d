"""Parsing critique JSON out of messy model text, and the critique prompt templates."""

from __future__ import annotations

import pytest

from trl_text2grad.critics.parsing import parse_critique
from trl_text2grad.critics.prompts import TEMPLATES, CritiqueTemplate, get_template, prompt_to_text


@pytest.mark.parametrize(
    "text",
    [
        '{"critique": "Too long.", "good_spans": ["the cat"], "poor_spans": ["sat on"]}',
        'Here is my evaluation:\n```json\n{"critique": "Too long.", "good_spans": ["the cat"], "poor_spans": ["sat on"]}\n```\nThanks!',
        "```\n{'critique': 'Too long.', 'good_spans': ['the cat',], 'poor_spans': ['sat on',],}\n```",
        'Sure. {"critique": "Too long.", "good_spans": ["the cat"], "poor_spans": ["sat on"],} That is all.',
        '<think>let me think {"critique": "wrong"}</think>{"critique": "Too long.", "good_spans": ["the cat"], "poor_spans": ["sat on"]}',
        '{critique: "Too long.", good_spans: ["the cat"], poor_spans: ["sat on"]}',
        '[{"critique": "Too long.", "good_spans": ["the cat"], "poor_spans": ["sat on"]}]',
    ],
)
def test_variants_parse_to_the_same_critique(text):
    parsed = parse_critique(text)
    assert parsed.ok, parsed.error
    assert parsed.critique.text == "Too long."
    assert parsed.critique.good == ["the cat"]
    assert parsed.critique.poor == ["sat on"]


def test_unterminated_object_is_repaired():
    parsed = parse_critique('{"critique": "Cut off", "good_spans": ["alpha"], "poor_spans": ["beta')
    assert parsed.critique.text == "Cut off"
    assert parsed.critique.good == ["alpha"]
    assert parsed.critique.poor == ["beta"]


def test_schema_coercions_and_dropped_items():
    parsed = parse_critique(
        '{"feedback": "Aliased", "good_spans": "single quote", "poor_spans": [{"quote": "obj quote"}, 3, null, ""]}'
    )
    assert parsed.ok
    assert parsed.critique.text == "Aliased"
    assert parsed.critique.good == ["single quote"]
    assert parsed.critique.poor == ["obj quote"]
    assert parsed.dropped_items == 2  # 3 and null; the empty string is simply empty


def test_missing_span_lists_are_empty_not_errors():
    parsed = parse_critique('{"critique": "Only text."}')
    assert parsed.ok and parsed.critique.good == [] and parsed.critique.poor == []


@pytest.mark.parametrize("text", ["", None, "I think the answer is fine.", "{}", '{"score": 3}', 42])
def test_unusable_answers_give_errors_never_raise(text):
    parsed = parse_critique(text)
    assert not parsed.ok
    assert parsed.critique.good == [] and parsed.critique.poor == []


def test_prose_answer_keeps_text_as_critique():
    parsed = parse_critique("The summary misses the main point.")
    assert parsed.critique.text == "The summary misses the main point."
    assert "no JSON object" in parsed.error


def test_templates_render_and_validate():
    for name in ("summarization", "code", "qa"):
        messages = TEMPLATES[name].messages("PROMPT-X", "RESPONSE-Y")
        assert [m["role"] for m in messages] == ["system", "user"]
        assert "PROMPT-X" in messages[1]["content"] and "RESPONSE-Y" in messages[1]["content"]
        assert '"good_spans"' in messages[0]["content"]  # doubled braces rendered as JSON
    with pytest.raises(ValueError, match="placeholders"):
        CritiqueTemplate(system="s", user="no placeholders")
    with pytest.raises(ValueError, match="Unknown critique task"):
        get_template("poetry")


def test_template_override_and_extra_context():
    template = get_template("qa", user="Q={prompt} A={response} REF={reference}")
    assert template.system == TEMPLATES["qa"].system
    assert template.messages("q", "a", reference="r", unrelated="x")[1]["content"] == "Q=q A=a REF=r"
    assert template.messages("q", "a")[1]["content"] == "Q=q A=a REF="


def test_prompt_to_text():
    assert prompt_to_text("plain") == "plain"
    assert prompt_to_text([{"role": "user", "content": "hi"}]) == "hi"
    assert (
        prompt_to_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "system: s\nuser: u"
    )
    with pytest.raises(TypeError):
        prompt_to_text(3)
