"""The saved layout of a span reward model, read back by ``SpanRewardModel.from_pretrained``.

``save_span_reward_model`` writes, next to the weights (LoRA adapter or full backbone, and for the token head
``span_head.safetensors``): the tokenizer, ``span_reward_config.json`` (:func:`span_config_dict`: what scoring needs
to rebuild and run the model) and a model card ``README.md`` (:func:`write_model_card`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model

from .. import __version__
from .modeling import NUM_SPAN_LABELS, SPAN_LABEL_NAMES, SPAN_REWARD_CONFIG_NAME, SpanTokenHeadModel

__all__ = ["span_config_dict", "save_span_reward_model", "write_model_card"]


def span_config_dict(model: torch.nn.Module, model_form: str, args: Any) -> dict[str, Any]:
    """The content of ``span_reward_config.json`` for ``model`` (unwrapped) trained with ``args`` (SpanRewardConfig)."""
    backbone = model.backbone if isinstance(model, SpanTokenHeadModel) else model
    adapter = is_peft_model(backbone)
    base = next(iter(backbone.peft_config.values())).base_model_name_or_path if adapter else None
    base = base or getattr(backbone.config, "_name_or_path", None)
    return {
        "model_form": model_form,
        "base_model_name_or_path": base,
        "adapter": adapter,
        "num_labels": NUM_SPAN_LABELS,
        "label_names": list(SPAN_LABEL_NAMES),
        "head_layout": args.head_layout,
        "layout_separator": args.layout_separator,
        "critique_loss_weight": args.critique_loss_weight,
        "critique_prompt": args.critique_prompt,
        "good_score": args.good_span_reward,
        "poor_score": args.poor_span_reward,
        "fuzzy_threshold": args.fuzzy_threshold,
        "max_length": args.max_length,
        "max_new_tokens": args.max_new_tokens,
        "trl_text2grad_version": __version__,
    }


def save_span_reward_model(
    output_dir: str | os.PathLike,
    model: torch.nn.Module,
    tokenizer: Any,
    span_config: Mapping[str, Any],
    state_dict: dict | None = None,
) -> None:
    """Write weights, tokenizer, ``span_reward_config.json`` and ``README.md`` into ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    if isinstance(model, SpanTokenHeadModel) or is_peft_model(model):
        model.save_pretrained(output_dir)
    else:
        model.save_pretrained(output_dir, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    Path(output_dir, SPAN_REWARD_CONFIG_NAME).write_text(json.dumps(dict(span_config), indent=2), encoding="utf-8")
    write_model_card(output_dir, span_config)


def write_model_card(output_dir: str | os.PathLike, span_config: Mapping[str, Any], metrics: Mapping | None = None):
    """Write ``README.md``: what the checkpoint is, which form, and how to load it."""
    base = span_config.get("base_model_name_or_path") or "unknown"
    form = span_config.get("model_form")
    lines = [
        "---",
        "library_name: trl-text2grad",
        "tags: [trl, text2grad, span-reward-model, reward-model]",
    ]
    if base and not os.path.isdir(str(base)):
        lines.append(f"base_model: {base}")
    lines += [
        "---",
        "",
        f"# Span reward model ({form})",
        "",
        "A Text2Grad span-level reward model trained with `trl_text2grad.SpanRewardTrainer` "
        "(arXiv 2505.22338). Given a prompt and a response it returns a critique and the quoted good / poor "
        "spans of the response.",
        "",
        f"- form: `{form}`" + (f", layout `{span_config.get('head_layout')}`" if form == "token_head" else ""),
        f"- base model: `{base}`",
        f"- adapter (LoRA): {bool(span_config.get('adapter'))}",
        "",
        "```python",
        "from trl_text2grad.reward import SpanRewardModel",
        "",
        'rm = SpanRewardModel.from_pretrained("path/to/this/folder")',
        'critiques = rm.score(["Write add(a, b)."], ["def add(a, b):\\n    return a - b"])',
        "```",
    ]
    if metrics:
        lines += ["", "## Evaluation", ""] + [f"- {k}: {v}" for k, v in metrics.items()]
    Path(output_dir, "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
