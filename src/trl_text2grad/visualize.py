"""Token-reward heatmaps for a terminal (ANSI colours or plain brackets) and for HTML (notebooks, reports).

Typical use::

    tokens = tokens_for_display(tokenizer, response)
    rewards = spans_to_token_rewards(response, spans, tokenizer)
    print(render_token_rewards_terminal(tokens, rewards))

:func:`tokens_for_display` cuts the text itself along the tokenizer's offsets, so the pieces joined back give the
text exactly (no byte-level ``Ġ``/``▁`` markers) and there is one piece per token, aligned with the rewards.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from .alignment import require_fast_tokenizer, spans_to_token_rewards

__all__ = [
    "tokens_for_display",
    "render_token_rewards_terminal",
    "render_token_rewards_html",
    "render_text_rewards",
    "heatmap_legend_html",
    "heatmap_legend_text",
]

_RESET = "\x1b[0m"
_GOOD = "\x1b[30;42m"  # black on green
_POOR = "\x1b[97;41m"  # white on red


def tokens_for_display(tokenizer, text: str) -> list[str]:
    """One display string per token of ``tokenizer(text, add_special_tokens=False)``.

    Each token shows the characters of ``text`` its offsets cover. Characters covered by no token (whitespace that
    WordPiece or Metaspace tokenizers drop) are shown with the next token (the last token for trailing ones); a
    character shared by several tokens (a multi-byte character split by byte-level BPE) is shown once, with the
    first of them. Hence ``"".join(tokens_for_display(tokenizer, text)) == text`` whenever the text has tokens.
    """
    if text is None:
        raise ValueError("tokens_for_display: text is None.")
    require_fast_tokenizer(tokenizer)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    pieces: list[str] = []
    shown = 0
    for _start, end in offsets:
        end = min(max(end, shown), len(text))
        pieces.append(text[shown:end])
        shown = end
    if pieces and shown < len(text):
        pieces[-1] += text[shown:]
    return pieces


def _check(tokens: Sequence[str], rewards: Sequence[float]) -> list[float]:
    if len(tokens) != len(rewards):
        raise ValueError(f"got {len(tokens)} tokens but {len(rewards)} rewards; pass one reward per token.")
    return [float(r) for r in rewards]


def _paint(piece: str, style: str) -> str:
    # Reset before every newline so the background does not bleed to the end of the line.
    return "\n".join(f"{style}{part}{_RESET}" if part else "" for part in piece.split("\n"))


def render_token_rewards_terminal(tokens: Sequence[str], rewards: Sequence[float], *, color: bool = True) -> str:
    """Render tokens with their rewards for a terminal.

    Args:
        tokens: Display strings, one per token (see :func:`tokens_for_display`).
        rewards: One reward per token: > 0 good, < 0 poor, 0 neutral.
        color: ``True``: ANSI colours (black on green for good, white on red for poor, plain for neutral).
            ``False``: plain text with each run of good tokens wrapped in ``[+ ... +]`` and each run of poor tokens
            in ``[- ... -]`` (for logs and terminals without colours).
    """
    values = _check(tokens, rewards)
    out: list[str] = []
    if color:
        for token, reward in zip(tokens, values):
            out.append(_paint(token, _GOOD) if reward > 0 else _paint(token, _POOR) if reward < 0 else token)
        return "".join(out)
    current = 0  # sign of the open run
    for token, reward in zip(tokens, values):
        sign = (reward > 0) - (reward < 0)
        if sign != current:
            if current:
                out.append("+]" if current > 0 else "-]")
            if sign:
                out.append("[+" if sign > 0 else "[-")
            current = sign
        out.append(token)
    if current:
        out.append("+]" if current > 0 else "-]")
    return "".join(out)


def render_token_rewards_html(
    tokens: Sequence[str], rewards: Sequence[float], *, max_abs: float | None = None, title: str | None = None
) -> str:
    """A self-contained HTML snippet: one ``<span>`` per token with a green/red background whose opacity grows with
    ``|reward|`` (scaled by ``max_abs``, default the largest ``|reward|``) and a ``title`` showing the reward.

    The token text is HTML-escaped; whitespace and newlines are preserved (``white-space: pre-wrap``).
    """
    values = _check(tokens, rewards)
    scale = max_abs if max_abs is not None else max((abs(v) for v in values), default=0.0)
    parts = ['<div class="t2g-heatmap" style="font-family: monospace; white-space: pre-wrap; line-height: 1.6;">']
    if title:
        parts.append(f'<div style="font-weight: bold;">{html.escape(title)}</div>')
    for token, reward in zip(tokens, values):
        alpha = min(abs(reward) / scale, 1.0) if scale > 0 else 0.0
        rgb = "0, 170, 0" if reward > 0 else "220, 0, 0"
        style = f"background-color: rgba({rgb}, {0.15 + 0.6 * alpha:.3f});" if reward != 0 else ""
        parts.append(f'<span style="{style}" title="reward={reward:+.3f}">{html.escape(token)}</span>')
    parts.append("</div>")
    return "".join(parts)


def render_text_rewards(
    tokenizer, text: str, spans: Sequence[tuple[int, int, float]], *, html_output: bool = False, color: bool = True
) -> str:
    """Tokenize ``text``, align ``spans`` to its tokens and render the heatmap (terminal by default, or HTML)."""
    tokens = tokens_for_display(tokenizer, text)
    rewards = spans_to_token_rewards(text, spans, tokenizer)
    if html_output:
        return render_token_rewards_html(tokens, rewards)
    return render_token_rewards_terminal(tokens, rewards, color=color)


def heatmap_legend_html(quantity: str, max_abs: float | None = None) -> str:
    """An HTML legend for :func:`render_token_rewards_html` heatmaps: what the colours show and on which scale.

    Args:
        quantity: What the per-token values are, e.g. ``"per-token task reward (before the KL penalty)"``.
        max_abs: The ``|reward|`` that gets full opacity (the ``max_abs`` the heatmaps were drawn with); ``None``
            when each heatmap is scaled by its own largest ``|reward|``.
    """
    scale = (
        f"opacity grows with |value| up to {max_abs:.3g} (full colour)"
        if max_abs is not None and max_abs > 0
        else "opacity grows with |value|, relative to the largest |value| of each sample"
    )

    def swatch(rgb: str, alpha: float) -> str:
        return f'<span style="background-color: rgba({rgb}, {alpha:.2f}); padding: 0 0.4em;">&nbsp;</span>'

    return (
        '<div class="t2g-legend" style="font-family: sans-serif; margin: 0.5em 0;">'
        f"<b>Colour</b>: {html.escape(quantity)}. "
        f"{swatch('0, 170, 0', 0.75)} &gt; 0 (good) &nbsp; {swatch('220, 0, 0', 0.75)} &lt; 0 (poor) &nbsp; "
        f"no colour = 0; {html.escape(scale)}. Hover a token for its exact value.</div>"
    )


def heatmap_legend_text(quantity: str, *, color: bool = True) -> str:
    """A one-line terminal legend for :func:`render_token_rewards_terminal` (colours or ``[+ +]``/``[- -]``)."""
    if color:
        good, poor = _paint(" > 0 good ", _GOOD), _paint(" < 0 poor ", _POOR)
        return f"legend: {quantity}: {good} {poor} plain = 0"
    return f"legend: {quantity}: [+ ... +] > 0 good, [- ... -] < 0 poor, plain = 0"
