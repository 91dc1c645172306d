"""Token-reward heatmaps: display tokens, ANSI and bracket rendering, HTML."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_text2grad.alignment import spans_to_token_rewards
from trl_text2grad.visualize import (
    render_text_rewards,
    render_token_rewards_html,
    render_token_rewards_terminal,
    tokens_for_display,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TEXT = "def add(a, b):\n    return a - b  # 😀 中文 e\u0301\r\n"


def test_display_tokens_rebuild_the_text(any_tokenizer):
    tokens = tokens_for_display(any_tokenizer, TEXT)
    assert "".join(tokens) == TEXT
    assert len(tokens) == len(any_tokenizer(TEXT, add_special_tokens=False)["input_ids"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(list("ab c\n\t_(") + ["\u00e9", "😀", "中", "\u00a0", "e\u0301"]), max_size=40).map(
        "".join
    )
)
def test_property_display_tokens_rebuild_text(wordpiece_tokenizer, text):
    tokens = tokens_for_display(wordpiece_tokenizer, text)
    if tokens:
        assert "".join(tokens) == text
    else:
        assert not text.strip() or not wordpiece_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_terminal_colours(smollm2_tokenizer):
    tokens = ["good", " neutral", " bad", "\nline"]
    out = render_token_rewards_terminal(tokens, [1.0, 0.0, -0.5, 0.0])
    assert "\x1b[30;42mgood\x1b[0m" in out  # green background
    assert "\x1b[97;41m bad\x1b[0m" in out  # red background
    assert " neutral" in out and "\x1b[30;42m neutral" not in out and "\x1b[97;41m neutral" not in out
    assert ANSI.sub("", out) == "".join(tokens)


def test_terminal_colour_does_not_bleed_across_newlines():
    out = render_token_rewards_terminal(["a\nb"], [1.0])
    assert out == "\x1b[30;42ma\x1b[0m\n\x1b[30;42mb\x1b[0m"


def test_terminal_without_colour_brackets_runs():
    tokens = ["x", " = ", "1", ";", " y", " = ", "2"]
    out = render_token_rewards_terminal(tokens, [1, 1, 0, 0, -1, -1, 1], color=False)
    assert out == "[+x = +]1;[- y = -][+2+]"
    assert "\x1b" not in out


def test_rendering_checks_lengths():
    with pytest.raises(ValueError, match="2 tokens but 1 rewards"):
        render_token_rewards_terminal(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="one reward per token"):
        render_token_rewards_html(["a"], [])


def test_html_escapes_and_shows_rewards():
    html = render_token_rewards_html(["<script>", " & ", "ok"], [1.0, 0.0, -2.0], title="a <b> title")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    assert 'title="reward=+1.000"' in html and 'title="reward=-2.000"' in html and 'title="reward=+0.000"' in html
    assert "rgba(0, 170, 0, 0.450)" in html  # +1 of max 2 → half intensity
    assert "rgba(220, 0, 0, 0.750)" in html  # -2 = max → full intensity
    assert "a &lt;b&gt; title" in html
    assert html.startswith('<div class="t2g-heatmap"') and html.endswith("</div>")
    assert "white-space: pre-wrap" in html


def test_render_text_rewards_end_to_end(smollm2_tokenizer):
    spans = [(0, 14, 1.0), (19, 31, -1.0)]
    plain = render_text_rewards(smollm2_tokenizer, TEXT, spans, color=False)
    assert "[+def add(a, b):+]" in plain and "[- return a - b-]" in plain
    coloured = render_text_rewards(smollm2_tokenizer, TEXT, spans)
    assert ANSI.sub("", coloured) == TEXT
    html = render_text_rewards(smollm2_tokenizer, TEXT, spans, html_output=True)
    rewards = spans_to_token_rewards(TEXT, spans, smollm2_tokenizer)
    assert html.count("<span ") == len(rewards)


def test_heatmap_legends_name_the_quantity_and_the_scale():
    from trl_text2grad.visualize import heatmap_legend_html, heatmap_legend_text

    page = heatmap_legend_html("per-token <task> reward", 2.5)
    assert "per-token &lt;task&gt; reward" in page and "up to 2.5" in page and "&gt; 0 (good)" in page
    assert "largest |value| of each sample" in heatmap_legend_html("x")
    plain = heatmap_legend_text("per-token reward", color=False)
    assert plain == "legend: per-token reward: [+ ... +] > 0 good, [- ... -] < 0 poor, plain = 0"
    assert "\x1b[" in heatmap_legend_text("per-token reward")
