"""SpanRewardTrainer as a drop-in for trl.RewardTrainer: pairwise rows, sequence classifiers, the same objective.

Tiny random Llama models on CPU. The synthetic preference of the learning tests: the prompt asks for the sum of two
arguments, the chosen answer adds them and the rejected one applies one of five wrong operators, so an untrained
model is not right by accident (its held-out accuracy is checked to be below 0.7 first); held-out pairs use function
and argument names never seen in training.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from trl_text2grad import SpanRewardConfig, SpanRewardTrainer
from trl_text2grad.reward.modeling import SpanTokenHeadModel
from trl_text2grad.reward.preference import (
    bradley_terry_loss,
    expected_token_rewards,
    sequence_rewards,
    split_preference_row,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "reward_trl_example.py"
TRAIN_NAMES, HELD_OUT_NAMES = ["add", "total", "combine", "plus"], ["accumulate", "join_sum"]
TRAIN_VARS, HELD_OUT_VARS = ["x", "y", "a", "b", "m", "n"], ["p", "q", "u", "v"]


TASKS = {"sum": "+", "difference": "-", "product": "*"}
OPERATORS = ("+", "-", "*", "/", "%", "//")
SUM_ONLY = {"sum": "+"}


def _pair(rng: random.Random, names, variables, form: str = "explicit_text", tasks=TASKS) -> dict:
    """One preference row: the chosen function applies the operator the prompt asks for, the rejected one another."""
    task, name = rng.choice(list(tasks)), rng.choice(names)
    a, b = rng.sample(variables, 2)
    wrong = rng.choice([op for op in OPERATORS if op != TASKS[task]])
    prompt = f"Write a Python function {name}({a}, {b}) that returns the {task} of {a} and {b}."
    good = f"def {name}({a}, {b}):\n    return {a} {TASKS[task]} {b}"
    bad = f"def {name}({a}, {b}):\n    return {a} {wrong} {b}"
    if form == "explicit_text":
        return {"prompt": prompt, "chosen": good, "rejected": bad}
    if form == "implicit_text":
        return {"chosen": prompt + "\n" + good, "rejected": prompt + "\n" + bad}
    user = [{"role": "user", "content": prompt}]
    if form == "explicit_chat":
        return {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        }
    return {  # implicit_chat, as trl-lib/ultrafeedback_binarized
        "chosen": user + [{"role": "assistant", "content": good}],
        "rejected": user + [{"role": "assistant", "content": bad}],
    }


def _pairs(seed: int, n: int, names=TRAIN_NAMES, variables=TRAIN_VARS, form="explicit_text", tasks=TASKS) -> list:
    rng = random.Random(seed)
    return [_pair(rng, names, variables, form, tasks) for _ in range(n)]


def _span_rows(seed: int, n: int, names=TRAIN_NAMES, variables=TRAIN_VARS, tasks=TASKS) -> list[dict]:
    """Annotated rows of the same task: the return line is good with the asked operator, poor with another."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task, name = rng.choice(list(tasks)), rng.choice(names)
        a, b = rng.sample(variables, 2)
        right = i % 2 == 0
        op = TASKS[task] if right else rng.choice([o for o in OPERATORS if o != TASKS[task]])
        line = f"return {a} {op} {b}"
        rows.append(
            {
                "prompt": f"Write a Python function {name}({a}, {b}) that returns the {task} of {a} and {b}.",
                "response": f"def {name}({a}, {b}):\n    {line}",
                "critique": "Correct." if right else "Wrong operator.",
                "good_spans": [line] if right else [],
                "poor_spans": [] if right else [line],
            }
        )
    return rows


def _dataset(rows: list[dict]) -> Dataset:
    """Rows of both kinds in one data set: every row gets every column (None where it does not apply)."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return Dataset.from_list([{key: row.get(key) for key in keys} for row in rows])


def _config(tmp_path, name: str = "out", **overrides) -> SpanRewardConfig:
    settings = dict(
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        max_length=128,
        use_cpu=True,
        seed=0,
    )
    settings.update(overrides)
    return SpanRewardConfig(str(tmp_path / name), **settings)


def _tiny_classifier(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    return LlamaForSequenceClassification(config)


# ---------------------------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------------------------
def test_bradley_terry_and_sequence_rewards_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    margin = torch.tensor([0.5, 0.0])
    # -mean(log σ(0.5), log σ(-1)) + 0.1 · mean(3², 1²)
    expected = -(torch.log(torch.sigmoid(torch.tensor(0.5))) + torch.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert torch.allclose(bradley_terry_loss(chosen, rejected, margin), expected)
    assert torch.allclose(bradley_terry_loss(chosen, rejected, margin, 0.1), expected + 0.1 * (9 + 1) / 2)
    assert torch.allclose(bradley_terry_loss(chosen, rejected, None), bradley_terry_loss(chosen, rejected, margin * 0))

    # logits favouring good / poor / neutral: p = softmax; r_t = p_good·1 + p_poor·(-0.5)
    logits = torch.tensor([[[0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]])
    rewards = expected_token_rewards(logits, good_score=1.0, poor_score=-0.5)
    assert torch.allclose(rewards, torch.tensor([[1.0, -0.5, 0.0, 1.0]]), atol=1e-3)
    head_mask = torch.tensor([[1, 1, 1, 0]])  # the last position is not a response token
    assert torch.allclose(sequence_rewards(rewards, head_mask), torch.tensor([0.5 / 3]), atol=1e-3)
    assert sequence_rewards(rewards, torch.zeros_like(head_mask)).item() == 0.0


def test_split_preference_row_formats():
    explicit = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
    assert split_preference_row(explicit) == ("Q?", " yes", " no")
    assert split_preference_row({"chosen": "Q? yes", "rejected": "Q? no"}) == ("Q?", " yes", " no")
    user = [{"role": "user", "content": "Q?"}]
    chat = {
        "chosen": user + [{"role": "assistant", "content": "yes"}],
        "rejected": user + [{"role": "assistant", "content": "no"}],
    }
    assert split_preference_row(chat) == (user, "yes", "no")
    # a text prompt next to conversational completions that repeat it (ultrafeedback_binarized): extracted
    assert split_preference_row({"prompt": "Q?", **chat}) == (user, "yes", "no")
    with pytest.raises(TypeError, match="chosen"):
        split_preference_row({"chosen": "a", "rejected": 3})


def test_sequence_classifier_loss_and_gradients_equal_reward_trainer(tmp_path, smollm2_tokenizer):
    """Same model, same pairs (with margins), center_rewards_coefficient: trl.RewardTrainer and SpanRewardTrainer
    tokenize the same ids and give the same loss and the same gradients."""
    from trl import RewardConfig, RewardTrainer

    rows = [dict(r, margin=0.25 * i) for i, r in enumerate(_pairs(0, 8, form="implicit_chat"))]
    base = _tiny_classifier(smollm2_tokenizer)
    common = dict(max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True, bf16=False, seed=0)
    common.update(center_rewards_coefficient=0.01, max_length=128, save_strategy="no")
    theirs = RewardTrainer(
        copy.deepcopy(base),
        args=RewardConfig(str(tmp_path / "trl"), **common),
        train_dataset=Dataset.from_list(rows),
        processing_class=copy.deepcopy(smollm2_tokenizer),
    )
    ours = SpanRewardTrainer(
        copy.deepcopy(base),
        args=SpanRewardConfig(str(tmp_path / "ours"), **common),
        train_dataset=Dataset.from_list(rows),
        processing_class=copy.deepcopy(smollm2_tokenizer),
    )
    assert ours.model_form == "sequence_classification"
    assert ours.train_dataset["chosen_ids"] == theirs.train_dataset["chosen_ids"]
    assert ours.train_dataset["rejected_ids"] == theirs.train_dataset["rejected_ids"]
    results = []
    for trainer in (theirs, ours):
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        assert "margin" in batch
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen, rejected = scores.squeeze(-1).chunk(2)
        results.append((loss.detach(), grads, bradley_terry_loss(chosen, rejected, batch["margin"], 0.01)))
    (loss_trl, grads_trl, formula_trl), (loss_ours, grads_ours, _) = results
    assert loss_trl.item() > 0 and torch.allclose(loss_ours, loss_trl, rtol=0, atol=1e-7)
    assert torch.allclose(formula_trl, loss_trl, atol=1e-6)  # our formula is RewardTrainer's
    assert grads_ours.keys() == grads_trl.keys() and len(grads_trl) > 5
    for name, grad in grads_trl.items():
        assert torch.allclose(grads_ours[name], grad, rtol=0, atol=1e-7), name
    assert ours._metrics["train"]["accuracy"] and ours._metrics["train"]["margin"]


def test_model_form_follows_the_model_or_the_setting(tmp_path, tiny_model_dir, tiny_llama, smollm2_tokenizer):
    from transformers import LlamaForSequenceClassification

    pairs = Dataset.from_list(_pairs(14, 4))

    def build(model, **overrides):
        config = _config(tmp_path, **overrides)
        return SpanRewardTrainer(model, args=config, train_dataset=pairs, processing_class=smollm2_tokenizer)

    classifier_dir = tmp_path / "classifier"
    _tiny_classifier(smollm2_tokenizer).save_pretrained(classifier_dir)
    from_path = build(str(classifier_dir))  # a saved reward model: its architecture decides
    assert from_path.model_form == "sequence_classification"
    assert isinstance(from_path.model, LlamaForSequenceClassification)
    assert build(tiny_model_dir).model_form == "token_head"  # a causal LM path: the span head
    # RewardTrainer's loading of a causal-LM path as a one-label classifier, on request
    loaded = build(tiny_model_dir, model_form="sequence_classification")
    assert isinstance(loaded.model, LlamaForSequenceClassification) and loaded.model.config.num_labels == 1
    with pytest.raises(ValueError, match="needs an AutoModelForSequenceClassification"):
        build(tiny_llama(), model_form="sequence_classification")


# ---------------------------------------------------------------------------------------------------------------
# Pairs on the token head
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["explicit_text", "implicit_text", "explicit_chat", "implicit_chat"])
def test_token_head_reads_the_completion_of_every_pair_format(form, tmp_path, tiny_llama, smollm2_tokenizer):
    rows = _pairs(1, 3, form=form)
    trainer = SpanRewardTrainer(
        tiny_llama(), args=_config(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=smollm2_tokenizer
    )
    assert trainer.model_form == "token_head" and trainer.data_stats["train"]["pairs"] == 3
    assert len(trainer.model.config.id2label) == 2  # the causal LM's labels are back after RewardTrainer's check
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert batch["chosen_index"].tolist() == [0, 2, 4] and batch["rejected_index"].tolist() == [1, 3, 5]
    assert batch["margin"].tolist() == [0.0, 0.0, 0.0]
    assert (batch["span_labels"] == -100).all()  # pairs carry no span labels
    eos = smollm2_tokenizer.eos_token
    for pair, row in enumerate(rows):
        _, chosen, rejected = split_preference_row(row)
        for index, text in ((2 * pair, chosen), (2 * pair + 1, rejected)):
            read = batch["input_ids"][index][batch["head_mask"][index].bool()]
            assert smollm2_tokenizer.decode(read) == text + eos  # the head reads exactly the response (+ eos)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert loss.requires_grad and torch.isfinite(loss)


def _heldout_accuracy(trainer, rows) -> float:
    return trainer.evaluate(Dataset.from_list(rows))["eval_accuracy"]


def test_token_head_learns_a_preference_from_pairs_alone(tmp_path, tiny_llama, smollm2_tokenizer):
    """Held-out pairs use function and argument names never seen in training; chance is 0.5."""
    train = _pairs(2, 96, tasks=SUM_ONLY)
    held_out = _pairs(3, 48, HELD_OUT_NAMES, HELD_OUT_VARS, tasks=SUM_ONLY)
    args = _config(tmp_path, max_steps=60, per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=10)
    trainer = SpanRewardTrainer(
        tiny_llama(seed=4), args=args, train_dataset=Dataset.from_list(train), processing_class=smollm2_tokenizer
    )
    before = _heldout_accuracy(trainer, held_out)
    trainer.train()
    after = _heldout_accuracy(trainer, held_out)
    print(f"token head, pairs only: held-out pairwise accuracy {before:.3f} -> {after:.3f} (48 pairs)")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert before < 0.7 and after >= 0.9, (before, after)
    # what PPO reads from the span model (argmax spans) orders the pairs the same way: good spans in the chosen
    # answers, poor spans in the rejected ones
    rm = trainer.span_reward_model()
    chosen = rm.predict([r["prompt"] for r in held_out], [r["chosen"] for r in held_out])
    rejected = rm.predict([r["prompt"] for r in held_out], [r["rejected"] for r in held_out])

    def polarity(prediction) -> float:
        return sum(span.score * (span.end - span.start) for span in prediction.spans)

    agree = sum(polarity(c) > polarity(r) for c, r in zip(chosen, rejected)) / len(held_out)
    assert agree >= 0.9, agree


def test_mixed_pairs_and_spans_train_the_token_head(tmp_path, tiny_llama, smollm2_tokenizer):
    """One data set, both kinds of rows: the span loss falls and the pairwise accuracy rises together."""
    rows = _span_rows(4, 48, tasks=SUM_ONLY) + _pairs(5, 48, tasks=SUM_ONLY)
    random.Random(0).shuffle(rows)
    held_out = _pairs(6, 48, HELD_OUT_NAMES, HELD_OUT_VARS, tasks=SUM_ONLY)
    held_out_spans = _span_rows(7, 8, HELD_OUT_NAMES, HELD_OUT_VARS, tasks=SUM_ONLY)
    args = _config(tmp_path, max_steps=60, per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=10)
    trainer = SpanRewardTrainer(
        tiny_llama(seed=4), args=args, train_dataset=_dataset(rows), processing_class=smollm2_tokenizer
    )
    stats = trainer.data_stats["train"]
    assert stats["rows"] == 96 and stats["pairs"] == 48 and stats["quotes_unlocated"] == 0
    before = trainer.evaluate(_dataset(held_out + held_out_spans))
    trainer.train()
    after = trainer.evaluate(_dataset(held_out + held_out_spans))
    logged = [entry for entry in trainer.state.log_history if "span_loss" in entry and "accuracy" in entry]
    assert len(logged) >= 2 and logged[-1]["span_loss"] < logged[0]["span_loss"]
    print(
        f"mixed: held-out pairwise accuracy {before['eval_accuracy']:.3f} -> {after['eval_accuracy']:.3f}, "
        f"span accuracy {before['eval_span_accuracy']:.3f} -> {after['eval_span_accuracy']:.3f}, "
        f"poor F1 {after.get('eval_poor_f1')}"
    )
    assert before["eval_accuracy"] < 0.7 and after["eval_accuracy"] >= 0.9
    assert after["eval_span_accuracy"] > before["eval_span_accuracy"]
    assert "eval_poor_precision" in after  # span metrics of the span rows, scored by the model


def test_pairs_only_token_head_saves_and_reloads(tmp_path, tiny_llama, smollm2_tokenizer):
    from trl_text2grad.reward.scoring import SpanRewardModel

    trainer = SpanRewardTrainer(
        tiny_llama(), args=_config(tmp_path), train_dataset=Dataset.from_list(_pairs(8, 8)),
        processing_class=smollm2_tokenizer,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    reloaded = SpanRewardModel.from_pretrained(trainer.args.output_dir)
    assert reloaded.form == "token_head"
    prompt, response = "Write add.", "def add(x, y):\n    return x + y"
    assert (
        reloaded.predict([prompt], [response])[0].spans
        == trainer.span_reward_model().predict([prompt], [response])[0].spans
    )


def test_unusable_pair_rows_are_counted_and_skipped(tmp_path, tiny_llama, smollm2_tokenizer, caplog):
    import logging

    rows = _pairs(12, 4, form="explicit_chat")
    rows[1]["chosen"] = [{"role": "assistant", "content": None}]  # no text to score
    rows[2]["rejected"] = None  # half a pair
    rows = [dict(r, margin=None if i == 3 else 0.5) for i, r in enumerate(rows)]
    with caplog.at_level(logging.WARNING):
        trainer = SpanRewardTrainer(
            tiny_llama(), args=_config(tmp_path), train_dataset=_dataset(rows), processing_class=smollm2_tokenizer
        )
    assert trainer.data_stats["train"] == {**trainer.data_stats["train"], "rows": 2, "pairs": 2, "rows_skipped": 2}
    assert "row 1: 'chosen' must be" in caplog.text and "row 2: neither" in caplog.text
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["margin"].tolist() == [0.5, 0.0]  # a missing margin is 0, as a data set without the column
    with pytest.raises(ValueError, match="no usable rows"):
        SpanRewardTrainer(tiny_llama(), args=_config(tmp_path), train_dataset=_dataset([rows[1], rows[2]]),
                          processing_class=smollm2_tokenizer)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Incompatible combinations fail at init, with the reason
# ---------------------------------------------------------------------------------------------------------------
def test_incompatible_combinations_raise_clear_errors(tmp_path, tiny_llama, smollm2_tokenizer):
    from peft import LoraConfig

    pairs, spans = Dataset.from_list(_pairs(9, 4)), Dataset.from_list(_span_rows(9, 4))
    mixed = _dataset(_pairs(9, 2) + _span_rows(9, 2))
    classifier = _tiny_classifier(smollm2_tokenizer)

    def build(model, args, data, **kwargs):
        return SpanRewardTrainer(model, args=args, train_dataset=data, processing_class=smollm2_tokenizer, **kwargs)

    # critique loss on a sequence classifier (was: TypeError 'NoneType' object is not callable mid-training)
    with pytest.raises(ValueError, match="language-modelling head"):
        build(classifier, _config(tmp_path, critique_loss_weight=0.5), pairs)
    with pytest.raises(ValueError, match="language-modelling head"):
        SpanRewardConfig(str(tmp_path), model_form="sequence_classification", critique_loss_weight=0.5)
    # a classifier cannot learn from spans
    with pytest.raises(ValueError, match="span rows"):
        build(classifier, _config(tmp_path), spans)
    with pytest.raises(ValueError, match="span rows"):
        build(classifier, _config(tmp_path), mixed)
    # a classifier asked to be a token head
    with pytest.raises(ValueError, match="sequence classifier"):
        build(classifier, _config(tmp_path, model_form="token_head"), pairs)
    # a SEQ_CLS adapter on the causal LM of a span model
    with pytest.raises(ValueError, match="SEQ_CLS"):
        build(tiny_llama(), _config(tmp_path), spans, peft_config=LoraConfig(r=2, task_type="SEQ_CLS"))
    # the generative form has no sequence reward
    with pytest.raises(ValueError, match="generative form learns from span rows only"):
        build(tiny_llama(), _config(tmp_path, model_form="generative"), mixed)
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        SpanRewardConfig(str(tmp_path), model_form="generative", center_rewards_coefficient=0.01)
    # center_rewards_coefficient with nothing to center
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        build(tiny_llama(), _config(tmp_path, center_rewards_coefficient=0.01), spans)
    # the span forms need text: pre-tokenized pairs and streaming data sets go to a sequence classifier
    tokenized = Dataset.from_list([{"chosen_ids": [1, 2], "rejected_ids": [1, 3]}])
    with pytest.raises(ValueError, match="pre-tokenized"):
        build(tiny_llama(), _config(tmp_path), tokenized)
    with pytest.raises(TypeError, match="IterableDataset"):
        build(tiny_llama(), _config(tmp_path), pairs.to_iterable_dataset())
    # cloning a chat template resizes embeddings under the wrapper: refused; a .jinja template is accepted
    with pytest.raises(ValueError, match="chat_template_path"):
        build(tiny_llama(), _config(tmp_path, chat_template_path=str(tmp_path / "some-tokenizer")), pairs)
    # pad_to_multiple_of is honoured by the token head's collator
    padded = build(tiny_llama(), _config(tmp_path, pad_to_multiple_of=64), mixed)
    batch = padded.data_collator([padded.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[1] % 64 == 0 and batch["span_labels"].shape == batch["input_ids"].shape
    assert (batch["span_labels"][:, -1] == -100).all() and (batch["head_mask"][:, -1] == 0).all()
    # a head dropout that disable_dropout would switch off silently
    with pytest.raises(ValueError, match="disable_dropout"):
        SpanRewardConfig(str(tmp_path), head_dropout=0.1)
    # a TRL RewardConfig: pointed to the drop-in config
    from trl import RewardConfig

    with pytest.raises(TypeError, match="SpanRewardConfig as RewardConfig"):
        build(tiny_llama(), RewardConfig(str(tmp_path / "x"), use_cpu=True, bf16=False), pairs)
    # the head model itself refuses a critique loss without an LM head (instead of calling None)
    head = SpanTokenHeadModel(_tiny_classifier(smollm2_tokenizer), critique_loss_weight=1.0)
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="language-modelling head"):
        head(input_ids=ids, lm_labels=torch.tensor([[-100, -100, 7, 8]]))
    # still accepted: center_rewards_coefficient on pairs (it is used; see the loss test)
    trainer = build(tiny_llama(), _config(tmp_path, center_rewards_coefficient=0.01), mixed)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with_center = trainer.compute_loss(trainer.model, dict(batch))
    trainer.args.center_rewards_coefficient = None  # test only: compare with the coefficient off
    assert (with_center - trainer.compute_loss(trainer.model, dict(batch))).item() > 0  # + c·mean((R_c + R_r)²)


# ---------------------------------------------------------------------------------------------------------------
# A TRL reward script with the import changed
# ---------------------------------------------------------------------------------------------------------------
def _run_script(script: Path, model_dir: str, data_dir: Path, out: Path) -> dict:
    cmd = [sys.executable, str(script), "--model_name_or_path", model_dir, "--dataset_name", str(data_dir),
           "--output_dir", str(out), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
           "--max_steps", "12", "--learning_rate", "5e-3", "--eval_strategy", "steps", "--eval_steps", "100",
           "--logging_steps", "4", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True",
           "--bf16", "False", "--max_length", "128", "--seed", "0"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads((out / "eval_results.json").read_text())


def test_trl_reward_script_runs_with_only_the_import_changed(tmp_path, tiny_model_dir):
    data = tmp_path / "pairs"
    data.mkdir()
    for split, rows in (("train", _pairs(10, 48, form="implicit_chat")),
                        ("test", _pairs(11, 16, HELD_OUT_NAMES, HELD_OUT_VARS, form="implicit_chat"))):  # fmt: skip
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours = _run_script(SCRIPT, tiny_model_dir, data, tmp_path / "ours")
    original = SCRIPT.read_text()
    line = (
        "from trl_text2grad import SpanRewardConfig as RewardConfig  # the one change: these two lines\n"
        "from trl_text2grad import SpanRewardTrainer as RewardTrainer"
    )
    assert line in original
    trl_copy = tmp_path / "reward_trl_import.py"
    trl_copy.write_text(original.replace(line, "from trl import RewardConfig, RewardTrainer"))
    theirs = _run_script(trl_copy, tiny_model_dir, data, tmp_path / "trl")
    print(f"TRL example script, held-out eval_accuracy: ours {ours['eval_accuracy']}, trl {theirs['eval_accuracy']}")
    for key in ("eval_loss", "eval_accuracy", "eval_margin", "eval_mean_reward"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    saved = tmp_path / "ours"
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    assert not (saved / "span_reward_config.json").exists()  # a plain TRL reward model, readable by TRL and PPO


def test_reward_cli_trains_the_token_head_on_pairs(tmp_path, tiny_model_dir):
    """`trl-text2grad reward` takes a pair set as it takes annotations (split by prompt, evaluated, saved)."""
    from trl_text2grad.cli.reward import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pairs(13, 16, form="implicit_chat")))
    out = tmp_path / "cli"
    argv = ["--model_name_or_path", tiny_model_dir, "--dataset_name", str(data), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true",
            "--eval_fraction", "0.25", "--save_strategy", "no", "--eval_strategy", "no"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and "eval_margin" in results
    assert json.loads((out / "span_reward_config.json").read_text())["model_form"] == "token_head"


@pytest.mark.multiproc
def test_mixed_batches_in_two_processes_neither_hang_nor_diverge(tmp_path):
    """A step where one process has a pair and the other a span row: every process gathers the same statistics."""
    from conftest import accelerate_launch, free_port

    out = tmp_path / "out"
    cmd = [*accelerate_launch(), "--config_file", str(REPO / "recipes" / "accelerate" / "multi_cpu.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()),
           str(REPO / "tests" / "scripts" / "multiproc_span_reward.py"), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["global_step"] == 6 for r in ranks)
    steps = list(zip(ranks[0]["kinds"], ranks[1]["kinds"]))
    assert any(a != b for a, b in steps), steps  # the case that would hang a conditional gather
    assert ranks[0]["params_after"] == ranks[1]["params_after"]
    logged = [e for e in ranks[0]["log_history"] if "loss" in e]
    assert len(logged) == 6 and any("accuracy" in e for e in logged) and any("span_loss" in e for e in logged)
