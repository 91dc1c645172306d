"""Batched, left-padded generation for the demo's annotation and pass@1 stages (greedy or sampled), with a
stopping criterion that ends a row once its answer has closed a Markdown code block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

__all__ = ["generate_completions"]


def _fence_stop(tokenizer, prompt_length: int, on_step=None):
    """Stopping criterion: a row is done once its answer has closed a Markdown code block (two ``` fences).

    ``on_step`` (optional) is called once per generated token position (progress bars).
    """

    class _FenceClosed(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if on_step is not None:
                on_step()
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            return torch.tensor([t.count("```") >= 2 for t in texts], dtype=torch.bool, device=input_ids.device)

    return _FenceClosed()


def _step_counter(on_step):
    """Stopping criterion that never stops; it calls ``on_step`` once per generated token position."""

    class _Count(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            on_step()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _Count()


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Any],
    max_new_tokens: int = 192,
    batch_size: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    stop_at_closed_fence: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Answers of ``model`` to ``prompts`` (chat message lists or strings), batched, left-padded, decoded.

    Greedy by default. With ``stop_at_closed_fence`` a row stops once its answer closed a ```` ``` ```` block, which
    saves the prose chat models write after the code.
    """

    tokenizer.padding_side = "left"
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
        elif getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        else:  # a tokenizer without chat template: plain concatenation of the contents
            texts.append("\n".join(m["content"] for m in prompt) + "\n")
    outputs: list[str] = []
    model.eval()
    starts = list(range(0, len(texts), batch_size))
    # one tick per generated token position of each batch; a batch that stops early jumps to its end
    bar = tqdm(total=len(starts) * max_new_tokens, desc=f"{desc} ({len(texts)} prompts)", unit="tok", leave=True)
    for start in starts:
        chunk = texts[start : start + batch_size]
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        length = encoded["input_ids"].shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        done_before = bar.n

        def tick(done_before: int = done_before) -> None:
            if bar.n - done_before < max_new_tokens:
                bar.update(1)

        if stop_at_closed_fence:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_fence_stop(tokenizer, length, tick)])
        else:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_step_counter(tick)])
        with torch.no_grad():
            generated = model.generate(**encoded, **kwargs)
        bar.update(done_before + max_new_tokens - bar.n)
        outputs.extend(tokenizer.batch_decode(generated[:, length:], skip_special_tokens=True))
    bar.close()
    return outputs
