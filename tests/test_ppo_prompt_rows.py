"""Rows a PPO rollout cannot use are found when the trainer is built (counted, logged, skipped), never mid-run."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

from trl_text2grad.ppo.prompts import drop_unusable_prompt_rows, prompt_problem


@pytest.mark.parametrize(
    ("row", "usable"),
    [
        ({"prompt": "Say hi."}, True),
        ({"prompt": [{"role": "user", "content": "hi"}]}, True),
        ({"input_ids": [1, 2, 3]}, True),
        ({"input_ids": torch.tensor([4, 5])}, True),  # tensors of token ids are fine
        ({"input_ids": [1, 2], "prompt": None}, True),
        ({"prompt": None}, False),
        ({"prompt": "   "}, False),
        ({"prompt": 42}, False),
        ({"prompt": []}, False),
        ({"prompt": [{"role": "user"}]}, False),
        ({"input_ids": []}, False),
        ({"input_ids": [1, -3]}, False),
        ({"input_ids": [1.5, 2]}, False),
        ({"input_ids": "1 2 3"}, False),
        ({"other": "x"}, False),
        ("not a row", False),
    ],
)
def test_prompt_problem(row, usable):
    assert (prompt_problem(row) is None) is usable


def test_unusable_rows_are_skipped_counted_and_logged(caplog):
    rows = [{"prompt": "a"}, {"prompt": None}, {"prompt": "b"}, {"prompt": "  "}, {"prompt": "c"}]
    with caplog.at_level(logging.WARNING):
        kept = drop_unusable_prompt_rows(Dataset.from_list(rows), "train_dataset")
    assert kept["prompt"] == ["a", "b", "c"]
    assert "2 of 5 row(s) skipped" in caplog.text and "row 1:" in caplog.text and "row 3:" in caplog.text
    with pytest.raises(ValueError, match="no usable prompt row"):
        drop_unusable_prompt_rows(Dataset.from_list([{"prompt": None}, {"prompt": ""}]), "train_dataset")
    with pytest.raises(ValueError, match="1 unusable prompt row"):  # a plain list cannot be filtered: say so
        drop_unusable_prompt_rows([{"prompt": "a"}, {"prompt": 3}], "train_dataset")


def test_trainer_skips_bad_rows_at_init(tmp_path, tiny_llama, smollm2_tokenizer):
    from trl_text2grad import SpanPPOConfig, SpanPPOTrainer

    rows = [{"prompt": f"Count to {i}."} for i in range(4)] + [{"prompt": None}, {"prompt": "  "}]
    args = SpanPPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, total_episodes=2, response_length=4,
        report_to=[], bf16=False, gradient_checkpointing=False, save_strategy="no",
    )  # fmt: skip
    trainer = SpanPPOTrainer(
        args=args, processing_class=smollm2_tokenizer, model=tiny_llama(), ref_model=None,
        reward_model=lambda prompts, responses, **kw: [1.0] * len(responses), train_dataset=Dataset.from_list(rows),
    )  # fmt: skip
    assert len(trainer.train_dataset) == 4
    trainer.train()  # every rollout only sees usable prompts
    assert trainer.state.global_step > 0
