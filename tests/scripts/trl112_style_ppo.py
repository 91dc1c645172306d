"""A PPO training script written the way TRL 1.12's ``examples/scripts/ppo/ppo.py`` is, with one import changed.

Used by ``tests/test_trl_dropin.py`` to check that a TRL user's script runs on ``trl_text2grad`` as it is: arguments
are parsed by ``HfArgumentParser`` over ``ScriptArguments``, the PPO config and ``ModelConfig``; the pad token is
added to the tokenizer as a *new* special token (without resizing the embeddings); reward and value models are
``AutoModelForSequenceClassification``; LoRA comes from ``get_peft_config``. Apart from the import marked below, the
only other liberty is a smaller evaluation split, to keep the test fast.

    python tests/scripts/trl112_style_ppo.py --dataset_name <folder with train.jsonl> --dataset_train_split train \
        --output_dir out --per_device_train_batch_size 2 --total_episodes 6 --model_name_or_path <tokenizer dir> \
        --sft_model_path <causal LM dir> --reward_model_path <causal LM dir> --missing_eos_penalty 1.0
"""

import shutil

import torch
from accelerate import PartialState
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser
from trl import ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

# TRL 1.12: from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl_text2grad import SpanPPOConfig as PPOConfig
from trl_text2grad import SpanPPOTrainer as PPOTrainer

EVAL_ROWS = 8


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, PPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_into_dataclasses()
    shutil.rmtree(training_args.output_dir, ignore_errors=True)

    # Models and tokenizer
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    model_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, padding_side="left")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # a new token: its id is past the embedding's last row
    value_model = AutoModelForSequenceClassification.from_pretrained(
        training_args.reward_model_path, num_labels=1, **model_kwargs
    )
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        training_args.reward_model_path, num_labels=1, **model_kwargs
    )
    policy = AutoModelForCausalLM.from_pretrained(training_args.sft_model_path, **model_kwargs)
    peft_config = get_peft_config(model_args)
    ref_policy = (
        AutoModelForCausalLM.from_pretrained(training_args.sft_model_path, **model_kwargs)
        if peft_config is None
        else None
    )

    # Data: prompts tokenized up front, no padding (the trainer pads at rollout time)
    dataset = load_dataset(
        script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
    )
    train_dataset = dataset.select(range(len(dataset) - EVAL_ROWS))
    eval_dataset = dataset.select(range(len(dataset) - EVAL_ROWS, len(dataset)))

    def tokenize(split):
        return split.map(
            lambda batch: {"input_ids": tokenizer(batch["prompt"], padding=False)["input_ids"]},
            batched=True,
            remove_columns=split.column_names,
            num_proc=training_args.dataset_num_proc,
        )

    with PartialState().local_main_process_first():
        train_dataset = tokenize(train_dataset)
        eval_dataset = tokenize(eval_dataset)

    # Training
    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.generate_completions()


if __name__ == "__main__":
    from process_group import run_and_tear_down

    run_and_tear_down(main)
