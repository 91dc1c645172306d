"""Tiny SpanRewardTrainer run on a mixed pairs + spans set for ``tests/test_reward_dropin.py``; launched with
``accelerate launch`` (2 CPU processes, one row per process and step, so at some steps one process holds a pair and
the other a span row). Every rank writes ``rank<k>.json`` to ``--out``: world size, the kinds of its batches, the
logged metrics and fingerprints of the trainable parameters after training (DDP must keep them identical)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the data helpers of test_reward_dropin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    cli = parser.parse_args()

    from accelerate import PartialState
    from multiproc_span_ppo import fingerprint, load_tokenizer

    from conftest import build_tiny_llama
    from test_reward_dropin import SUM_ONLY, _dataset, _pairs, _span_rows
    from trl_text2grad import SpanRewardConfig, SpanRewardTrainer

    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    pairs, spans = _pairs(20, 8, tasks=SUM_ONLY), _span_rows(21, 8, tasks=SUM_ONLY)
    rows = [row for pair in zip(pairs, spans) for row in pair]
    args = SpanRewardConfig(
        tempfile.mkdtemp(prefix=f"multiproc_reward_rank{state.process_index}_"),
        per_device_train_batch_size=1,
        max_steps=cli.steps,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        max_length=96,
    )
    trainer = SpanRewardTrainer(
        build_tiny_llama(tokenizer, seed=0), args=args, train_dataset=_dataset(rows), processing_class=tokenizer
    )
    kinds: list[str] = []
    collate = trainer.data_collator

    def recording_collator(batch):
        out = collate(batch)
        kinds.append("pair" if out["chosen_index"].numel() else "span")
        return out

    trainer.data_collator = recording_collator
    trainer.train()
    result = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "global_step": trainer.state.global_step,
        "kinds": kinds,
        "log_history": trainer.state.log_history,
        "params_after": fingerprint(trainer.model),
    }
    os.makedirs(cli.out, exist_ok=True)
    with open(os.path.join(cli.out, f"rank{state.process_index}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    from process_group import run_and_tear_down

    run_and_tear_down(main)
