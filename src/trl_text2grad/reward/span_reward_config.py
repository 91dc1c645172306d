"""Configuration of :class:`~trl_text2grad.reward.span_reward_trainer.SpanRewardTrainer`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from trl import RewardConfig

__all__ = ["SpanRewardConfig", "MODEL_FORMS", "HEAD_LAYOUTS"]

MODEL_FORMS = ("token_head", "generative", "sequence_classification")
HEAD_LAYOUTS = ("repeat", "plain")


@dataclass
class SpanRewardConfig(RewardConfig):
    r"""
    Configuration class for the [`SpanRewardTrainer`], the span-level reward model of Text2Grad.

    Extends TRL's [`~trl.RewardConfig`]; only the parameters below are new. Parent parameters keep their meaning,
    except `max_length` for span rows and for pairs scored by the token head, where it *truncates* overlong rows
    (counted and logged) instead of filtering them out (it bounds prompt + response; the `repeat` layout then
    appends the separator and the response copy, and the generative form's bound includes the target). With a
    sequence-classification model every parent parameter behaves exactly as in `RewardTrainer`.
    `center_rewards_coefficient` applies to the sequence rewards of preference pairs (token head or sequence
    classifier), as in `RewardTrainer`.

    Defaults that differ from `RewardConfig`: `remove_unused_columns=False` (required), `gradient_checkpointing` /
    `activation_checkpointing` off, and `bf16` on only when a CUDA device supports it (TRL's default `True` fails
    on CPU-only machines).

    Parameters:
        > Parameters that choose the model form

        model_form (`str` or `None`, *optional*, defaults to `None`):
            `"token_head"`: a causal-LM backbone with a per-token classification head (neutral / good / poor),
            trained on `SpanAnnotationCollator`'s `span_labels` and, for preference pairs, on the Bradley–Terry loss
            of the mean token reward; one forward pass per batch at scoring time.
            `"generative"`: the causal LM learns to write `{"critique": ..., "good_spans": [...], "poor_spans":
            [...]}` after the prompt and response (the paper's form); scoring generates and parses that JSON.
            `"sequence_classification"`: TRL's reward model (one score per sequence), trained on preference pairs
            exactly as `RewardTrainer` does; a model path is loaded with `AutoModelForSequenceClassification`.
            `None`: from the model — a sequence-classification model (instance, or a checkpoint whose architecture
            is one) trains as `"sequence_classification"`, anything else as `"token_head"`.
        head_layout (`str`, *optional*, defaults to `"repeat"`):
            Token-head input layout. `"repeat"`: prompt + response, a separator, then the response again; the head
            reads the second copy, so each of its tokens has seen the whole response. `"plain"`: the head reads the
            response tokens directly (each token sees only its prefix). See `docs/reward_model.md` for the
            measurement that chose the default.
        layout_separator (`str`, *optional*, defaults to `"\n\n[Response, annotated]\n"`):
            Text placed between the two copies of the response in the `"repeat"` layout.
        critique_loss_weight (`float`, *optional*, defaults to `0.0`):
            Token head only: weight of the language-modelling loss on the annotator's critique, appended after the
            (laid out) response, trained together with the span head (the paper's "dual-headed" model). `0`
            disables it.
        span_class_weights (`list[float]`, *optional*):
            Token head only: cross-entropy weights of the classes `[neutral, good, poor]`, e.g. `[0.5, 1.0, 2.0]`
            to counter the majority of neutral tokens. `None` weighs them equally.
        head_dropout (`float`, *optional*, defaults to `0.0`):
            Token head only: dropout applied to the hidden states before the span head. Needs
            `disable_dropout=False` (which would otherwise switch it off).
        preference_loss_weight (`float`, *optional*, defaults to `1.0`):
            Token head only: weight of the Bradley–Terry loss of preference pairs, added to the span loss when a
            data set mixes pairs and span rows.

        > Parameters that control the span annotations

        good_span_reward (`float`, *optional*, defaults to `1.0`):
            Reward of good spans (passed to the collator and written into scored Critiques' spans); the same name as
            in `SpanPPOConfig`.
        poor_span_reward (`float`, *optional*, defaults to `-1.0`):
            Reward of poor spans.
        good_score (`float`, *optional*):
            Deprecated spelling of `good_span_reward` (accepted with a `FutureWarning`).
        poor_score (`float`, *optional*):
            Deprecated spelling of `poor_span_reward` (accepted with a `FutureWarning`).
        fuzzy_threshold (`float`, *optional*, defaults to `90.0`):
            Minimum `rapidfuzz` partial-ratio score for a quote that is not found exactly to count as located.
            Quotes that cannot be located are counted and dropped from the span labels; the row is kept.

        > Parameters of the generative form

        max_target_length (`int`, *optional*, defaults to `384`):
            Maximum number of tokens of the generative target (critique + spans JSON). Longer critiques are cut
            (the spans are kept) and counted.
        critique_prompt (`str`, *optional*):
            Instruction shown to the generative reward model; `{prompt}` and `{response}` are filled in. `None`
            uses the built-in instruction (`trl_text2grad.reward.modeling.DEFAULT_CRITIQUE_PROMPT`).

        > Parameters of evaluation

        max_new_tokens (`int`, *optional*, defaults to `256`):
            Generative form: maximum number of generated tokens when scoring (evaluation and inference).
        eval_span_metrics (`bool`, *optional*, defaults to `True`):
            Whether `evaluate()` also scores the evaluation rows with the model and reports token-level
            precision/recall/F1 of good and poor spans, exact-span match, parse rate and critique ROUGE-L.
        eval_max_samples (`int`, *optional*, defaults to `64`):
            Maximum number of evaluation rows scored for the span metrics (generation is slow). `None`: all.
    """

    # Parameters whose defaults differ from RewardConfig
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: the span collator needs the raw annotation columns."},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of `activation_checkpointing` (off by default here: span reward models are "
            "small and usually trained on short rows)."
        },
    )

    model_form: str | None = field(
        default=None,
        metadata={
            "help": "'token_head' (per-token good/neutral/poor head, one forward pass), 'generative' (the LM "
            "writes the critique and a spans JSON) or 'sequence_classification' (TRL's one-score reward model, "
            "preference pairs only). None: 'sequence_classification' for a sequence-classification model, else "
            "'token_head'.",
            "choices": list(MODEL_FORMS),
        },
    )
    head_layout: str = field(
        default="repeat",
        metadata={
            "help": "Token-head layout: 'repeat' (response repeated after a separator; head on the second copy) or "
            "'plain' (head on the response tokens).",
            "choices": list(HEAD_LAYOUTS),
        },
    )
    layout_separator: str = field(
        default="\n\n[Response, annotated]\n",
        metadata={"help": "Separator between the two copies of the response in the 'repeat' layout."},
    )
    critique_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Token head only: weight of the joint critique language-modelling loss (0 disables it)."},
    )
    span_class_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Token head only: cross-entropy weights of [neutral, good, poor]; None = equal weights."},
    )
    head_dropout: float = field(
        default=0.0,
        metadata={"help": "Token head only: dropout before the span head."},
    )
    preference_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Token head only: weight of the Bradley-Terry loss of preference pairs."},
    )
    good_span_reward: float = field(default=1.0, metadata={"help": "Reward of good spans."})
    poor_span_reward: float = field(default=-1.0, metadata={"help": "Reward of poor spans."})
    good_score: float | None = field(default=None, metadata={"help": "Deprecated: use good_span_reward."})
    poor_score: float | None = field(default=None, metadata={"help": "Deprecated: use poor_span_reward."})
    fuzzy_threshold: float = field(
        default=90.0,
        metadata={"help": "Minimum rapidfuzz partial-ratio score to accept a quote that is not found exactly."},
    )
    max_target_length: int = field(
        default=384,
        metadata={"help": "Generative form: maximum tokens of the target (critique + spans JSON)."},
    )
    critique_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Generative form: instruction with {prompt} and {response} placeholders; None = built-in one."
        },
    )
    max_new_tokens: int = field(
        default=256,
        metadata={"help": "Generative form: maximum generated tokens when scoring."},
    )
    eval_span_metrics: bool = field(
        default=True,
        metadata={"help": "Whether evaluate() also reports span P/R/F1, exact match, parse rate and ROUGE-L."},
    )
    eval_max_samples: int | None = field(
        default=64,
        metadata={"help": "Maximum number of evaluation rows scored for the span metrics (None = all)."},
    )

    def __post_init__(self):
        for old, new in (("good_score", "good_span_reward"), ("poor_score", "poor_span_reward")):
            value = getattr(self, old)
            if value is not None:
                warnings.warn(f"SpanRewardConfig.{old} is deprecated; use {new}.", FutureWarning, stacklevel=3)
                setattr(self, new, float(value))
                setattr(self, old, None)
        if self.bf16 is None and not self.fp16:
            # TRL turns bf16 on by default, which fails on CPU-only machines; use it only where CUDA supports it.
            import torch

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        if self.model_form is not None and self.model_form not in MODEL_FORMS:
            raise ValueError(
                f"SpanRewardConfig.model_form must be one of {MODEL_FORMS} or None, got {self.model_form!r}."
            )
        if self.preference_loss_weight < 0:
            raise ValueError(f"preference_loss_weight must be >= 0, got {self.preference_loss_weight}.")
        if self.head_dropout > 0 and self.disable_dropout:
            raise ValueError(
                f"head_dropout={self.head_dropout} has no effect with disable_dropout=True (the default, which sets "
                "every dropout of the model to 0); set disable_dropout=False to use it."
            )
        if self.model_form == "sequence_classification" and self.critique_loss_weight > 0:
            raise ValueError(
                "critique_loss_weight > 0 needs a language-modelling head, which a sequence-classification model "
                "has not; use model_form='token_head' with a causal LM, or set critique_loss_weight=0."
            )
        if self.model_form == "generative" and self.center_rewards_coefficient is not None:
            raise ValueError(
                "center_rewards_coefficient acts on sequence rewards of preference pairs; the generative form "
                "gives none. Use model_form='token_head' or a sequence-classification model."
            )
        if self.head_layout not in HEAD_LAYOUTS:
            raise ValueError(f"SpanRewardConfig.head_layout must be one of {HEAD_LAYOUTS}, got {self.head_layout!r}.")
        if self.critique_loss_weight < 0:
            raise ValueError(f"critique_loss_weight must be >= 0, got {self.critique_loss_weight}.")
        if self.span_class_weights is not None:
            if isinstance(self.span_class_weights, str):  # from the command line
                self.span_class_weights = [float(x) for x in self.span_class_weights.strip("[]").split(",")]
            if len(self.span_class_weights) != 3:
                raise ValueError(
                    f"span_class_weights needs three weights [neutral, good, poor], got {self.span_class_weights!r}."
                )
        if self.remove_unused_columns:
            raise ValueError(
                "SpanRewardConfig.remove_unused_columns must be False: the span collator reads the raw annotation "
                "columns (prompt, response, critique, good_spans, poor_spans)."
            )
