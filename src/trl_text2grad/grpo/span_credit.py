"""What :class:`SpanGRPOTrainer` and :class:`SpanRLOOTrainer` share: wrapping the reward functions, reading their
spans after TRL has scored a generation batch, the span term of the advantages, span metrics and heatmaps.

The mixin goes before TRL's trainer in the bases; it overrides none of TRL's methods itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .advantages import span_advantages, span_scale, span_statistics
from .reward_functions import SpanRewardFunction, as_span_reward_function

__all__ = ["SpanCreditMixin", "wrap_reward_funcs", "check_trl_hooks", "upgrade_config"]

logger = logging.getLogger(__name__)


def check_trl_hooks(trainer_cls: type, hooks: tuple[str, ...]) -> None:
    """Raise an ``ImportError`` naming the installed TRL version when ``trainer_cls`` lacks a hook we override."""
    missing = [name for name in hooks if not callable(getattr(trainer_cls, name, None))]
    if missing:
        import trl

        raise ImportError(
            f"trl {trl.__version__}'s {trainer_cls.__name__} has no {', '.join(missing)}, which trl-text2grad's span "
            f"trainers build on (tested with trl 1.13 to 1.16). Install a supported version: pip install "
            f"'trl>=1.13,<1.17'."
        )


def upgrade_config(args: Any, span_config_cls: type) -> Any:
    """A plain TRL config as ``span_config_cls`` with the span fields at their defaults.

    The TRL fields (and what its ``__post_init__`` derived from them) are copied as they are, so nothing is derived
    twice."""
    upgraded = span_config_cls.__new__(span_config_cls)
    upgraded.__dict__.update(args.__dict__)
    for spec in dataclasses.fields(span_config_cls):
        if spec.name not in args.__dict__:
            setattr(upgraded, spec.name, spec.default)
    upgraded._validate_span_credit()
    return upgraded


def wrap_reward_funcs(reward_funcs: Any, args: Any) -> Any:
    """Wrap every callable reward source in a :class:`SpanRewardFunction` (models and model ids stay TRL's)."""
    if reward_funcs is None:
        return None
    funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    wrapped = []
    for func in funcs:
        if isinstance(func, (str, nn.Module)):  # sequence-classification reward models: scalars, TRL's own path
            wrapped.append(func)
            continue
        wrapped.append(
            as_span_reward_function(
                func,
                good_score=args.good_span_reward,
                poor_score=args.poor_span_reward,
                fuzzy_threshold=args.fuzzy_threshold,
            )
        )
    return wrapped


class SpanCreditMixin:
    """Span credit on top of a TRL online trainer (``GRPOTrainer`` or ``RLOOTrainer``)."""

    def _bind_span_reward_functions(self) -> None:
        self._generation_batches = 0
        for func in self.reward_funcs:
            if isinstance(func, SpanRewardFunction):
                func.bind(self._tokenizer)

    def _span_token_rewards(self, num_rows: int, length: int, device: torch.device) -> tuple[torch.Tensor, dict]:
        """``[B, T]`` span rewards of the last scored batch (the reward-weighted sum over the reward functions) and
        the batch's span counts; each function's buffer is consumed so it can never be reused."""
        rewards = torch.zeros((num_rows, length), dtype=torch.float32)
        counts = {"unlocated": 0, "failures": 0}
        weights = self.reward_weights.tolist()
        for func, weight in zip(self.reward_funcs, weights):
            if not isinstance(func, SpanRewardFunction):
                continue
            batch, func.last = func.last, None
            if batch is None:
                continue
            if len(batch.token_rewards) != num_rows:
                raise RuntimeError(
                    f"reward function {func.__name__} scored {len(batch.token_rewards)} completions but the batch "
                    f"has {num_rows}; span credit needs one output per completion of this process."
                )
            counts["unlocated"] += batch.num_unlocated
            counts["failures"] += batch.num_failures
            for row, values in enumerate(batch.token_rewards):
                if values is None or len(values) == 0:
                    continue
                n = min(len(values), length)
                rewards[row, :n] += weight * torch.from_numpy(np.asarray(values[:n], dtype=np.float32))
        return rewards.to(device), counts

    def _compute_span_term(self, output: dict[str, Any]) -> torch.Tensor:
        """The ``[B, T]`` span term of a scored generation batch (see :mod:`.advantages`); logs the span metrics."""
        mode = "train" if self.model.training else "eval"
        completion_ids = output["completion_ids"]
        mask = output["completion_mask"]
        if output.get("tool_mask") is not None:
            mask = mask * output["tool_mask"]
        num_rows, length = completion_ids.shape
        device = completion_ids.device
        span_rewards, counts = self._span_token_rewards(num_rows, length, device)

        # The groups may straddle processes (TRL gathers the rewards for the same reason): gather per-row statistics.
        sum_sq, count = span_statistics(span_rewards, mask)
        gathered = self.accelerator.gather(torch.stack([sum_sq, count], dim=1))
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        scale = span_scale(gathered[:, 0], gathered[:, 1], group_size, self.args.span_advantage_normalization)
        start = self.accelerator.process_index * num_rows
        span_term = span_advantages(
            span_rewards, mask, scale[start : start + num_rows], self.args.span_advantage_weight
        )

        self._log_span_metrics(mode, span_rewards, mask, counts)
        self._maybe_write_heatmaps(mode, output, span_term)
        return span_term

    def _log_span_metrics(self, mode: str, span_rewards: torch.Tensor, mask: torch.Tensor, counts: dict) -> None:
        valid = mask.bool()
        local = torch.tensor(
            [
                float(((span_rewards > 0) & valid).sum()),
                float(((span_rewards < 0) & valid).sum()),
                float(span_rewards.shape[0]),
                float(counts["unlocated"]),
                float(counts["failures"]),
            ],
            device=span_rewards.device,
        )
        good, poor, rows, unlocated, failures = self.accelerator.gather(local).view(-1, 5).sum(dim=0).tolist()
        rows = max(rows, 1.0)
        metrics = self._metrics[mode]
        metrics["span/good_tokens"].append(good / rows)
        metrics["span/poor_tokens"].append(poor / rows)
        metrics["span/quotes_unlocated"].append(unlocated)
        metrics["span/critic_failures"].append(failures)

    def _maybe_write_heatmaps(self, mode: str, output: dict[str, Any], span_term: torch.Tensor) -> None:
        every = self.args.heatmap_every_n_steps
        if mode != "train" or not every:
            return
        index, self._generation_batches = self._generation_batches, self._generation_batches + 1
        if index % every != 0 or not self.accelerator.is_main_process:
            return
        from ..visualize import render_token_rewards_html

        advantages = output["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        values = (advantages + span_term if advantages.shape[1] == 1 else advantages).cpu()
        mask = output["completion_mask"].bool().cpu()
        ids = output["completion_ids"].cpu()
        parts = ["<html><body>"]
        for row in range(min(4, ids.shape[0])):
            kept = mask[row].nonzero().flatten().tolist()
            pieces = [self._tokenizer.decode([int(ids[row, t])]) for t in kept]
            title = f"step {self.state.global_step}, completion {row}: token advantage (sequence + span)"
            parts.append(render_token_rewards_html(pieces, values[row, kept].tolist(), title=title))
        parts.append("</body></html>")
        directory = os.path.join(self.args.output_dir, "heatmaps")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"step_{self.state.global_step:06d}.html")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(parts))
