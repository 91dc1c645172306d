"""After training: load the policy ``SpanPPOTrainer`` saved, score it on held-out prompts, and continue training.

``trainer.save_model(output_dir)`` (what ``trl-text2grad ppo`` does at the end) writes:

* the policy: a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) when it was trained with
  ``peft_config``, otherwise the full model (``config.json`` + ``model*.safetensors``);
* the tokenizer (``tokenizer.json``, ``tokenizer_config.json``, chat template);
* the value function: ``value_head.safetensors`` (the built-in head, ``value_model=None``) or ``value_model/`` (a
  separate value model), and ``span_ppo_value.json`` saying which;
* ``training_args.bin``.

Typical use::

    from trl_text2grad.trained import load_trained_policy, score_policy

    model, tokenizer = load_trained_policy("runs/ppo")              # adapter merged into the base weights
    result = score_policy(model, tokenizer, held_out_rows, reward_function, max_new_tokens=128)
    print(result.mean_score, result.failed_fraction)

To train further from a finished run, load the adapter unmerged and trainable, build a new ``SpanPPOTrainer`` with it
(no ``peft_config``) and put the saved value head back with :func:`load_value_head`. To continue an *interrupted*
run, use ``train(resume_from_checkpoint=...)`` on a ``checkpoint-N`` folder instead: it also restores the optimizer,
the scheduler, the current rollout and the data order.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .alignment import spans_to_token_rewards
from .ppo.modeling import VALUE_HEAD_FILE, VALUE_MODEL_DIR
from .rewards import normalize_reward_output

__all__ = ["load_trained_policy", "load_value_head", "score_policy", "PolicyScores"]

logger = logging.getLogger(__name__)


def _require_folder(path: str | os.PathLike) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"file not found: {str(path)!r} is not a folder; pass the output_dir of `trl-text2grad ppo` (or of "
            "SpanPPOTrainer.save_model), or one of its checkpoint-N folders."
        )
    return folder


def load_trained_policy(
    path: str | os.PathLike,
    *,
    merge_adapter: bool = True,
    is_trainable: bool = False,
    base_model_path: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
):
    """The policy and tokenizer saved by ``SpanPPOTrainer`` at ``path``. Returns ``(model, tokenizer)``.

    Args:
        path: The run's ``output_dir`` (or a ``checkpoint-N`` folder inside it).
        merge_adapter: For a LoRA run, merge the adapter into the base weights and return a plain
            ``transformers`` model (faster generation; ``model.save_pretrained(dir)`` then writes a standalone
            checkpoint). ``False`` returns the ``peft.PeftModel``.
        is_trainable: Load the adapter with trainable weights (to train further; implies ``merge_adapter=False``).
        base_model_path: The base model of the adapter, when the one recorded in ``adapter_config.json``
            (``base_model_name_or_path``) moved or was the packaged default on another machine.
        dtype: Weights dtype (default: the checkpoint's).
        device: Where to put the model (default: stays on the CPU).

    Raises:
        FileNotFoundError: ``path`` is not a folder, or holds neither an adapter nor a model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _require_folder(path)
    recorded: str | None = None
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        recorded = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        base = base_model_path or recorded
        if not base:
            raise ValueError(f"{adapter_config} records no base model; pass base_model_path=.")
        if base_model_path is None and not Path(base).exists() and os.path.isabs(base):
            raise FileNotFoundError(
                f"file not found: the adapter's base model {base!r} (recorded in {adapter_config}); pass "
                "base_model_path= with the base model's current location."
            )
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
        if merge_adapter and not is_trainable:
            model = model.merge_and_unload()
    elif (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    else:
        raise FileNotFoundError(
            f"file not found: {folder} has neither adapter_config.json (a LoRA run) nor config.json (a full model)."
        )
    tokenizer_source = folder if (folder / "tokenizer_config.json").is_file() else base_model_path or recorded
    if tokenizer_source is None:
        raise FileNotFoundError(f"file not found: no tokenizer in {folder}; pass base_model_path= to read its own.")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source), padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    return model.train(is_trainable), tokenizer


def _policy_with_value(target):
    """The ``PolicyWithValue`` inside a ``SpanPPOTrainer`` (or the module itself)."""
    module = target
    if hasattr(target, "accelerator") and hasattr(target, "model"):
        module = target.accelerator.unwrap_model(target.model)
    if not hasattr(module, "v_head"):
        raise TypeError(f"expected a SpanPPOTrainer or its PolicyWithValue model, got {type(target).__name__}.")
    return module


def load_value_head(target, path: str | os.PathLike) -> None:
    """Load the value head saved at ``path`` (``value_head.safetensors``) into a ``SpanPPOTrainer``'s model.

    Use it to train further from a finished run: build the new trainer with the loaded policy
    (``load_trained_policy(path, is_trainable=True)``), then call this before ``train()`` so the value function
    does not start from scratch. A run with a separate value model saved ``value_model/`` instead: pass
    ``AutoModelForSequenceClassification.from_pretrained(path / "value_model")`` as the trainer's ``value_model``.

    Raises:
        FileNotFoundError: no ``value_head.safetensors`` at ``path``.
        ValueError: the saved head does not fit the model (another backbone).
    """
    from safetensors.torch import load_file

    folder = _require_folder(path)
    module = _policy_with_value(target)
    head_file = folder / VALUE_HEAD_FILE
    if module.v_head is None:
        raise ValueError(
            f"this trainer uses a separate value model; load {folder / VALUE_MODEL_DIR} with "
            "AutoModelForSequenceClassification.from_pretrained and pass it as value_model instead."
        )
    if not head_file.is_file():
        hint = (
            f" (this run saved a separate value model in {VALUE_MODEL_DIR}/)"
            if (folder / VALUE_MODEL_DIR).is_dir()
            else ""
        )
        raise FileNotFoundError(f"file not found: {head_file}{hint}; it is written by SpanPPOTrainer.save_model.")
    state = load_file(str(head_file))
    expected = {k: tuple(v.shape) for k, v in module.v_head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        raise ValueError(f"{head_file} holds a value head of shapes {found}, but this model's head is {expected}.")
    reference = module.v_head.weight
    module.v_head.load_state_dict({k: v.to(device=reference.device, dtype=reference.dtype) for k, v in state.items()})


@dataclass
class PolicyScores:
    """What :func:`score_policy` measured.

    Attributes:
        rows: One dict per prompt: ``prompt``, ``response``, ``score`` (``None`` when the reward function could not
            judge it), ``reason`` (why not), ``good_spans`` / ``poor_spans`` (located ``[start, end]`` character
            ranges of the response with a positive / negative score).
        mean_score: Mean ``score`` over the judged rows (``nan`` when none was judged).
        failed_fraction: Fraction of rows the reward function could not judge.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    mean_score: float = float("nan")
    failed_fraction: float = 0.0


def _encode(tokenizer, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def score_policy(
    model,
    tokenizer,
    dataset,
    reward_function: Callable[..., Sequence[Any]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    good_score: float = 1.0,
    poor_score: float = -1.0,
    fuzzy_threshold: float = 90.0,
) -> PolicyScores:
    """Generate a response for each row of ``dataset`` and score it with ``reward_function`` (held-out evaluation).

    ``dataset`` rows have a ``prompt`` (a string or chat messages; the chat template is applied with
    ``add_generation_prompt=True``, as in training) and any context columns, which reach the reward function as
    ``**context`` lists (the HumanEval ``test``/``entry_point`` columns, for instance). The reward function is anything
    ``SpanPPOTrainer`` accepts (a critic, a trained ``SpanRewardModel``, a Python function); its outputs are read with
    :func:`trl_text2grad.rewards.normalize_reward_output`. A row's ``score`` is the scalar reward (if any) plus the sum
    of its per-token span rewards, as ``objective/scores`` in training. Generation is greedy unless ``do_sample``.
    """
    rows = [dict(row) for row in dataset]
    if not rows:
        return PolicyScores()
    if any("prompt" not in row for row in rows):
        raise ValueError("score_policy: every row needs a 'prompt' column.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    responses: list[str] = []
    try:
        for start in range(0, len(rows), max(1, batch_size)):
            batch = rows[start : start + max(1, batch_size)]
            texts = [_encode(tokenizer, row["prompt"]) for row in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            responses.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    context_keys = [k for k in rows[0] if k not in ("prompt", "response")]
    context = {k: [row.get(k) for row in rows] for k in context_keys}
    prompts = [row["prompt"] for row in rows]
    try:
        outputs = list(reward_function(prompts, responses, **context))
        if len(outputs) != len(rows):
            raise ValueError(f"returned {len(outputs)} results for {len(rows)} responses")
    except Exception as error:  # noqa: BLE001 - reported per row, like the trainer does
        logger.warning("score_policy: the reward function failed: %s: %s", type(error).__name__, error)
        outputs = [error] * len(rows)
    scored, failures = [], 0
    for prompt, response, output in zip(prompts, responses, outputs):
        if isinstance(output, Exception):
            normalized = None
            reason = f"reward function raised {type(output).__name__}: {output}"
        else:
            normalized = normalize_reward_output(output, response, good_score, poor_score, fuzzy_threshold)
            reason = normalized.reason
        if normalized is None or not normalized.ok:
            failures += 1
            scored.append({"prompt": prompt, "response": response, "score": None, "reason": reason,
                           "good_spans": [], "poor_spans": []})  # fmt: skip
            continue
        spans = normalized.spans or []
        token_total = sum(spans_to_token_rewards(response, spans, tokenizer)) if spans and response else 0.0
        score = (normalized.scalar or 0.0) + token_total
        scored.append(
            {
                "prompt": prompt,
                "response": response,
                "score": float(score),
                "reason": "",
                "good_spans": [[s, e] for s, e, v in spans if v > 0],
                "poor_spans": [[s, e] for s, e, v in spans if v < 0],
            }
        )
    judged = [row["score"] for row in scored if row["score"] is not None]
    mean = sum(judged) / len(judged) if judged else float("nan")
    return PolicyScores(rows=scored, mean_score=mean, failed_fraction=failures / len(rows))
