"""A reward-modelling script in the shape of TRL's example (``examples/scripts/reward_modeling.py``), with only the
import of the trainer and its config changed to trl-text2grad's. ``tests/test_reward_dropin.py`` runs it (and a copy
with TRL's own import) on a tiny local model and a local pair set.

    python tests/scripts/reward_trl_example.py --model_name_or_path <dir> --dataset_name <dir with train/test.jsonl> \
        --output_dir out --per_device_train_batch_size 4 --max_steps 8 --eval_strategy steps --eval_steps 8
"""

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser, set_seed
from trl import ModelConfig, ScriptArguments, get_peft_config, get_quantization_config

from trl_text2grad import SpanRewardConfig as RewardConfig  # the one change: these two lines
from trl_text2grad import SpanRewardTrainer as RewardTrainer

if __name__ == "__main__":
    parser = HfArgumentParser((ScriptArguments, RewardConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_into_dataclasses()
    training_args.gradient_checkpointing_kwargs = dict(use_reentrant=False)
    set_seed(training_args.seed)  # the new reward head is initialised at random when the model loads

    ################
    # Model & Tokenizer
    ################
    dtype = model_args.dtype if model_args.dtype in ["auto", None] else getattr(torch, model_args.dtype)
    quantization_config = get_quantization_config(model_args)
    model_kwargs = dict(
        revision=model_args.model_revision,
        device_map=None,  # TRL's example used get_kbit_device_map(), gone from trl 1.16
        quantization_config=quantization_config,
        use_cache=False if training_args.gradient_checkpointing else True,
        dtype=dtype,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code, use_fast=True
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=1, trust_remote_code=training_args.trust_remote_code, **model_kwargs
    )
    # Align padding tokens between tokenizer and model
    model.config.pad_token_id = tokenizer.pad_token_id

    if model_args.use_peft and model_args.lora_task_type != "SEQ_CLS":
        print("You are using a `task_type` that is different than `SEQ_CLS` for PEFT. This will lead to silent bugs.")

    ##############
    # Load dataset
    ##############
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    ##########
    # Training
    ##########
    trainer = RewardTrainer(
        model=model,
        processing_class=tokenizer,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()

    ############################
    # Save model and push to Hub
    ############################
    trainer.save_model(training_args.output_dir)

    if training_args.eval_strategy != "no":
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
