"""Scalar-mode parity of SpanPPOTrainer with TRL 1.12's classic ``PPOTrainer``.

Two levels:

* FAST (no second venv): ``Trl112Reference`` below is an independent, deliberately literal re-statement of the
  formulas in trl 1.12's ``trl/experimental/ppo/ppo_trainer.py`` (reward = -beta*KL with the score added at the end,
  GAE over the whole response, whitening, clipped policy/value losses, logged statistics), written for this test.
  Fixed "recorded" rollouts are fed to it and to our pure functions in ``trl_text2grad.ppo.advantages``, composed the
  way ``SpanPPOTrainer(reward_mode="scalar")`` composes them; every number must match to float tolerance. Where trl
  1.12 deliberately differs from us (its score sits one position *after* a truncated response, its value mask
  includes that position, its approx-KL/ratio/entropy statistics average over padding too) the reference has a
  switch, and the test shows both: equal with the quirk off, and the documented difference with it on.
* SLOW (``-m trl112``): runs ``bench/trl112/run_trl112_ppo.py`` in the trl==1.12.0 venv
  (``scripts/make_trl112_venv.sh``), which builds and saves the tiny models, and our ``SpanPPOTrainer`` in-process on
  the same saved weights, prompts and settings (``tests/trl112_support.py``), with argmax sampling on both sides, and
  compares the logged metrics over several updates.

See ``docs/parity.md`` for the setting, the tolerance and the list of trl 1.12 bugs/quirks.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trl112_support import load_tokenizer, run_span_ppo
from trl_text2grad.ppo.advantages import (
    combine_rewards,
    compute_gae,
    entropy_from_logits,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "bench" / "trl112" / "run_trl112_ppo.py"
TRL112_VENV = Path(os.environ.get("TRL112_VENV", Path.home() / ".cache" / "trl_text2grad" / "trl112-venv"))

INVALID_LOGPROB = 1.0  # what trl 1.12 writes into padded log-prob positions


# ----------------------------------------------------------------------------------------------------------------
# Independent restatement of trl 1.12's PPO maths (written for this test from the formulas, not copied)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One recorded rollout: everything PPO needs after generation and scoring."""

    responses: torch.Tensor  # [B, T] token ids, already truncated after the stop token (pad after it)
    logprobs: torch.Tensor  # [B, T] behaviour log-probs of the responses
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor  # [B, T] value predictions at each response position
    scores: torch.Tensor  # [B] reward-model scores
    pad_token_id: int


def first_index(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row, the row length when there is none."""
    out = []
    for row in bools.tolist():
        out.append(row.index(True) if True in row else len(row))
    return torch.tensor(out)


class Trl112Reference:
    """trl 1.12's rollout post-processing and loss, one formula per line, with python loops where it helps."""

    def __init__(self, kl_coef=0.05, kl_estimator="k1", gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2,
                 vf_coef=0.1, whiten_rewards=False, p1_quirk=True):  # fmt: skip
        self.kl_coef, self.kl_estimator = kl_coef, kl_estimator
        self.gamma, self.lam = gamma, lam
        self.cliprange, self.cliprange_value, self.vf_coef = cliprange, cliprange_value, vf_coef
        self.whiten_rewards = whiten_rewards
        self.p1_quirk = p1_quirk  # trl: score and value mask one position past the last real token

    def prepare(self, r: Rollout) -> dict:
        B, T = r.responses.shape
        # sequence_length = index of the last token before the first pad (-1 if the response starts with pad)
        seq_len = first_index(r.responses == r.pad_token_id) - 1
        idx = torch.arange(T).expand(B, T)
        padding = idx > seq_len[:, None]
        logprobs = r.logprobs.masked_fill(padding, INVALID_LOGPROB)
        ref_logprobs = r.ref_logprobs.masked_fill(padding, INVALID_LOGPROB)
        if self.p1_quirk:
            padding_v = idx > (seq_len + 1)[:, None]
            score_pos = torch.where(seq_len + 1 < T, seq_len + 1, seq_len)
        else:
            padding_v = padding
            score_pos = seq_len.clamp(min=0)
        values = r.values.masked_fill(padding_v, 0.0)
        log_r = ref_logprobs - logprobs
        kl = -log_r if self.kl_estimator == "k1" else (torch.exp(log_r) - 1) - log_r
        non_score = -self.kl_coef * kl
        rewards = non_score.clone()
        for b in range(B):
            rewards[b, score_pos[b]] += r.scores[b]
        if self.whiten_rewards:
            rewards = self._whiten(rewards, ~padding_v, shift_mean=False).masked_fill(padding_v, 0.0)
        # GAE, plain loop over time (values beyond the end are 0)
        adv = torch.zeros(B, T)
        for b in range(B):
            running = 0.0
            for t in reversed(range(T)):
                next_v = values[b, t + 1] if t + 1 < T else 0.0
                delta = rewards[b, t] + self.gamma * next_v - values[b, t]
                running = delta + self.gamma * self.lam * running
                adv[b, t] = running
        returns = adv + values
        adv = self._whiten(adv, ~padding).masked_fill(padding, 0.0)
        return dict(
            padding=padding, padding_v=padding_v, logprobs=logprobs, values=values, kl=kl, non_score=non_score,
            rewards=rewards, advantages=adv, returns=returns, scores=r.scores,
        )  # fmt: skip

    @staticmethod
    def _whiten(x, mask, shift_mean=True):
        m = mask.float()
        n = m.sum()
        mean = (x * m).sum() / n
        var = (((x - mean) ** 2) * m).sum() / n * (n / (n - 1))
        out = (x - mean) / torch.sqrt(var + 1e-8)
        return out + mean if not shift_mean else out

    def loss(self, prep: dict, rows: torch.Tensor, new_logits: torch.Tensor, responses: torch.Tensor,
             vpred: torch.Tensor, temperature: float) -> dict:  # fmt: skip
        pad, pad_v = prep["padding"][rows], prep["padding_v"][rows]
        logits = new_logits / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        new_logprobs = logp_all.gather(-1, responses[rows].unsqueeze(-1)).squeeze(-1).masked_fill(pad, INVALID_LOGPROB)
        vpred = vpred.masked_fill(pad_v, 0.0)
        old_v, ret, adv = prep["values"][rows], prep["returns"][rows], prep["advantages"][rows]
        v_clip = torch.minimum(torch.maximum(vpred, old_v - self.cliprange_value), old_v + self.cliprange_value)
        vf1, vf2 = (vpred - ret) ** 2, (v_clip - ret) ** 2
        keep_v = (~pad_v).float()
        vf_loss = 0.5 * (torch.maximum(vf1, vf2) * keep_v).sum() / keep_v.sum()
        vf_clipfrac = ((vf2 > vf1).float() * keep_v).sum() / keep_v.sum()
        diff = new_logprobs - prep["logprobs"][rows]
        ratio = torch.exp(diff)
        pg1 = -adv * ratio
        pg2 = -adv * ratio.clamp(1 - self.cliprange, 1 + self.cliprange)
        keep = (~pad).float()
        pg_loss = (torch.maximum(pg1, pg2) * keep).sum() / keep.sum()
        probs = logp_all.exp()
        entropy = -(probs * logp_all).sum(-1)
        return dict(
            loss=pg_loss + self.vf_coef * vf_loss, pg_loss=pg_loss, vf_loss=vf_loss, vf_clipfrac=vf_clipfrac,
            pg_clipfrac=((pg2 > pg1).float() * keep).sum() / keep.sum(),
            approxkl=0.5 * (diff**2).mean(),  # trl: plain mean over all positions, padding included
            entropy=entropy.mean(), ratio=ratio.mean(), new_logprobs=new_logprobs,
        )  # fmt: skip

    @staticmethod
    def objective_stats(prep: dict) -> dict:
        keep = (~prep["padding"]).float()
        return {
            "objective/kl": prep["kl"].sum(1).mean(),
            "objective/entropy": (-prep["logprobs"] * keep).sum(1).mean(),
            "objective/non_score_reward": prep["non_score"].sum(1).mean(),
            "objective/rlhf_reward": prep["non_score"].sum(1).mean() + prep["scores"].mean(),
            "objective/scores": prep["scores"].mean(),
        }


# ----------------------------------------------------------------------------------------------------------------
# Our side: the pure functions composed as SpanPPOTrainer(reward_mode="scalar") composes them
# ----------------------------------------------------------------------------------------------------------------
def ours_prepare(r: Rollout, kl_coef=0.05, kl_estimator="k1", gamma=1.0, lam=0.95, whiten_rewards=False) -> dict:
    B, T = r.responses.shape
    seq_len = first_index(r.responses == r.pad_token_id) - 1
    mask = (torch.arange(T).expand(B, T) <= seq_len[:, None]).float()
    kl = kl_per_token(r.logprobs, r.ref_logprobs, kl_estimator) * mask
    rewards, non_score = combine_rewards(None, r.scores, kl, mask, kl_coef, reward_mode="scalar")
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    adv, returns = compute_gae(rewards, r.values, mask, gamma, lam)
    adv = masked_whiten(adv, mask) * mask
    return dict(mask=mask, kl=kl, non_score=non_score, rewards=rewards, advantages=adv, returns=returns,
                values=r.values * mask, logprobs=r.logprobs, scores=r.scores)  # fmt: skip


def ours_loss(prep, rows, new_logits, responses, vpred, temperature, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1):
    mask = prep["mask"][rows]
    new_logprobs = logprobs_from_logits(new_logits, responses[rows], temperature)
    pg_loss, pg_clipfrac, approxkl = ppo_policy_loss(
        new_logprobs, prep["logprobs"][rows], prep["advantages"][rows], mask, cliprange
    )
    vf_loss, vf_clipfrac = ppo_value_loss(vpred, prep["values"][rows], prep["returns"][rows], mask, cliprange_value)
    entropy = masked_mean(entropy_from_logits(new_logits / temperature), mask)
    return dict(loss=pg_loss + vf_coef * vf_loss, pg_loss=pg_loss, vf_loss=vf_loss, pg_clipfrac=pg_clipfrac,
                vf_clipfrac=vf_clipfrac, approxkl=approxkl, entropy=entropy, new_logprobs=new_logprobs)  # fmt: skip


def make_rollout(seed: int, B=6, T=7, V=11, pad=0, lengths=None) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    """Random recorded rollout; ``lengths[b]`` real tokens in row b (pad after them), default all full."""
    g = torch.Generator().manual_seed(seed)
    responses = torch.randint(1, V, (B, T), generator=g)
    if lengths is not None:
        for b, n in enumerate(lengths):
            responses[b, n:] = pad
    old_logits = torch.randn(B, T, V, generator=g)
    logprobs = torch.log_softmax(old_logits, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    ref_logprobs = logprobs + 0.3 * torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    scores = 2 * torch.randn(B, generator=g)
    new_logits = old_logits + 0.4 * torch.randn(B, T, V, generator=g)  # the policy after a few steps
    vpred = values + 0.3 * torch.randn(B, T, generator=g)
    return Rollout(responses, logprobs, ref_logprobs, values, scores, pad), new_logits, vpred


def _close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
@pytest.mark.parametrize("whiten_rewards", [False, True])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_full_length_rollouts_match_trl112_exactly(kl_estimator, whiten_rewards, gamma, lam):
    """No truncation (the parity setting): every tensor and statistic equals trl 1.12's."""
    rollout, new_logits, vpred = make_rollout(0, B=8)
    ref = Trl112Reference(kl_estimator=kl_estimator, whiten_rewards=whiten_rewards, gamma=gamma, lam=lam)
    theirs = ref.prepare(rollout)
    ours = ours_prepare(rollout, kl_estimator=kl_estimator, whiten_rewards=whiten_rewards, gamma=gamma, lam=lam)
    for key in ("kl", "non_score", "rewards", "advantages", "returns"):
        assert _close(ours[key], theirs[key]), key
    for name, value in Trl112Reference.objective_stats(theirs).items():
        mine = {
            "objective/kl": ours["kl"].sum(1).mean(),
            "objective/entropy": (-ours["logprobs"] * ours["mask"]).sum(1).mean(),
            "objective/non_score_reward": ours["non_score"].sum(1).mean(),
            "objective/rlhf_reward": ours["non_score"].sum(1).mean() + ours["scores"].mean(),
            "objective/scores": ours["scores"].mean(),
        }[name]
        assert _close(mine, value), name
    # mini-batches of the rollout (as after np.random.permutation): losses and statistics agree
    for rows in (torch.tensor([3, 0, 5, 1]), torch.tensor([2, 4, 6, 7])):
        t = ref.loss(theirs, rows, new_logits[rows], rollout.responses, vpred[rows], temperature=0.7)
        o = ours_loss(ours, rows, new_logits[rows], rollout.responses, vpred[rows], temperature=0.7)
        for key in ("loss", "pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approxkl", "entropy"):
            assert _close(o[key], t[key]), key
    # and the statistics are not trivially 0 (the comparison has teeth)
    assert 0 < float(t["pg_clipfrac"]) < 1 and float(t["vf_loss"]) > 0


def test_gradients_match_trl112():
    """The same loss value is not enough: the gradient w.r.t. the new logits and values must agree too."""
    rollout, new_logits, vpred = make_rollout(1, B=4)
    ref = Trl112Reference()
    theirs, ours = ref.prepare(rollout), ours_prepare(rollout)
    rows = torch.arange(4)
    grads = []
    for side in ("trl", "ours"):
        logits = new_logits.clone().requires_grad_(True)
        v = vpred.clone().requires_grad_(True)
        if side == "trl":
            out = ref.loss(theirs, rows, logits, rollout.responses, v, 0.7)
        else:
            out = ours_loss(ours, rows, logits, rollout.responses, v, 0.7)
        out["loss"].backward()
        grads.append((logits.grad, v.grad))
    assert _close(grads[0][0], grads[1][0], 1e-6) and _close(grads[0][1], grads[1][1], 1e-6)
    assert grads[0][0].abs().sum() > 0


def test_truncated_rollouts_differ_only_by_trl112_score_position_quirk():
    """With stop-token truncation trl 1.12 puts the score on the first pad position and trains the value there.

    Our trainer puts the score on the last real token (the action that ended the response). The reference with the
    quirk switched off equals ours exactly; with it on (trl 1.12 behaviour) advantages differ, which is why the
    end-to-end parity test runs without a stop token. Rows: full length, truncated, and a length-1 response.
    """
    rollout, new_logits, vpred = make_rollout(2, B=4, T=6, lengths=[6, 3, 1, 5])
    ours = ours_prepare(rollout)
    fixed = Trl112Reference(p1_quirk=False).prepare(rollout)
    for key in ("rewards", "advantages", "returns"):
        assert _close(ours[key] * ours["mask"], fixed[key] * ours["mask"]), key
    quirky = Trl112Reference(p1_quirk=True).prepare(rollout)
    # row 1 (3 real tokens): trl's score lands on index 3, a padded position, ours on index 2
    assert quirky["rewards"][1, 3] != 0 and ours["rewards"][1, 3] == 0
    assert ours["rewards"][1, 2] - ours["non_score"][1, 2] == pytest.approx(float(rollout.scores[1]))
    assert not _close(ours["advantages"], quirky["advantages"])
    # row 0 (full length) gets the score at the last position in both
    assert quirky["rewards"][0, 5] - quirky["non_score"][0, 5] == pytest.approx(float(rollout.scores[0]), abs=1e-5)


def test_approxkl_statistic_trl112_averages_over_padding():
    """trl 1.12 logs approx-KL as a plain mean over padded positions too; we average over real tokens only."""
    rollout, new_logits, vpred = make_rollout(3, B=4, T=6, lengths=[6, 2, 4, 6])
    rows = torch.arange(4)
    t = Trl112Reference(p1_quirk=False)
    tp = t.prepare(rollout)
    theirs = t.loss(tp, rows, new_logits, rollout.responses, vpred, 0.7)
    op = ours_prepare(rollout)
    mine = ours_loss(op, rows, new_logits, rollout.responses, vpred, 0.7)
    mask = op["mask"]
    assert _close(mine["pg_loss"], theirs["pg_loss"]) and _close(mine["vf_loss"], theirs["vf_loss"])
    # same numerator, different denominator: ours * n_real / n_all == trl's
    assert _close(mine["approxkl"] * mask.sum() / mask.numel(), theirs["approxkl"])
    assert not _close(mine["approxkl"], theirs["approxkl"])


# ----------------------------------------------------------------------------------------------------------------
# End-to-end: the real trl==1.12.0 PPOTrainer against SpanPPOTrainer(reward_mode="scalar")
# ----------------------------------------------------------------------------------------------------------------
PARITY_SETTINGS = dict(
    num_prompts=8, num_updates=3, batch_size=8, num_mini_batches=1, num_ppo_epochs=2, response_length=12,
    temperature=0.7, learning_rate=3e-4, kl_coef=0.05, seed=42,
)  # fmt: skip

COMPARED_METRICS = [
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "val/ratio",
    "val/ratio_var",
    "policy/entropy_avg",
]
# trl 1.12 averages these statistics over padded positions too (see docs/parity.md); with truncated responses
# they differ by design, the losses do not.
PADDING_AVERAGED_STATS = {"policy/approxkl_avg", "val/ratio", "val/ratio_var", "policy/entropy_avg"}

# (settings passed to both sides, settings only our trainer needs, metrics not compared)
PARITY_CASES = {
    # the plain setting: full-length responses, one mini-batch, k1
    "basic": ({}, {}, set()),
    # responses truncated at a stop token (one that the argmax rollouts produce mid-response), k3, whitened rewards;
    # our trainer reproduces trl's score placement one token after the response with `trl112_score_placement`
    "stop_token_k3_whiten": (
        dict(stop_token_id=42794, kl_estimator="k3", whiten_rewards=True),
        dict(trl112_score_placement=True),
        PADDING_AVERAGED_STATS,
    ),
    # No mini-batch case: with num_mini_batches > 1 trl 1.12 needs gradient_accumulation_steps > 1 (or micro-batches
    # smaller than per_device_train_batch_size, which we reject), and then it divides every mini-batch loss by
    # gradient_accumulation_steps and logs statistics diluted by never-filled zero slots (docs/parity.md, bugs 3-4).
}


def _trl112_python() -> Path | None:
    python = TRL112_VENV / "bin" / "python"
    if python.exists():
        return python
    if os.environ.get("TRL112_NO_CREATE"):
        return None
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "make_trl112_venv.sh"), str(TRL112_VENV)], capture_output=True, text=True
    )
    return python if proc.returncode == 0 and python.exists() else None


def run_trl112(models_dir: Path, out: Path, **settings) -> dict:
    python = _trl112_python()
    if python is None:
        pytest.skip(f"trl 1.12 venv missing at {TRL112_VENV} and `bash scripts/make_trl112_venv.sh` failed")
    cmd = [str(python), str(HARNESS), "--models-dir", str(models_dir), "--out", str(out), "--dump-tokens"]
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            cmd.append(flag)
        elif value is not False and value is not None:
            cmd += [flag, str(value)]
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"trl 1.12 harness failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text())


def run_ours(models_dir: Path, out_dir: Path, **settings) -> dict:
    """SpanPPOTrainer(reward_mode="scalar") in-process on the same weights, prompts and settings."""
    return run_span_ppo(models_dir, out_dir, **settings)


def _sorted_rollout(rollout: dict, pad_id: int) -> list:
    """(query without padding, response) pairs sorted, so that different batch orders compare equal."""
    rows = []
    for q, r in zip(rollout["queries"], rollout["responses"]):
        rows.append((tuple(t for t in q if t != pad_id), tuple(r)))
    return sorted(rows)


@pytest.mark.slow
@pytest.mark.trl112
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_scalar_mode_matches_trl112_ppo_trainer(tmp_path, case):
    from trl_text2grad.models import default_model_path

    both, ours_only, skipped_metrics = PARITY_CASES[case]
    settings = {**PARITY_SETTINGS, **both}
    models_dir = tmp_path / "models"
    # the harness builds the tiny models (bench/trl112/tiny_setup.py) before training; ours loads the same files
    build = dict(build_tiny=True, tokenizer_source=str(default_model_path()))
    theirs = run_trl112(models_dir, tmp_path / "trl112.json", **build, **settings)
    ours = run_ours(models_dir, tmp_path / "ours", **settings, **ours_only)

    pad_id = load_tokenizer(models_dir / "tokenizer").pad_token_id
    n = settings["num_updates"]
    assert len(theirs["updates"]) == n and len(ours["updates"]) == n
    # 1. identical rollouts (argmax sampling on both sides), update by update
    for u in range(n):
        assert _sorted_rollout(ours["rollouts"][u], pad_id) == _sorted_rollout(theirs["rollouts"][u], pad_id), u
    if "stop_token_id" in both:  # the case must really truncate some responses
        assert any(settings["stop_token_id"] in r for r in theirs["rollouts"][0]["responses"])
    # 2. identical logged metrics over several updates (measured agreement is ~1e-6 relative, float32 noise)
    mismatches = []
    for u in range(n):
        for key in COMPARED_METRICS:
            if key in skipped_metrics:
                continue
            a, b = ours["updates"][u][key], theirs["updates"][u][key]
            if not abs(a - b) <= 1e-5 + 1e-4 * abs(b):
                mismatches.append(f"update {u + 1} {key}: ours {a:.7g} vs trl 1.12 {b:.7g}")
    assert not mismatches, "\n".join(mismatches)
    # 3. the run was not degenerate: the policy moved away from the reference, the value loss is non-zero
    assert theirs["updates"][-1]["objective/kl"] > 1e-3 and theirs["updates"][0]["loss/value_avg"] > 0
    assert theirs["updates"][0]["policy/clipfrac_avg"] > 0
