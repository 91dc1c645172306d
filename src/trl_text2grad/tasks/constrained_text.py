"""The ``constrained_text`` task: one-sentence descriptions under word constraints, judged by a program.

Prompt: *"Describe {topic} in one sentence. Use the word '{required}' and do not use the words '{A}' or '{B}'."*
(16 topics; the forbidden words are the ones SmolLM2 most likes to use for the topic). Rows carry the context
columns ``required`` (a word) and ``forbidden`` (a list of words).

The critic (:class:`ConstrainedTextCritic`, deterministic) marks

- every forbidden word, and its plural/-ed/-ing forms (case-insensitive, whole words), as poor;
- every use of the required word (same forms) inside the first sentence as good;
- everything after the end of the first sentence as poor (a sentence ends at ``.``, ``!`` or ``?`` followed by
  whitespace, a quote, a bracket or the end of the text).

Success: the required word is in the first sentence, no forbidden word anywhere, nothing after the first sentence,
and the response is not empty. Spans are ordered good first, then poor, so that poor wins where they overlap.
See :mod:`.programmatic` for the :class:`~.programmatic.Judgement` (spans, critique, scalar, success).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datasets import Dataset

from ..critics.prompts import JSON_INSTRUCTIONS, CritiqueTemplate
from .programmatic import Judgement, JudgingCritic, Span, critique_from_spans, seeded_cycle, split_items

__all__ = ["TOPICS", "CRITIC_TEMPLATE", "ConstrainedTextCritic", "prompt_rows", "load", "make_row"]

#: (topic, required word, forbidden word, forbidden word)
TOPICS: tuple[tuple[str, str, str, str], ...] = (
    ("the ocean", "waves", "water", "blue"),
    ("a cat", "whiskers", "pet", "fur"),
    ("the sun", "morning", "hot", "star"),
    ("a tree", "roots", "green", "leaves"),
    ("rain", "clouds", "wet", "water"),
    ("coffee", "morning", "hot", "drink"),
    ("a city", "streets", "people", "buildings"),
    ("the moon", "night", "sky", "light"),
    ("a dog", "tail", "pet", "loyal"),
    ("a book", "pages", "read", "story"),
    ("a mountain", "snow", "tall", "high"),
    ("a river", "fish", "water", "flow"),
    ("winter", "snow", "cold", "ice"),
    ("bread", "oven", "food", "eat"),
    ("a guitar", "strings", "music", "play"),
    ("a bicycle", "wheels", "ride", "pedal"),
)

#: The critique prompt for LLM critics of this task (the constraints are in the prompt itself).
CRITIC_TEMPLATE = CritiqueTemplate(
    system=(
        "You check whether a RESPONSE follows the INSTRUCTION exactly: it must be one sentence, use the required "
        "word and avoid the forbidden words (also their plural, -ed and -ing forms). Quote each forbidden word and "
        "every sentence after the first as poor, and the required word as good.\n" + JSON_INSTRUCTIONS
    ),
    user="INSTRUCTION:\n{prompt}\n\nRESPONSE:\n{response}",
)

_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]]|$)")


def _word_pattern(word: str) -> re.Pattern[str]:
    """``word`` and its simple inflections, case-insensitive, on word boundaries."""
    return re.compile(r"\b" + re.escape(word) + r"(?:s|es|ed|ing)?\b", re.IGNORECASE)


def make_row(topic: str, required: str, forbidden: Sequence[str]) -> dict:
    """One prompt row: chat ``prompt`` plus the critic's context (``required``, ``forbidden``)."""
    if not forbidden:
        raise ValueError("make_row: at least one forbidden word is needed")
    banned = " or ".join(f"'{w}'" for w in forbidden)
    content = f"Describe {topic} in one sentence. Use the word '{required}' and do not use the words {banned}."
    return {"prompt": [{"role": "user", "content": content}], "required": required, "forbidden": list(forbidden)}


def prompt_rows(num: int, seed: int, topics: Sequence[tuple[str, str, str, str]] = TOPICS) -> list[dict]:
    """``num`` prompt rows, cycling through ``topics`` in orders drawn from ``seed`` (see :func:`seeded_cycle`)."""
    return [make_row(topic, required, [a, b]) for topic, required, a, b in seeded_cycle(topics, num, seed)]


def load(
    split: str = "train",
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    num_rows: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.25,
    split_seed: int = 0,
) -> Dataset:
    """The task's rows as a ``datasets.Dataset`` (columns ``prompt``, ``required``, ``forbidden``).

    Args:
        split: ``train`` or ``test`` (a fixed partition of the topics: no topic in both) or ``all`` topics.
        dataset_name: Must be ``None``: the rows are generated, not downloaded.
        dataset_config: Must be ``None``.
        num_rows: Number of rows (default: one per topic of the split); more rows cycle through the topics.
        seed: Order of the rows.
        test_fraction: Share of the topics in ``test``.
        split_seed: Seed of the train/test partition.
    """
    if dataset_name is not None or dataset_config is not None:
        raise ValueError(
            "task 'constrained_text' generates its prompts; it takes no dataset_name/dataset_config "
            f"(got {dataset_name!r}/{dataset_config!r})."
        )
    topics = split_items(TOPICS, split, test_fraction, split_seed)
    rows = prompt_rows(len(topics) if num_rows is None else num_rows, seed, topics)
    return Dataset.from_dict({key: [row[key] for row in rows] for key in ("prompt", "required", "forbidden")})


class ConstrainedTextCritic(JudgingCritic):
    """The programmatic critic of the task (see the module docstring). Context per sample: ``required`` (a word)
    and ``forbidden`` (a list of words)."""

    def judge_one(self, response: str, required: str, forbidden: Sequence[str]) -> Judgement:
        """The verdict on one response."""
        if not isinstance(response, str):
            raise TypeError(f"response must be a string, got {type(response).__name__}")
        if isinstance(forbidden, str):
            raise TypeError(f"forbidden must be a list of words, got the string {forbidden!r}")
        for name, word in [("required", required), *(("forbidden", w) for w in forbidden)]:
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"{name} words must be non-empty strings, got {word!r}")
        spans: list[Span] = []
        notes: list[str] = []
        stripped_end = len(response.rstrip())
        match = _SENTENCE_END.search(response)
        first_end = match.end() if match else stripped_end
        tail_start = first_end
        while tail_start < len(response) and response[tail_start].isspace():
            tail_start += 1
        extra = tail_start < stripped_end
        n_required = 0
        for m in _word_pattern(required).finditer(response[:first_end]):
            spans.append((m.start(), m.end(), 1.0))
            n_required += 1
        n_forbidden = 0
        for word in forbidden:
            for m in _word_pattern(word).finditer(response):
                spans.append((m.start(), m.end(), -1.0))
                n_forbidden += 1
                notes.append(f"uses the forbidden word '{m.group(0)}'")
        if extra:
            spans.append((tail_start, stripped_end, -1.0))
            notes.append("continues after the first sentence")
        if n_required == 0:
            notes.append(f"does not use '{required}' in its sentence")
        else:
            notes.append(f"uses '{required}' as asked")
        success = float(n_required > 0 and n_forbidden == 0 and not extra and bool(response.strip()))
        spans.sort(key=lambda s: (s[2] < 0, s[0]))  # good first, then poor (poor wins on overlap downstream)
        details = {
            "required": float(n_required > 0),
            "forbidden_free": float(n_forbidden == 0),
            "one_sentence": float(not extra),
        }
        text = "; ".join(notes) + "."
        return Judgement(spans, critique_from_spans(response, spans, text), success, details)

    def judge(
        self,
        responses: Sequence[str],
        required: Sequence[str] | None = None,
        forbidden: Sequence[Sequence[str]] | None = None,
        **_: object,
    ) -> list[Judgement]:
        """Verdicts on a batch; ``required`` and ``forbidden`` hold one entry per response."""
        if required is None or forbidden is None:
            raise ValueError(
                "ConstrainedTextCritic needs per-sample context required=[...] and forbidden=[[...], ...] (the "
                "'required' and 'forbidden' columns of the task's rows)."
            )
        if not len(required) == len(forbidden) == len(responses):
            raise ValueError(
                f"ConstrainedTextCritic: {len(responses)} responses but {len(required)} 'required' and "
                f"{len(forbidden)} 'forbidden' entries; pass one per response."
            )
        return [self.judge_one(r, q, f) for r, q, f in zip(responses, required, forbidden)]

    def __repr__(self) -> str:
        return "ConstrainedTextCritic()"
