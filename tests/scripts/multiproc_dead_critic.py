"""Two-process SpanPPOTrainer run with a dead critic on some ranks, for ``tests/test_critic_failures.py``.

Every rank writes ``rank<k>.json`` to ``--out``: whether training stopped with ``CriticFailureError`` (and its
message) and how many rollouts its critic was asked about. The failure budget is decided on gathered counts, so
every rank must stop at the same rollout: no rank may hang in a collective while the other has left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multiproc_span_ppo import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dead_ranks", default="all", help="'all' or a comma-separated list of ranks")
    parser.add_argument("--max_critic_failure_rate", type=float, default=0.5)
    cli = parser.parse_args()

    from accelerate import PartialState
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_text2grad import CriticFailure, CriticFailureError
    from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
    from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    rank = state.process_index
    dead = cli.dead_ranks == "all" or str(rank) in cli.dead_ranks.split(",")
    calls = {"n": 0}

    def critic(prompts, responses, **context):
        calls["n"] += 1
        if dead:
            return [CriticFailure("connection", f"request failed: APIConnectionError (rank {rank})")] * len(responses)
        return [[(0, max(1, len(text) // 2), 1.0)] if text else [] for text in responses]

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    args = SpanPPOConfig(
        output_dir=tempfile.mkdtemp(prefix=f"multiproc_dead_rank{rank}_"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        num_ppo_epochs=1,
        num_mini_batches=1,
        response_length=4,
        total_episodes=5 * 2 * state.num_processes,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        max_critic_failure_rate=cli.max_critic_failure_rate,
    )
    dataset = Dataset.from_dict({"prompt": [f"Question {i}: name a number." for i in range(20)]})
    trainer = SpanPPOTrainer(args, tokenizer, LlamaForCausalLM(config), None, critic, dataset)
    result = {"rank": rank, "stopped": False, "message": None}
    try:
        trainer.train()
    except CriticFailureError as error:
        result.update(stopped=True, message=str(error))
    result["critic_calls"] = calls["n"]
    os.makedirs(cli.out, exist_ok=True)
    with open(os.path.join(cli.out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    from process_group import run_and_tear_down

    run_and_tear_down(main)
