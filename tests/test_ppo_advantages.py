"""Unit tests of the pure PPO maths against values worked out by hand (in the comments)."""

import math

import pytest
import torch

from trl_text2grad.ppo.advantages import (
    combine_rewards,
    compute_gae,
    entropy_from_logits,
    kl_per_token,
    last_token_positions,
    length_decay_weights,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)


def test_masked_mean_and_var():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean(1, 2, 3) = 2; the masked 100 is ignored
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    # biased var = ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3; unbiased = 2/3 * 3/2 = 1
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert masked_var(values, mask).item() == pytest.approx(1.0)
    # per-row mean along dim 1
    rows = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert masked_mean(rows, torch.tensor([[1, 1], [1, 0]]), dim=1).tolist() == [2.0, 5.0]
    # an empty mask gives 0, not nan
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    # a single element: biased fallback, variance 0
    assert masked_var(values, torch.tensor([[1, 0, 0, 0]])).item() == 0.0


def test_masked_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased var 1 -> (v - 2) / sqrt(1 + 1e-8)
    whitened = masked_whiten(values, mask)
    assert whitened[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    # shift_mean=False adds the mean back: (v - 2) / 1 + 2
    assert masked_whiten(values, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


def test_logprobs_and_entropy_from_logits():
    # logits (0, ln 3) -> probs (1/4, 3/4); token 1 -> log(3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2 halves the logits: (0, ln 3 / 2) -> probs (1/(1+sqrt3), sqrt3/(1+sqrt3))
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    assert logprobs_from_logits(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(expected)
    # entropy of (1/4, 3/4) = -(1/4 ln 1/4 + 3/4 ln 3/4)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(h, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, torch.tensor([[1]]), temperature=0.0)


def test_logprobs_are_trls_selective_log_softmax_in_float32_bit_for_bit():
    """The wrapper over TRL's helper gives exactly the former gather - logsumexp of the float32 logits / T."""
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 97, generator=generator)).to(torch.bfloat16)
    tokens = torch.randint(0, 97, (3, 5), generator=generator)
    for temperature in (1.0, 0.7 + 1e-7):
        scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
        expected = torch.gather(scaled, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
        got = logprobs_from_logits(logits, tokens, temperature)
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    # entropy (TRL's entropy_from_logits) equals logsumexp(z) - sum(softmax(z) * z) to float32 precision
    z = logits.float()
    expected_entropy = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    torch.testing.assert_close(entropy_from_logits(z), expected_entropy, rtol=1e-5, atol=1e-5)


def test_kl_estimators():
    logprobs = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    # log r = ln(0.25) - ln(0.5) = -ln 2; k1 = ln 2; k3 = (0.5 - 1) + ln 2
    assert kl_per_token(logprobs, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_per_token(logprobs, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    with pytest.raises(ValueError, match="k1"):
        kl_per_token(logprobs, ref, "k2")


def test_combine_rewards_modes():
    kl = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    span = torch.tensor([[1.0, 0.0, -1.0, 5.0]])
    score = torch.tensor([2.0])
    # non-score = -0.5 * kl on valid tokens = (-0.1, -0.2, -0.3, 0)
    rewards, non_score = combine_rewards(span, score, kl, mask, kl_coef=0.5, reward_mode="scalar")
    assert non_score[0].tolist() == pytest.approx([-0.1, -0.2, -0.3, 0.0])
    # scalar: score 2 on the last valid token (index 2): -0.3 + 2 = 1.7; spans ignored
    assert rewards[0].tolist() == pytest.approx([-0.1, -0.2, 1.7, 0.0])
    # span: span rewards + score: (-0.1 + 1, -0.2, -0.3 - 1 + 2, 0)
    rewards, _ = combine_rewards(span, score, kl, mask, kl_coef=0.5, reward_mode="span")
    assert rewards[0].tolist() == pytest.approx([0.9, -0.2, 0.7, 0.0])
    # hybrid with span 0.5, scalar 0.25: (-0.1 + 0.5, -0.2, -0.3 - 0.5 + 0.5, 0)
    rewards, _ = combine_rewards(
        span, score, kl, mask, kl_coef=0.5, reward_mode="hybrid", span_weight=0.5, scalar_weight=0.25
    )
    assert rewards[0].tolist() == pytest.approx([0.4, -0.2, -0.3, 0.0])
    # explicit score position (TRL 1.12 places it one past the last token)
    rewards, _ = combine_rewards(None, score, kl, mask, 0.5, "scalar", score_positions=torch.tensor([3]))
    assert rewards[0].tolist() == pytest.approx([-0.1, -0.2, -0.3, 2.0])
    with pytest.raises(ValueError, match="reward_mode"):
        combine_rewards(span, score, kl, mask, 0.5, reward_mode="token")


def test_last_token_positions():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert last_token_positions(mask).tolist() == [1, 3, 0]


def test_length_decay_weights():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # start=2, scale=1: t=0,1 -> 1; t=2 -> 2*sigmoid(0)=1; t=3 -> 2*sigmoid(-1); t=4 masked -> 0
    weights = length_decay_weights(mask, start=2, scale=1.0)
    expected = [1.0, 1.0, 1.0, 2.0 / (1.0 + math.e), 0.0]
    assert weights[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert length_decay_weights(mask, enabled=False)[0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_compute_gae_hand_computed():
    # gamma = 0.9, lam = 0.5, three valid tokens then padding.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # t=2: delta = 1 + 0.9*0 - 0.1 = 0.9;            A2 = 0.9
    # t=1: delta = 0 + 0.9*0.1 - 0.2 = -0.11;        A1 = -0.11 + 0.45*0.9 = 0.295
    # t=0: delta = 0 + 0.9*0.2 - 0.5 = -0.32;        A0 = -0.32 + 0.45*0.295 = -0.18725
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([-0.18725, 0.295, 0.9, 0.0])
    # returns = A + V on valid tokens
    assert returns[0].tolist() == pytest.approx([0.31275, 0.495, 1.0, 0.0])


def test_compute_gae_masked_gap_reset_vs_bridge():
    # gamma = 1, lam = 1; token 1 is masked (e.g. tool output), token 3 is padding.
    rewards = torch.tensor([[0.0, 5.0, 1.0, 0.0]])
    values = torch.tensor([[0.25, 3.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 0, 1, 0]])
    # t=2: delta = 1 - 0.5 = 0.5 -> A2 = 0.5 (both modes)
    # reset: t=0 bootstraps from 0 and restarts: A0 = 0 + 0 - 0.25 = -0.25
    adv, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0, reset_on_masked=True)
    assert adv[0].tolist() == pytest.approx([-0.25, 0.0, 0.5, 0.0])
    # bridge: t=0 uses V2 = 0.5 and A2: delta = 0 + 0.5 - 0.25 = 0.25; A0 = 0.25 + 0.5 = 0.75
    adv, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0, reset_on_masked=False)
    assert adv[0].tolist() == pytest.approx([0.75, 0.0, 0.5, 0.0])


def test_compute_gae_matches_trl112_loop_on_prefix_masks():
    # TRL 1.12 runs the recursion over every position with values/rewards zeroed past the end.
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    r, v = rewards * mask, values * mask
    last, reversed_adv = 0.0, []
    for t in reversed(range(6)):
        next_v = v[:, t + 1] if t < 5 else 0.0
        last = r[:, t] + 0.95 * next_v - v[:, t] + 0.95 * 0.9 * last
        reversed_adv.append(last)
    reference = torch.stack(reversed_adv[::-1], dim=1) * mask
    for reset in (True, False):
        advantages, _ = compute_gae(rewards, values, mask, gamma=0.95, lam=0.9, reset_on_masked=reset)
        torch.testing.assert_close(advantages, reference)


def test_ppo_policy_loss_hand_computed():
    # ratios e^0 = 1, e^0.5 = 1.6487, e^-0.5 = 0.6065 with advantages 1, 1, -1; eps = 0.2
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.0, 0.5, -0.5, 3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # token 0: max(-1, -1) = -1                       (not clipped)
    # token 1: max(-1.6487, -1.2) = -1.2              (clipped)
    # token 2: max(0.6065, 0.8) = 0.8                 (clipped)
    # loss = (-1 - 1.2 + 0.8) / 3 = -0.46667; clipfrac = 2/3; approx_kl = 0.5 * (0 + .25 + .25) / 3 = 1/12
    loss, clipfrac, approx_kl = ppo_policy_loss(new, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-1.4 / 3, rel=1e-5)
    assert clipfrac.item() == pytest.approx(2 / 3)
    assert approx_kl.item() == pytest.approx(1 / 12)


def test_ppo_policy_loss_gradient_flows_only_through_unclipped_tokens():
    new = torch.tensor([[0.0, 0.5]], requires_grad=True)
    loss, _, _ = ppo_policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), cliprange=0.2)
    loss.backward()
    # d/dx of -exp(x)/2 at x=0 is -0.5; the clipped token has zero gradient
    assert new.grad[0].tolist() == pytest.approx([-0.5, 0.0])


def test_ppo_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0, 2.0]])
    old_values = torch.tensor([[0.5, 0.1, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: clip(1, 0.3, 0.7) = 0.7; max(1^2, 0.7^2) = 1            (unclipped larger)
    # token 1: clip(0, -0.1, 0.3) = 0; max(1, 1) = 1                  (equal -> not counted as clipped)
    # loss = 0.5 * (1 + 1) / 2 = 0.5; clipfrac = 0
    loss, clipfrac = ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5)
    assert clipfrac.item() == 0.0
    # token 0 with V = 0: clip(0, 0.3, 0.7) = 0.3; (0.3 - 0)^2 = 0.09 > 0 -> clipped, loss 0.5 * (0.09 + 1) / 2
    loss, clipfrac = ppo_value_loss(torch.tensor([[0.0, 0.0, 2.0]]), old_values, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * 1.09 / 2)
    assert clipfrac.item() == pytest.approx(0.5)
