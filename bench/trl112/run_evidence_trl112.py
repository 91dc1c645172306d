"""The ``trl112`` arm of the evidence runs: trl==1.12.0's classic ``PPOTrainer`` trained with the task critic.

Runs INSIDE the trl 1.12 virtual environment (``scripts/make_trl112_venv.sh``); start it through
``bench/learning_curves.py --arm trl112``, which passes the model and tokenizer paths. It takes the same arguments as
``bench/learning_curves.py`` and writes the same per-update files (``<task>_trl112_seed<N>.{jsonl,csv,meta.json}``),
so the plots put the three arms side by side.

trl 1.12's ``PPOTrainer`` only accepts a reward *model*: it calls ``get_reward(reward_model, query_responses, ...)``,
which runs ``getattr(reward_model, reward_model.base_model_prefix)`` on the masked token ids and reads
``reward_model.score(hidden_states[-1])`` at the last response token. :class:`CriticAsSequenceClassifier` has that
shape: its "backbone" passes the token ids through as the hidden state, and its ``score`` decodes each prompt and
response, asks the task critic, and returns the critic's scalar (the same ``sum(scores) / number of spans`` the
``scalar`` arm gets) at every position. Nothing in trl is patched; rollout, KL penalty, GAE and losses are trl 1.12's.

What differs from our two arms, because trl 1.12 works that way:

- the value function is a separate ``AutoModelForSequenceClassification`` initialised from the policy checkpoint and
  fully fine-tuned (trl 1.12 has no value head on the policy); the policy is LoRA-adapted like in the other arms;
- prompts are drawn by trl's own shuffled ``DataLoader`` (the same set of prompts, another order);
- the learning rate decays linearly per update (ours: per optimizer step);
- the pad token is ``<|endoftext|>``: with SmolLM2's default pad (= ``<|im_end|>``) trl 1.12 would mask every
  ``<|im_end|>`` of the chat-templated prompt out of attention.

The package code imported is the two evidence tasks (``trl_text2grad.tasks.constrained_text`` / ``.simple_code``)
and what they import (critics, spans); no trainer.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "src"))

import learning_curves  # noqa: E402
from learning_curves import get_task  # noqa: E402

PAD_TOKEN = "<|endoftext|>"


class _TokenIdsBackbone(nn.Module):
    """Stands where a transformer backbone would: returns the (masked) input ids as a one-feature hidden state."""

    def forward(self, input_ids: torch.Tensor, **_unused) -> SimpleNamespace:
        return SimpleNamespace(hidden_states=(input_ids.unsqueeze(-1).to(torch.float32),))


class CriticAsSequenceClassifier(nn.Module):
    """A programmatic critic in the shape of a sequence-classification reward model, for trl 1.12's ``get_reward``.

    Args:
        tokenizer: The policy's tokenizer (decodes responses exactly as ``SpanPPOTrainer`` does for its reward
            functions: special tokens skipped, no clean-up of spaces).
        prompt_context: Maps each prompt's token ids (a tuple) to its task context (e.g. ``{"required": "waves",
            "forbidden": [...]}``), the columns the critic needs besides the response.
        recorder: ``learning_curves.RewardRecorder(task, "scalar")``: judges, records the per-update metrics and
            returns the scalar rewards.
        pad_token_id: The id trl masks (and fills after the stop token); it ends a response.
    """

    base_model_prefix = "backbone"

    def __init__(self, tokenizer, prompt_context: dict[tuple[int, ...], dict], recorder, pad_token_id: int) -> None:
        super().__init__()
        self.backbone = _TokenIdsBackbone()
        self.tokenizer = tokenizer
        self.prompt_context = prompt_context
        self.prompt_lengths = sorted({len(k) for k in prompt_context})
        self.recorder = recorder
        self.pad_token_id = pad_token_id

    def _split(self, ids: list[int]) -> tuple[tuple[int, ...], list[int]]:
        """``(prompt ids, response ids)`` of one left-padded row; the response ends at the first pad."""
        start = 0
        while start < len(ids) and ids[start] in (0, self.pad_token_id):  # trl masks pads to id 0
            start += 1
        for length in self.prompt_lengths:
            prompt = tuple(ids[start : start + length])
            if prompt in self.prompt_context:
                response = ids[start + length :]
                for cut, token in enumerate(response):
                    if token in (0, self.pad_token_id):
                        response = response[:cut]
                        break
                return prompt, response
        raise ValueError(
            "CriticAsSequenceClassifier: a query does not start with any prompt of the training set; "
            f"first ids after padding: {ids[start : start + 12]}"
        )

    def score(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states[..., 0].round().long().tolist()
        prompts, responses, contexts = [], [], []
        for ids in rows:
            prompt, response_ids = self._split(ids)
            prompts.append(prompt)
            responses.append(
                self.tokenizer.decode(response_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            )
            contexts.append(self.prompt_context[prompt])
        columns = {key: [c[key] for c in contexts] for key in contexts[0]}
        scores = self.recorder(prompts, responses, **columns)
        value = torch.tensor(scores, dtype=hidden_states.dtype, device=hidden_states.device)
        return value[:, None, None].expand(-1, hidden_states.shape[1], 1)


def main(argv=None) -> str:
    args = learning_curves.parse_args(argv)
    if args.arm != "trl112":
        raise SystemExit("run_evidence_trl112.py runs the trl112 arm only (--arm trl112).")
    if not (args.model and args.tokenizer):
        raise SystemExit("pass --model and --tokenizer (bench/learning_curves.py --arm trl112 does).")
    torch.set_num_threads(args.threads)

    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if trl.__version__ != "1.12.0":
        print(f"warning: expected trl 1.12.0, found {trl.__version__}", file=sys.stderr)

    task = get_task(args.task)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, padding_side="left")
    tokenizer.pad_token = PAD_TOKEN
    rows = task.prompts(args.updates * args.batch_size, args.seed)
    prompt_ids, prompt_context = [], {}
    for row in rows:
        text = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # as SpanPPOTrainer encodes chat prompts
        prompt_ids.append(ids)
        prompt_context[tuple(ids)] = {k: v for k, v in row.items() if k != "prompt"}
    if tokenizer.pad_token_id in {i for ids in prompt_ids for i in ids}:
        raise SystemExit(f"the pad token {PAD_TOKEN!r} occurs in a prompt; trl 1.12 would mask it")

    set_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    value_model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    value_model.config.pad_token_id = tokenizer.pad_token_id
    recorder = learning_curves.RewardRecorder(task, "scalar")
    reward_model = CriticAsSequenceClassifier(tokenizer, prompt_context, recorder, tokenizer.pad_token_id)

    run_name = f"{args.task}_{args.arm}_seed{args.seed}"
    logs: list[dict] = []
    config = PPOConfig(**learning_curves.ppo_settings(args, run_name))
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=Dataset.from_dict({"input_ids": prompt_ids}),
        value_model=value_model,
        peft_config=learning_curves.lora_config(args),
        callbacks=[learning_curves.progress_callback(args, recorder, logs, run_name)],
    )
    t0 = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - t0
    return learning_curves.write_run(args, run_name, recorder, logs, total_s)


if __name__ == "__main__":
    main()
