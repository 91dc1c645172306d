"""Span credit for group-based online RL (GRPO, RLOO), as plain tensor functions.

Notation: ``B`` completions in groups of ``G`` consecutive rows (the ``G`` samples of one prompt), ``T`` completion
tokens; ``r[i, t]`` is the per-token span reward of completion ``i`` (the score of the span the token lies in, 0
outside every span), ``m[i, t]`` the loss mask, ``A[i]`` the trainer's own sequence advantage (GRPO: group-relative,
RLOO: leave-one-out).

The token advantage is::

    A[i, t] = A[i] + w * r[i, t] / s(i)

where ``w`` is ``span_advantage_weight`` and ``s(i)`` the span scale of ``i``'s group (``normalization="group"``),
of the whole batch (``"batch"``) or 1 (``"none"``). The scale is the root mean square of the span rewards over the
*span-covered* tokens (``r != 0``, ``m = 1``) it is taken over::

    s(g) = sqrt( sum_{i in g, t} m[i,t] r[i,t]^2  /  #{(i,t) in g : m[i,t] = 1, r[i,t] != 0} )

so a token in a span gets a span term of magnitude ~``w`` whatever the length of the responses, the number of spans
a critic quotes or the scale of its scores; tokens outside every span get none. A group without any span has
``s = 1`` (and no span term). The span term is computed from the rewards only; it is never differentiated.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "SpanNormalization",
    "span_statistics",
    "span_scale",
    "span_advantages",
    "token_advantages",
    "group_span_advantages",
    "rloo_span_loss",
]

SpanNormalization = Literal["group", "batch", "none"]
_NORMALIZATIONS = ("group", "batch", "none")


def span_statistics(span_rewards: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion: the sum of squared span rewards and the number of span-covered tokens.

    Args:
        span_rewards: ``[B, T]`` per-token span rewards ``r``.
        mask: ``[B, T]`` loss mask ``m`` (1 = trained token).

    Returns:
        ``(sum_sq, count)``, both ``[B]`` float: ``sum_t m r^2`` and ``#{t : m = 1, r != 0}``.
    """
    if span_rewards.shape != mask.shape:
        raise ValueError(f"span_rewards {tuple(span_rewards.shape)} and mask {tuple(mask.shape)} differ in shape.")
    covered = (span_rewards != 0) & mask.bool()
    rewards = span_rewards.float()
    sum_sq = torch.where(covered, rewards * rewards, torch.zeros_like(rewards)).sum(dim=1)
    return sum_sq, covered.sum(dim=1).float()


def span_scale(
    sum_sq: torch.Tensor, count: torch.Tensor, group_size: int, normalization: SpanNormalization = "group"
) -> torch.Tensor:
    """``[B]`` scale ``s`` of each completion's span term: the RMS span reward over the covered tokens of its group
    (``"group"``, groups of ``group_size`` consecutive rows), of the batch (``"batch"``), or 1 (``"none"``).

    A group (or batch) without covered tokens gets 1.
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}.")
    if sum_sq.shape != count.shape or sum_sq.dim() != 1:
        raise ValueError(f"sum_sq {tuple(sum_sq.shape)} and count {tuple(count.shape)} must be equal 1-D shapes.")
    if normalization == "none":
        return torch.ones_like(sum_sq)
    if normalization == "batch":
        total_sq, total_count = sum_sq.sum().expand_as(sum_sq), count.sum().expand_as(count)
    else:
        if group_size < 1 or sum_sq.numel() % group_size != 0:
            raise ValueError(f"{sum_sq.numel()} completions cannot be split into groups of {group_size}.")
        total_sq = sum_sq.view(-1, group_size).sum(dim=1).repeat_interleave(group_size)
        total_count = count.view(-1, group_size).sum(dim=1).repeat_interleave(group_size)
    rms = torch.sqrt(total_sq / total_count.clamp(min=1.0))
    return torch.where(total_count > 0, rms, torch.ones_like(rms))


def span_advantages(
    span_rewards: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor, weight: float = 1.0
) -> torch.Tensor:
    """``[B, T]`` span term ``w * r[i, t] / s(i) * m[i, t]``."""
    if scale.shape != span_rewards.shape[:1]:
        raise ValueError(f"scale {tuple(scale.shape)} must have one entry per row of span_rewards.")
    return weight * span_rewards.float() / scale.unsqueeze(1) * mask.float()


def token_advantages(sequence_advantages: torch.Tensor, span_term: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` token advantages: the sequence advantage ``[B]`` broadcast over the tokens, plus the span term."""
    if sequence_advantages.dim() != 1 or sequence_advantages.shape[0] != span_term.shape[0]:
        raise ValueError(
            f"sequence_advantages {tuple(sequence_advantages.shape)} must be [B] for a span term "
            f"{tuple(span_term.shape)}."
        )
    return sequence_advantages.unsqueeze(1) + span_term.to(sequence_advantages.dtype)


def group_span_advantages(
    span_rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    weight: float = 1.0,
    normalization: SpanNormalization = "group",
) -> torch.Tensor:
    """The span term of a whole (single-process) batch: :func:`span_statistics` -> :func:`span_scale` ->
    :func:`span_advantages`."""
    sum_sq, count = span_statistics(span_rewards, mask)
    return span_advantages(span_rewards, mask, span_scale(sum_sq, count, group_size, normalization), weight)


def rloo_span_loss(
    per_token_logps: torch.Tensor,
    sequence_log_ratio: torch.Tensor,
    span_term: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> torch.Tensor:
    """``[B]`` clipped surrogate of the span term under RLOO's sequence-level ratio.

    With ``rho[i] = exp(sum_t m (logp - logp_old))`` (RLOO's ratio, detached) and
    ``s[i, t] = rho[i] * exp(logp[i, t] - sg(logp[i, t]))`` (value ``rho[i]``, gradient ``rho[i] * grad logp[i, t]``)::

        loss[i] = - sum_t m[i, t] * min(s[i, t] * a[i, t], clip(s[i, t], 1 - eps_low, 1 + eps_high) * a[i, t])

    Added to RLOO's own ``-min(rho A, clip(rho) A)`` this gives each token the gradient of its own advantage
    ``A[i] + a[i, t]`` with RLOO's scale (a sum over tokens, mean over sequences) and its trust region (a clipped
    sequence contributes no gradient through either term). The detached log-ratio is capped at 20 (``rho <= 4.9e8``)
    so that a runaway sequence ratio, which RLOO sums over the tokens, cannot turn a zero span term into NaN gradients.
    """
    ratio = torch.exp(sequence_log_ratio.detach().clamp(max=20.0)).unsqueeze(1)
    coef_1 = ratio * torch.exp(per_token_logps - per_token_logps.detach())
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(coef_1 * span_term, coef_2 * span_term)
    return (per_token * mask).sum(dim=1)
