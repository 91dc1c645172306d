"""SpanPPOTrainer: PPO with token-level (span) rewards on the ``transformers`` ``Trainer``.

The loop reads top-down and each stage is a method:

``rollout()``  left-padded batched sampling; PPO trains on exactly the sampled token ids (never re-encoded);
               tokens after the stop token are masked; old log-probs, reference log-probs and values are computed.
``score()``    decodes the responses, calls the reward model (reward function, span reward model or classic
               sequence classifier), locates quotes and aligns spans to the *sampled* tokens (each token's character
               range comes from decoding the response incrementally).
``compute_advantages()``  per-token rewards (span/scalar/hybrid minus beta * KL), GAE, whitening.
``compute_loss()``        clipped policy and value losses on one micro-batch (called by ``Trainer.training_step``).

As in TRL 1.16's online trainers, a rollout is produced in ``_prepare_inputs`` from a *generation batch* (the
dataloader yields the same ``local_batch_size`` prompts ``micro_steps_per_rollout`` times) and reused for
``steps_per_rollout`` optimizer steps; checkpointing, logging, callbacks, gradient accumulation and distributed
training come from ``transformers``. Every batch size and step count is computed by :class:`SpanPPOConfig`; the
trainer never writes to its arguments. The rollout state (buffer, PPO-epoch permutation, micro-step, KL coefficient)
is saved with each checkpoint and restored with the optimizer; checkpoints are atomic
(:mod:`trl_text2grad.checkpoints`). The maths lives in :mod:`trl_text2grad.ppo.advantages`, the sampler in
:mod:`~trl_text2grad.ppo.sampler`, the completion tables in :mod:`~trl_text2grad.ppo.completions` and the heatmaps
in :mod:`~trl_text2grad.ppo.heatmaps`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
import time
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    set_seed,
)
from transformers.generation.configuration_utils import CompileConfig
from transformers.trainer_utils import enable_full_determinism, speed_metrics

# Imported here, not lazily: importing trl.models.utils draws from Python's `random`, which must not happen after
# the Trainer restored the RNG state of a checkpoint.
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, pad

from ..alignment import token_char_offsets, token_rewards_from_offsets
from ..checkpoints import AtomicCheckpointMixin, IncompleteCheckpointError, checkpoint_problem
from ..rewards import CriticFailureError, count_failures, describe_critic, normalize_reward_output
from ..spans import CriticFailure
from .advantages import (
    combine_rewards,
    compute_gae,
    entropy_from_logits,
    kl_per_token,
    last_token_positions,
    length_decay_weights,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from .completions import print_completions_table, write_completions_table
from .heatmaps import write_rollout_heatmaps
from .merging import merged_lora_adapters
from .modeling import VALUE_HEAD_FILE, VALUE_MODEL_DIR, PolicyWithValue
from .packed_weights import packed_linear_available, packed_linear_weights
from .prompts import drop_unusable_prompt_rows
from .sampler import RolloutSampler
from .span_ppo_config import SpanPPOConfig

__all__ = ["SpanPPOTrainer", "ScoredRollout"]

logger = logging.getLogger(__name__)

_STATE_FILE = "span_ppo_state_rank{rank}.pt"
_EPS_TEMPERATURE = 1e-7  # TRL 1.12 samples and scores with `temperature + 1e-7`
_COMPILE_PAD_MULTIPLE = 64  # compile_generation: prompt widths are rounded up to a multiple of this
_EVAL_TEMPERATURE = 0.01  # TRL 1.12's near-greedy sampling for sample generations (`generate_completions`)
_PRINTED_COMPLETIONS = 5  # rows of a completions table printed (TRL 1.12 printed the first 5); all are saved


# ----------------------------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------------------------
def _identity_collator(rows: list[dict]) -> list[dict]:
    return rows


class _SampleGenerationsCallback(TrainerCallback):
    """Calls the trainer's sample generations after each optimizer step (they run on every process)."""

    def __init__(self, trainer: SpanPPOTrainer) -> None:
        self._trainer = weakref.ref(trainer)

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is not None:
            trainer._maybe_generate_completions()


def _embedding_rows(module: Any) -> int | None:
    """Number of rows of a model's input embedding (``None`` when it has none we can find)."""
    module = getattr(module, "module", module)  # DeepSpeed engine / DDP wrapper
    get_embeddings = getattr(module, "get_input_embeddings", None)
    if get_embeddings is None:
        return None
    try:
        embeddings = get_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    rows = getattr(embeddings, "num_embeddings", None)
    return int(rows) if rows is not None else None


def substitute_pad_token_id(pad_token_id: int, eos_token_id: int | None, embedding_rows: int | None) -> int:
    """The id written into padded positions of model inputs.

    ``pad_token_id`` itself when it is a row of the embedding; otherwise (a pad token added to the tokenizer without
    ``resize_token_embeddings``, as TRL's example scripts do) ``eos_token_id`` when that is a row, else ``0``. Padded
    positions are always excluded by the attention and response masks, so their id only has to be a valid row.
    """
    if embedding_rows is None or 0 <= pad_token_id < embedding_rows:
        return pad_token_id
    if eos_token_id is not None and 0 <= eos_token_id < embedding_rows:
        return eos_token_id
    return 0


class _UpdateLoggingCallback(TrainerCallback):
    """One log line per PPO update (``log_every_update``), and the clock of the ``eps`` metric.

    Runs after the ``Trainer``'s ``DefaultFlowCallback`` (callbacks added later run later), so it can replace the
    ``logging_steps`` decision with "the last optimizer step of an update" (or of training).
    """

    def __init__(self, trainer: SpanPPOTrainer) -> None:
        self._trainer = weakref.ref(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is not None:
            trainer._train_clock = (time.time(), trainer._episodes_done(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is None or not getattr(args, "log_every_update", True) or args.logging_strategy != "steps":
            return control
        step = state.global_step
        end_of_update = step % trainer.steps_per_rollout == 0 or step >= state.max_steps
        control.should_log = end_of_update or (args.logging_first_step and step == 1)
        return control


def _is_quantized(model: Any) -> bool:
    """A bitsandbytes 4-bit/8-bit (or other ``transformers``-quantized) model, possibly inside a PeftModel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(bool(getattr(base, name, False)) for name in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"))


def _keep_kbit_layers_trainable(model: nn.Module) -> None:
    """Keep bitsandbytes 4-bit layers in the layout that gradients flow through.

    On a CPU with AVX512-BF16, bitsandbytes (0.49, 0.50) repacks a 4-bit weight for its inference kernel on the first
    eval-mode, no-grad forward (our rollout) and from then on always uses that kernel, which has no backward: the
    LoRA adapters before the layer would get no gradient. The policy is trained between rollouts, so the repacking is
    switched off (generation then dequantizes, a little slower).
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


@contextlib.contextmanager
def _generation_config(model: nn.Module, config: GenerationConfig):
    """Temporarily replace ``model.generation_config`` so no model default (top_k, repetition penalty...) leaks in."""
    original = getattr(model, "generation_config", None)
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = original


def compiled_generation_config(device_type: str) -> CompileConfig:
    """The ``CompileConfig`` of ``compile_generation``: transformers' own default on accelerators (CUDA graphs on
    GPUs); on CPUs, where transformers does not compile unless told, inductor without CUDA graphs."""
    if device_type != "cpu":
        return CompileConfig()
    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True
    return config


@dataclass
class ScoredRollout:
    """What ``score()`` returns for a rollout (all tensors on the training device, rows = samples)."""

    span_rewards: torch.Tensor  # [B, R] token rewards from spans (0 where none)
    scores: torch.Tensor  # [B] scalar scores (explicit, derived or 0; missing-EOS penalty included)
    keep: torch.Tensor  # [B] bool: False for samples skipped by on_critic_error="skip"
    failures: int
    quotes_unlocated: int
    texts: list[str]
    offsets: list[list[tuple[int, int]]]
    ok: torch.Tensor | None = None  # [B] bool: False where the reward was unusable (whatever on_critic_error says)
    good_spans: list[int] | None = None  # per sample: number of located spans with a positive score
    poor_spans: list[int] | None = None  # per sample: number of located spans with a negative score
    failure_details: list[CriticFailure | None] | None = None  # per sample: why its reward is unusable (or None)


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------
class SpanPPOTrainer(AtomicCheckpointMixin, Trainer):
    """PPO trainer with Text2Grad span-level rewards; constructor compatible with TRL 1.12's ``PPOTrainer``.

    Args:
        args: A :class:`SpanPPOConfig`.
        processing_class: Tokenizer (needs a pad token; fast tokenizer recommended).
        model: The policy, a causal LM (or a path / hub id to load one).
        ref_model: Frozen reference policy. ``None``: a frozen copy of ``model`` or, with PEFT, the policy with its
            adapters disabled (no copy).
        reward_model: One of: a callable ``(prompts, responses, **context) -> list[Critique | [(start, end, score)]
            | float | dict | None]`` where ``context`` holds the other dataset columns of the batch; an object with
            ``.score(prompts, responses) -> list[Critique]`` (the span reward model); or a classic
            ``AutoModelForSequenceClassification`` (scalar, read at the last response token).
        train_dataset: Rows with ``input_ids`` (a tokenized prompt, as in TRL 1.12) and/or ``prompt`` (a string or a
            list of chat messages). All other columns are passed to a reward function as context.
        value_model: ``None`` for a value head on the policy backbone (one forward for logits and values), or an
            ``AutoModelForSequenceClassification`` with ``num_labels=1``.
        data_collator: Ignored unless it returns the rows unchanged (kept for signature compatibility).
        eval_dataset: Prompts to evaluate on, in the format of ``train_dataset`` (a dataset, or a dict of named
            datasets). Used by :meth:`evaluate` (called by hand or by the ``Trainer`` when ``eval_strategy`` is
            ``"steps"`` or ``"epoch"``) and, when ``num_sample_generations > 0``, for the tables of sample completions
            written during training (its first ``per_device_eval_batch_size`` rows per process).
        optimizers: ``(optimizer, scheduler)`` as for ``Trainer``.
        callbacks: Extra ``TrainerCallback``\\ s.
        peft_config: A ``peft.PeftConfig``; the policy is wrapped and the reference is the adapter-disabled policy.
    """

    loss_is_scaled_for_ga = False
    _tag_names = ["trl", "ppo", "text2grad"]

    def __init__(
        self,
        args: SpanPPOConfig | None,
        processing_class: PreTrainedTokenizerBase,
        model: PreTrainedModel | nn.Module | str,
        ref_model: PreTrainedModel | nn.Module | None,
        reward_model: Any,
        train_dataset,
        value_model: PreTrainedModel | nn.Module | None = None,
        data_collator: Callable | None = None,
        eval_dataset=None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        callbacks: list[TrainerCallback] | None = None,
        peft_config=None,
    ) -> None:
        if args is None:
            args = SpanPPOConfig(output_dir="span_ppo_output")
        if not isinstance(args, SpanPPOConfig):
            raise TypeError(f"args must be a SpanPPOConfig, got {type(args).__name__}.")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required (rows with `input_ids` and/or `prompt`).")
        if processing_class is None:
            raise ValueError("`processing_class` (the tokenizer) is required.")
        if reward_model is None:
            raise ValueError(
                "`reward_model` is required: a reward function, a span reward model or a sequence classifier."
            )
        if ref_model is not None and ref_model is model:
            raise ValueError(
                "`model` and `ref_model` cannot be the same object; pass a copy, or None to let the trainer make one "
                "(or to use the adapter-disabled policy with PEFT)."
            )
        tokenizer = processing_class
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set one first, e.g. `tokenizer.pad_token = tokenizer.eos_token`."
            )
        if str(getattr(args, "eval_strategy", "no")) not in ("no", "None", "IntervalStrategy.NO"):
            if eval_dataset is None:
                raise ValueError(
                    f"eval_strategy={str(args.eval_strategy)!r} needs an `eval_dataset` (prompts to generate for); pass "
                    "one, or set eval_strategy='no' and call `trainer.evaluate(eval_dataset)` yourself."
                )
        train_dataset = drop_unusable_prompt_rows(train_dataset, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: drop_unusable_prompt_rows(v, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = drop_unusable_prompt_rows(eval_dataset, "eval_dataset")
        if len(train_dataset) < args.batch_size:
            raise ValueError(
                f"train_dataset has {len(train_dataset)} rows but one rollout needs batch_size={args.batch_size} "
                "(per_device_train_batch_size * gradient_accumulation_steps * world_size); lower the batch size."
            )
        if data_collator is not None:
            warnings.warn(
                "SpanPPOTrainer builds its own batches (prompts are left-padded at rollout time); the given "
                "data_collator is ignored.",
                stacklevel=2,
            )

        # Seed before anything random is created (a model loaded by name, LoRA adapters, the value head), so that
        # the same config and seed give the same run; the Trainer seeds again in its __init__.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)

        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model)

        # Stop token (as TRL 1.12)
        if args.stop_token == "eos":
            self.stop_token_id = tokenizer.eos_token_id
        else:
            self.stop_token_id = args.stop_token_id

        # PEFT
        if peft_config is not None:
            if not isinstance(peft_config, PeftConfig):
                raise TypeError(f"`peft_config` must be a peft.PeftConfig, got {type(peft_config).__name__}.")
            if isinstance(model, PeftModel):
                raise ValueError(
                    "You passed a PeftModel together with a peft_config; merge and unload the existing adapter first, "
                    "or pass the PeftModel without peft_config."
                )
            if _is_quantized(model):  # QLoRA: frozen k-bit base, input grads for checkpointing, fp32 norms
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=bool(args.gradient_checkpointing)
                )
            model = get_peft_model(model, peft_config)
        self.is_peft_model = hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
        if _is_quantized(model):
            _keep_kbit_layers_trainable(model)
        if _is_quantized(model) and not self.is_peft_model:
            raise ValueError(
                f"the policy {type(model).__name__} is quantized (4-bit/8-bit), and quantized weights cannot be "
                "trained: pass a `peft_config` (QLoRA: e.g. `--use_peft --load_in_4bit` in the scripts) or a PeftModel."
            )
        self._select_adapters(model, args)
        self.policy_model = model

        if ref_model is None and not self.is_peft_model:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.eval()
            for parameter in ref_model.parameters():
                parameter.requires_grad_(False)
        self.ref_model = ref_model

        # Reward model kind
        if isinstance(reward_model, PreTrainedModel):
            if not hasattr(reward_model, "score") or not hasattr(reward_model, "base_model_prefix"):
                raise ValueError(
                    f"reward model {type(reward_model).__name__} is a PreTrainedModel without a `score` head; pass "
                    "an AutoModelForSequenceClassification, a span reward model or a reward function."
                )
            self.reward_kind = "classifier"
            reward_model.eval()
            for parameter in reward_model.parameters():
                parameter.requires_grad_(False)
        elif hasattr(reward_model, "score") and callable(reward_model.score):
            self.reward_kind = "span_model"
        elif callable(reward_model):
            self.reward_kind = "function"
        else:
            raise TypeError(
                f"cannot use reward_model of type {type(reward_model).__name__}: pass a callable "
                "(prompts, responses, **context) -> rewards, an object with .score(prompts, responses), or an "
                "AutoModelForSequenceClassification."
            )
        self.reward_model = reward_model
        self.reward_mode = self._resolve_reward_mode(args.reward_mode)
        for module in (model, ref_model, value_model, reward_model):
            if isinstance(module, nn.Module):
                disable_dropout_in_model(module)

        # Batch sizes and step counts come from the config; only the default rollout budget needs the data set
        self.steps_per_rollout = args.steps_per_rollout
        self.micro_steps_per_rollout = args.micro_steps_per_rollout
        if args.num_total_batches is not None:
            self.num_total_batches = args.num_total_batches
        else:  # total_episodes defaults to num_train_epochs * len(train_dataset), as in TRL 1.12
            self.num_total_batches = math.ceil(int(args.num_train_epochs * len(train_dataset)) / args.batch_size)

        wrapper = PolicyWithValue(model, value_model)
        super().__init__(
            model=wrapper,
            args=args,
            data_collator=_identity_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.kl_coef = float(args.kl_coef)
        self._generation_temperature: float | None = None  # set by evaluation_sampling()
        self.sample_generations_freq = (
            max(1, self.num_total_batches // args.num_sample_generations) if args.num_sample_generations > 0 else 0
        )
        self.add_callback(_SampleGenerationsCallback(self))
        self.add_callback(_UpdateLoggingCallback(self))
        self._train_clock: tuple[float, int] | None = None  # (start time, episodes done then), for `eps`
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._buffer: dict[str, Any] | None = None
        self._micro_step: int | None = None
        self._permutation: np.ndarray | None = None
        self.last_rollout: dict[str, Any] | None = None  # the latest scored rollout (for tests and inspection)
        self._loss_forward_model: nn.Module | None = None  # set while compute_loss makes a rollout (see rollout())
        self._loss_forward_outputs: tuple | None = None
        self._compile_config: CompileConfig | None = None  # compile_generation's, made on the first rollout

        if args.compile_generation and (self.is_deepspeed_enabled or _is_quantized(self.policy_model)):
            raise ValueError(
                "compile_generation=True works with plain and LoRA policies on one device per process; it does not "
                "support DeepSpeed or quantized (bitsandbytes) policies. Set compile_generation=False."
            )
        device = self.accelerator.device
        if self.is_deepspeed_enabled:
            if self.ref_model is not None:
                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
            if self.reward_kind == "classifier":
                self.reward_model = prepare_deepspeed(self.reward_model, self.accelerator)
        else:
            if self.ref_model is not None:
                self.ref_model = self.ref_model.to(device)
            if self.reward_kind == "classifier":
                self.reward_model = self.reward_model.to(device)
        if self.stop_token_id is not None or args.stop_token_id is None:
            gen_config = getattr(self.policy_model, "generation_config", None)
            if gen_config is not None:
                gen_config.eos_token_id = self.stop_token_id

    def _resolve_reward_mode(self, requested: str | None) -> str:
        """``args.reward_mode``, or (``None``) what the reward model can give; said once on the main process."""
        if self.reward_kind == "classifier":
            if requested in ("span", "hybrid"):
                raise ValueError(
                    f"reward_mode={requested!r} needs span rewards, but the reward model "
                    f"({type(self.reward_model).__name__}) is a sequence classifier that gives one score per response; "
                    "use reward_mode='scalar' (or leave it unset), or pass a reward function / span reward model."
                )
            mode = "scalar"
        else:
            mode = requested or "span"
        from accelerate import PartialState

        if requested is None and PartialState().is_main_process:
            source = "a sequence-classification reward model" if mode == "scalar" else f"a {self.reward_kind} reward"
            logger.warning(
                "reward_mode not set: using reward_mode=%r for %s (set reward_mode to choose and silence this).",
                mode,
                source,
            )
        return mode

    def _select_adapters(self, model: nn.Module, args: SpanPPOConfig) -> None:
        """Validate ``model_adapter_name``/``ref_adapter_name`` and make ``model_adapter_name`` the trained adapter."""
        names = [n for n in (args.model_adapter_name, args.ref_adapter_name) if n]
        self._policy_adapter_name: str | None = None
        if not self.is_peft_model:
            if names:
                raise ValueError(
                    f"model_adapter_name={args.model_adapter_name!r} / ref_adapter_name={args.ref_adapter_name!r} "
                    "need a PEFT policy (a PeftModel, or pass peft_config); unset them for a full model."
                )
            return
        available = list(model.peft_config)
        for field_name in ("model_adapter_name", "ref_adapter_name"):
            name = getattr(args, field_name)
            if name and name not in available:
                raise ValueError(
                    f"{field_name}={name!r} is not an adapter of the policy; its adapters are {available}. Load it "
                    "first (e.g. `model.load_adapter(path, adapter_name=...)`) or fix the name."
                )
        if args.model_adapter_name and args.model_adapter_name == args.ref_adapter_name:
            raise ValueError(
                f"model_adapter_name and ref_adapter_name are both {args.model_adapter_name!r}; the reference adapter "
                "must differ from the trained one."
            )
        if args.model_adapter_name:
            # set_adapter makes the adapter active *and* the only trainable one (before the optimizer is built)
            model.set_adapter(args.model_adapter_name)
        active = getattr(model, "active_adapter", None)
        self._policy_adapter_name = args.model_adapter_name or (active if isinstance(active, str) else None)

    # ------------------------------------------------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------------------------------------------------
    # The model's forward signature names no data set column: with remove_unused_columns=True keep the prompts.
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "input_ids"]

    # One generation batch (a rollout per process) per micro-step, repeated for every PPO epoch and micro-batch.
    def get_train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        sampler = RolloutSampler(
            len(dataset),
            self.args.batch_size,
            repeat=self.micro_steps_per_rollout,
            shuffle=True,
            seed=self.args.seed,
        )
        dataloader = DataLoader(
            dataset,
            batch_size=self.args.local_batch_size,
            sampler=sampler,
            collate_fn=_identity_collator,
            drop_last=True,
            num_workers=0,
        )
        return self.accelerator.prepare(dataloader)

    def _encode_rows(self, rows: list[dict]) -> tuple[list[list[int]], list[Any], int]:
        tokenizer = self.processing_class
        prompt_ids, prompts, truncated = [], [], 0
        for index, row in enumerate(rows):
            if row.get("input_ids") is not None:
                ids = [int(i) for i in row["input_ids"]]
                prompt = row.get("prompt")
                if prompt is None:
                    prompt = tokenizer.decode(ids, skip_special_tokens=True)
            elif row.get("prompt") is not None:
                prompt = row["prompt"]
                if isinstance(prompt, str):
                    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                elif isinstance(prompt, Sequence):
                    if not getattr(tokenizer, "chat_template", None):
                        raise ValueError(
                            "a prompt is a list of chat messages but the tokenizer has no chat template; set "
                            "tokenizer.chat_template or use string prompts."
                        )
                    text = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                else:
                    raise TypeError(
                        f"train_dataset row {index}: `prompt` must be a string or a list of chat messages, got "
                        f"{type(prompt).__name__}."
                    )
            else:
                raise ValueError(
                    f"train_dataset row {index} has neither `input_ids` nor `prompt` (columns: {sorted(row)}); add a "
                    "`prompt` column (text or chat messages) or tokenized `input_ids`."
                )
            if len(ids) == 0:
                raise ValueError(
                    f"train_dataset row {index} has an empty prompt; every prompt needs at least one token."
                )
            limit = self.args.max_prompt_length
            if limit is not None and len(ids) > limit:
                ids = ids[-limit:]
                truncated += 1
            prompt_ids.append(list(ids))
            prompts.append(prompt)
        return prompt_ids, prompts, truncated

    # ------------------------------------------------------------------------------------------------------------
    # Rollout
    # ------------------------------------------------------------------------------------------------------------
    def _embedding_limit(self) -> int | None:
        """Fewest input-embedding rows among the models that read token ids (policy, reference, value, reward)."""
        modules = [
            self.policy_model,
            self.ref_model,
            getattr(self.accelerator.unwrap_model(self.model), "value_model", None),
        ]
        if self.reward_kind == "classifier":
            modules.append(self.reward_model)
        rows = [r for r in (_embedding_rows(m) for m in modules if m is not None) if r is not None]
        return min(rows) if rows else None

    @property
    def model_pad_token_id(self) -> int:
        """The id put into padded positions of every generate/forward input (see :func:`substitute_pad_token_id`).

        TRL's example scripts add ``[PAD]`` as a new special token without resizing the embeddings; its id is then
        not a row of the embedding matrix and would crash ``generate``. Like TRL 1.12 (which wrote ``0`` there before
        every forward), padded positions get a valid id instead; the masks keep them out of attention and the loss.
        """
        cached = getattr(self, "_model_pad_token_id", None)
        if cached is None:
            tokenizer = self.processing_class
            limit = self._embedding_limit()
            cached = substitute_pad_token_id(tokenizer.pad_token_id, tokenizer.eos_token_id, limit)
            if cached != tokenizer.pad_token_id and self.accelerator.is_main_process:
                logger.info(
                    "pad token id %d is not a row of the model's %d-row embedding (added without "
                    "resize_token_embeddings); padded positions use id %d instead (masked out).",
                    tokenizer.pad_token_id,
                    limit,
                    cached,
                )
            self._model_pad_token_id = cached
        return cached

    def _check_prompt_ids(self, prompt_ids: list[list[int]], rows: list[dict]) -> None:
        """Every prompt token must be a row of the embedding: a clear error instead of an index error in a forward."""
        limit = self._embedding_limit()
        if limit is None:
            return
        for index, ids in enumerate(prompt_ids):
            bad = [i for i in ids if not 0 <= i < limit]
            if bad:
                raise ValueError(
                    f"prompt row {index} has token id(s) {sorted(set(bad))[:5]} outside the model's {limit}-row "
                    "embedding (columns: "
                    f"{sorted(rows[index])}); tokens added to the tokenizer need "
                    "`model.resize_token_embeddings(len(tokenizer))`, or tokenize the prompts with the policy's tokenizer."
                )

    def _left_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad prompt token ids for generation: ``(input_ids, attention_mask)`` on the accelerator's device."""
        ids = pad(
            [torch.tensor(s, dtype=torch.long) for s in sequences],
            padding_value=self.model_pad_token_id,
            padding_side="left",
        )
        mask = pad([torch.ones(len(s), dtype=torch.long) for s in sequences], padding_value=0, padding_side="left")
        return ids.to(self.accelerator.device), mask.to(self.accelerator.device)

    def generation_config(self) -> GenerationConfig:
        """The sampling configuration (pure temperature sampling, as TRL 1.12).

        Rollouts sample at ``args.temperature``; evaluation and sample generations at TRL 1.12's near-greedy
        ``0.01`` (see :meth:`evaluation_sampling`).
        """
        temperature = self._generation_temperature
        if temperature is None:
            temperature = self.args.temperature
        config = GenerationConfig(
            max_new_tokens=self.args.response_length,
            do_sample=True,
            temperature=temperature + _EPS_TEMPERATURE,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.model_pad_token_id,
        )
        if self.args.cache_implementation is not None:
            config.cache_implementation = self.args.cache_implementation
        if self.args.compile_generation:  # a static cache and transformers' compiled decoding step
            if self._compile_config is None:  # one object for the run: a new one would make transformers recompile
                self._compile_config = compiled_generation_config(self.accelerator.device.type)
            config.cache_implementation = "static"
            config.compile_config = self._compile_config
        return config

    def generate_responses(
        self, policy: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> torch.Tensor:
        """Sample responses for left-padded prompts; returns the new token ids ``[B, <= response_length]``.

        This is the hook to override for a fixed generation (e.g. to feed identical rollouts to two trainers).
        """
        config = self.generation_config()
        if self.args.compile_generation:
            prompt_ids, prompt_mask = self._pad_to_compile_multiple(prompt_ids, prompt_mask)
        chunks = []
        step = self.args.local_rollout_forward_batch_size
        with _generation_config(policy, config):
            for i in range(0, prompt_ids.shape[0], step):
                out = policy.generate(
                    input_ids=prompt_ids[i : i + step],
                    attention_mask=prompt_mask[i : i + step],
                    generation_config=config,
                )
                chunks.append(out[:, prompt_ids.shape[1] :])
        width = max(c.shape[1] for c in chunks)
        pad_id = self.model_pad_token_id
        return torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks], dim=0)

    def _pad_to_compile_multiple(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``compile_generation``: the prompts left-padded to a multiple of ``_COMPILE_PAD_MULTIPLE`` tokens (masked;
        positions come from the mask, so the padding changes no position), so that the compiled step sees few cache
        shapes."""
        width = prompt_ids.shape[1]
        extra = -width % _COMPILE_PAD_MULTIPLE
        if extra:
            prompt_ids = nn.functional.pad(prompt_ids, (extra, 0), value=self.model_pad_token_id)
            prompt_mask = nn.functional.pad(prompt_mask, (extra, 0), value=0)
        return prompt_ids, prompt_mask

    @contextlib.contextmanager
    def evaluation_sampling(self, temperature: float = _EVAL_TEMPERATURE):
        """Within this context :meth:`generation_config` samples at ``temperature`` (default: TRL's near-greedy 0.01)."""
        previous = self._generation_temperature
        self._generation_temperature = float(temperature)
        try:
            yield
        finally:
            self._generation_temperature = previous

    @contextlib.contextmanager
    def null_ref_context(self):
        """The reference policy of a PEFT model: adapters disabled (or ``ref_adapter_name`` selected)."""
        policy = self.accelerator.unwrap_model(self.model).policy
        with policy.disable_adapter() if not self.args.ref_adapter_name else contextlib.nullcontext():
            if self.args.ref_adapter_name:
                policy.set_adapter(self.args.ref_adapter_name)
            try:
                yield
            finally:
                if self.args.ref_adapter_name:
                    policy.set_adapter(self._policy_adapter_name or "default")

    @staticmethod
    def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
        return (attention_mask.cumsum(1) - 1).clamp(min=0)

    def packs_generation_weights(self, policy: nn.Module) -> bool:
        """Whether rollouts sample with pre-packed weights: ``pack_weights_for_generation`` on a CPU with oneDNN, not
        with DeepSpeed or FSDP (their parameters may be partitioned), a quantized policy or ``compile_generation``."""
        args = self.args
        return (
            args.pack_weights_for_generation
            and not args.compile_generation
            and not self.is_deepspeed_enabled
            and not self.is_fsdp_enabled
            and not _is_quantized(policy)
            and self.accelerator.device.type == "cpu"
            and packed_linear_available()
        )

    @contextlib.contextmanager
    def _generation_weights(self, policy: nn.Module):
        """The weights the rollout samples with.

        ``pack_weights_for_generation`` (CPU): the linear layers run on oneDNN with pre-packed copies of their weights,
        LoRA adapters folded into the copies (see :mod:`~trl_text2grad.ppo.packed_weights`; the parameters are not
        written). Else ``merge_adapters_for_generation``: the LoRA adapters folded into the weights while generating
        (the base weights are restored bit for bit afterwards, see :mod:`~trl_text2grad.ppo.merging`)."""
        if self.packs_generation_weights(policy):
            with packed_linear_weights(policy, batch_size=self.args.local_rollout_forward_batch_size):
                yield
            return
        if not (self.args.merge_adapters_for_generation and self.is_peft_model and not self.is_deepspeed_enabled):
            yield
            return
        if getattr(self, "_merge_inexact", False):
            yield
            return
        with merged_lora_adapters(policy) as merge:
            yield
        if not merge.exact:  # a non-deterministic kernel recomputed a different delta: stop merging
            self._merge_inexact = True
            logger.warning(
                "merge_adapters_for_generation: the base weights were not restored bit for bit after generation "
                "(the adapter deltas recomputed differently); merging is switched off for the rest of training."
            )

    @torch.no_grad()
    def generate(self, rows: list[dict]) -> dict[str, Any]:
        """Encode and left-pad the prompts of ``rows``, sample responses and mask everything after the stop token.

        Shared by :meth:`rollout` (training) and :meth:`evaluate` / :meth:`generate_completions`; the returned dict
        (``rows``, ``prompts``, ``prompt_ids``, ``prompt_mask``, ``responses``, ``response_mask``,
        ``prompts_truncated``) is what :meth:`score` needs.
        """
        prompt_lists, prompts, truncated = self._encode_rows(rows)
        self._check_prompt_ids(prompt_lists, rows)
        prompt_ids, prompt_mask = self._left_pad(prompt_lists)
        was_training = self.model.training
        self.model.eval()
        try:
            with unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
            ) as unwrapped:
                with self._generation_weights(unwrapped.policy):
                    responses = self.generate_responses(unwrapped.policy, prompt_ids, prompt_mask)
        finally:
            self.model.train(was_training)
        responses = responses.to(prompt_ids.device)
        length = responses.shape[1]
        positions = torch.arange(length, device=responses.device).unsqueeze(0)
        if self.stop_token_id is not None:
            is_stop = responses == self.stop_token_id
            first_stop = torch.where(
                is_stop.any(1), is_stop.float().argmax(1), torch.full_like(is_stop[:, 0], length, dtype=torch.long)
            )
            response_mask = (positions <= first_stop.unsqueeze(1)).long()
        else:
            response_mask = torch.ones_like(responses)
        responses = responses.masked_fill(response_mask == 0, self.model_pad_token_id)
        return {
            "rows": rows,
            "prompts": prompts,
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "responses": responses,
            "response_mask": response_mask,
            "prompts_truncated": truncated,
        }

    def needs_reference(self) -> bool:
        """Whether a rollout runs the reference policy: its log-probabilities enter the reward (``kl_coef != 0``), the
        KL controller (``adaptive_kl``) or the logs (``log_kl_without_penalty``)."""
        args = self.args
        return self.kl_coef != 0 or args.adaptive_kl or args.log_kl_without_penalty

    @torch.no_grad()
    def rollout(self, rows: list[dict]) -> dict[str, Any]:
        """Sample responses (:meth:`generate`) and compute old log-probs, reference log-probs and values.

        Old log-probs and values come from one forward of the policy (with the value head, or the value model, in the
        same call). When the rollout is one micro-batch (``rollout_accumulation_steps == 1``), that forward is the
        first PPO epoch's own loss forward (see :meth:`compute_loss`): it runs once, with gradients, and its detached
        outputs are the old log-probs and values. The reference forward is skipped when nothing needs it
        (:meth:`needs_reference`); the reference log-probs are then the old log-probs (a KL of 0).
        """
        args = self.args
        generated = self.generate(rows)
        prompt_ids, prompt_mask = generated["prompt_ids"], generated["prompt_mask"]
        responses, response_mask = generated["responses"], generated["response_mask"]
        length = responses.shape[1]
        input_ids = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        position_ids = self._positions(attention_mask)
        temperature = args.temperature + _EPS_TEMPERATURE
        logprobs, ref_logprobs, values = [], [], []
        loss_model = self._loss_forward_model
        if loss_model is not None:  # the first PPO epoch's forward (train mode, with gradients), kept for its loss
            with torch.enable_grad():
                logits, value = loss_model(input_ids, attention_mask, position_ids, length)
            self._loss_forward_outputs = (logits, value)
            logprobs.append(logprobs_from_logits(logits.detach().float() / temperature, responses))
            values.append(value.detach().float())
        use_reference = self.needs_reference()
        was_training = self.model.training
        self.model.eval()
        try:
            unwrapped_model = self.accelerator.unwrap_model(self.model)
            step = args.local_rollout_forward_batch_size
            for i in range(0, input_ids.shape[0], step):
                sl = slice(i, i + step)
                if loss_model is None:
                    logits, value = unwrapped_model(input_ids[sl], attention_mask[sl], position_ids[sl], length)
                    logprobs.append(logprobs_from_logits(logits, responses[sl], temperature))
                    values.append(value.float())
                    del logits
                if not use_reference:
                    continue
                if self.ref_model is None:
                    with self.null_ref_context():
                        ref_logits, _ = unwrapped_model(
                            input_ids[sl], attention_mask[sl], position_ids[sl], length, compute_values=False
                        )
                else:
                    ref_logits = self.ref_model(
                        input_ids=input_ids[sl],
                        attention_mask=attention_mask[sl],
                        position_ids=position_ids[sl],
                        use_cache=False,
                    ).logits[:, -length - 1 : -1]
                ref_logprobs.append(logprobs_from_logits(ref_logits, responses[sl], temperature))
                del ref_logits
        finally:
            self.model.train(was_training)
        logprobs = torch.cat(logprobs)
        return {
            **generated,
            "logprobs": logprobs,
            "ref_logprobs": torch.cat(ref_logprobs) if use_reference else logprobs.clone(),
            "values": torch.cat(values),
        }

    # ------------------------------------------------------------------------------------------------------------
    # Score
    # ------------------------------------------------------------------------------------------------------------
    def _reward_context_keys(self) -> set[str] | None:
        """Names of the keyword arguments a reward function accepts (``None``: it takes ``**kwargs``)."""
        try:
            parameters = inspect.signature(self.reward_model).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def _call_reward(self, prompts: list, texts: list[str], rows: list[dict]) -> tuple[list[Any], int]:
        """Call the reward function / span model: one output per response, and how many of them are failures.

        A raising call, or one that does not return one output per response, makes every sample of the batch a
        failure (a :class:`~trl_text2grad.CriticFailure` naming the reward function and what it did).
        """
        name = describe_critic(self.reward_model)
        try:
            if self.reward_kind == "span_model":
                outputs = self.reward_model.score(prompts, texts)
            else:
                context_keys = [
                    k
                    for k in dict.fromkeys(k for row in rows for k in row)
                    if k not in ("prompt", "input_ids", "response")
                ]
                accepted = self._reward_context_keys()
                if accepted is not None:  # the function takes no **kwargs: pass only the columns it names
                    context_keys = [k for k in context_keys if k in accepted]
                context = {k: [row.get(k) for row in rows] for k in context_keys}
                outputs = self.reward_model(prompts, texts, **context)
            outputs = list(outputs) if outputs is not None else None
        except Exception as error:  # counted per sample and bounded by the failure budget
            failure = CriticFailure("exception", f"{name} raised {type(error).__name__}: {error}")
            return [failure] * len(texts), len(texts)
        if outputs is None or len(outputs) != len(texts):
            failure = CriticFailure(
                "invalid_output",
                f"{name} returned {'None' if outputs is None else len(outputs)} outputs for {len(texts)} responses; "
                "it must return one per response.",
            )
            return [failure] * len(texts), len(texts)
        return outputs, sum(isinstance(o, CriticFailure) or o is None for o in outputs)

    @torch.no_grad()
    def _classifier_scores(self, rollout: dict[str, Any]) -> torch.Tensor:
        input_ids = torch.cat([rollout["prompt_ids"], rollout["responses"]], dim=1)
        attention_mask = torch.cat([rollout["prompt_mask"], rollout["response_mask"]], dim=1)
        backbone = getattr(self.reward_model, self.reward_model.base_model_prefix)
        out = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self._positions(attention_mask),
            use_cache=False,
            output_hidden_states=True,
        )
        logits = self.reward_model.score(out.hidden_states[-1]).float()
        last = rollout["prompt_ids"].shape[1] + last_token_positions(rollout["response_mask"])
        return logits[torch.arange(logits.shape[0], device=logits.device), last, 0]

    @torch.no_grad()
    def score(self, rollout: dict[str, Any]) -> ScoredRollout:
        """Decode the responses, call the reward model and align its spans to the sampled response tokens."""
        args = self.args
        responses, mask = rollout["responses"], rollout["response_mask"]
        batch, length = responses.shape
        device = responses.device
        texts, offsets = [], []
        for row in range(batch):
            valid = responses[row][mask[row].bool()].tolist()
            text, token_offsets = token_char_offsets(self.processing_class, valid)
            texts.append(text)
            offsets.append(token_offsets)

        span_rewards = torch.zeros((batch, length), dtype=torch.float32, device=device)
        scores = torch.zeros(batch, dtype=torch.float32, device=device)
        explicit = torch.zeros(batch, dtype=torch.bool, device=device)
        ok = torch.ones(batch, dtype=torch.bool, device=device)
        failures = unlocated = 0
        good_spans, poor_spans = [0] * batch, [0] * batch
        details: list[CriticFailure | None] = [None] * batch
        if self.reward_kind == "classifier":
            scores = self._classifier_scores(rollout)
            finite = torch.isfinite(scores)
            ok &= finite
            failures = int((~finite).sum())
            for row in torch.nonzero(~finite).flatten().tolist():
                details[row] = CriticFailure("invalid_output", "the reward model's score is not finite")
            scores = torch.where(finite, scores, torch.zeros_like(scores))
            explicit[:] = True
        else:
            outputs, _ = self._call_reward(rollout["prompts"], texts, rollout["rows"])
            for row, output in enumerate(outputs):
                result = normalize_reward_output(
                    output, texts[row], args.good_span_reward, args.poor_span_reward, args.fuzzy_threshold
                )
                unlocated += result.num_unlocated
                if not result.ok:
                    failures += 1
                    ok[row] = False
                    details[row] = result.failure or CriticFailure("invalid_output", result.reason)
                    logger.info("sample %d: unusable reward (%s)", row, details[row])
                    continue
                if result.scalar is not None:
                    scores[row] = result.scalar
                    explicit[row] = True
                if result.spans is not None:
                    good_spans[row] = sum(1 for _, _, value in result.spans if value > 0)
                    poor_spans[row] = sum(1 for _, _, value in result.spans if value < 0)
                    n_valid = int(mask[row].sum())
                    token_rewards = token_rewards_from_offsets(texts[row], offsets[row], result.spans)
                    covered = token_rewards_from_offsets(
                        texts[row], offsets[row], [(s, e, 1.0) for s, e, _ in result.spans]
                    )
                    values = np.where(covered != 0, token_rewards, args.neutral_span_reward)
                    span_rewards[row, :n_valid] = torch.as_tensor(values, dtype=torch.float32, device=device)
        span_rewards = span_rewards * length_decay_weights(
            mask, args.span_length_decay_start, args.span_length_decay_scale, enabled=args.span_length_decay
        )
        if self.reward_mode in ("scalar", "hybrid"):
            # a sample with only spans gets the mean token reward as its sequence score
            derived = masked_mean(span_rewards, mask, dim=1)
            scores = torch.where(explicit, scores, derived)
        scores = torch.where(ok, scores, torch.zeros_like(scores))
        span_rewards = span_rewards * ok.unsqueeze(1)
        if args.missing_eos_penalty is not None:
            has_eos = (responses == self.processing_class.eos_token_id).logical_and(mask.bool()).any(1)
            scores = scores - args.missing_eos_penalty * (~has_eos).float()
        keep = ok if args.on_critic_error == "skip" else torch.ones_like(ok)
        if failures:
            counts = count_failures(details)
            logger.warning(
                "%s: %d of %d rewards unusable (%s); last: %s",
                describe_critic(self.reward_model),
                failures,
                batch,
                ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())),
                next((d for d in reversed(details) if d is not None), None),
            )
        return ScoredRollout(
            span_rewards, scores, keep, failures, unlocated, texts, offsets, ok, good_spans, poor_spans, details
        )

    @torch.no_grad()
    def task_rewards(self, generated: dict[str, Any], scored: ScoredRollout) -> torch.Tensor:
        """``[B]`` sequence task reward: what ``objective/scores`` logs for a rollout (the reward without the KL term).

        The sum over the response of the per-token reward of ``reward_mode`` (span rewards and/or the scalar score,
        ``missing_eos_penalty`` included) with ``kl_coef = 0``.
        """
        args = self.args
        mask = generated["response_mask"].float()
        rewards, _ = combine_rewards(
            scored.span_rewards,
            scored.scores,
            torch.zeros_like(mask),
            mask,
            0.0,
            self.reward_mode,
            scalar_weight=args.scalar_reward_weight,
            span_weight=args.span_reward_weight,
        )
        return rewards.sum(1)

    # ------------------------------------------------------------------------------------------------------------
    # Advantages
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_advantages(self, rollout: dict[str, Any], scored: ScoredRollout) -> dict[str, torch.Tensor]:
        """Per-token rewards, GAE and whitening; returns the tensors the loss needs plus rollout statistics."""
        args = self.args
        mask = rollout["response_mask"].float()
        train_mask = mask * scored.keep.float().unsqueeze(1)
        length = mask.shape[1]
        kl = kl_per_token(rollout["logprobs"], rollout["ref_logprobs"], args.kl_estimator) * mask
        score_positions = None
        value_mask = mask
        if getattr(args, "trl112_score_placement", False):  # Trl112ParityConfig only
            last = last_token_positions(mask)
            score_positions = torch.clamp(last + 1, max=length - 1)
            positions = torch.arange(length, device=mask.device).unsqueeze(0)
            value_mask = (positions <= score_positions.unsqueeze(1)).float()
        value_train_mask = value_mask * scored.keep.float().unsqueeze(1)
        rewards, non_score_reward = combine_rewards(
            scored.span_rewards,
            scored.scores,
            kl,
            mask,
            self.kl_coef,
            self.reward_mode,
            scalar_weight=args.scalar_reward_weight,
            span_weight=args.span_reward_weight,
            score_positions=score_positions,
        )
        task_reward = (rewards - non_score_reward).sum(1)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, value_train_mask, shift_mean=False) * value_mask
        values = rollout["values"] * value_mask
        advantages, returns = compute_gae(
            rewards, values, value_mask, args.gamma, args.lam, reset_on_masked=args.gae_reset_on_masked
        )
        advantages = masked_whiten(advantages, train_mask) * train_mask
        return {
            "advantages": advantages,
            "returns": returns,
            "values": values,
            "train_mask": train_mask,
            "value_mask": value_train_mask,
            "kl": kl,
            "non_score_reward": non_score_reward,
            "task_reward": task_reward,
            "rewards": rewards,
        }

    # ------------------------------------------------------------------------------------------------------------
    # Generation batch -> micro-batches
    # ------------------------------------------------------------------------------------------------------------
    def _make_rollout(self, rows: list[dict]) -> dict[str, Any]:
        rollout = self.rollout(rows)
        scored = self.score(rollout)
        extra = self.compute_advantages(rollout, scored)
        all_failed_local = scored.failures == len(rows)
        flag = torch.tensor([1.0 if all_failed_local else 0.0], device=self.accelerator.device)
        all_failed_global = bool(self.accelerator.gather(flag).min() > 0.5)
        if all_failed_local:
            logger.error(
                "every sample of this rollout has an unusable reward (%d failures, %s); it is NOT trained on (its PPO "
                "updates are skipped) and counts against the failure budget.",
                scored.failures,
                next((d for d in reversed(scored.failure_details or []) if d is not None), "no reason given"),
            )
        self._log_rollout(rollout, scored, extra, all_failed_global)
        self._check_failure_budget(scored, len(rows), all_failed_global)
        self._maybe_render_heatmaps(rollout, scored, extra)
        self._update_kl_coef(extra)
        buffer = {
            "input_ids": torch.cat([rollout["prompt_ids"], rollout["responses"]], dim=1),
            "attention_mask": torch.cat([rollout["prompt_mask"], rollout["response_mask"]], dim=1),
            "responses": rollout["responses"],
            "logprobs": rollout["logprobs"],
            "advantages": extra["advantages"],
            "returns": extra["returns"],
            "values": extra["values"],
            "train_mask": extra["train_mask"],
            "value_mask": extra["value_mask"],
            "skip_local": torch.tensor(all_failed_local),
            "skip_global": torch.tensor(all_failed_global),
        }
        self.last_rollout = {"rollout": rollout, "scored": scored, **extra}
        return buffer

    def _check_failure_budget(self, scored: ScoredRollout, num_rows: int, all_failed: bool) -> None:
        """Stop training with a :class:`CriticFailureError` after ``max_consecutive_failed_rollouts`` failed rollouts
        in a row (more than ``max_critic_failure_rate`` of the samples unusable, or all of them), on every process."""
        args = self.args
        failed = self._gather_sum(scored.failures)
        total = self._gather_sum(num_rows)
        rollout_failed = all_failed or (total > 0 and failed / total > args.max_critic_failure_rate)
        self._failed_rollouts_in_a_row = getattr(self, "_failed_rollouts_in_a_row", 0) + 1 if rollout_failed else 0
        limit = args.max_consecutive_failed_rollouts
        if not rollout_failed:
            return
        logger.warning(
            "rollout with %d of %d rewards unusable: failed rollout %d in a row (training stops at %s).",
            int(failed),
            int(total),
            self._failed_rollouts_in_a_row,
            limit or "never: max_consecutive_failed_rollouts=0",
        )
        if limit and self._failed_rollouts_in_a_row >= limit:
            details = scored.failure_details or []
            last = next((d for d in reversed(details) if d is not None), None)
            counts = count_failures(details)
            critic = describe_critic(self.reward_model)
            # this rollout's metrics (span/critic_failures, rollout/skipped) reach the logs before the stop
            self.log({})
            raise CriticFailureError(
                f"training stopped: the reward function {critic} failed on too many responses in "
                f"{self._failed_rollouts_in_a_row} rollouts in a row (the last: could not judge {int(failed)} of "
                f"{int(total)} responses; failure budget: "
                f"max_critic_failure_rate={args.max_critic_failure_rate}, max_consecutive_failed_rollouts={limit}). "
                f"Failures here: {', '.join(f'{k}: {n}' for k, n in sorted(counts.items())) or 'on other processes'}; "
                f"last: {last if last is not None else 'on another process'}. Fix the critic (endpoint, API key, "
                "data columns it needs) or raise the budget.",
                critic=critic,
                failure=last,
                counts=counts,
            )

    # A rollout is generated, scored and turned into advantages on the first micro-step of each generation batch.
    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        if not self.model.training:
            raise NotImplementedError(
                "SpanPPOTrainer has no loss-based prediction loop; use `trainer.evaluate()` (generates for the eval "
                "prompts and scores them with the reward model)."
            )
        expected_step = self.state.global_step * self.args.gradient_accumulation_steps
        if self._micro_step is None or not expected_step <= self._micro_step < expected_step + max(
            1, self.args.gradient_accumulation_steps
        ):  # a new train() call (or a state that does not belong to this step): start from the Trainer's step
            self._micro_step, self._buffer, self._permutation = expected_step, None, None
        index = self._micro_step % self.micro_steps_per_rollout
        if index == 0 and self.args.rollout_accumulation_steps == 1:
            # the rollout is one micro-batch: compute_loss makes it from this micro-step's own loss forward
            return {"rollout_rows": list(generation_batch)}
        if index == 0 or self._buffer is None:
            if index != 0:
                logger.warning("no stored rollout for a resumed mid-rollout step; generating a fresh one.")
            self._buffer = self._make_rollout(list(generation_batch))
        return self._next_micro_batch(index)[0]

    def _next_micro_batch(self, index: int) -> tuple[dict[str, Any], torch.Tensor]:
        """The micro-batch of micro-step ``index`` of the stored rollout (rows of this PPO epoch's permutation)."""
        per_epoch = self.args.rollout_accumulation_steps  # micro-batches per PPO epoch
        within = index % per_epoch
        if within == 0 or self._permutation is None:
            self._permutation = np.random.permutation(self.args.local_batch_size)
        size = self.args.per_device_train_batch_size
        rows = torch.as_tensor(self._permutation[within * size : (within + 1) * size], device=self.accelerator.device)
        self._micro_step += 1
        micro = {k: v[rows] if v.dim() > 0 else v for k, v in self._buffer.items()}
        return micro, rows

    def _rollout_with_loss_forward(self, model: nn.Module, rows: list[dict]) -> tuple[dict[str, Any], tuple | None]:
        """Make the rollout of ``rows`` with ``model``'s forward (the first PPO epoch's, kept with its gradients);
        returns the first micro-batch and the forward's ``(logits, values)`` for its rows (``None`` when an
        overridden :meth:`rollout` did not run it)."""
        self._loss_forward_model = model
        try:
            self._buffer = self._make_rollout(rows)
            outputs = self._loss_forward_outputs
        finally:
            self._loss_forward_model = None
            self._loss_forward_outputs = None
        micro, order = self._next_micro_batch(0)
        if outputs is not None:
            outputs = (outputs[0][order], outputs[1][order] if outputs[1] is not None else None)
        return micro, outputs

    # ------------------------------------------------------------------------------------------------------------
    # Update
    # ------------------------------------------------------------------------------------------------------------
    # The clipped PPO policy + value loss of one micro-batch of the stored rollout.
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("SpanPPOTrainer.compute_loss does not return outputs.")
        args = self.args
        outputs = None
        if "rollout_rows" in inputs:  # first micro-step of a one-micro-batch rollout (see _prepare_inputs)
            inputs, outputs = self._rollout_with_loss_forward(model, inputs["rollout_rows"])
        if bool(inputs["skip_global"]):
            return torch.zeros((), device=self.accelerator.device, requires_grad=True)
        responses = inputs["responses"]
        length = responses.shape[1]
        attention_mask = inputs["attention_mask"]
        if outputs is None:
            outputs = model(inputs["input_ids"], attention_mask, self._positions(attention_mask), length)
        logits, values = outputs
        del outputs
        logits = logits.float() / (args.temperature + _EPS_TEMPERATURE)
        new_logprobs = logprobs_from_logits(logits, responses)
        train_mask, value_mask = inputs["train_mask"], inputs["value_mask"]
        pg_loss, pg_clipfrac, approx_kl = ppo_policy_loss(
            new_logprobs, inputs["logprobs"], inputs["advantages"], train_mask, args.cliprange
        )
        vf_loss, vf_clipfrac = ppo_value_loss(
            values.float(), inputs["values"], inputs["returns"], value_mask, args.cliprange_value
        )
        loss = pg_loss + args.vf_coef * vf_loss
        if bool(inputs["skip_local"]):  # other ranks train on this rollout: take part with a zero loss
            loss = loss * 0.0
        with torch.no_grad():
            ratio = torch.exp(new_logprobs - inputs["logprobs"])
            stats = {
                "policy/approxkl_avg": approx_kl,
                "policy/clipfrac_avg": pg_clipfrac,
                "loss/policy_avg": pg_loss.detach(),
                "loss/value_avg": vf_loss.detach(),
                "val/clipfrac_avg": vf_clipfrac,
                "policy/entropy_avg": masked_mean(entropy_from_logits(logits), train_mask),
                "val/ratio": masked_mean(ratio, train_mask),
            }
            for key, value in stats.items():
                self._metrics[key].append(self.accelerator.gather(value.reshape(1)).mean().item())
        return loss

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluation_batch(self, rows: list[dict]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """Generate near-greedily for ``rows`` and score them: per-sample statistics and table rows (this process)."""
        with self.evaluation_sampling():
            generated = self.generate(rows)
        scored = self.score(generated)
        mask = generated["response_mask"]
        ok = scored.ok
        score = torch.where(ok, self.task_rewards(generated, scored), torch.full_like(scored.scores, float("nan")))
        has_eos = (generated["responses"] == self.processing_class.eos_token_id).logical_and(mask.bool()).any(1)
        device = mask.device
        stats = {
            "score": score.float(),
            "failed": (~ok).float(),
            "has_eos": has_eos.float(),
            "length": mask.sum(1).float(),
            "good_spans": torch.tensor(scored.good_spans, dtype=torch.float32, device=device),
            "poor_spans": torch.tensor(scored.poor_spans, dtype=torch.float32, device=device),
        }
        table = []
        for row, prompt in enumerate(generated["prompts"]):
            if not isinstance(prompt, str):  # chat messages: show the templated prompt the policy saw
                ids = generated["prompt_ids"][row][generated["prompt_mask"][row].bool()]
                prompt = self.processing_class.decode(ids, skip_special_tokens=True)
            entry = {
                "query": prompt,
                "response": scored.texts[row],
                "score": float(score[row]) if bool(ok[row]) else None,
            }
            if self.reward_kind != "classifier":
                entry["good_spans"] = scored.good_spans[row]
                entry["poor_spans"] = scored.poor_spans[row]
            table.append(entry)
        return stats, table

    # Evaluation generates for the eval prompts and scores them with the reward model (there is no eval loss).
    def evaluate(
        self,
        eval_dataset=None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Generate for every eval prompt, score the responses with the reward model and return (and log) metrics.

        Responses are sampled near-greedily (temperature 0.01, as TRL 1.12's `generate_completions`) in batches of
        `per_device_eval_batch_size` prompts per process; results are gathered with `accelerate`
        (`gather_for_metrics`, so a set that does not split evenly over processes is counted once). Called by the
        `Trainer` itself when `eval_strategy` is `"steps"` (every `eval_steps` *optimizer* steps) or `"epoch"`.

        Args:
            eval_dataset (`Dataset` or `dict[str, Dataset]`, *optional*):
                Prompts in the format of `train_dataset`; defaults to the trainer's `eval_dataset`. A dict is evaluated
                per dataset, its key added to the metric prefix (`eval_<key>_score`, ...).
            ignore_keys (`list[str]`, *optional*):
                Unused (kept for the `Trainer` signature).
            metric_key_prefix (`str`, *optional*, defaults to `"eval"`):
                Prefix of the metric names.

        Returns:
            `dict[str, float]` with, for prefix `eval`:

            - `eval_score`: mean task reward of the responses whose reward was usable (per response, the sum over its
              tokens of the reward training uses, without the KL term: what `objective/scores` logs; it includes
              `missing_eos_penalty`); `nan` if no reward was usable.
            - `eval_eos_fraction`: fraction of responses that contain an EOS token.
            - `eval_response_length`: mean number of response tokens (up to and including the stop token).
            - `eval_failed_fraction`: fraction of responses whose reward was unusable (the reward function raised,
              returned `None`, NaN, unlocatable quotes or malformed spans; a non-finite classifier score). Such
              failures are counted, never raised.
            - `eval_good_spans`, `eval_poor_spans` (reward functions and span reward models, not classifiers): mean
              number of located spans with a positive / negative score per usable response.
            - the `Trainer`'s `eval_runtime`, `eval_samples_per_second`, `eval_steps_per_second` (and `epoch`).
        """
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if dataset is None:
            raise ValueError(
                "evaluate() needs prompts: pass `eval_dataset` to SpanPPOTrainer(...) or to trainer.evaluate(...)."
            )
        if isinstance(dataset, dict):
            metrics = {}
            for name, sub_dataset in dataset.items():
                metrics.update(
                    self.evaluate(sub_dataset if override else name, ignore_keys, f"{metric_key_prefix}_{name}")
                )
            return metrics

        self._memory_tracker.start()
        dataloader = self.get_eval_dataloader(dataset)
        start_time = time.time()
        collected: dict[str, list[torch.Tensor]] = defaultdict(list)
        num_batches = 0
        for rows in dataloader:
            stats, _ = self._evaluation_batch(list(rows))
            for key, value in self.accelerator.gather_for_metrics(stats).items():
                collected[key].append(value.float().cpu())
            num_batches += 1
        if not collected:
            raise ValueError("the evaluation dataset is empty; it needs at least one prompt.")
        stats = {key: torch.cat(values) for key, values in collected.items()}
        usable = stats["failed"] == 0
        prefix = metric_key_prefix

        def usable_mean(values: torch.Tensor) -> float:
            return float(values[usable].mean()) if bool(usable.any()) else float("nan")

        metrics = {
            f"{prefix}_score": usable_mean(stats["score"]),
            f"{prefix}_eos_fraction": float(stats["has_eos"].mean()),
            f"{prefix}_response_length": float(stats["length"].mean()),
            f"{prefix}_failed_fraction": float(stats["failed"].mean()),
        }
        if self.reward_kind != "classifier":
            metrics[f"{prefix}_good_spans"] = usable_mean(stats["good_spans"])
            metrics[f"{prefix}_poor_spans"] = usable_mean(stats["poor_spans"])
        metrics.update(
            speed_metrics(prefix, start_time, num_samples=int(stats["score"].numel()), num_steps=num_batches)
        )
        was_training = self.model.training
        self.model.eval()  # so that log() does not flush the training statistics into the evaluation entry
        try:
            self.log(metrics)
        finally:
            self.model.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    @torch.no_grad()
    def generate_completions(self, sampling: bool = False) -> list[dict[str, Any]]:
        """A table of near-greedy completions for the eval prompts, scored with the reward model (as TRL 1.12).

        Each row has `query`, `response`, `score` (the task reward as in `evaluate()`; `None` when the reward was
        unusable) and, unless the reward model is a classifier, `good_spans` / `poor_spans` (located spans with a
        positive / negative score). The table is gathered across processes; the main process prints its first 5 rows
        (with `rich` when installed), as TRL 1.12 did, and writes all of it to
        `<output_dir>/completions/update_<N>.jsonl`, `N` being the number of updates (rollouts) done so far.

        Args:
            sampling (`bool`, *optional*, defaults to `False`):
                Only the first batch of the eval set (`per_device_eval_batch_size` prompts per process), as during
                training (`num_sample_generations`); `False`: the whole eval set.

        Returns:
            `list[dict]`: the table rows (on every process); empty when there is no `eval_dataset`.
        """
        dataset = self.eval_dataset
        if dataset is None:
            return []
        if isinstance(dataset, dict):  # several named eval sets: samples come from the first one
            dataset = next(iter(dataset.values()))
        if sampling:
            count = min(len(dataset), self.args.eval_batch_size * self.accelerator.num_processes)
            if hasattr(dataset, "select"):
                dataset = dataset.select(range(count))
            else:
                dataset = torch.utils.data.Subset(dataset, range(count))
        dataloader = self.accelerator.prepare(
            DataLoader(dataset, batch_size=self.args.eval_batch_size, collate_fn=_identity_collator, num_workers=0)
        )
        table: list[dict[str, Any]] = []
        for rows in dataloader:
            _, entries = self._evaluation_batch(list(rows))
            table.extend(self.accelerator.gather_for_metrics(entries, use_gather_object=True))
        update = math.ceil(self.state.global_step / self.steps_per_rollout)
        if self.accelerator.is_main_process:
            print_completions_table(table[:_PRINTED_COMPLETIONS], update, self.state.global_step, total=len(table))
            write_completions_table(table, self.args.output_dir, update)
        return table

    def _maybe_generate_completions(self) -> None:
        """After the last optimizer step of update ``N``: a table when ``(N - 1) % sample_generations_freq == 0``."""
        if not self.sample_generations_freq or self.eval_dataset is None:
            return
        step = self.state.global_step
        if step == 0 or step % self.steps_per_rollout != 0:
            return
        update = step // self.steps_per_rollout
        if (update - 1) % self.sample_generations_freq == 0:
            self.generate_completions(sampling=True)

    # ------------------------------------------------------------------------------------------------------------
    # Logging
    # ------------------------------------------------------------------------------------------------------------
    def _gather_mean(self, value: torch.Tensor | float) -> float:
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return self.accelerator.gather(tensor).mean().item()

    def _gather_sum(self, value: torch.Tensor | float) -> float:
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return self.accelerator.gather(tensor).sum().item()

    def _log_rollout(self, rollout, scored: ScoredRollout, extra, skipped: bool) -> None:
        mask = rollout["response_mask"].float()
        kl, non_score = extra["kl"], extra["non_score_reward"]
        rewarded = (scored.span_rewards != 0).float() * mask
        rollouts_done = self._micro_step // self.micro_steps_per_rollout + 1
        metrics = {"objective/kl": kl.sum(1).mean()} if self.needs_reference() else {}  # no reference: no KL
        metrics.update(
            {
                "objective/entropy": (-rollout["logprobs"] * mask).sum(1).mean(),
                "objective/non_score_reward": non_score.sum(1).mean(),
                "objective/rlhf_reward": (non_score.sum(1) + extra["task_reward"]).mean(),
                "objective/scores": extra["task_reward"].mean(),
            }
        )
        if self.reward_kind != "classifier":  # a sequence classifier gives no spans: no always-zero span metrics
            metrics["span/frac_tokens_rewarded"] = rewarded.sum() / mask.sum().clamp(min=1)
            metrics["span/good_tokens"] = ((scored.span_rewards > 0).float() * mask).sum(1).mean()
            metrics["span/poor_tokens"] = ((scored.span_rewards < 0).float() * mask).sum(1).mean()
        for key, value in metrics.items():
            self._metrics[key].append(self._gather_mean(value))
        sums = {
            "span/critic_failures": scored.failures,
            "val/num_eos_tokens": (rollout["responses"] == self.processing_class.eos_token_id)
            .logical_and(mask.bool())
            .sum(),
            "rollout/prompts_truncated": rollout["prompts_truncated"],
            "rollout/skipped": float(skipped),
        }
        if self.reward_kind != "classifier":
            sums["span/quotes_unlocated"] = scored.quotes_unlocated
        for key, value in sums.items():
            self._metrics[key].append(self._gather_sum(value))
        self._metrics["objective/kl_coef"].append(self.kl_coef)
        self._metrics["episode"].append(float(rollouts_done * self.args.batch_size))

    def _episodes_done(self, global_step: int) -> int:
        """Episodes (prompts rolled out, all processes) of the updates started by optimizer step ``global_step``."""
        return math.ceil(global_step / self.steps_per_rollout) * self.args.batch_size

    def _update_kl_coef(self, extra) -> None:
        if not self.args.adaptive_kl:
            return
        mean_kl = self._gather_mean(extra["kl"].sum(1).mean())
        error = float(np.clip(mean_kl / self.args.kl_target - 1.0, -0.2, 0.2))
        self.kl_coef *= 1.0 + error * self.args.batch_size / self.args.kl_horizon

    def _maybe_render_heatmaps(self, rollout, scored: ScoredRollout, extra) -> None:
        every = self.args.heatmap_every_n_steps
        if not every or not self.accelerator.is_main_process:
            return
        rollout_index = self._micro_step // self.micro_steps_per_rollout
        if rollout_index % every != 0:
            return
        report_to = self.args.report_to
        write_rollout_heatmaps(
            self.processing_class,
            rollout["prompts"],
            rollout["responses"],
            rollout["response_mask"],
            scored.texts,
            scored.offsets,
            extra["rewards"] - extra["non_score_reward"],
            rollout_index + 1,  # 1-based, as the logs and completions/update_<N>.jsonl count updates
            self.args.output_dir,
            to_terminal=not report_to or report_to in (["none"], "none"),
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model is not None and self.model.training:
            for key, values in self._metrics.items():
                if values:
                    # counters are reported as of the latest rollout (as TRL 1.12), statistics averaged
                    logs[key] = float(values[-1]) if key == "episode" else float(np.mean(values))
            if "episode" in logs:
                logs["episode"] = int(logs["episode"])
                if self._train_clock is not None:  # episodes per second since train() started (TRL 1.12's `eps`)
                    started, episodes_before = self._train_clock
                    logs["eps"] = int((logs["episode"] - episodes_before) / max(time.time() - started, 1e-9))
            if "policy/entropy_avg" in self._metrics or "val/ratio" in self._metrics:
                ratios = self._metrics.get("val/ratio", [])
                if ratios:  # sample variance over the micro-batches; undefined (nan) for one, as in TRL 1.12
                    logs["val/ratio_var"] = float(np.var(ratios, ddof=1)) if len(ratios) > 1 else float("nan")
            if "learning_rate" in logs:
                logs["lr"] = logs["learning_rate"]
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------------------
    # Saving and resuming
    # ------------------------------------------------------------------------------------------------------------
    # The policy+value wrapper is not a PreTrainedModel: save the policy (or adapter) in its own format, value next to it.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        if state_dict is not None and self.is_deepspeed_enabled:
            policy_state = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
            unwrapped.policy.save_pretrained(output_dir, state_dict=policy_state)
            if unwrapped.v_head is not None:
                head = {k[len("v_head.") :]: v.contiguous() for k, v in state_dict.items() if k.startswith("v_head.")}
                save_file(head, os.path.join(output_dir, VALUE_HEAD_FILE))
            else:
                value_state = {
                    k[len("value_model.") :]: v for k, v in state_dict.items() if k.startswith("value_model.")
                }
                unwrapped.value_model.save_pretrained(
                    os.path.join(output_dir, VALUE_MODEL_DIR), state_dict=value_state
                )
        else:
            unwrapped.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    # Weights are read back from the layout `_save` writes (policy or adapter, value head or value model).
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self._check_complete(resume_from_checkpoint)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        target.load_checkpoint(resume_from_checkpoint)

    def checkpoint_required_files(self) -> list[str]:
        """A PPO checkpoint is complete only with this process's rollout state (and the Trainer's state)."""
        return ["trainer_state.json", _STATE_FILE.format(rank=self.accelerator.process_index)]

    def _check_complete(self, checkpoint: str) -> None:
        problem = checkpoint_problem(checkpoint, self.checkpoint_required_files())
        if problem is not None:
            raise IncompleteCheckpointError(
                f"cannot resume from {checkpoint}: it is incomplete ({problem[1]}; missing or damaged file: "
                f"{problem[0]})."
            )

    def save_checkpoint_extra_state(self, checkpoint_dir: str) -> None:
        """Save this process's rollout state: buffer, PPO-epoch permutation, micro-step and KL coefficient."""
        state = {
            "buffer": None if self._buffer is None else {k: v.cpu() for k, v in self._buffer.items()},
            "permutation": self._permutation,
            "micro_step": self._micro_step,
            "kl_coef": self.kl_coef,
        }
        torch.save(state, os.path.join(checkpoint_dir, _STATE_FILE.format(rank=self.accelerator.process_index)))

    # The rollout state is restored with the optimizer (as GRPOTrainer restores its extra state), before the RNG.
    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self._check_complete(checkpoint)
        state_file = os.path.join(checkpoint, _STATE_FILE.format(rank=self.accelerator.process_index))
        state = torch.load(state_file, weights_only=False)
        device = self.accelerator.device
        self._buffer = None if state["buffer"] is None else {k: v.to(device) for k, v in state["buffer"].items()}
        self._permutation = state["permutation"]
        self._micro_step = state["micro_step"]
        self.kl_coef = state["kl_coef"]

    # The PPO step budget counts rollouts (total_episodes or the data set size), not dataloader epochs.
    def set_initial_training_values(self, args, dataloader):
        values = list(super().set_initial_training_values(args, dataloader))
        if args.max_steps > 0:  # the config computed the budget from max_steps or total_episodes
            return tuple(values)
        num_update_steps_per_epoch, total_train_batch_size = values[1], values[4]
        max_steps = self.num_total_batches * self.steps_per_rollout
        values[0] = math.ceil(max_steps / num_update_steps_per_epoch)  # num_train_epochs
        values[3] = max_steps * total_train_batch_size  # num_train_samples
        values[6] = max_steps
        return tuple(values)
