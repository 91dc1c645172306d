"""``SpanGRPOConfig``: TRL's ``GRPOConfig`` (every field unchanged) plus the span-credit fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

__all__ = ["SpanCreditArguments", "SpanGRPOConfig"]


@dataclass
class SpanCreditArguments:
    r"""
    The span-credit fields shared by [`SpanGRPOConfig`] and [`SpanRLOOConfig`].

    Parameters:
        span_advantage_weight (`float`, *optional*, defaults to `1.0`):
            Weight `w` of the span term in the token advantage `A[i, t] = A[i] + w * r[i, t] / s`, where `A[i]` is
            the trainer's own sequence advantage, `r[i, t]` the score of the span token `t` lies in (0 outside every
            span) and `s` the span scale of `span_advantage_normalization`. `0` trains exactly as TRL's trainer.
        span_advantage_normalization (`str`, *optional*, defaults to `"group"`):
            Scale `s` of the span term: `"group"` divides by the root mean square span reward over the span-covered
            tokens of the completion's group (the completions of one prompt), `"batch"` over those of the whole
            generation batch, `"none"` uses the raw span scores. With `"group"`/`"batch"` a token in a span moves by
            about `w` whatever the response length, the number of quoted spans or the critic's score scale.
        good_span_reward (`float`, *optional*, defaults to `1.0`):
            Score of the located quotes of a [`~trl_text2grad.Critique`]'s `good` list (explicit `(start, end,
            score)` spans keep their own scores).
        poor_span_reward (`float`, *optional*, defaults to `-1.0`):
            Score of the located quotes of a critique's `poor` list.
        fuzzy_threshold (`float`, *optional*, defaults to `90.0`):
            Minimum fuzzy-match score (0-100) for locating a critique quote that is not an exact substring of the
            completion; quotes below it are counted in `span/quotes_unlocated`, never guessed.
        heatmap_every_n_steps (`int`, *optional*, defaults to `0`):
            Every this many generation batches, write up to 4 completions as token-advantage heatmaps to
            `<output_dir>/heatmaps/step_<global step>.html` (main process). `0` turns them off.
    """

    span_advantage_weight: float = field(
        default=1.0,
        metadata={"help": "Weight w of the span term in A[i,t] = A[i] + w * r[i,t] / s (0 = TRL's trainer exactly)."},
    )
    span_advantage_normalization: str = field(
        default="group",
        metadata={
            "help": "Scale s of the span term: 'group' (RMS span reward over the span-covered tokens of the "
            "completion's group), 'batch' (over the whole generation batch) or 'none' (raw span scores).",
            "choices": ["group", "batch", "none"],
        },
    )
    good_span_reward: float = field(default=1.0, metadata={"help": "Score of a critique's located good quotes."})
    poor_span_reward: float = field(default=-1.0, metadata={"help": "Score of a critique's located poor quotes."})
    fuzzy_threshold: float = field(
        default=90.0, metadata={"help": "Minimum fuzzy-match score (0-100) to locate a quote that is not exact."}
    )
    heatmap_every_n_steps: int = field(
        default=0,
        metadata={
            "help": "Write token-advantage heatmaps every N generation batches to output_dir/heatmaps (0 = off)."
        },
    )

    def _validate_span_credit(self) -> None:
        """Raise a ``ValueError`` naming the first invalid span-credit field."""
        if self.span_advantage_normalization not in ("group", "batch", "none"):
            raise ValueError(
                "span_advantage_normalization must be 'group', 'batch' or 'none', got "
                f"{self.span_advantage_normalization!r}."
            )
        for name in ("span_advantage_weight", "good_span_reward", "poor_span_reward"):
            value = float(getattr(self, name))
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{name} must be a finite number, got {value}.")
        if self.span_advantage_weight < 0:
            raise ValueError(
                f"span_advantage_weight must be >= 0 (a negative weight would reward poor spans), got "
                f"{self.span_advantage_weight}."
            )
        if not 0 <= self.fuzzy_threshold <= 100:
            raise ValueError(f"fuzzy_threshold must be in [0, 100], got {self.fuzzy_threshold}.")
        if self.heatmap_every_n_steps < 0:
            raise ValueError(f"heatmap_every_n_steps must be >= 0, got {self.heatmap_every_n_steps}.")


@dataclass
class SpanGRPOConfig(GRPOConfig, SpanCreditArguments):
    r"""
    Configuration of [`SpanGRPOTrainer`]: every field of [`trl.GRPOConfig`] (same names, defaults and meaning) plus
    the span-credit fields of [`SpanCreditArguments`] (`span_advantage_weight`, `span_advantage_normalization`,
    `good_span_reward`, `poor_span_reward`, `fuzzy_threshold`, `heatmap_every_n_steps`).
    """

    def __post_init__(self):
        super().__post_init__()
        self._validate_span_credit()
