"""A critic that runs a local causal language model with ``transformers``.

The same templates and parser as :class:`~trl_text2grad.critics.openai_compatible.OpenAICompatibleCritic`; the
conversations are rendered with the tokenizer's chat template and generated in batches of ``batch_size`` with
left padding. Small models (such as the packaged SmolLM2-135M) often produce malformed JSON or quotes that are
not in the response: those cases are reported through ``last_errors`` and by the annotation pipeline's
unlocated-quote counts, not hidden.
"""

from __future__ import annotations

import logging

import torch

from ..models import default_model_path
from .base import LLMCritic
from .prompts import CritiqueTemplate

logger = logging.getLogger(__name__)

__all__ = ["TransformersCritic"]


class TransformersCritic(LLMCritic):
    """LLM critic on a local ``AutoModelForCausalLM``.

    Args:
        model: A checkpoint path / name, or an already-loaded causal LM. ``None``: the packaged default model.
        tokenizer: Tokenizer (loaded from ``model`` when it is a path; required when ``model`` is an object
            without ``name_or_path``). Needs a chat template.
        template: Task name or :class:`CritiqueTemplate` (see :mod:`~trl_text2grad.critics.prompts`).
        system_prompt: Override the template's system message.
        user_template: Override the template's user message.
        batch_size: Conversations per ``generate`` call.
        max_new_tokens: Maximum tokens of each critique answer.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature (only with ``do_sample``).
        max_prompt_tokens: Prompts longer than this are truncated from the left (keeps the response and the
            instructions at the end). ``None``: no truncation.
        device: Device to run on (``None``: the model's device).
        model_kwargs: Extra keyword arguments for ``from_pretrained`` when ``model`` is a path.
    """

    def __init__(
        self,
        model=None,
        tokenizer=None,
        template: str | CritiqueTemplate | None = "qa",
        system_prompt: str | None = None,
        user_template: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        max_prompt_tokens: int | None = 2048,
        device: str | torch.device | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__(template, system_prompt=system_prompt, user_template=user_template)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model is None:
            model = default_model_path()
        if isinstance(model, str):
            self.model = AutoModelForCausalLM.from_pretrained(model, **(model_kwargs or {}))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        else:
            self.model = model
            if tokenizer is None:
                name = getattr(model, "name_or_path", None)
                if not name:
                    raise ValueError("TransformersCritic: pass tokenizer=... when model is an object without a path.")
                tokenizer = AutoTokenizer.from_pretrained(name)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"TransformersCritic: the tokenizer of '{getattr(tokenizer, 'name_or_path', '?')}' has no chat "
                "template; use an instruction-tuned model or set tokenizer.chat_template."
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        if device is not None:
            self.model.to(device)
        self.model.eval()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.max_prompt_tokens = max_prompt_tokens

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]]) -> list[str | Exception]:
        answers: list[str | Exception] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            try:
                answers.extend(self._generate_chunk(chunk))
            except Exception as error:  # e.g. out of memory: report per sample, keep going
                logger.exception("TransformersCritic: generation failed for a batch of %d", len(chunk))
                answers.extend([error] * len(chunk))
        return answers

    def _generate_chunk(self, chunk: list[list[dict]]) -> list[str]:
        tokenizer = self.tokenizer
        texts = [
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) for messages in chunk
        ]
        previous_side, previous_trunc = tokenizer.padding_side, tokenizer.truncation_side
        tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
        try:
            encoded = tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                truncation=self.max_prompt_tokens is not None,
                max_length=self.max_prompt_tokens,
            )
        finally:
            tokenizer.padding_side, tokenizer.truncation_side = previous_side, previous_trunc
        device = next(self.model.parameters()).device
        encoded = {k: v.to(device) for k, v in encoded.items()}
        generate_kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.do_sample:
            generate_kwargs["temperature"] = self.temperature
        else:
            generate_kwargs.update(temperature=None, top_p=None, top_k=None)
        output = self.model.generate(**encoded, **generate_kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
