"""Span reward model on the real SmolLM2-135M-Instruct with LoRA (slow; the token-head one also runs in CI)."""

from __future__ import annotations

import pytest
from datasets import Dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # see conftest.py


def _rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        buggy = i % 2 == 0
        response = f"def add(x, y):\n    return x {'-' if buggy else '+'} y"
        quote = response.split("\n")[1].strip()
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Write a Python function add(x, y) (case {i})."}],
                "response": response,
                "critique": "It subtracts." if buggy else "Correct.",
                "good_spans": [] if buggy else [quote],
                "poor_spans": [quote] if buggy else [],
            }
        )
    return rows


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[28, 29])


@pytest.mark.ci_real_model
def test_smollm2_token_head_lora_train_save_reload(tmp_path):
    """The one real-model end-to-end check CI runs: LoRA token head on SmolLM2, saved, reloaded, same scores."""
    import trl

    from trl_text2grad.models import default_model_path, load_default_tokenizer
    from trl_text2grad.reward import SpanRewardConfig, SpanRewardModel, SpanRewardTrainer

    rows = _rows()
    args = SpanRewardConfig(
        str(tmp_path / "rm"),
        model_form="token_head",
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=96,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = SpanRewardTrainer(
        default_model_path(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_default_tokenizer(),
        peft_config=_lora(),
    )
    assert isinstance(trainer, trl.RewardTrainer)
    trainer.train()
    assert trainer.state.global_step == 3
    trainer.save_model()
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    expected = trainer.span_reward_model(batch_size=4).predict(prompts, responses)
    reloaded = SpanRewardModel.from_pretrained(args.output_dir, batch_size=3, merge_adapter=False)
    got = reloaded.predict(prompts, responses)
    assert [p.spans for p in got] == [p.spans for p in expected]
    for prediction, response in zip(got, responses):
        for span in prediction.spans:
            assert response[span.start : span.end] == span.quote
    assert (tmp_path / "rm" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "rm" / "README.md").is_file()


def test_smollm2_generative_lora_train_save_reload(tmp_path):
    from trl_text2grad.models import default_model_path, load_default_tokenizer
    from trl_text2grad.reward import SpanRewardConfig, SpanRewardModel, SpanRewardTrainer

    rows = _rows()
    args = SpanRewardConfig(
        str(tmp_path / "rm"),
        model_form="generative",
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=256,
        max_new_tokens=24,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    tokenizer = load_default_tokenizer()
    trainer = SpanRewardTrainer(
        default_model_path(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_lora(),
    )
    ids = trainer.train_dataset[0]["input_ids"]
    assert "<|im_start|>assistant" in tokenizer.decode(ids)  # the model's chat template is used
    trainer.train()
    trainer.save_model()
    prompts, responses = [r["prompt"] for r in rows[:2]], [r["response"] for r in rows[:2]]
    expected = trainer.span_reward_model(batch_size=2).predict(prompts, responses)
    reloaded = SpanRewardModel.from_pretrained(args.output_dir, batch_size=2, merge_adapter=False)
    got = reloaded.predict(prompts, responses)
    assert [p.raw_output for p in got] == [p.raw_output for p in expected]
    assert reloaded.stats["num_scored"] == 2
    assert reloaded.stats["num_unparseable"] == sum(not p.parsed for p in got)
