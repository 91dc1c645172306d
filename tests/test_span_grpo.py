"""SpanGRPOTrainer: the advantage maths by hand, the reward adapter, equality with TRL's GRPOTrainer when there is
no span term, end-to-end training on a tiny random Llama, and one real SmolLM2 run (slow)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from trl_text2grad import Critique
from trl_text2grad.alignment import token_char_offsets
from trl_text2grad.grpo import SpanGRPOConfig, SpanGRPOTrainer, SpanRewardFunction, as_span_reward_function
from trl_text2grad.grpo.advantages import (
    group_span_advantages,
    rloo_span_loss,
    span_advantages,
    span_scale,
    span_statistics,
    token_advantages,
)
from trl_text2grad.grpo.reward_functions import AsyncSpanRewardFunction

pytestmark = pytest.mark.usefixtures("one_thread")

G = 2  # generations per prompt in the trainer tests


# ----------------------------------------------------------------------------------------------------------------
# advantages.py, by hand
# ----------------------------------------------------------------------------------------------------------------
R = torch.tensor([[2.0, 0.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
M = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]])


def test_span_statistics_by_hand():
    sum_sq, count = span_statistics(R, M)
    assert sum_sq.tolist() == [8.0, 0.0, 2.0, 0.0]  # row 3: the 3.0 sits on a masked token
    assert count.tolist() == [2.0, 0.0, 2.0, 0.0]


def test_span_scale_group_batch_none_by_hand():
    sum_sq, count = span_statistics(R, M)
    # group 0 = rows 0, 1: sqrt(8 / 2) = 2; group 1 = rows 2, 3: sqrt(2 / 2) = 1
    assert span_scale(sum_sq, count, 2, "group").tolist() == [2.0, 2.0, 1.0, 1.0]
    assert torch.allclose(span_scale(sum_sq, count, 2, "batch"), torch.full((4,), math.sqrt(10 / 4)))
    assert span_scale(sum_sq, count, 2, "none").tolist() == [1.0] * 4
    # a group without any span keeps scale 1
    assert span_scale(torch.zeros(2), torch.zeros(2), 2, "group").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="groups of 3"):
        span_scale(sum_sq, count, 3, "group")
    with pytest.raises(ValueError, match="normalization"):
        span_scale(sum_sq, count, 2, "mean")


def test_span_advantages_by_hand():
    term = group_span_advantages(R, M, group_size=2, weight=0.5, normalization="group")
    expected = torch.tensor([[0.5, 0.0, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(term, expected)
    raw = span_advantages(R, M, torch.ones(4), weight=2.0)
    assert raw[0].tolist() == [4.0, 0.0, -4.0, 0.0] and raw[3].tolist() == [0.0] * 4
    adv = token_advantages(torch.tensor([1.0, -1.0, 0.5, 0.0]), term)
    assert adv[0].tolist() == [1.5, 1.0, 0.5, 1.0]
    assert adv[1].tolist() == [-1.0] * 4
    with pytest.raises(ValueError):
        token_advantages(torch.zeros(3), term)


def test_span_term_scale_ignores_length_span_count_and_score_scale():
    short = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    base = group_span_advantages(short, torch.ones_like(short), 2)
    # a longer response (more unspanned tokens) changes nothing on the spanned ones
    longer = torch.cat([short, torch.zeros(2, 50)], dim=1)
    assert torch.equal(group_span_advantages(longer, torch.ones_like(longer), 2)[:, :3], base)
    # more quoted spans with the same scores: same per-token magnitude
    many = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    assert set(group_span_advantages(many, torch.ones_like(many), 2).abs().unique().tolist()) == {0.0, 1.0}
    # a critic scoring on a 0..5 scale: same term
    assert torch.allclose(group_span_advantages(5 * short, torch.ones_like(short), 2), base)
    # graded scores keep their ratios, RMS-normalised: [3, 1] -> rms sqrt(5)
    graded = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    term = group_span_advantages(graded, torch.ones_like(graded), 2)
    assert torch.allclose(term, graded / math.sqrt(5))


def test_rloo_span_loss_value_and_gradient_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    a = torch.tensor([[0.5, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = rloo_span_loss(logps, torch.zeros(1), a, mask, 0.2, 0.2)  # ratio 1: no clipping
    assert loss.item() == pytest.approx(-(0.5 - 1.0))
    loss.sum().backward()
    assert logps.grad.tolist() == [[-0.5, 1.0, 0.0]]  # - m * a * ratio
    # ratio 2 > 1.2: a positive-advantage token is clipped (no gradient), a negative one keeps ratio * a
    logps.grad = None
    loss = rloo_span_loss(logps, torch.tensor([math.log(2.0)]), a, mask, 0.2, 0.2)
    assert loss.item() == pytest.approx(-(1.2 * 0.5 + 2.0 * -1.0))
    loss.sum().backward()
    assert torch.allclose(logps.grad, torch.tensor([[0.0, 2.0, 0.0]]))
    # a runaway sequence ratio never turns a zero span term into NaN
    logps.grad = None
    loss = rloo_span_loss(logps, torch.tensor([1000.0]), torch.zeros_like(a), mask, 0.2, 0.2)
    loss.sum().backward()
    assert loss.item() == 0.0 and torch.equal(logps.grad, torch.zeros_like(logps))


# ----------------------------------------------------------------------------------------------------------------
# the reward adapter
# ----------------------------------------------------------------------------------------------------------------
def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_adapter_floats_spans_critiques_and_failures(smollm2_tokenizer):
    texts = ["def add(a, b):\n    return a + b", "hello world", "nothing here", "x", "fine"]

    def reward(prompts, completions, completion_ids, **kwargs):
        return [
            [(4, 7, -1.0)],  # "add"
            Critique("", good=["world"], poor=["not in the text at all"]),
            None,
            float("nan"),
            0.25,
        ]

    func = as_span_reward_function(reward).bind(smollm2_tokenizer)
    assert func.__name__ == "reward"
    ids = [_ids(smollm2_tokenizer, t) for t in texts]
    scalars = func(prompts=[""] * 5, completions=texts, completion_ids=ids)
    batch = func.last
    assert scalars[2] is None and scalars[3] is None and scalars[4] == 0.25
    assert batch.num_failures == 2 and batch.num_unlocated == 1
    assert batch.token_rewards[4] is None
    # "add": exactly the tokens overlapping characters 4..7
    text, offsets = token_char_offsets(smollm2_tokenizer, ids[0])
    expected = [(-1.0 if s < 7 and e > 4 else 0.0) for s, e in offsets]
    assert batch.token_rewards[0].tolist() == expected
    assert scalars[0] == pytest.approx(np.mean(expected))  # spans only: the mean token reward
    assert batch.token_rewards[1].max() == 1.0 and scalars[1] > 0


def test_adapter_survives_raising_and_wrong_length_functions(smollm2_tokenizer, caplog):
    def broken(prompts, completions, **kwargs):
        raise RuntimeError("critic server down")

    def short(prompts, completions, **kwargs):
        return [1.0]

    ids = [_ids(smollm2_tokenizer, "a b"), _ids(smollm2_tokenizer, "c")]
    for source in (broken, short):
        func = as_span_reward_function(source).bind(smollm2_tokenizer)
        assert func(prompts=["", ""], completions=["a b", "c"], completion_ids=ids) == [None, None]
        assert func.last.num_failures == 2
    assert "critic server down" in caplog.text


def test_adapter_calls_critics_span_models_and_ppo_style_functions(smollm2_tokenizer):
    seen = {}

    class Critic:
        def critique(self, prompts, responses, **context):
            seen["critic"] = (list(responses), sorted(context))
            return [Critique("", good=[r[:3]], poor=[]) for r in responses]

    class SpanModel:
        def predict(self, prompts, responses):  # pragma: no cover - only its presence matters
            raise AssertionError

        def score(self, prompts, responses, **context):
            seen["model"] = list(responses)
            return [[(0, 1, -1.0)] for _ in responses]

    def ppo_style(prompts, responses, **context):
        seen["ppo"] = sorted(context)
        return [0.5 for _ in responses]

    chat = [[{"role": "assistant", "content": "abc def"}], [{"role": "assistant", "content": "ghi"}]]
    ids = [_ids(smollm2_tokenizer, "abc def"), _ids(smollm2_tokenizer, "ghi")]
    kwargs = {"task_id": [1, 2], "trainer_state": object(), "log_extra": print, "log_metric": print}
    for source in (Critic(), SpanModel(), ppo_style):
        func = as_span_reward_function(source).bind(smollm2_tokenizer)
        scalars = func(prompts=[[], []], completions=chat, completion_ids=ids, **kwargs)
        assert all(s is not None for s in scalars)
    assert seen["critic"] == (["abc def", "ghi"], ["task_id"])  # TRL's control kwargs never reach a critic
    assert seen["model"] == ["abc def", "ghi"]
    assert seen["ppo"] == ["task_id"]


def test_adapter_moves_spans_when_the_decoded_text_differs(smollm2_tokenizer):
    """The function saw a cleaned-up text (here: without the leading spaces); spans still land on its words."""
    ids = _ids(smollm2_tokenizer, "  alpha beta gamma")
    func = SpanRewardFunction(lambda prompts, completions, **k: [[(6, 10, 1.0)]]).bind(smollm2_tokenizer)
    func(prompts=[""], completions=["alpha beta gamma"], completion_ids=[ids])  # "beta" in the seen text
    decoded, offsets = token_char_offsets(smollm2_tokenizer, ids)
    start = decoded.index("beta")
    expected = [(1.0 if s < start + 4 and e > start else 0.0) for s, e in offsets]
    assert func.last.token_rewards[0].tolist() == expected and func.last.num_unlocated == 0


def test_async_reward_function_is_awaited(smollm2_tokenizer):
    async def judge(prompts, completions, **kwargs):
        return [[(0, 1, 1.0)] for _ in completions]

    func = as_span_reward_function(judge).bind(smollm2_tokenizer)
    assert isinstance(func, AsyncSpanRewardFunction)
    ids = [_ids(smollm2_tokenizer, "ok")]
    scalars = asyncio.run(func(prompts=[""], completions=["ok"], completion_ids=ids))
    assert scalars[0] > 0 and func.last.token_rewards[0][0] == 1.0


# ----------------------------------------------------------------------------------------------------------------
# the trainer on a tiny random Llama
# ----------------------------------------------------------------------------------------------------------------
def _dataset(n: int = 4) -> Dataset:
    return Dataset.from_dict({"prompt": [f"Answer number {i}:" for i in range(n)], "task_id": list(range(n))})


def _settings(tmp_path, **overrides) -> dict:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=G,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return settings


def length_reward(prompts, completions, completion_ids, **kwargs):
    """A float per completion that differs within a group."""
    return [float(len(c) % 5) - 2.0 + 0.25 * i for i, c in enumerate(completions)]


def first_word_critic(prompts, completions, completion_ids, task_id=None, **kwargs):
    """Spans only: the first 4 characters of even rows are poor, of odd rows good."""
    assert task_id is not None and len(task_id) == len(completions)  # data-set columns arrive as kwargs
    return [[(0, min(4, len(c)), 1.0 if i % 2 else -1.0)] for i, c in enumerate(completions)]


def _score(trainer, rows, seed=123):
    trainer.model.train()
    torch.manual_seed(seed)
    return trainer._generate_and_score_completions([dict(r) for r in rows for _ in range(G)])


def _loss_and_grads(trainer, batch):
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # dapo, token-level ratio
        {"loss_type": "grpo", "scale_rewards": "batch"},
        {"loss_type": "cispo"},
        {"loss_type": "sapo"},
        {"loss_type": "luspo", "importance_sampling_level": "sequence"},
        {"loss_type": "bnpo", "beta": 0.1},
    ],
    ids=["dapo", "grpo-batch", "cispo", "sapo", "luspo-sequence", "bnpo-kl"],
)
@pytest.mark.parametrize("span_case", ["floats", "weight0"])
def test_equals_trl_grpo_without_span_term(tmp_path, smollm2_tokenizer, tiny_model_dir, overrides, span_case):
    """Same weights (one saved tiny model, also the reference), same seed, same generations: with float rewards (or
    spans at weight 0) the advantages, the loss and every gradient equal TRL's GRPOTrainer exactly."""
    rows = list(_dataset(2))

    def with_spans(prompts, completions, completion_ids, **kwargs):
        floats = length_reward(prompts, completions, completion_ids)
        return [(f, [(0, len(c), -1.0)]) for f, c in zip(floats, completions)]

    ours_reward, weight = (length_reward, 1.0) if span_case == "floats" else (with_spans, 0.0)
    theirs = GRPOTrainer(
        model=tiny_model_dir,
        reward_funcs=length_reward,
        args=GRPOConfig(**_settings(tmp_path, **overrides)),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    ours = SpanGRPOTrainer(
        model=tiny_model_dir,
        reward_funcs=ours_reward,
        args=SpanGRPOConfig(**_settings(tmp_path, span_advantage_weight=weight, **overrides)),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    if "beta" in overrides:  # a reference model: identical weights on both sides
        assert theirs.ref_model is not None and ours.ref_model is not None
    batch_theirs, batch_ours = _score(theirs, rows), _score(ours, rows)
    assert torch.equal(batch_theirs["completion_ids"], batch_ours["completion_ids"])
    assert batch_theirs["advantages"].abs().sum() > 0  # a real learning signal
    assert torch.equal(batch_ours["advantages"], batch_theirs["advantages"])
    loss_theirs, grads_theirs = _loss_and_grads(theirs, batch_theirs)
    loss_ours, grads_ours = _loss_and_grads(ours, batch_ours)
    assert torch.equal(loss_ours, loss_theirs)
    assert grads_ours.keys() == grads_theirs.keys() and grads_ours
    for name, grad in grads_theirs.items():
        assert torch.equal(grads_ours[name], grad), name
    # the [B, T] path TRL's loss takes when there are spans: a broadcast sequence advantage gives TRL's loss and
    # gradients (up to the order of float additions)
    tokens = batch_ours["completion_ids"].shape[1]
    broadcast = dict(batch_ours, advantages=batch_ours["advantages"].unsqueeze(1).repeat(1, tokens))
    loss_2d, grads_2d = _loss_and_grads(ours, broadcast)
    assert torch.allclose(loss_2d, loss_theirs, rtol=1e-5, atol=1e-7)
    for name, grad in grads_theirs.items():
        assert torch.allclose(grads_2d[name], grad, rtol=1e-4, atol=1e-7), name


def test_spans_raise_and_lower_exactly_the_quoted_tokens(tmp_path, smollm2_tokenizer, tiny_llama):
    captured = {}

    def critic(prompts, completions, completion_ids, **kwargs):
        captured["ids"] = [list(i) for i in completion_ids]
        return first_word_critic(prompts, completions, completion_ids, **kwargs)

    trainer = SpanGRPOTrainer(
        model=tiny_llama(),
        reward_funcs=critic,
        args=SpanGRPOConfig(**_settings(tmp_path, span_advantage_weight=0.5)),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    batch = _score(trainer, list(_dataset(2)))
    advantages, mask = batch["advantages"], batch["completion_mask"]
    sequence = torch.tensor(list(trainer._logs["advantages"]))  # TRL's group-relative advantages, as it logged them
    assert sequence.shape == (4,)
    for row, ids in enumerate(captured["ids"]):
        text, offsets = token_char_offsets(smollm2_tokenizer, ids)
        end = min(4, len(text))
        sign = 1.0 if row % 2 else -1.0
        # the alignment rule: a token is in the span when it overlaps one of its non-whitespace characters
        covered = [any(not text[k].isspace() for k in range(s, min(e, end))) for s, e in offsets]
        # every span score is +-1, so the group RMS scale is 1 and the span term is 0.5 * sign on covered tokens
        expected = torch.tensor([sequence[row].item() + (0.5 * sign if c else 0.0) for c in covered])
        assert torch.allclose(advantages[row, : len(ids)], expected, atol=1e-6), row
        assert mask[row, : len(ids)].all()
    assert sum(any(True for _ in i) for i in captured["ids"]) == 4
    logs = trainer._metrics["train"]
    assert logs["span/good_tokens"][-1] > 0 and logs["span/poor_tokens"][-1] > 0
    assert logs["span/critic_failures"][-1] == 0


def test_trains_end_to_end_with_span_outputs_and_failures(tmp_path, smollm2_tokenizer, tiny_llama):
    calls = {"n": 0}

    def mixed(prompts, completions, completion_ids, **kwargs):
        calls["n"] += 1
        out = []
        for i, c in enumerate(completions):
            kind = i % 4
            if kind == 0:
                out.append(Critique("meh", good=[], poor=[c[:5]] if c[:5].strip() else []))
            elif kind == 1:
                out.append([(0, len(c), 1.0)])
            elif kind == 2:
                out.append({"score": 0.5, "spans": [(0, min(3, len(c)), -1.0)]})
            else:
                out.append("not a reward")  # unusable: counted, never fatal
        return out

    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SpanGRPOTrainer(
        model=model,
        reward_funcs=[mixed, length_reward],
        args=SpanGRPOConfig(**_settings(tmp_path, heatmap_every_n_steps=1, reward_weights=[1.0, 0.5])),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    trainer.train()
    assert calls["n"] == 2
    assert sum(int(not torch.equal(a, b)) for a, b in zip(before, model.parameters())) > 0
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    for entry in logged:
        for key in ("span/good_tokens", "span/poor_tokens", "span/quotes_unlocated", "span/critic_failures"):
            assert key in entry and math.isfinite(entry[key])
        assert entry["span/critic_failures"] == 1.0  # one "not a reward" per batch of 4
    assert (tmp_path / "out" / "heatmaps" / "step_000000.html").is_file()


def test_plain_grpo_config_is_accepted_and_bad_settings_are_named(tmp_path, smollm2_tokenizer, tiny_llama):
    trainer = SpanGRPOTrainer(
        model=tiny_llama(),
        reward_funcs=length_reward,
        args=GRPOConfig(**_settings(tmp_path)),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    assert isinstance(trainer.args, SpanGRPOConfig) and trainer.args.span_advantage_weight == 1.0
    assert trainer.reward_func_names == ["length_reward"]
    with pytest.raises(ValueError, match="span_advantage_normalization"):
        SpanGRPOConfig(**_settings(tmp_path, span_advantage_normalization="token"))
    with pytest.raises(ValueError, match="span_advantage_weight"):
        SpanGRPOConfig(**_settings(tmp_path, span_advantage_weight=-1.0))


@pytest.mark.slow
@pytest.mark.ci_real_model
def test_smollm2_two_grpo_steps(tmp_path):
    from trl_text2grad.models import load_default_model, load_default_tokenizer

    tokenizer = load_default_tokenizer()
    model = load_default_model()
    dataset = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": "Write a Python function that adds two numbers."}],
                [{"role": "user", "content": "What is the capital of France?"}],
            ]
        }
    )

    def critic(prompts, completions, **kwargs):
        out = []
        for completion in completions:
            words = completion[0]["content"].split()
            out.append(Critique("", good=words[:2] and [" ".join(words[:2])], poor=words[-1:]))
        return out

    before = [p.detach().clone() for p in model.parameters()]
    trainer = SpanGRPOTrainer(
        model=model,
        reward_funcs=critic,
        args=SpanGRPOConfig(
            **_settings(tmp_path, per_device_train_batch_size=4, max_completion_length=24, learning_rate=1e-5)
        ),
        processing_class=tokenizer,
        train_dataset=dataset,
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(math.isfinite(h["loss"]) for h in logged)
    assert any(h["span/good_tokens"] > 0 or h["span/poor_tokens"] > 0 for h in logged)
    assert sum(int(not torch.equal(a, b)) for a, b in zip(before, model.parameters())) > 0


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_cli_trains_from_the_offline_recipe(name, tmp_path, tiny_model_dir, capsys):
    """`trl-text2grad grpo|rloo --config recipes/humaneval_smollm2/<name>.yaml` with a tiny policy, 2 steps, the
    sandboxed unit-test critic: trains, saves, writes heatmaps and logs the span metrics."""
    from pathlib import Path

    from trl_text2grad.cli.main import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "humaneval_smollm2" / f"{name}.yaml"
    out = tmp_path / name
    code = main(
        [name, "--config", str(recipe), "--model_name_or_path", tiny_model_dir, "--output_dir", str(out)]
        + ["--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "2"]
        + ["--max_completion_length", "16", "--max_train_samples", "4", "--use_peft", "false", "--use_cpu", "true"]
        + ["--heatmap_every_n_steps", "1", "--save_steps", "100", "--disable_tqdm", "true"]
    )
    assert code == 0
    assert (out / "model.safetensors").is_file() or any(out.glob("*.safetensors"))
    assert (out / "heatmaps" / "step_000000.html").is_file()
    assert f"span {name.upper()} finished" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--span_advantage_weight" in help_text and "--use_vllm" in help_text and "--critic" in help_text


def test_kodcode_grpo_recipe_with_a_span_reward_model(tmp_path, tiny_model_dir):
    """The paper-task recipe: a (tiny) span reward model trained with recipes/kodcode/reward.yaml scores the
    completions of recipes/kodcode/grpo.yaml (local files with the hub's columns; vLLM stays off on CPU)."""
    import json
    from pathlib import Path

    from trl_text2grad.cli import grpo, reward
    from trl_text2grad.tasks import kodcode

    root = Path(__file__).resolve().parents[1]
    cpu = ["--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--use_cpu", "true"]
    hub = [
        {
            "question_id": f"q{i}",
            "question": f"Write a function add(a, b) that returns the sum of a and b plus {i}.",
            "solution": f"def add(a, b):\n    return a + b + {i}",
            "test": f"from solution import add\n\ndef test_add():\n    assert add(1, 2) == {3 + i}\n",
            "test_info": [{"function_name": "add", "function_declaration": "def add(a, b):"}],
        }
        for i in range(4)
    ]
    annotated = []
    for row in kodcode.prepare(Dataset.from_list(hub)):
        words = row["response"].split()
        annotated.append({**row, "critique": "ok", "good_spans": [" ".join(words[:2])], "poor_spans": [words[-1]]})
    for name, rows in (("hub", hub), ("ann", annotated)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rm_dir = tmp_path / "rm"
    reward_args = [
        "--config",
        str(root / "recipes/kodcode/reward.yaml"),
        "--dataset_name",
        str(tmp_path / "ann.jsonl"),
    ]
    reward_args += ["--model_name_or_path", tiny_model_dir, "--dtype", "float32", "--output_dir", str(rm_dir)]
    reward_args += ["--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
    reward_args += ["--max_length", "384", "--max_target_length", "32", "--max_new_tokens", "8"]
    reward_args += ["--eval_fraction", "0", "--eval_strategy", "no", "--save_strategy", "no", *cpu]
    assert reward.main(reward_args) == 0

    out = tmp_path / "grpo"
    args = ["--config", str(root / "recipes/kodcode/grpo.yaml"), "--dataset_name", str(tmp_path / "hub.jsonl")]
    args += ["--reward_model_path", str(rm_dir), "--model_name_or_path", tiny_model_dir, "--dtype", "float32"]
    args += ["--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "4"]
    args += ["--gradient_accumulation_steps", "1", "--num_generations", "2", "--max_completion_length", "8"]
    args += ["--save_strategy", "no", "--log_completions", "false", *cpu]
    assert grpo.main(args) == 0
    assert (out / "adapter_model.safetensors").is_file()


MULTIPROC_SCRIPT = r"""
import json, sys, torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl_text2grad.grpo import SpanGRPOConfig, SpanGRPOTrainer
from trl_text2grad.models import load_default_tokenizer

tok = load_default_tokenizer()
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
model = LlamaForCausalLM(config)
ds = Dataset.from_dict({"prompt": [f"Answer number {i}:" for i in range(4)]})

def critic(prompts, completions, completion_ids, **kwargs):  # graded scores: the group scale is not 1
    return [[(0, min(6, len(c)), 1.0 + len(c) % 3), (len(c) // 2, len(c), -2.0)] for c in completions]

class Probe(SpanGRPOTrainer):
    probes = []
    def _span_token_rewards(self, *args, **kwargs):
        rewards, counts = super()._span_token_rewards(*args, **kwargs)
        self._last_rewards = rewards
        return rewards, counts
    def _compute_span_term(self, output):
        term = super()._compute_span_term(output)
        mask = output["completion_mask"]
        self.probes.append({"rewards": self._last_rewards.tolist(), "mask": mask.tolist(), "term": term.tolist()})
        return term

args = SpanGRPOConfig(output_dir=sys.argv[1], per_device_train_batch_size=2, num_generations=4,
                      max_completion_length=6, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to="none",
                      bf16=False, use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
trainer = Probe(model=model, reward_funcs=critic, args=args, train_dataset=ds, processing_class=tok)
trainer.train()
after = trainer.accelerator.unwrap_model(trainer.model).parameters()
result = {"rank": trainer.accelerator.process_index, "world": trainer.accelerator.num_processes,
          "steps": trainer.state.global_step, "checksum": sum(p.double().sum().item() for p in after),
          "probes": Probe.probes,
          "logs": [h for h in trainer.state.log_history if "loss" in h]}
with open(f"{sys.argv[1]}/rank{result['rank']}.json", "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_normalise_span_term_over_groups_split_across_ranks(tmp_path):
    """2 CPU processes, 2 completions each, groups of 4: each group straddles the ranks, and the span scale computed
    from gathered statistics equals the single-process computation on the concatenated batch."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(MULTIPROC_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in results] == [2, 2] and [r["steps"] for r in results] == [2, 2]
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
    for step in range(2):
        probes = [r["probes"][step] for r in results]
        width = max(len(p["rewards"][0]) for p in probes)

        def padded(key, probes=probes, width=width):
            rows = [row + [0] * (width - len(row)) for p in probes for row in p[key]]
            return torch.tensor(rows, dtype=torch.float32)

        rewards, mask, term = padded("rewards"), padded("mask"), padded("term")
        assert rewards.shape[0] == 4 and (rewards != 0).any()
        expected = group_span_advantages(rewards, mask, group_size=4)
        assert torch.allclose(term, expected, atol=1e-6)
        scale = span_scale(*span_statistics(rewards, mask), 4)
        assert scale[0].item() != pytest.approx(1.0)  # graded scores: a real normalisation
    assert all("span/good_tokens" in h for r in results for h in r["logs"])
