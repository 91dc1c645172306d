"""Run trl==1.12.0's classic ``PPOTrainer`` (``trl.experimental.ppo``) and dump its per-update metrics to JSON.

Runs INSIDE the trl 1.12 virtual environment (``scripts/make_trl112_venv.sh``); it must not import
``trl_text2grad``. Used by ``tests/test_trl112_parity.py`` (parity against ``SpanPPOTrainer(reward_mode="scalar")``)
and by ``bench/ppo_step.py`` (seconds per update, peak RSS).

Identical rollouts on both sides: with ``--argmax-sampling`` (the default) ``torch.multinomial`` is replaced, for the
duration of training, by "take the most probable token". Generation still goes through ``generate(do_sample=True)``
with TRL's temperature, so the log-probabilities PPO trains on are exactly those of the tempered distribution; only
the random draw is made deterministic and independent of RNG state, batch order and the number of draws each
implementation makes. ``--no-argmax-sampling`` keeps real sampling (for the benchmark).

Example::

    ~/.cache/trl_text2grad/trl112-venv/bin/python bench/trl112/run_trl112_ppo.py \
        --models-dir /tmp/tiny --out /tmp/trl112.json --num-updates 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_setup  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", help="directory with policy/ value/ reward/ tokenizer/ (see tiny_setup.py)")
    p.add_argument("--policy", help="policy path (overrides --models-dir)")
    p.add_argument("--value", help="value model path (sequence classification, num_labels=1)")
    p.add_argument("--reward", help="reward model path (sequence classification, num_labels=1)")
    p.add_argument("--tokenizer", help="tokenizer path")
    p.add_argument("--build-tiny", action="store_true", help="build the tiny models into --models-dir first")
    p.add_argument("--tokenizer-source", help="tokenizer to copy when --build-tiny (e.g. the SmolLM2 path)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--output-dir", default=None, help="trainer output_dir (default: a temporary directory)")
    p.add_argument("--save-final", default=None, help="save final policy and value weights here")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--num-updates", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--num-mini-batches", type=int, default=1)
    p.add_argument("--num-ppo-epochs", type=int, default=2)
    p.add_argument("--response-length", type=int, default=12)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--kl-estimator", default="k1")
    p.add_argument("--cliprange", type=float, default=0.2)
    p.add_argument("--cliprange-value", type=float, default=0.2)
    p.add_argument("--vf-coef", type=float, default=0.1)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--lam", type=float, default=0.95)
    p.add_argument("--whiten-rewards", action="store_true")
    p.add_argument("--stop-token", default=None, choices=[None, "eos"])
    p.add_argument("--stop-token-id", type=int, default=None)
    p.add_argument("--missing-eos-penalty", type=float, default=None)
    p.add_argument("--local-rollout-forward-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--argmax-sampling", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of all four models")
    p.add_argument("--dump-tokens", action="store_true", help="also dump queries and generated tokens per update")
    return p.parse_args(argv)


class _Recorder:
    """Collects logs and per-update wall-clock times through a TrainerCallback."""

    def __init__(self):
        from transformers import TrainerCallback

        recorder = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                recorder.marks.append(time.perf_counter())
                recorder.cpu_marks.append(time.process_time())

            def on_step_end(self, args, state, control, **kwargs):
                recorder.marks.append(time.perf_counter())
                recorder.cpu_marks.append(time.process_time())

            def on_log(self, args, state, control, logs=None, **kwargs):
                recorder.logs.append(dict(logs or {}))

        self.logs: list[dict] = []
        self.marks: list[float] = []
        self.cpu_marks: list[float] = []  # CPU time of all threads: robust to other jobs on a shared machine
        self.callback = _CB()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    if trl.__version__ != "1.12.0":
        print(f"warning: expected trl 1.12.0, found {trl.__version__}", file=sys.stderr)

    if args.build_tiny:
        if not (args.models_dir and args.tokenizer_source):
            raise SystemExit("--build-tiny needs --models-dir and --tokenizer-source")
        tiny_setup.build_tiny_models(args.models_dir, args.tokenizer_source, seed=args.seed)
    paths = {}
    for name in ("policy", "value", "reward", "tokenizer"):
        paths[name] = getattr(args, name) or (os.path.join(args.models_dir, name) if args.models_dir else None)
        if paths[name] is None:
            raise SystemExit(f"missing --{name} (or --models-dir)")

    t_load = time.perf_counter()
    tokenizer = tiny_setup.load_tokenizer(paths["tokenizer"])
    set_seed(args.seed)  # seeds python, numpy (PPO's mini-batch permutation) and torch
    dtype = getattr(torch, args.dtype)
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=dtype)
    ref_policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(paths["value"], num_labels=1, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(paths["reward"], num_labels=1, dtype=dtype)
    load_s = time.perf_counter() - t_load

    prompts = tiny_setup.make_prompts(args.num_prompts)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="trl112_ppo_")
    config = PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_mini_batches=args.num_mini_batches,
        num_ppo_epochs=args.num_ppo_epochs,
        total_episodes=args.num_updates * args.batch_size * args.gradient_accumulation_steps,
        response_length=args.response_length,
        temperature=args.temperature,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",  # trl 1.12 steps its scheduler per update, Trainer-based loops per optimizer step
        kl_coef=args.kl_coef,
        kl_estimator=args.kl_estimator,
        cliprange=args.cliprange,
        cliprange_value=args.cliprange_value,
        vf_coef=args.vf_coef,
        gamma=args.gamma,
        lam=args.lam,
        whiten_rewards=args.whiten_rewards,
        stop_token=args.stop_token,
        stop_token_id=args.stop_token_id,
        missing_eos_penalty=args.missing_eos_penalty,
        local_rollout_forward_batch_size=args.local_rollout_forward_batch_size,
        num_sample_generations=0,
        seed=args.seed,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    recorder = _Recorder()
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        callbacks=[recorder.callback],
    )

    rollouts: list[dict] = []
    original_batch_generation = ppo_module.batch_generation

    def recording_batch_generation(model, queries, *a, **kw):
        query_responses, logits = original_batch_generation(model, queries, *a, **kw)
        if args.dump_tokens:
            rollouts.append(
                {
                    "queries": queries.tolist(),
                    "responses": query_responses[:, queries.shape[1] :].tolist(),
                }
            )
        return query_responses, logits

    ppo_module.batch_generation = recording_batch_generation
    original_multinomial = torch.multinomial
    if args.argmax_sampling:

        def argmax_multinomial(probs, num_samples, *a, **kw):
            if num_samples != 1:
                raise RuntimeError("argmax sampling only supports num_samples=1")
            return probs.argmax(dim=-1, keepdim=True)

        torch.multinomial = argmax_multinomial
    try:
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    finally:
        torch.multinomial = original_multinomial
        ppo_module.batch_generation = original_batch_generation

    if args.save_final:
        policy.save_pretrained(os.path.join(args.save_final, "policy"))
        value_model.save_pretrained(os.path.join(args.save_final, "value"))

    update_logs = [log for log in trainer.state.log_history if "loss/policy_avg" in log]
    step_times = [b - a for a, b in zip(recorder.marks, recorder.marks[1:])]
    result = {
        "implementation": "trl-1.12.0 PPOTrainer",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args),
        "updates": update_logs,
        "rollouts": rollouts,
        "seconds_per_update": step_times,
        "cpu_seconds_per_update": [b - a for a, b in zip(recorder.cpu_marks, recorder.cpu_marks[1:])],
        "load_seconds": load_s,
        "train_seconds": train_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {len(update_logs)} updates to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
