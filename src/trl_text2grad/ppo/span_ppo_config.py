"""Configuration of :class:`~trl_text2grad.ppo.span_ppo_trainer.SpanPPOTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

try:  # TRL's common base (TRL-wide defaults, argparse-safe help strings)
    from trl.trainer.base_config import _BaseConfig as _ConfigBase
except ImportError:  # pragma: no cover - older/newer TRL layouts
    from transformers import TrainingArguments as _ConfigBase

__all__ = ["SpanPPOConfig"]


@dataclass
class SpanPPOConfig(_ConfigBase):
    r"""
    Configuration class for [`SpanPPOTrainer`]: PPO with token-level (span) rewards, built on the `transformers`
    `Trainer`.

    Every field of TRL 1.12's `PPOConfig` (and its former `OnPolicyConfig` parent) is kept with the same name,
    default and meaning; the Text2Grad fields follow. For the full list of training arguments see
    [`~transformers.TrainingArguments`]. Batch vocabulary (as in TRL 1.12): one *rollout* per rank has
    `local_batch_size = per_device_train_batch_size * gradient_accumulation_steps` prompts; it is split into
    `num_mini_batches` mini-batches, each one optimizer step made of micro-batches of `per_device_train_batch_size`
    rows; this is repeated `num_ppo_epochs` times with a fresh `np.random.permutation` per epoch. A rollout therefore
    gives `num_ppo_epochs * num_mini_batches` optimizer steps (`global_step`s of the `Trainer`).

    Parameters:
        > TRL 1.12 `PPOConfig` / `OnPolicyConfig` parameters

        exp_name (`str`, *optional*, defaults to `"span_ppo"`):
            Name of this experiment (not a TRL 1.12 field; informational only).
        dataset_num_proc (`int`, *optional*):
            Number of processes to use for processing the dataset.
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Number of minibatches to split a batch into.
        total_episodes (`int`, *optional*):
            Total number of episodes (prompts rolled out, across all processes). Defaults to
            `num_train_epochs * len(train_dataset)`. Ignored when `max_steps > 0`.
        local_rollout_forward_batch_size (`int`, *optional*, defaults to `64`):
            Per rank no grad forward pass in the rollout phase (generation and the reference/value forwards are
            chunked by this many rows).
        num_sample_generations (`int`, *optional*, defaults to `10`):
            Number of debugging sample generations (tables of completions) throughout training, as in TRL 1.12:
            after update `N` with `(N - 1) % max(1, num_total_batches // num_sample_generations) == 0` (updates 1,
            1 + f, 1 + 2f, ...), the first batch of `eval_dataset` (`per_device_eval_batch_size` prompts per process)
            is generated near-greedily (temperature 0.01), scored with the reward model, printed on the main process
            and written to `<output_dir>/completions/update_<N>.jsonl`. `0` disables it; nothing happens without an
            `eval_dataset`. Metrics over the whole eval set come from `trainer.evaluate()` or `eval_strategy`; see
            also `heatmap_every_n_steps`.
        response_length (`int`, *optional*, defaults to `53`):
            Length of the response (maximum number of new tokens).
        stop_token (`str`, *optional*):
            Stop token for generation, mutually exclusive with `stop_token_id`. `None`: no stop token unless
            `stop_token_id` is set; `"eos"`: the tokenizer's `eos_token`.
        stop_token_id (`int`, *optional*):
            ID of the stop token. Tokens after the first stop token are masked out (not trained on, not rewarded).
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature; log-probabilities are computed from `logits / (temperature + 1e-7)`.
        missing_eos_penalty (`float`, *optional*):
            Penalty subtracted from the score of responses that contain no EOS token. Must be positive.
        sft_model_path (`str`, *optional*, defaults to `"EleutherAI/pythia-160m"`):
            Path to the SFT model (used by scripts only).
        world_size (`int`, *optional*):
            Number of processes; set by the trainer.
        num_total_batches (`int`, *optional*):
            Number of rollouts to train on; set by the trainer.
        micro_batch_size (`int`, *optional*):
            `per_device_train_batch_size * world_size`; set by the trainer.
        local_batch_size (`int`, *optional*):
            `per_device_train_batch_size * gradient_accumulation_steps` (the rollout per rank); set by the trainer.
        batch_size (`int`, *optional*):
            `local_batch_size * world_size`; set by the trainer.
        local_mini_batch_size (`int`, *optional*):
            Mini batch size per rank (`local_batch_size / num_mini_batches`); set by the trainer.
        mini_batch_size (`int`, *optional*):
            Mini batch size across ranks; set by the trainer.
        push_to_hub (`bool`, *optional*, defaults to `False`):
            Whether to push the model to the Hub after training.
        reward_model_path (`str`, *optional*, defaults to `"EleutherAI/pythia-160m"`):
            Path to the reward model (used by scripts only).
        model_adapter_name (`str`, *optional*):
            Name of the train target PEFT adapter, when using LoRA with multiple adapters. The trainer makes it the
            active (and only trainable) adapter at start-up; a name the policy does not have raises a `ValueError`.
            `None` trains the adapter that is active when the trainer is built.
        ref_adapter_name (`str`, *optional*):
            Name of the reference PEFT adapter, when using LoRA with multiple adapters (must exist in the policy and
            differ from `model_adapter_name`). `None`: the reference is the policy with its adapters disabled.
        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Number of optimisation epochs over each rollout.
        whiten_rewards (`bool`, *optional*, defaults to `False`):
            Whether to whiten the per-token rewards (scale only) before GAE.
        kl_coef (`float`, *optional*, defaults to `0.05`):
            KL coefficient (initial value when `adaptive_kl=True`).
        kl_estimator (`Literal["k1", "k3"]`, *optional*, defaults to `"k1"`):
            KL estimator from [Approximating KL Divergence](http://joschu.net/blog/kl-approx.html): `"k1"`
            (`-log r`) or `"k3"` (`(r - 1) - log r`, lower variance).
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
        ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
            DeepSpeed ZeRO-3 only: gather the policy weights for generation (faster); disable for models that do
            not fit on one device.

        > Drop-in behaviour (reward mode, clipping, logging cadence, device)

        reward_mode (`str` or `None`, *optional*, defaults to `None`):
            `"span"`: Text2Grad token rewards from located spans (plain float rewards go on the last token);
            `"scalar"`: classic RLHF, one score on the last response token; `"hybrid"`:
            `span_reward_weight * span rewards + scalar_reward_weight * score`. `None` (default): what the reward
            model can give, chosen by the trainer and said once in a warning: `"scalar"` for a sequence-classification reward
            model (as TRL 1.12's `PPOTrainer`), `"span"` for a reward function or span reward model. `"span"` or
            `"hybrid"` with a sequence-classification reward model is an error (it gives no spans).
        max_grad_norm (`float`, *optional*, defaults to `0.0`):
            Gradient clipping norm; `0` (default): no clipping, as TRL 1.12's `PPOTrainer` (which never clipped
            gradients, whatever `max_grad_norm` said), in every `reward_mode`. Set e.g. `1.0` to clip (the
            `Trainer`'s usual default). The `Trainer` logs the (unclipped) `grad_norm` either way.
        log_every_update (`bool`, *optional*, defaults to `True`):
            With `logging_strategy="steps"`: one log line per PPO update (rollout), after its last optimizer step,
            as TRL 1.12 did (which ignored `logging_steps`); the line averages the update's optimizer steps and
            reports the exact `episode` count. `False`: the `Trainer`'s cadence, every `logging_steps` *optimizer*
            steps (an update is `num_ppo_epochs * num_mini_batches` optimizer steps). `save_steps` and `eval_steps`
            always count optimizer steps, and checkpoints are named `checkpoint-<optimizer step>`.
        use_cpu (`bool`, *optional*, defaults to `False`):
            Train on the CPU. Set automatically when no accelerator (CUDA, MPS, XPU, NPU, HPU, TPU...) is present and
            DeepSpeed is not in use, so that `accelerate launch --num_processes N` on a machine without GPUs forms one
            `N`-process gloo group.

        > Text2Grad parameters

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
        gae_reset_on_masked (`bool`, *optional*, defaults to `True`):
            GAE: a masked position between valid tokens ends the segment (`True`) or is skipped over (`False`).
            Identical for ordinary responses (valid tokens then padding).
        adaptive_kl (`bool`, *optional*, defaults to `False`):
            Adapt `kl_coef` after every rollout with the proportional controller of Ziegler et al. (2019):
            `kl_coef *= 1 + clip(KL / kl_target - 1, -0.2, 0.2) * batch_size / kl_horizon`.
        kl_target (`float`, *optional*, defaults to `6.0`):
            Target KL (sum over the response, mean over samples) of the adaptive controller.
        kl_horizon (`int`, *optional*, defaults to `10000`):
            Horizon (in episodes) of the adaptive controller.
        on_critic_error (`str`, *optional*, defaults to `"neutral"`):
            What to do with a sample whose reward is unusable (the reward function raised, returned `None`, NaN or
            malformed spans): `"neutral"` gives it a zero task reward (it still gets the KL penalty and is trained
            on); `"skip"` removes it from the PPO loss. Always counted in `span/critic_failures`; a rollout in which
            every sample failed is skipped with a warning.
        heatmap_every_n_steps (`int`, *optional*, defaults to `0`):
            Every this many rollouts, render up to 4 sampled completions as token-reward heatmaps: an HTML file in
            `<output_dir>/heatmaps/` and, when `report_to` is empty, a terminal rendering. `0` disables it.
        fuzzy_threshold (`float`, *optional*, defaults to `90.0`):
            Minimum `rapidfuzz` score (0–100) for a critic quote to be located fuzzily in the response.
        max_prompt_length (`int`, *optional*):
            Prompts longer than this many tokens are truncated from the left (the end, next to the response, is kept)
            and counted in `rollout/prompts_truncated`. `None` keeps prompts whole.
        trl112_score_placement (`bool`, *optional*, defaults to `False`):
            Reproduce TRL 1.12's placement of the scalar score one position *after* the last response token (with
            that extra position kept for the value loss) instead of on the last token. Only for numerical
            comparisons with TRL 1.12; see `docs/ppo.md`.

    > [!NOTE]
    > As in TRL 1.12: `learning_rate` defaults to `3e-6`, `logging_steps` to `10`, `gradient_checkpointing` to
    > `True` and `bf16` to `True` unless `fp16` is set (here: only when a bf16-capable GPU is present, so that the
    > default configuration also works on CPU).
    """

    # Parameters whose default values are overridden from TrainingArguments
    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})

    # ---- TRL 1.12 PPOConfig / OnPolicyConfig fields -------------------------------------------------------------
    exp_name: str = field(default="span_ppo", metadata={"help": "Name of this experiment."})
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes to use for processing the dataset."}
    )
    num_mini_batches: int = field(default=1, metadata={"help": "Number of minibatches to split a batch into."})
    total_episodes: int | None = field(
        default=None,
        metadata={"help": "Total number of episodes (default: num_train_epochs * len(train_dataset))."},
    )
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Per rank no grad forward pass in the rollout phase."}
    )
    num_sample_generations: int = field(
        default=10,
        metadata={
            "help": "Number of debugging sample generations (tables of scored completions for the first eval batch, "
            "written to output_dir/completions/) throughout training; 0 disables them."
        },
    )
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
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Penalty subtracted from the score when the response has no EOS token (positive)."},
    )
    sft_model_path: str = field(default="EleutherAI/pythia-160m", metadata={"help": "Path to the SFT model."})
    world_size: int | None = field(default=None, metadata={"help": "Number of processes (set by the trainer)."})
    num_total_batches: int | None = field(
        default=None, metadata={"help": "Number of rollouts to train on (set by the trainer)."}
    )
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "per_device_train_batch_size * world_size (set by the trainer)."}
    )
    local_batch_size: int | None = field(
        default=None,
        metadata={"help": "per_device_train_batch_size * gradient_accumulation_steps (set by the trainer)."},
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "local_batch_size * world_size (set by the trainer)."}
    )
    local_mini_batch_size: int | None = field(
        default=None, metadata={"help": "Mini batch size per rank (set by the trainer)."}
    )
    mini_batch_size: int | None = field(
        default=None, metadata={"help": "Mini batch size across ranks (set by the trainer)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Whether to push the model to the Hub after training."})
    reward_model_path: str = field(default="EleutherAI/pythia-160m", metadata={"help": "Path to the reward model."})
    model_adapter_name: str | None = field(
        default=None,
        metadata={"help": "Name of the PEFT adapter to train (made active at start-up; multiple adapters)."},
    )
    ref_adapter_name: str | None = field(
        default=None,
        metadata={"help": "Name of the reference PEFT adapter (multiple adapters; None = adapters disabled)."},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Number of optimisation epochs over each rollout."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whether to whiten the rewards."})
    kl_coef: float = field(default=0.05, metadata={"help": "KL coefficient."})
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={"help": "KL estimator: 'k1' (-log r) or 'k3' ((r - 1) - log r, lower variance)."},
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value function coefficient."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range for the value function."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda value for GAE."})
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={"help": "DeepSpeed ZeRO-3: gather the policy weights for generation."},
    )

    # ---- Drop-in behaviour: reward mode, clipping, logging cadence (device: see __post_init__) ----------------------
    reward_mode: Literal["span", "scalar", "hybrid"] | None = field(
        default=None,
        metadata={
            "help": "'span' (token rewards), 'scalar' (score on the last token) or 'hybrid' (both). Default: "
            "'scalar' for a sequence-classification reward model, 'span' otherwise."
        },
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata={"help": "Gradient clipping norm; 0 (default) = no clipping, as TRL 1.12's PPOTrainer."},
    )
    log_every_update: bool = field(
        default=True,
        metadata={"help": "One log line per PPO update (as TRL 1.12); False: every logging_steps optimizer steps."},
    )

    # ---- Text2Grad fields ----------------------------------------------------------------------------------------
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
    gae_reset_on_masked: bool = field(
        default=True, metadata={"help": "GAE: masked positions between valid tokens end the segment."}
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards kl_target after each rollout."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL of the adaptive KL controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive KL controller."})
    on_critic_error: Literal["neutral", "skip"] = field(
        default="neutral",
        metadata={"help": "Unusable reward for a sample: 'neutral' (zero task reward) or 'skip' (drop it)."},
    )
    heatmap_every_n_steps: int = field(
        default=0, metadata={"help": "Render token-reward heatmaps every N rollouts (0 = off)."}
    )
    fuzzy_threshold: float = field(
        default=90.0, metadata={"help": "Minimum rapidfuzz score (0-100) to locate a quote fuzzily."}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Left-truncate prompts longer than this many tokens (None = keep)."}
    )
    trl112_score_placement: bool = field(
        default=False,
        metadata={"help": "Place the scalar score one token after the response, as TRL 1.12 did (parity only)."},
    )

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
        if self.bf16 is None and not self.fp16 and not self.use_cpu:
            # TRL's default is bf16 unless fp16 is set; on a machine without a bf16-capable accelerator that default
            # would make TrainingArguments raise, so it becomes fp32 there.
            import torch

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        elif self.bf16 is None and self.use_cpu:
            self.bf16 = False
        super().__post_init__()
        if self.reward_mode not in (None, "span", "scalar", "hybrid"):
            raise ValueError(
                f"reward_mode must be 'span', 'scalar', 'hybrid' or None (chosen from the reward model), got "
                f"{self.reward_mode!r}."
            )
        if self.max_grad_norm is None:  # "no clipping" spelt the other way
            self.max_grad_norm = 0.0
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if self.on_critic_error not in ("neutral", "skip"):
            raise ValueError(f"on_critic_error must be 'neutral' or 'skip', got {self.on_critic_error!r}.")
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


def _no_accelerator() -> bool:
    """True when torch sees no accelerator (CUDA, ROCm, MPS, XPU, NPU, HPU... or an XLA device)."""
    import torch

    if torch.cuda.is_available():
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return False
    from transformers.utils import is_torch_xla_available

    return not is_torch_xla_available()


def _deepspeed_requested(args) -> bool:
    """DeepSpeed through `accelerate launch` (env) or `TrainingArguments.deepspeed`: it picks its own accelerator."""
    import os

    return bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in (
        "1",
        "true",
        "yes",
    )
