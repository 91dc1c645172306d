"""Configuration of :class:`~trl_text2grad.ppo.span_ppo_trainer.SpanPPOTrainer`.

The config validates the settings and computes every derived batch size and step count once, in
``__post_init__`` (as TRL's ``GRPOConfig`` does); the trainer only reads them.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.utils import is_torch_xla_available

try:  # TRL's common base (TRL-wide defaults, argparse-safe help strings)
    from trl.trainer.base_config import _BaseConfig as _ConfigBase
except ImportError:  # pragma: no cover - older/newer TRL layouts
    from transformers import TrainingArguments as _ConfigBase

__all__ = ["SpanPPOConfig"]


def _exact_div(a: int, b: int, message: str) -> int:
    if b <= 0 or a % b != 0:
        raise ValueError(f"{message}: {a} is not divisible by {b}.")
    return a // b


@dataclass
class SpanPPOConfig(_ConfigBase):
    r"""
    Configuration class for [`SpanPPOTrainer`]: PPO with token-level (span) rewards, built on the `transformers`
    `Trainer`.

    Every field of TRL 1.12's `PPOConfig` (and its former `OnPolicyConfig` parent) is accepted with the same name,
    default and meaning; the Text2Grad fields are grouped with them by purpose. For the full list of training
    arguments see [`~transformers.TrainingArguments`].

    Batch vocabulary (as in TRL 1.12): one *rollout* per process has `local_batch_size =
    per_device_train_batch_size * rollout_accumulation_steps` prompts (`rollout_accumulation_steps` is the
    `gradient_accumulation_steps` you pass, TRL 1.12's meaning); it is split into `num_mini_batches` mini-batches,
    each one optimizer step made of micro-batches of `per_device_train_batch_size` rows; this is repeated
    `num_ppo_epochs` times with a fresh `np.random.permutation` per epoch. A rollout therefore gives `steps_per_rollout
    = num_ppo_epochs * num_mini_batches` optimizer steps (`global_step`s of the `Trainer`). After construction
    `gradient_accumulation_steps` holds what the `Trainer` accumulates per optimizer step: the micro-batches of one
    mini-batch, `local_mini_batch_size / per_device_train_batch_size`.

    Parameters:
        > Rollout and batch sizes

        num_mini_batches (`int`, *optional*, defaults to `1`):
            Number of minibatches to split a batch into.
        total_episodes (`int`, *optional*):
            Total number of episodes (prompts rolled out, across all processes). Defaults to
            `num_train_epochs * len(train_dataset)` (computed by the trainer, which knows the data set). Ignored when
            `max_steps > 0`.
        rollout_accumulation_steps (`int`, *optional*):
            Micro-batches of `per_device_train_batch_size` prompts in one rollout per process. Leave it unset: it
            takes the `gradient_accumulation_steps` you pass (TRL 1.12's meaning), after which
            `gradient_accumulation_steps` is replaced by the `Trainer`'s value. Set by re-created configs.
        local_rollout_forward_batch_size (`int`, *optional*, defaults to `64`):
            Per rank no grad forward pass in the rollout phase (generation and the reference/value forwards are
            chunked by this many rows).
        max_prompt_length (`int`, *optional*):
            Prompts longer than this many tokens are truncated from the left (the end, next to the response, is kept)
            and counted in `rollout/prompts_truncated`. `None` keeps prompts whole.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep only the `prompt` and `input_ids` columns. Every other column is passed to a reward function as
            context, so keep this `False` unless the reward function needs none.

        > Generation

        response_length (`int`, *optional*, defaults to `53`):
            Length of the response (maximum number of new tokens).
        stop_token (`str`, *optional*):
            Stop token for generation, mutually exclusive with `stop_token_id`. `None`: no stop token unless
            `stop_token_id` is set; `"eos"`: the tokenizer's `eos_token`.
        stop_token_id (`int`, *optional*):
            ID of the stop token. Tokens after the first stop token are masked out (not trained on, not rewarded).
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature; log-probabilities are computed from `logits / (temperature + 1e-7)`.
        ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
            DeepSpeed ZeRO-3 only: gather the policy weights for generation (faster); disable for models that do
            not fit on one device.

        > Rewards

        reward_mode (`str` or `None`, *optional*, defaults to `None`):
            `"span"`: Text2Grad token rewards from located spans (plain float rewards go on the last token);
            `"scalar"`: classic RLHF, one score on the last response token; `"hybrid"`:
            `span_reward_weight * span rewards + scalar_reward_weight * score`. `None` (default): what the reward
            model can give, chosen by the trainer and said once in a warning: `"scalar"` for a sequence-classification
            reward model (as TRL 1.12's `PPOTrainer`), `"span"` for a reward function or span reward model. `"span"`
            or `"hybrid"` with a sequence-classification reward model is an error (it gives no spans).
        good_span_reward (`float`, *optional*, defaults to `1.0`):
            Reward of every token in a span the critic quoted as good.
        poor_span_reward (`float`, *optional*, defaults to `-1.0`):
            Reward of every token in a span the critic quoted as poor (poor wins where spans overlap).
        neutral_span_reward (`float`, *optional*, defaults to `0.0`):
            Reward of response tokens outside every span (only for samples whose critique was usable).
        span_reward_weight (`float`, *optional*, defaults to `1.0`):
            `"hybrid"` mode: weight of the span (token) rewards.
        scalar_reward_weight (`float`, *optional*, defaults to `1.0`):
            `"hybrid"` mode: weight of the sequence score.
        span_length_decay (`bool`, *optional*, defaults to `False`):
            Multiply span rewards by `2 * sigmoid(-(t - start) / scale)` for response tokens `t >= start` (the
            paper's SLF5K recipe). Off by default.
        span_length_decay_start (`int`, *optional*, defaults to `48`):
            First response token index whose span reward is decayed.
        span_length_decay_scale (`float`, *optional*, defaults to `16.0`):
            Width (in tokens) of the sigmoid decay.
        fuzzy_threshold (`float`, *optional*, defaults to `90.0`):
            Minimum `rapidfuzz` score (0–100) for a critic quote to be located fuzzily in the response.
        missing_eos_penalty (`float`, *optional*):
            Penalty subtracted from the score of responses that contain no EOS token. Must be positive.
        whiten_rewards (`bool`, *optional*, defaults to `False`):
            Whether to whiten the per-token rewards (scale only) before GAE.
        on_critic_error (`str`, *optional*, defaults to `"neutral"`):
            What to do with a sample whose reward is unusable (the reward function raised, returned `None`, NaN or
            malformed spans): `"neutral"` gives it a zero task reward (it still gets the KL penalty and is trained
            on); `"skip"` removes it from the PPO loss. Always counted in `span/critic_failures`; a rollout in which
            every sample failed is skipped with a warning.

        > PPO

        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Number of optimisation epochs over each rollout.
        cliprange (`float`, *optional*, defaults to `0.2`):
            Clip range of the policy ratio.
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Value function coefficient.
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            Clip range for the value function.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lam (`float`, *optional*, defaults to `0.95`):
            Lambda value for GAE.
        gae_reset_on_masked (`bool`, *optional*, defaults to `True`):
            GAE: a masked position between valid tokens ends the segment (`True`) or is skipped over (`False`).
            Identical for ordinary responses (valid tokens then padding).

        > KL penalty

        kl_coef (`float`, *optional*, defaults to `0.05`):
            KL coefficient (initial value when `adaptive_kl=True`).
        kl_estimator (`Literal["k1", "k3"]`, *optional*, defaults to `"k1"`):
            KL estimator from [Approximating KL Divergence](http://joschu.net/blog/kl-approx.html): `"k1"`
            (`-log r`) or `"k3"` (`(r - 1) - log r`, lower variance).
        adaptive_kl (`bool`, *optional*, defaults to `False`):
            Adapt `kl_coef` after every rollout with the proportional controller of Ziegler et al. (2019):
            `kl_coef *= 1 + clip(KL / kl_target - 1, -0.2, 0.2) * batch_size / kl_horizon`.
        kl_target (`float`, *optional*, defaults to `6.0`):
            Target KL (sum over the response, mean over samples) of the adaptive controller.
        kl_horizon (`int`, *optional*, defaults to `10000`):
            Horizon (in episodes) of the adaptive controller.
        log_kl_without_penalty (`bool`, *optional*, defaults to `True`):
            With `kl_coef=0` and `adaptive_kl=False` the reference policy changes nothing but the `objective/kl` log.
            `True` (TRL 1.12's behaviour) still runs its forward on every rollout to log the KL; `False` skips that
            forward (one forward per rollout less) and `objective/kl` is not logged.

        > Models and adapters

        merge_adapters_for_generation (`bool`, *optional*, defaults to `False`):
            With a PEFT (LoRA) policy, fold the active adapters into the base weights while sampling each rollout, so
            that a decoding step costs what the plain model's does, then take them out again; weights whose round
            trip `(W + ΔW) - ΔW` is not exact in floating point are written back from a record, so the frozen base
            (the reference policy) stays bit-identical. Merging and restoring read and write every adapted weight a
            few times, once per rollout: it pays off when decoding is long (long responses, GPUs); on a 2-core CPU
            with 32-token responses it saved nothing. Plain LoRA `Linear` layers only (not DoRA, LoRA bias or
            quantized bases, which stay unmerged); not with DeepSpeed.
        pack_weights_for_generation (`bool`, *optional*, defaults to `True`):
            On a CPU, sample each rollout with every linear layer computed by oneDNN on a pre-packed copy of its
            weight (`torch.ops.mkldnn`), with LoRA adapters folded into the copy; the copies (one model's weights in
            size) are made when the rollout's generation starts and freed when it ends, and the model's parameters are
            not written. With few rows per decoding step, PyTorch's default float32 path re-packs every weight matrix
            on every call; on the 2-core benchmark CPU the packed decoding step took about half the time (see
            `docs/benchmarks.md`). The products equal the plain ones up to float rounding (relative differences of
            about 1e-6), so sampling draws from the same distribution; log-probabilities and values are computed by
            the training forwards as before. Ignored on GPUs, without oneDNN, with DeepSpeed or FSDP, with quantized
            policies and with `compile_generation`; it takes precedence over `merge_adapters_for_generation`.
        compile_generation (`bool`, *optional*, defaults to `False`):
            Sample rollouts with a static KV cache and a `torch.compile`d decoding step (transformers' generation
            compile: its default configuration on accelerators, inductor without CUDA graphs on CPUs, where
            transformers would not compile by itself). Prompts are left-padded to a multiple of 64 tokens so that the
            compiled step sees few shapes. Compiling costs tens of seconds on the first rollout (and again for each
            new prompt-width bucket or batch size). On a 2-core CPU with 32-token rollouts it saved nothing (see
            `docs/benchmarks.md`); it is meant for long generations on GPUs, where it has not been measured here.
            Not with DeepSpeed or quantized policies.
        cache_implementation (`str` or `None`, *optional*, defaults to `None`):
            The KV cache rollouts sample with, passed to transformers' `GenerationConfig.cache_implementation` (the
            name and meaning of TRL's `GRPOConfig.cache_implementation`). `None`: transformers' dynamic cache, which
            grows by one token per decoding step; `"static"`: a cache allocated once per generation at prompt width +
            `response_length` and written in place. The sampled tokens are the same up to float rounding. On the
            2-core benchmark CPU, with 32-token rollouts and packed weights, `"static"` was no faster (2.14–2.41 s
            against 2.09–2.29 s per generation of 8 responses); it matters for long generations and for compiled
            decoding, which always uses it. Any value transformers accepts is allowed; an unknown one is rejected here.
        reward_model_path (`str`, *optional*, defaults to `"EleutherAI/pythia-160m"`):
            Path to the reward model (read by the `trl-text2grad ppo` script for `critic: reward_model`).
        model_adapter_name (`str`, *optional*):
            Name of the train target PEFT adapter, when using LoRA with multiple adapters. The trainer makes it the
            active (and only trainable) adapter at start-up; a name the policy does not have raises a `ValueError`.
            `None` trains the adapter that is active when the trainer is built.
        ref_adapter_name (`str`, *optional*):
            Name of the reference PEFT adapter, when using LoRA with multiple adapters (must exist in the policy and
            differ from `model_adapter_name`). `None`: the reference is the policy with its adapters disabled.

        > Logging, clipping and device (drop-in behaviour)

        log_every_update (`bool`, *optional*, defaults to `True`):
            With `logging_strategy="steps"`: one log line per PPO update (rollout), after its last optimizer step,
            as TRL 1.12 did (which ignored `logging_steps`); the line averages the update's optimizer steps and
            reports the exact `episode` count. `False`: the `Trainer`'s cadence, every `logging_steps` *optimizer*
            steps (an update is `num_ppo_epochs * num_mini_batches` optimizer steps). `save_steps` and `eval_steps`
            always count optimizer steps, and checkpoints are named `checkpoint-<optimizer step>`.
        max_grad_norm (`float`, *optional*, defaults to `0.0`):
            Gradient clipping norm; `0` (default): no clipping, as TRL 1.12's `PPOTrainer` (which never clipped
            gradients, whatever `max_grad_norm` said), in every `reward_mode`. Set e.g. `1.0` to clip (the
            `Trainer`'s usual default). The `Trainer` logs the (unclipped) `grad_norm` either way.
        use_cpu (`bool`, *optional*, defaults to `False`):
            Train on the CPU. Set automatically when no accelerator (CUDA, MPS, XPU, NPU, HPU, TPU...) is present and
            DeepSpeed is not in use, so that `accelerate launch --num_processes N` on a machine without GPUs forms one
            `N`-process gloo group. Under DeepSpeed without an accelerator, `ddp_backend` becomes `"gloo"`.
        num_sample_generations (`int`, *optional*, defaults to `10`):
            Number of debugging sample generations (tables of completions) throughout training, as in TRL 1.12:
            after update `N` with `(N - 1) % max(1, num_total_batches // num_sample_generations) == 0` (updates 1,
            1 + f, 1 + 2f, ...), the first batch of `eval_dataset` (`per_device_eval_batch_size` prompts per process)
            is generated near-greedily (temperature 0.01), scored with the reward model, printed on the main process
            and written to `<output_dir>/completions/update_<N>.jsonl`. `0` disables it; nothing happens without an
            `eval_dataset`. Metrics over the whole eval set come from `trainer.evaluate()` or `eval_strategy`; see
            also `heatmap_every_n_steps`.
        heatmap_every_n_steps (`int`, *optional*, defaults to `0`):
            Every this many rollouts, render up to 4 sampled completions as token-reward heatmaps: an HTML file in
            `<output_dir>/heatmaps/` and, when `report_to` is empty, a terminal rendering. `0` disables it.

        > Accepted for compatibility with TRL 1.12 (not read)

        exp_name (`str`, *optional*, defaults to `"span_ppo"`):
            TRL 1.12's experiment name; accepted, not read (use `run_name`).
        sft_model_path (`str`, *optional*, defaults to `"EleutherAI/pythia-160m"`):
            TRL 1.12's SFT model path; accepted, not read (pass the policy to the trainer).
        dataset_num_proc (`int`, *optional*):
            TRL 1.12's dataset processing parallelism; accepted, not read (prompts are encoded at rollout time).

        > Computed in `__post_init__` (read-only; not constructor arguments)

        local_batch_size (`int`):
            `per_device_train_batch_size * rollout_accumulation_steps`: prompts per rollout per process.
        micro_batch_size (`int`):
            `per_device_train_batch_size * world_size`.
        batch_size (`int`):
            `local_batch_size * world_size`: prompts per rollout across processes.
        local_mini_batch_size (`int`):
            `local_batch_size / num_mini_batches`.
        mini_batch_size (`int`):
            `batch_size / num_mini_batches`.
        steps_per_rollout (`int`):
            `num_ppo_epochs * num_mini_batches`: optimizer steps per rollout.
        micro_steps_per_rollout (`int`):
            `num_ppo_epochs * rollout_accumulation_steps`: micro-batches (Trainer micro-steps) per rollout.
        num_total_batches (`int` or `None`):
            Number of rollouts: `ceil(max_steps / steps_per_rollout)` when `max_steps > 0`, else
            `ceil(total_episodes / batch_size)`; `None` when neither is set (the trainer then derives it from the
            data set size, as `SpanPPOTrainer.num_total_batches`, without changing the config).
        The `Trainer`'s `gradient_accumulation_steps` (`local_mini_batch_size / per_device_train_batch_size`) and,
        when `total_episodes` is set, its `max_steps` (`num_total_batches * steps_per_rollout`) are computed here
        too. `world_size` is `TrainingArguments.world_size` (the number of processes).

        > Critic failure budget

        max_critic_failure_rate (`float`, *optional*, defaults to `0.5`):
            A rollout in which more than this fraction of the samples (over all processes) has an unusable reward (a
            [`~trl_text2grad.CriticFailure`]: request failed, critic answer unparseable, row lacking a column the
            reward function needs, quotes not found, `None`/NaN) is a *failed rollout*; so is a rollout in which
            every sample failed, whatever this value. A rollout in which every sample failed is never trained on.
        max_consecutive_failed_rollouts (`int`, *optional*, defaults to `2`):
            Training stops with a [`~trl_text2grad.CriticFailureError`] naming the reward function and its last
            failure after this many failed rollouts in a row, so a dead endpoint or a wrong key stops the run
            within the first rollouts instead of training on zero reward. `0` never stops (failed rollouts are
            still counted in `span/critic_failures` and all-failed ones skipped).

    > [!NOTE]
    > As in TRL 1.12: `learning_rate` defaults to `3e-6`, `logging_steps` to `10`, `gradient_checkpointing` to
    > `True` and `bf16` to `True` unless `fp16` is set (here: only when a bf16-capable GPU is present, so that the
    > default configuration also works on CPU).
    """

    # Parameters whose default values are overridden from TrainingArguments
    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={
            "help": "Keep only the 'prompt' and 'input_ids' columns; other columns reach the reward function as "
            "context, so keep False unless it needs none."
        },
    )

    # ---- Rollout and batch sizes ---------------------------------------------------------------------------------
    num_mini_batches: int = field(default=1, metadata={"help": "Number of minibatches to split a batch into."})
    total_episodes: int | None = field(
        default=None,
        metadata={"help": "Total number of episodes (default: num_train_epochs * len(train_dataset))."},
    )
    rollout_accumulation_steps: int | None = field(
        default=None,
        metadata={
            "help": "Micro-batches per rollout per process; default: the gradient_accumulation_steps you pass (TRL "
            "1.12's meaning), which then becomes the Trainer's micro-batches per optimizer step."
        },
    )
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Per rank no grad forward pass in the rollout phase."}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Left-truncate prompts longer than this many tokens (None = keep)."}
    )

    # ---- Generation ----------------------------------------------------------------------------------------------
    response_length: int = field(default=53, metadata={"help": "Length of the response."})
    stop_token: Literal["eos"] | None = field(
        default=None,
        metadata={"help": "Stop token for generation ('eos' or None); mutually exclusive with `stop_token_id`."},
    )
    stop_token_id: int | None = field(
        default=None,
        metadata={"help": "ID of the stop token; mutually exclusive with `stop_token`."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={"help": "DeepSpeed ZeRO-3: gather the policy weights for generation."},
    )

    # ---- Rewards -------------------------------------------------------------------------------------------------
    reward_mode: Literal["span", "scalar", "hybrid"] | None = field(
        default=None,
        metadata={
            "help": "'span' (token rewards), 'scalar' (score on the last token) or 'hybrid' (both). Default: "
            "'scalar' for a sequence-classification reward model, 'span' otherwise."
        },
    )
    good_span_reward: float = field(default=1.0, metadata={"help": "Reward of tokens in good spans."})
    poor_span_reward: float = field(default=-1.0, metadata={"help": "Reward of tokens in poor spans."})
    neutral_span_reward: float = field(default=0.0, metadata={"help": "Reward of response tokens outside spans."})
    span_reward_weight: float = field(default=1.0, metadata={"help": "Hybrid mode: weight of the span rewards."})
    scalar_reward_weight: float = field(default=1.0, metadata={"help": "Hybrid mode: weight of the scalar score."})
    span_length_decay: bool = field(
        default=False, metadata={"help": "Decay span rewards with a sigmoid past `span_length_decay_start` tokens."}
    )
    span_length_decay_start: int = field(default=48, metadata={"help": "First decayed response token index."})
    span_length_decay_scale: float = field(default=16.0, metadata={"help": "Width in tokens of the sigmoid decay."})
    fuzzy_threshold: float = field(
        default=90.0, metadata={"help": "Minimum rapidfuzz score (0-100) to locate a quote fuzzily."}
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Penalty subtracted from the score when the response has no EOS token (positive)."},
    )
    whiten_rewards: bool = field(default=False, metadata={"help": "Whether to whiten the rewards."})
    on_critic_error: Literal["neutral", "skip"] = field(
        default="neutral",
        metadata={"help": "Unusable reward for a sample: 'neutral' (zero task reward) or 'skip' (drop it)."},
    )

    # ---- PPO -----------------------------------------------------------------------------------------------------
    num_ppo_epochs: int = field(default=4, metadata={"help": "Number of optimisation epochs over each rollout."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value function coefficient."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range for the value function."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda value for GAE."})
    gae_reset_on_masked: bool = field(
        default=True, metadata={"help": "GAE: masked positions between valid tokens end the segment."}
    )

    # ---- KL penalty ----------------------------------------------------------------------------------------------
    kl_coef: float = field(default=0.05, metadata={"help": "KL coefficient."})
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={"help": "KL estimator: 'k1' (-log r) or 'k3' ((r - 1) - log r, lower variance)."},
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards kl_target after each rollout."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL of the adaptive KL controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive KL controller."})
    log_kl_without_penalty: bool = field(
        default=True,
        metadata={
            "help": "With kl_coef=0 and adaptive_kl off, still run the reference forward on every rollout to log "
            "objective/kl (True, as TRL 1.12); False skips that forward and does not log objective/kl."
        },
    )

    # ---- Models and adapters -------------------------------------------------------------------------------------
    merge_adapters_for_generation: bool = field(
        default=False,
        metadata={
            "help": "PEFT policies: fold the LoRA adapters into the base weights while sampling a rollout (no "
            "adapter products per decoding step) and restore the base weights bit for bit afterwards."
        },
    )
    pack_weights_for_generation: bool = field(
        default=True,
        metadata={
            "help": "On a CPU: sample rollouts with every linear layer on oneDNN with a pre-packed copy of its weight "
            "(LoRA adapters folded into the copy), made at the start of each rollout's generation and freed after it. "
            "Same products up to float rounding; no effect on GPUs, with DeepSpeed/FSDP or quantized policies."
        },
    )
    compile_generation: bool = field(
        default=False,
        metadata={
            "help": "Sample with a static KV cache and a torch.compile'd decoding step (prompts padded to a multiple "
            "of 64 tokens); compiling costs tens of seconds once. For long generations on GPUs; no gain measured on a "
            "2-core CPU with 32-token rollouts."
        },
    )
    cache_implementation: str | None = field(
        default=None,
        metadata={
            "help": "KV cache of rollout sampling, as transformers' GenerationConfig.cache_implementation (TRL's "
            "GRPOConfig field of the same name): None grows the cache step by step, 'static' allocates it once per "
            "generation at its final size. compile_generation always uses 'static'."
        },
    )
    reward_model_path: str = field(
        default="EleutherAI/pythia-160m",
        metadata={"help": "Path to the reward model (read by the ppo script for `critic: reward_model`)."},
    )
    model_adapter_name: str | None = field(
        default=None,
        metadata={"help": "Name of the PEFT adapter to train (made active at start-up; multiple adapters)."},
    )
    ref_adapter_name: str | None = field(
        default=None,
        metadata={"help": "Name of the reference PEFT adapter (multiple adapters; None = adapters disabled)."},
    )

    # ---- Logging -------------------------------------------------------------------------------------------------
    num_sample_generations: int = field(
        default=10,
        metadata={
            "help": "Number of debugging sample generations (tables of scored completions for the first eval batch, "
            "written to output_dir/completions/) throughout training; 0 disables them."
        },
    )
    heatmap_every_n_steps: int = field(
        default=0, metadata={"help": "Render token-reward heatmaps every N rollouts (0 = off)."}
    )
    log_every_update: bool = field(
        default=True,
        metadata={"help": "One log line per PPO update (as TRL 1.12); False: every logging_steps optimizer steps."},
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata={"help": "Gradient clipping norm; 0 (default) = no clipping, as TRL 1.12's PPOTrainer."},
    )

    # ---- Accepted for compatibility with TRL 1.12 (not read) -----------------------------------------------------
    exp_name: str = field(
        default="span_ppo", metadata={"help": "Accepted for compatibility with TRL 1.12; not read (use run_name)."}
    )
    sft_model_path: str = field(
        default="EleutherAI/pythia-160m",
        metadata={"help": "Accepted for compatibility with TRL 1.12; not read (pass the policy to the trainer)."},
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Accepted for compatibility with TRL 1.12; not read."}
    )

    # ---- Critic failure budget -----------------------------------------------------------------------------------
    max_critic_failure_rate: float = field(
        default=0.5,
        metadata={"help": "A rollout with more than this fraction of unusable rewards is a failed rollout."},
    )
    max_consecutive_failed_rollouts: int = field(
        default=2,
        metadata={"help": "Stop training after this many failed rollouts in a row (0 = never stop)."},
    )

    # ---- Computed in __post_init__ (not constructor arguments) ---------------------------------------------------
    local_batch_size: int = field(default=0, init=False, repr=False)
    micro_batch_size: int = field(default=0, init=False, repr=False)
    batch_size: int = field(default=0, init=False, repr=False)
    local_mini_batch_size: int = field(default=0, init=False, repr=False)
    mini_batch_size: int = field(default=0, init=False, repr=False)
    steps_per_rollout: int = field(default=0, init=False, repr=False)
    micro_steps_per_rollout: int = field(default=0, init=False, repr=False)
    num_total_batches: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not self.use_cpu and _no_accelerator() and not _deepspeed_requested(self):
            # Without this, `accelerate launch --num_processes N` (torchrun) on a machine without GPUs gives N separate
            # 1-process states instead of one gloo group: TrainingArguments only asks accelerate for a CPU group
            # when use_cpu is set.
            self.use_cpu = True
        if self.ddp_backend is None and _no_accelerator() and _deepspeed_requested(self):
            # DeepSpeed's CPU accelerator talks gloo, but accelerate only learns the backend from this field: without
            # it, its state records no backend and every process believes it is process 0 of 1.
            self.ddp_backend = "gloo"
        if self.max_grad_norm is None:  # "no clipping" spelt the other way
            self.max_grad_norm = 0.0
        if self.bf16 is None and not self.fp16 and not self.use_cpu:
            # TRL's default is bf16 unless fp16 is set; on a machine without a bf16-capable accelerator that default
            # would make TrainingArguments raise, so it becomes fp32 there.
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        elif self.bf16 is None and self.use_cpu:
            self.bf16 = False
        super().__post_init__()
        self._validate()
        self._compute_sizes()

    def _validate(self) -> None:
        """Reject invalid or conflicting settings (each message names the field)."""
        if self.reward_mode not in (None, "span", "scalar", "hybrid"):
            raise ValueError(
                f"reward_mode must be 'span', 'scalar', 'hybrid' or None (chosen from the reward model), got "
                f"{self.reward_mode!r}."
            )
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}.")
        if self.cache_implementation is not None:
            from transformers.generation.configuration_utils import ALL_CACHE_IMPLEMENTATIONS

            if self.cache_implementation not in ALL_CACHE_IMPLEMENTATIONS:
                raise ValueError(
                    f"cache_implementation must be None or one of {sorted(ALL_CACHE_IMPLEMENTATIONS)}, got "
                    f"{self.cache_implementation!r}."
                )
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if self.on_critic_error not in ("neutral", "skip"):
            raise ValueError(f"on_critic_error must be 'neutral' or 'skip', got {self.on_critic_error!r}.")
        if not 0.0 <= self.max_critic_failure_rate <= 1.0:
            raise ValueError(f"max_critic_failure_rate must be in [0, 1], got {self.max_critic_failure_rate}.")
        if self.max_consecutive_failed_rollouts < 0:
            raise ValueError(
                f"max_consecutive_failed_rollouts must be >= 0 (0 = never stop), got "
                f"{self.max_consecutive_failed_rollouts}."
            )
        if self.stop_token is not None and self.stop_token_id is not None:
            raise ValueError("You cannot set both `stop_token` and `stop_token_id`; keep one of them.")
        if self.stop_token not in (None, "eos"):
            raise ValueError(f"Unknown `stop_token` {self.stop_token!r}; allowed values are 'eos' and None.")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError(f"missing_eos_penalty must be positive, got {self.missing_eos_penalty}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.response_length < 1:
            raise ValueError(f"response_length must be >= 1, got {self.response_length}.")
        if self.num_ppo_epochs < 1 or self.num_mini_batches < 1:
            raise ValueError("num_ppo_epochs and num_mini_batches must be >= 1.")
        if self.num_sample_generations < 0:
            raise ValueError(f"num_sample_generations must be >= 0, got {self.num_sample_generations}.")
        if self.total_episodes is not None and self.total_episodes < 1:
            raise ValueError(f"total_episodes must be >= 1 (or None), got {self.total_episodes}.")
        if self.local_rollout_forward_batch_size < 1:
            raise ValueError(
                f"local_rollout_forward_batch_size must be >= 1, got {self.local_rollout_forward_batch_size}."
            )
        if self.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end is not supported by SpanPPOTrainer; set it to False (checkpoints can still be "
                "kept by an evaluation metric with save_strategy='best' and e.g. metric_for_best_model='score')."
            )

    def _compute_sizes(self) -> None:
        """Derive the batch sizes and step counts (TRL 1.12 names) from the user's settings and the world size."""
        world_size = self.world_size
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > world_size:
            raise ValueError(
                f"launched with WORLD_SIZE={launched} but the distributed state has {world_size} process(es); on a "
                "machine without GPUs set `use_cpu=True` in SpanPPOConfig (or ACCELERATE_USE_CPU=1) so that the "
                "processes join one gloo group."
            )
        per_device = self.per_device_train_batch_size
        if self.rollout_accumulation_steps is None:
            self.rollout_accumulation_steps = self.gradient_accumulation_steps
        elif self.rollout_accumulation_steps < 1:
            raise ValueError(f"rollout_accumulation_steps must be >= 1, got {self.rollout_accumulation_steps}.")
        self.local_batch_size = per_device * self.rollout_accumulation_steps
        self.micro_batch_size = per_device * world_size
        self.batch_size = self.local_batch_size * world_size
        self.mini_batch_size = _exact_div(
            self.batch_size, self.num_mini_batches, "`batch_size` must be a multiple of `num_mini_batches`"
        )
        self.local_mini_batch_size = _exact_div(
            self.local_batch_size, self.num_mini_batches, "`local_batch_size` must be a multiple of `num_mini_batches`"
        )
        micro_per_mini = _exact_div(
            self.local_mini_batch_size,
            per_device,
            "`local_mini_batch_size` (per_device_train_batch_size * gradient_accumulation_steps / num_mini_batches) "
            "must be a multiple of `per_device_train_batch_size`",
        )
        if self.gradient_accumulation_steps not in (1, self.rollout_accumulation_steps, micro_per_mini):
            raise ValueError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} conflicts with "
                f"rollout_accumulation_steps={self.rollout_accumulation_steps}: set only gradient_accumulation_steps "
                "(the rollout size, as in TRL 1.12)."
            )
        self.gradient_accumulation_steps = micro_per_mini  # the Trainer's: micro-batches per optimizer step
        self.steps_per_rollout = self.num_ppo_epochs * self.num_mini_batches
        self.micro_steps_per_rollout = self.num_ppo_epochs * self.rollout_accumulation_steps
        if self.max_steps is not None and self.max_steps > 0:
            self.num_total_batches = math.ceil(self.max_steps / self.steps_per_rollout)
        elif self.total_episodes is not None:
            self.num_total_batches = math.ceil(self.total_episodes / self.batch_size)
            self.max_steps = self.num_total_batches * self.steps_per_rollout
        else:
            self.num_total_batches = None  # needs the data set size: SpanPPOTrainer.num_total_batches
        if self.whiten_rewards and self.local_mini_batch_size < 8:
            warnings.warn(
                f"whiten_rewards with a per-rank mini-batch of {self.local_mini_batch_size} (< 8) gives noisy "
                "statistics.",
                stacklevel=3,
            )


def _no_accelerator() -> bool:
    """True when torch sees no accelerator (CUDA, ROCm, MPS, XPU, NPU, HPU... or an XLA device)."""
    if torch.cuda.is_available():
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return False
    return not is_torch_xla_available()


def _deepspeed_requested(args) -> bool:
    """DeepSpeed through `accelerate launch` (env) or `TrainingArguments.deepspeed`: it picks its own accelerator."""
    return bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in (
        "1",
        "true",
        "yes",
    )
