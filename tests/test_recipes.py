"""Every recipe parses with TrlParser, and every trainer recipe runs one tiny update on a tiny random model.

The paper recipes name Llama-3.1-8B-Instruct and hub data sets; here the model is overridden with a 2-layer random
Llama saved next to the SmolLM2 tokenizer, and the data with local JSONL files that have the hub's columns, so the
recipes (their field names, values and the code paths they select) are exercised offline and cannot rot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate")
PAPER_TASKS = ("slf5k", "kodcode", "ultrafeedback")
CPU = ["--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--use_cpu", "true"]


def _parse(recipe: Path, extra: list[str]):
    from trl import TrlParser

    kind = recipe.stem
    if kind == "demo":
        from trl_text2grad.cli.demo.config import DemoConfig

        return TrlParser((DemoConfig,)).parse_args_and_config(["--config", str(recipe), *extra])
    if kind == "annotate":
        from trl_text2grad.cli.annotate import AnnotateConfig

        return TrlParser((AnnotateConfig,)).parse_args_and_config(["--config", str(recipe), *extra])
    if kind == "ppo":
        from trl_text2grad.cli.ppo import make_parser
    elif kind == "reward":
        from trl_text2grad.cli.reward import make_parser
    else:  # pragma: no cover - a new recipe kind must be added here
        raise AssertionError(f"unknown recipe kind {kind!r} ({recipe})")
    return make_parser().parse_args_and_config(["--config", str(recipe), *extra])


def test_recipe_inventory():
    names = {f"{p.parent.name}/{p.name}" for p in RECIPES}
    for task in PAPER_TASKS:
        assert {f"{task}/annotate.yaml", f"{task}/reward.yaml", f"{task}/ppo.yaml"} <= names
    assert {"humaneval_smollm2/ppo.yaml", "humaneval_smollm2/demo.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_parses(recipe, tmp_path):
    extra = [] if recipe.stem in ("demo", "annotate") else ["--output_dir", str(tmp_path), "--bf16", "false"]
    parsed = _parse(recipe, extra)
    assert parsed, recipe
    if recipe.stem == "ppo":
        script_args, training_args, model_args = parsed
        assert training_args.gamma == 1.0 and training_args.lam == 0.95
        assert training_args.cliprange == 0.2 and training_args.vf_coef == 0.1
        assert model_args.use_peft and model_args.lora_r == 16 and model_args.lora_alpha == 32
        if recipe.parent.name in PAPER_TASKS:
            assert script_args.task == recipe.parent.name
            assert model_args.model_name_or_path == "meta-llama/Llama-3.1-8B-Instruct"
            expected_kl = {"slf5k": 0.2, "kodcode": 0.07, "ultrafeedback": 0.05}[recipe.parent.name]
            assert training_args.kl_coef == pytest.approx(expected_kl)
            assert script_args.critic == "reward_model"
    if recipe.stem == "annotate" and recipe.parent.name in PAPER_TASKS:
        (config,) = parsed
        assert config.critic == "openai" and config.api_key_env == "OPENAI_API_KEY"
        assert config.dataset_path.split(":")[0] == recipe.parent.name


def test_overrides_beat_the_recipe(tmp_path):
    recipe = ROOT / "recipes/slf5k/ppo.yaml"
    script_args, training_args, model_args = _parse(
        recipe, ["--output_dir", str(tmp_path), "--bf16", "false", "--kl_coef", "0.3", "--lora_r", "4"]
    )
    assert training_args.kl_coef == pytest.approx(0.3) and model_args.lora_r == 4
    assert training_args.output_dir == str(tmp_path)


# -------------------------------------------------------------------------------------------------------------
# Tiny end-to-end runs
# -------------------------------------------------------------------------------------------------------------


def hub_rows(task: str) -> list[dict]:
    """Rows with the columns of the task's hub data set."""
    if task == "slf5k":
        return [
            {
                "id": f"p{i}",
                "subreddit": "relationships",
                "title": f"My roommate keeps eating my food ({i})",
                "post": "We share a flat. Every week my groceries vanish and he denies it. How do I bring it up?",
                "generated_summary_for_feedback": "Roommate eats my food and denies it; how to confront him?",
                "feedback": "Good, but mention that it happens every week.",
                "ideal_human_summary": "My roommate eats my groceries every week and denies it. How do I confront him?",
            }
            for i in range(4)
        ]
    if task == "kodcode":
        return [
            {
                "question_id": f"q{i}",
                "question": f"Write a function add(a, b) that returns the sum of a and b plus {i}.",
                "solution": f"def add(a, b):\n    return a + b + {i}",
                "test": f"from solution import add\n\ndef test_add():\n    assert add(1, 2) == {3 + i}\n",
                "test_info": [{"function_name": "add", "function_declaration": "def add(a, b):"}],
            }
            for i in range(4)
        ]
    return [
        {
            "prompt_id": f"u{i}",
            "prompt": f"Name a primary colour ({i}).",
            "chosen": [
                {"role": "user", "content": f"Name a primary colour ({i})."},
                {"role": "assistant", "content": "Red is a primary colour."},
            ],
            "rejected": [
                {"role": "user", "content": f"Name a primary colour ({i})."},
                {"role": "assistant", "content": "Green, obviously, in every colour model."},
            ],
            "score_chosen": 9.0,
            "score_rejected": 3.0,
        }
        for i in range(4)
    ]


def annotated_rows(task: str) -> list[dict]:
    """Annotation-schema rows (what `trl-text2grad annotate` writes) built from the task adapter's rows."""
    import importlib

    module = importlib.import_module(f"trl_text2grad.tasks.{task}")
    from datasets import Dataset

    rows = []
    for row in module.prepare(Dataset.from_list(hub_rows(task))):
        response = row["response"]
        words = response.split()
        rows.append(
            {
                **row,
                "critique": "Mostly right; the ending is weak.",
                "good_spans": [" ".join(words[:2])],
                "poor_spans": [" ".join(words[-2:])],
            }
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_humaneval_ppo_recipe_tiny_update(tiny_model_dir, tmp_path):
    from trl_text2grad.cli import ppo

    out = tmp_path / "ppo"
    code = ppo.main(
        [
            "--config",
            str(ROOT / "recipes/humaneval_smollm2/ppo.yaml"),
            "--model_name_or_path",
            tiny_model_dir,
            "--output_dir",
            str(out),
            "--total_episodes",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--response_length",
            "8",
            "--num_ppo_epochs",
            "1",
            "--max_train_samples",
            "4",
            "--save_steps",
            "100",
            *CPU,
        ]
    )
    assert code == 0
    assert (out / "adapter_model.safetensors").is_file(), sorted(p.name for p in out.iterdir())


def test_ppo_script_evaluates_on_the_held_out_split(tiny_model_dir, tmp_path):
    from trl_text2grad.cli import ppo

    out = tmp_path / "ppo"
    args = ["--config", str(ROOT / "recipes/humaneval_smollm2/ppo.yaml"), "--model_name_or_path", tiny_model_dir,
            "--output_dir", str(out), "--total_episodes", "2", "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "2", "--response_length", "6", "--num_ppo_epochs", "1",
            "--max_train_samples", "2", "--max_eval_samples", "3", "--num_sample_generations", "1",
            "--save_strategy", "no", *CPU]  # fmt: skip
    assert ppo.main(args) == 0
    results = json.loads((out / "eval_results.json").read_text())
    # the unit-test critic judged every held-out response: a random tiny policy writes no passing code
    assert results["eval_failed_fraction"] == 0.0
    assert results["eval_score"] <= 0.0  # a random tiny policy writes no passing code
    # no EOS within 6 tokens, so every response is 6 tokens long
    assert results["eval_eos_fraction"] == 0.0 and results["eval_response_length"] == 6.0
    table = [json.loads(line) for line in (out / "completions" / "update_1.jsonl").read_text().splitlines()]
    assert len(table) == 2  # the first eval batch
    assert all(row["score"] is not None and "def " in row["query"] for row in table)
    with pytest.raises(ValueError, match="max_eval_samples"):
        ppo.main([*args[: -len(CPU)], "--max_eval_samples", "-1", *CPU])


def test_humaneval_reward_recipe_tiny_update(tiny_model_dir, tmp_path):
    from trl_text2grad.cli import reward
    from trl_text2grad.reward.scoring import SpanRewardModel

    rows = annotated_rows("kodcode")  # code rows; the recipe is HumanEval's, the schema is the same
    for i, row in enumerate(rows):
        row["task_id"] = f"HumanEval/{i}"
    data = _write_jsonl(tmp_path / "ann.jsonl", rows)
    out = tmp_path / "rm"
    code = reward.main(
        [
            "--config",
            str(ROOT / "recipes/humaneval_smollm2/reward.yaml"),
            "--dataset_name",
            data,
            "--model_name_or_path",
            tiny_model_dir,
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--eval_fraction",
            "0.25",
            "--eval_strategy",
            "no",
            *CPU,
        ]
    )
    assert code == 0
    scorer = SpanRewardModel.from_pretrained(out)
    critiques = scorer.score([rows[0]["prompt"]], [rows[0]["response"]])
    assert len(critiques) == 1


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_recipes_tiny_reward_then_ppo(task, tiny_model_dir, tmp_path):
    """The task's reward recipe trains a (tiny) span reward model; its PPO recipe then uses it as reward."""
    from trl_text2grad.cli import ppo, reward

    annotations = _write_jsonl(tmp_path / "ann.jsonl", annotated_rows(task))
    hub_file = _write_jsonl(tmp_path / "hub.jsonl", hub_rows(task))
    rm_dir = tmp_path / "rm"
    assert (
        reward.main(
            [
                "--config",
                str(ROOT / f"recipes/{task}/reward.yaml"),
                "--dataset_name",
                annotations,
                "--model_name_or_path",
                tiny_model_dir,
                "--dtype",
                "float32",
                "--output_dir",
                str(rm_dir),
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "2",
                "--gradient_accumulation_steps",
                "1",
                "--max_length",
                "384",
                "--max_target_length",
                "32",
                "--max_new_tokens",
                "8",
                "--eval_fraction",
                "0",
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                *CPU,
            ]
        )
        == 0
    )
    assert (rm_dir / "span_reward_config.json").is_file()

    ppo_dir = tmp_path / "ppo"
    split = "train_prefs" if task == "ultrafeedback" else "train"
    assert (
        ppo.main(
            [
                "--config",
                str(ROOT / f"recipes/{task}/ppo.yaml"),
                "--dataset_name",
                hub_file,
                "--dataset_train_split",
                split,
                "--reward_model_path",
                str(rm_dir),
                "--model_name_or_path",
                tiny_model_dir,
                "--dtype",
                "float32",
                "--output_dir",
                str(ppo_dir),
                "--total_episodes",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--gradient_accumulation_steps",
                "1",
                "--num_ppo_epochs",
                "1",
                "--response_length",
                "8",
                "--save_steps",
                "100",
                *CPU,
            ]
        )
        == 0
    )
    assert (ppo_dir / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.multiproc
def test_ppo_recipe_under_two_process_accelerate_launch(tiny_model_dir, tmp_path):
    """`accelerate launch` with the shipped multi_cpu config, 2 processes (gloo), of the HumanEval PPO recipe."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ppo"
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/multi_cpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        "-m",
        "trl_text2grad.cli.ppo",
        "--config",
        str(ROOT / "recipes/humaneval_smollm2/ppo.yaml"),
        "--model_name_or_path",
        tiny_model_dir,
        "--output_dir",
        str(out),
        "--total_episodes",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--response_length",
        "8",
        "--num_ppo_epochs",
        "1",
        "--max_train_samples",
        "8",
        "--save_steps",
        "100",
        *CPU,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "span PPO finished" in proc.stdout
    assert (out / "adapter_model.safetensors").is_file()


def test_annotate_recipes_use_the_task_critic_prompt():
    from trl_text2grad.cli.annotate import AnnotateConfig, _template, build_critic
    from trl_text2grad.tasks import kodcode, slf5k, ultrafeedback

    assert _template("slf5k") is slf5k.CRITIC_TEMPLATE
    assert _template("kodcode") is kodcode.CRITIC_TEMPLATE
    assert _template("ultrafeedback") is ultrafeedback.CRITIC_TEMPLATE
    assert _template("qa") == "qa"
    critic = build_critic(AnnotateConfig(critic="openai", task="slf5k", model="m", base_url="http://127.0.0.1:9/v1"))
    assert critic.template is slf5k.CRITIC_TEMPLATE


# -------------------------------------------------------------------------------------------------------------
# After training: own data + own reward from the CLI, then load, score, and continue
# -------------------------------------------------------------------------------------------------------------

_REWARDS_FILE = """
def first_word_good(prompts, completions, **context):
    out = []
    for completion, flag in zip(completions, context["judge"]):
        if not flag:
            out.append(None)  # cannot judge
        elif completion.strip():
            start = len(completion) - len(completion.lstrip())
            out.append([(start, start + len(completion.split()[0]), 1.0)])
        else:
            out.append(-1.0)
    return out
"""


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """A tiny `trl-text2grad ppo --task custom --reward_function file.py:fn` run (LoRA)."""
    from trl_text2grad.cli import main as cli

    folder = tmp_path_factory.mktemp("own_reward")
    (folder / "rewards.py").write_text(_REWARDS_FILE)
    prompts = [{"prompt": [{"role": "user", "content": f"Say something about {w}."}], "judge": True}
               for w in ("cats", "dogs", "rain", "tea")]  # fmt: skip
    data = _write_jsonl(folder / "prompts.jsonl", prompts)
    out = folder / "run"
    code = cli.main(["ppo", "--task", "custom", "--dataset_name", data, "--reward_function",
                     f"{folder / 'rewards.py'}:first_word_good", "--model_name_or_path", tiny_model_dir,
                     "--output_dir", str(out), "--total_episodes", "4", "--per_device_train_batch_size", "2",
                     "--response_length", "8", "--num_ppo_epochs", "1", "--use_peft", "true", "--lora_r", "4",
                     "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "1e-2",
                     "--heatmap_every_n_steps", "1", "--save_strategy", "no", *CPU])  # fmt: skip
    assert code == 0
    return out, folder


def test_own_reward_run_writes_adapter_value_head_and_numbered_heatmaps(trained_run):
    out, _ = trained_run
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "value_head.safetensors"} <= names
    heatmaps = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert heatmaps == ["update_000001.html", "update_000002.html"]  # 2 updates, numbered like the logs
    page = (out / "heatmaps" / "update_000001.html").read_text()
    assert "t2g-legend" in page and "before the KL penalty" in page and "update 1 sample 0" in page


def test_load_trained_policy_merged_equals_adapter_and_scores(trained_run):
    import torch

    from trl_text2grad.trained import load_trained_policy, score_policy

    out, folder = trained_run
    merged, tokenizer = load_trained_policy(out)
    adapter, _ = load_trained_policy(out, merge_adapter=False)
    assert not hasattr(merged, "peft_config") and hasattr(adapter, "peft_config")
    ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, atol=1e-4, rtol=1e-4)
    import importlib.util

    spec = importlib.util.spec_from_file_location("t2g_test_rewards", folder / "rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [{"prompt": "Hi", "judge": True}, {"prompt": [{"role": "user", "content": "Yo"}], "judge": False}]
    result = score_policy(merged, tokenizer, rows, module.first_word_good, max_new_tokens=6)
    assert len(result.rows) == 2 and result.failed_fraction == 0.5
    assert result.rows[1]["score"] is None and result.rows[1]["reason"]
    assert result.rows[0]["score"] is not None and result.mean_score == result.rows[0]["score"]

    def broken(prompts, completions, **context):
        raise RuntimeError("critic down")

    failed = score_policy(merged, tokenizer, rows, broken, max_new_tokens=2)
    assert failed.failed_fraction == 1.0 and "critic down" in failed.rows[0]["reason"]
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_trained_policy(folder / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither adapter_config.json"):
        load_trained_policy(folder)


def test_load_value_head_restores_the_saved_head(trained_run, tiny_model_dir, tmp_path):
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file

    from trl_text2grad import SpanPPOConfig, SpanPPOTrainer
    from trl_text2grad.trained import load_trained_policy, load_value_head

    out, _ = trained_run
    policy, tokenizer = load_trained_policy(out, is_trainable=True)
    assert any(p.requires_grad for p in policy.parameters())
    args = SpanPPOConfig(output_dir=str(tmp_path / "more"), per_device_train_batch_size=2, total_episodes=2,
                         response_length=4, num_ppo_epochs=1, bf16=False, report_to=[], use_cpu=True,
                         save_strategy="no")  # fmt: skip
    rows = Dataset.from_list([{"prompt": "Hi"}, {"prompt": "Yo"}])
    trainer = SpanPPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                             reward_model=lambda p, c, **k: [0.0] * len(c), train_dataset=rows)  # fmt: skip
    saved = load_file(str(out / "value_head.safetensors"))
    assert not torch.equal(trainer.model.v_head.weight.detach(), saved["weight"])  # a fresh head is random
    load_value_head(trainer, out)
    torch.testing.assert_close(trainer.model.v_head.weight.detach(), saved["weight"])
    torch.testing.assert_close(trainer.model.v_head.bias.detach(), saved["bias"])
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        load_value_head(trainer, tmp_path)
    trainer.train()  # trains from the restored head


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_chain_offline_from_local_files(task, tmp_path, monkeypatch):
    """annotate (recipe, local hub-schema file) -> reward reads its output; a missing annotations file names the step."""
    from trl_text2grad import Critique
    from trl_text2grad.cli import annotate as annotate_cli
    from trl_text2grad.cli.reward import RewardScriptArguments, load_annotations

    hub_file = _write_jsonl(tmp_path / "hub.jsonl", hub_rows(task))
    seen: dict = {}

    class QuoteFirstWords:
        last_errors: list = []

        def critique(self, prompts, responses, **context):
            seen.update(context)
            return [Critique("ok", good=[" ".join(r.split()[:2])], poor=[]) for r in responses]

    monkeypatch.setattr(annotate_cli, "build_critic", lambda config: QuoteFirstWords())
    out = tmp_path / "ann.jsonl"
    split = "train_prefs" if task == "ultrafeedback" else "train"
    rows = annotate_cli.main(["--config", str(ROOT / f"recipes/{task}/annotate.yaml"),
                              "--dataset_path", f"{task}:{split}:{hub_file}", "--output_path", str(out)])  # fmt: skip
    assert len(rows) == 4 and all(rows["num_located"])
    wanted = {"slf5k": "feedback", "kodcode": "tests", "ultrafeedback": None}[task]
    if wanted:
        assert wanted in seen and len(seen[wanted]) > 0  # the task template's column reached the critic
    train, _ = load_annotations(RewardScriptArguments(dataset_name=str(out), eval_fraction=0.0))
    assert len(train) == 4 and {"critique", "good_spans", "poor_spans"} <= set(train.column_names)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `trl-text2grad annotate` first"):
        load_annotations(RewardScriptArguments(dataset_name=f"runs/{task}_annotations.jsonl"))
