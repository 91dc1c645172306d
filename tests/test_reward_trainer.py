"""SpanRewardTrainer end to end on tiny random models (fast), both forms, plus bad input and checkpoint reload."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from datasets import Dataset

from trl_text2grad.reward.scoring import SpanRewardModel
from trl_text2grad.reward.span_reward_config import SpanRewardConfig
from trl_text2grad.reward.span_reward_trainer import SpanRewardTrainer
from trl_text2grad.spans import Critique

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        buggy = i % 2 == 0
        op = "-" if buggy else "+"
        response = f"def add(x, y):\n    return x {op} y  # v{i}"
        rows.append(
            {
                "prompt": f"Write add for case {i}.",
                "response": response,
                "critique": "Subtracts instead of adding." if buggy else "Correct.",
                "good_spans": [] if buggy else [f"return x {op} y"],
                "poor_spans": [f"return x {op} y"] if buggy else [],
                "task_id": f"t{i}",
            }
        )
    return rows


def _config(tmp_path, form: str, **overrides) -> SpanRewardConfig:
    settings = dict(
        model_form=form,
        max_steps=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=5e-3,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        max_length=96,
        max_new_tokens=12,
        use_cpu=True,
        seed=0,
    )
    settings.update(overrides)
    return SpanRewardConfig(str(tmp_path / f"out_{form}"), **settings)


def test_token_head_end_to_end_save_reload_identical(tmp_path, tiny_llama, smollm2_tokenizer):
    import trl

    rows = _rows()
    trainer = SpanRewardTrainer(
        tiny_llama(),
        args=_config(tmp_path, "token_head", critique_loss_weight=0.5),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:4]),
        processing_class=smollm2_tokenizer,
    )
    assert isinstance(trainer, trl.RewardTrainer)
    head_before = trainer.model.span_head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(head_before, trainer.model.span_head.weight.detach())
    logged = [entry for entry in trainer.state.log_history if "span_loss" in entry]
    assert logged and all("critique_loss" in entry and "span_accuracy" in entry for entry in logged)

    metrics = trainer.evaluate()
    for key in (
        "eval_loss",
        "eval_good_precision",
        "eval_poor_recall",
        "eval_exact_span_precision",
        "eval_parse_rate",
    ):
        assert key in metrics or key.replace("precision", "recall") in metrics, key
    assert metrics["eval_parse_rate"] == 1.0

    trainer.save_model()
    out = trainer.args.output_dir
    saved = json.loads(open(f"{out}/span_reward_config.json").read())
    assert saved["model_form"] == "token_head" and saved["head_layout"] == "repeat"
    for name in ("span_head.safetensors", "README.md", "tokenizer.json"):
        assert (tmp_path / "out_token_head" / name).is_file(), name
    assert "token_head" in (tmp_path / "out_token_head" / "README.md").read_text()

    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    in_memory = trainer.span_reward_model(batch_size=5).predict(prompts, responses)
    reloaded = SpanRewardModel.from_pretrained(out, batch_size=3)
    again = reloaded.predict(prompts, responses)
    assert [p.critique for p in again] == [p.critique for p in in_memory]
    assert [p.spans for p in again] == [p.spans for p in in_memory]
    # batch size does not change the result (right padding, no cross-row leakage)
    assert SpanRewardModel.from_pretrained(out, batch_size=1).score(prompts, responses) == reloaded.score(
        prompts, responses
    )
    for prediction, response in zip(again, responses):
        assert isinstance(prediction.critique, Critique)
        for span in prediction.spans:  # spans travel as characters: exact substrings of the response
            assert response[span.start : span.end] == span.quote
    assert reloaded(prompts[:2], responses[:2], tests=["x", "y"]) == reloaded.score(prompts[:2], responses[:2])


def test_token_head_learns_a_span_rule(tmp_path, tiny_llama, smollm2_tokenizer):
    """'x - y' is poor, 'x + y' is good: in the repeat layout every token of the second copy can see the sign."""
    rows = _rows(16)
    trainer = SpanRewardTrainer(
        tiny_llama(seed=1),
        args=_config(
            tmp_path, "token_head", head_layout="repeat", max_steps=120, learning_rate=1e-2, logging_steps=120
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=smollm2_tokenizer,
    )
    trainer.train()
    metrics = trainer.compute_span_metrics(Dataset.from_list(rows))
    assert metrics["poor_f1"] > 0.8 and metrics["good_f1"] > 0.8, metrics


def test_generative_end_to_end_unparseable_is_neutral(tmp_path, tiny_llama, smollm2_tokenizer):
    rows = _rows(8)
    trainer = SpanRewardTrainer(
        tiny_llama(),
        args=_config(tmp_path, "generative", max_length=256),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:2]),
        processing_class=smollm2_tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    labels = batch["labels"][0]
    target = smollm2_tokenizer.decode(labels[labels != -100])
    assert (
        target.startswith('{"critique": "Subtracts instead of adding."') and '"poor_spans": ["return x - y"]' in target
    )
    assert target.endswith(smollm2_tokenizer.eos_token)
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_parse_rate" in metrics
    trainer.save_model()
    reloaded = SpanRewardModel.from_pretrained(trainer.args.output_dir, batch_size=2)
    assert reloaded.form == "generative"
    prompts, responses = [r["prompt"] for r in rows[:3]], [r["response"] for r in rows[:3]]
    first = reloaded.predict(prompts, responses)
    # a random tiny model writes no JSON: every sample is counted and gets a neutral critique, no exception
    assert reloaded.stats["num_unparseable"] == sum(not p.parsed for p in first)
    for p in first:
        if not p.parsed:
            assert p.critique == Critique() and p.spans == []
    in_memory = trainer.span_reward_model(batch_size=2).predict(prompts, responses)
    assert [p.raw_output for p in first] == [p.raw_output for p in in_memory]


def test_generative_scoring_parses_and_locates(tmp_path, tiny_llama, smollm2_tokenizer, monkeypatch):
    """Scoring logic of the generative form with a stubbed generate(): parse, locate, keep exact substrings."""
    model = tiny_llama()
    rm = SpanRewardModel(model, smollm2_tokenizer, {"model_form": "generative", "max_new_tokens": 4})
    outputs = iter(
        [
            '{"critique": "bad sign", "good_spans": ["def add(x, y):"], "poor_spans": ["return x - y", "nope nope"]}',
            "I cannot answer that.",
        ]
    )

    def fake_generate(input_ids, attention_mask, **kwargs):
        texts = [next(outputs) for _ in range(input_ids.shape[0])]
        new = [smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(n) for n in new)
        pad = smollm2_tokenizer.pad_token_id
        tail = torch.tensor([n + [pad] * (width - len(n)) for n in new])
        return torch.cat([input_ids, tail], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    response = "def add(x, y):\n    return x - y"
    predictions = rm.predict(["p1", "p2"], [response, response])
    assert predictions[0].parsed and predictions[0].critique == Critique(
        "bad sign", ["def add(x, y):"], ["return x - y"]
    )
    assert [(s.start, s.end, s.score) for s in predictions[0].spans] == [(0, 14, 1.0), (19, 31, -1.0)]
    assert not predictions[1].parsed and predictions[1].critique == Critique()
    assert rm.stats["num_unparseable"] == 1 and rm.stats["num_scored"] == 2


def test_bad_input_counted_not_crashing(tmp_path, tiny_llama, smollm2_tokenizer, caplog):
    long_response = "def f(x):\n" + "\n".join(f"    y{i} = x + {i}" for i in range(80)) + "\n    return x"
    rows = [
        {"prompt": "a", "response": "def f(x):\n    return x", "critique": "", "good_spans": [], "poor_spans": []},
        {"prompt": "b", "response": "def g(x):\n    return -x", "critique": "c", "good_spans": ["not in it"],
         "poor_spans": ["return -x"]},
        {"prompt": "c", "response": long_response, "critique": "long", "good_spans": [], "poor_spans": ["return x"]},
        {"prompt": "d", "response": None, "critique": "none", "good_spans": [], "poor_spans": []},
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        trainer = SpanRewardTrainer(
            tiny_llama(),
            args=_config(tmp_path, "token_head", max_length=64, max_steps=1),
            train_dataset=Dataset.from_list(rows),
            processing_class=smollm2_tokenizer,
        )
    stats = trainer.data_stats["train"]
    assert stats["rows"] == 3 and stats["rows_skipped"] == 1
    assert stats["quotes_unlocated"] == 1 and stats["rows_truncated"] == 1 and stats["rows_without_spans"] == 1
    assert "skipped" in caplog.text and "could not be located" in caplog.text
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert int(batch["num_quotes_unlocated"]) == 1 and int(batch["num_spans_truncated"]) == 1
    assert (batch["span_labels"][1] == 2).any()  # the located poor quote of row 1 is kept
    trainer.train()  # no crash on the row without spans or the truncated row

    gen = SpanRewardTrainer(
        tiny_llama(),
        args=_config(tmp_path, "generative", max_length=160, max_steps=1),
        train_dataset=Dataset.from_list(rows),
        processing_class=smollm2_tokenizer,
    )
    stats = gen.data_stats["train"]
    assert stats["rows"] == 3 and stats["quotes_unlocated"] == 1 and stats["rows_truncated"] == 1
    assert all(len(ids) <= 160 for ids in gen.train_dataset["input_ids"])
    gen.train()

    with pytest.raises(ValueError, match="lacks column"):
        SpanRewardTrainer(
            tiny_llama(),
            args=_config(tmp_path, "token_head"),
            train_dataset=Dataset.from_list([{"prompt": "a", "text": "b"}]),
            processing_class=smollm2_tokenizer,
        )
    with pytest.raises(ValueError, match="no annotation columns"):
        SpanRewardTrainer(
            tiny_llama(),
            args=_config(tmp_path, "token_head"),
            train_dataset=Dataset.from_list([{"prompt": "a", "response": "b"}]),
            processing_class=smollm2_tokenizer,
        )
    with pytest.raises(TypeError, match="SpanRewardConfig"):
        from trl import RewardConfig

        SpanRewardTrainer(tiny_llama(), args=RewardConfig(str(tmp_path / "x"), use_cpu=True, bf16=False),
                          train_dataset=Dataset.from_list(rows[:1]), processing_class=smollm2_tokenizer)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="span_reward_config.json"):
        SpanRewardModel.from_pretrained(tmp_path)


def test_explicit_spans_and_lora_checkpoint(tmp_path, tiny_llama, smollm2_tokenizer):
    """Rows with character spans only; LoRA adapter layout; resume-style reload of adapter + head."""
    from peft import LoraConfig

    response = "def add(x, y):\n    return x - y"
    rows = [{"prompt": f"p{i}", "response": response, "spans": [[19, 31, -1.0]]} for i in range(4)]
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    smollm2_tokenizer.save_pretrained(base_dir)
    trainer = SpanRewardTrainer(
        str(base_dir),
        args=_config(tmp_path, "token_head", max_steps=2, head_layout="plain"),
        train_dataset=Dataset.from_list(rows),
        processing_class=smollm2_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out_token_head"
    assert (out / "adapter_config.json").is_file() and (out / "span_head.safetensors").is_file()
    config = json.loads((out / "span_reward_config.json").read_text())
    assert config["adapter"] is True and config["base_model_name_or_path"] == str(base_dir)
    expected = trainer.span_reward_model().predict(["p"], [response])[0].spans
    merged = SpanRewardModel.from_pretrained(out).predict(["p"], [response])[0].spans
    unmerged = SpanRewardModel.from_pretrained(out, merge_adapter=False).predict(["p"], [response])[0].spans
    assert merged == expected == unmerged
    # _load_from_checkpoint restores adapter + head into a fresh trainer
    fresh = SpanRewardTrainer(
        str(base_dir),
        args=_config(tmp_path / "fresh", "token_head", max_steps=2, head_layout="plain"),
        train_dataset=Dataset.from_list(rows),
        processing_class=smollm2_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    fresh._load_from_checkpoint(str(out))
    assert torch.equal(fresh.model.span_head.weight, trainer.model.span_head.weight)
    assert fresh.span_reward_model().predict(["p"], [response])[0].spans == expected
