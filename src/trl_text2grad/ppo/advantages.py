"""Pure tensor functions for (span-level) PPO.

Everything here is side-effect free and works on ``[batch, response_length]`` tensors, where position ``t`` is the
``t``-th *response* token (the action) and a ``mask`` marks which positions are real (1) and which are padding,
tokens after the stop token, or otherwise excluded (0). The trainer (:mod:`trl_text2grad.ppo.span_ppo_trainer`) only
orchestrates: every number that enters the loss is computed by one of these functions, which have unit tests against
hand-computed values in ``tests/test_ppo_advantages.py``.

Log-probabilities and entropies come from TRL's ``selective_log_softmax`` and ``entropy_from_logits``
(``trl.trainer.utils``; ``entropy_from_logits`` is re-exported here). Conventions follow TRL 1.12's ``PPOTrainer``
(``trl/experimental/ppo``) so that scalar-mode runs can be compared numerically; the places where we deliberately
differ are listed in ``docs/ppo.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "logprobs_from_logits",
    "entropy_from_logits",
    "kl_per_token",
    "last_token_positions",
    "combine_rewards",
    "length_decay_weights",
    "compute_gae",
    "ppo_policy_loss",
    "ppo_value_loss",
]

RewardMode = Literal["span", "scalar", "hybrid"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is non-zero.

    Args:
        values: Any tensor.
        mask: Tensor broadcastable to ``values`` (bool or 0/1 float).
        dim: Reduce over this dimension only; ``None`` reduces over everything.

    Returns:
        The masked mean. An all-zero mask gives ``0`` (not ``nan``): the denominator is clamped to at least 1.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over the masked positions (Bessel-corrected when ``unbiased``).

    With fewer than two valid positions the unbiased estimate is undefined; we then return the biased estimate
    (which is ``0`` for a single element) instead of dividing by zero.
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.to(values.dtype).sum()
        if count > 1:
            variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``values`` to zero mean and unit variance using only the masked positions.

    ``(values - mean) / sqrt(var + 1e-8)``; with ``shift_mean=False`` the mean is added back (only the scale
    changes), as PPO does for rewards. Positions outside the mask are transformed too: callers zero them afterwards.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each chosen token under ``softmax(logits / temperature)``, in float32.

    ``log p(x_t) = z_t[x_t] / T - logsumexp(z_t / T)``, computed by TRL's ``selective_log_softmax`` on the logits
    cast to float32 (so bf16 logits give float32 log-probabilities, as TRL 1.12 did).

    Args:
        logits: ``[batch, length, vocab]`` logits *predicting* ``tokens`` (already shifted: ``logits[:, t]`` is the
            distribution the ``t``-th token was sampled from).
        tokens: ``[batch, length]`` token ids.
        temperature: Sampling temperature; the logits are divided by it, so the log-probabilities are those of the
            distribution the tokens were actually sampled from.

    Returns:
        ``[batch, length]`` float tensor (computed in at least float32).
    """
    if temperature <= 0:
        raise ValueError(f"logprobs_from_logits: temperature must be > 0, got {temperature}.")
    return selective_log_softmax(logits.float(), tokens.long(), temperature)


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token estimate of ``KL(policy || reference)`` from the sampled tokens' log-probabilities.

    With ``log r = ref_logprobs - logprobs`` (see http://joschu.net/blog/kl-approx.html):

    - ``"k1"``: ``-log r`` (unbiased, can be negative per token);
    - ``"k3"``: ``(r - 1) - log r`` (unbiased, always >= 0, lower variance).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}.")


def last_token_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-zero position of each row of ``mask`` (``0`` for an all-zero row)."""
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def combine_rewards(
    span_rewards: torch.Tensor | None,
    scalar_scores: torch.Tensor | None,
    kl: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    reward_mode: RewardMode = "span",
    scalar_weight: float = 1.0,
    span_weight: float = 1.0,
    score_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: the task reward minus ``kl_coef`` times the per-token KL.

    ``r_t = -kl_coef * KL_t * m_t + w_span * span_t * m_t + w_scalar * score * [t == score_position]``

    where ``m`` is ``response_mask`` and ``(w_span, w_scalar)`` is ``(1, 1)`` for ``"span"`` (scalar scores are
    then only the per-sample extras such as plain float rewards or the missing-EOS penalty), ``(0, 1)`` for
    ``"scalar"`` (classic RLHF: one score on the last token) and ``(span_weight, scalar_weight)`` for ``"hybrid"``.

    Args:
        span_rewards: ``[batch, length]`` token rewards from located spans (or ``None`` for zeros).
        scalar_scores: ``[batch]`` sequence-level scores (or ``None`` for zeros).
        kl: ``[batch, length]`` per-token KL (see :func:`kl_per_token`).
        response_mask: ``[batch, length]`` 1 on real response tokens.
        kl_coef: The KL penalty coefficient beta.
        reward_mode: ``"span"``, ``"scalar"`` or ``"hybrid"``.
        scalar_weight: Weight of the scalar score in ``"hybrid"`` mode.
        span_weight: Weight of the span rewards in ``"hybrid"`` mode.
        score_positions: ``[batch]`` index receiving the scalar score; defaults to the last valid token of each row.

    Returns:
        ``(rewards, non_score_reward)``, both ``[batch, length]``; ``non_score_reward = -kl_coef * KL * mask``.
    """
    if reward_mode == "span":
        w_span, w_scalar = 1.0, 1.0
    elif reward_mode == "scalar":
        w_span, w_scalar = 0.0, 1.0
    elif reward_mode == "hybrid":
        w_span, w_scalar = float(span_weight), float(scalar_weight)
    else:
        raise ValueError(f"reward_mode must be 'span', 'scalar' or 'hybrid', got {reward_mode!r}.")
    mask = response_mask.to(kl.dtype)
    non_score_reward = -kl_coef * kl * mask
    rewards = non_score_reward.clone()
    if span_rewards is not None and w_span != 0.0:
        rewards = rewards + w_span * span_rewards.to(kl.dtype) * mask
    if scalar_scores is not None and w_scalar != 0.0:
        if score_positions is None:
            score_positions = last_token_positions(response_mask)
        rows = torch.arange(rewards.shape[0], device=rewards.device)
        rewards[rows, score_positions.long()] += w_scalar * scalar_scores.to(kl.dtype)
    return rewards, non_score_reward


def length_decay_weights(
    response_mask: torch.Tensor, start: int = 48, scale: float = 16.0, enabled: bool = True
) -> torch.Tensor:
    """Optional down-weighting of span rewards on late tokens (the paper's SLF5K recipe; off by default).

    ``w_t = 1`` for ``t < start`` and ``w_t = 2 * sigmoid(-(t - start) / scale)`` afterwards: continuous at
    ``start`` (``w = 1``), ``~0.54`` at ``start + scale`` and tending to 0. Positions outside the mask get 0.

    Args:
        response_mask: ``[batch, length]`` mask of response tokens (``t`` counts response tokens from 0).
        start: First token index that is decayed.
        scale: Sigmoid temperature in tokens (> 0).
        enabled: When ``False`` the weights are just the mask (so callers need no branch).
    """
    mask = response_mask.float()
    if not enabled:
        return mask
    if scale <= 0:
        raise ValueError(f"length_decay_weights: scale must be > 0, got {scale}.")
    t = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
    weights = torch.where(t < start, torch.ones_like(t), 2.0 * torch.sigmoid(-(t - start) / scale))
    return weights.unsqueeze(0) * mask


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    reset_on_masked: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over the response tokens, backwards in time.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with ``V`` and ``A``
    beyond the last position equal to 0. Masked positions carry nothing: their reward, value and advantage are 0.

    ``reset_on_masked`` decides what a masked position *between* valid ones means (e.g. tool output inside a
    response): ``True`` treats it as the end of an episode segment (the preceding token bootstraps from 0 and the
    accumulator restarts); ``False`` makes it transparent (the preceding token bootstraps from the next *valid*
    token's value and accumulates its advantage). For the usual prefix mask (response tokens then padding) both are
    identical to TRL 1.12's loop.

    Returns:
        ``(advantages, returns)`` with ``returns = advantages + values``, both 0 outside the mask (not whitened).
    """
    valid = mask.bool()
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    values = torch.where(valid, values, torch.zeros_like(values))
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * last_gae
        valid_t = valid[:, t]
        advantages[:, t] = torch.where(valid_t, gae, torch.zeros_like(gae))
        if reset_on_masked:
            last_gae = torch.where(valid_t, gae, torch.zeros_like(gae))
            next_value = torch.where(valid_t, values[:, t], torch.zeros_like(gae))
        else:
            last_gae = torch.where(valid_t, gae, last_gae)
            next_value = torch.where(valid_t, values[:, t], next_value)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped PPO surrogate ``mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` over the mask.

    Returns:
        ``(loss, clipfrac, approx_kl)``: the loss (differentiable), the fraction of tokens where the clipped term is
        active, and ``0.5 * mean((logprobs - old_logprobs)^2)``; all means are over masked positions.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio.detach() ** 2, mask)
    return loss, clipfrac, approx_kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * mean(max((V - R)^2, (clip(V, V_old +- eps) - R)^2))`` over the mask.

    Returns:
        ``(loss, clipfrac)`` where ``clipfrac`` is the fraction of tokens where the clipped error is larger.
    """
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac
