"""The `trl-text2grad` console script, the script modules, the shared script helpers and the hub task adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trl_text2grad.cli.main import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("annotate", "reward", "ppo", "demo"):
        assert name in out
    assert set(SUBCOMMANDS) == {"annotate", "reward", "ppo", "grpo", "rloo", "demo"}
    assert main([]) == 0


def test_version(capsys):
    from trl_text2grad import __version__

    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_subcommand_names_the_choices(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "'train'" in err and "annotate" in err and "demo" in err


@pytest.mark.parametrize("name", ["annotate", "reward", "ppo", "demo"])
def test_each_subcommand_dispatches_to_its_script(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()
    if name in ("ppo", "reward"):  # TrlParser with (script args, trainer config, trl.ModelConfig)
        assert "--model_name_or_path" in out and "--lora_r" in out and "--learning_rate" in out
    if name == "ppo":
        assert "--critic" in out and "--kl_coef" in out and "--reward_mode" in out
    if name == "reward":
        assert "--model_form" in out and "--eval_fraction" in out


def test_console_script_and_module_entry_points():
    exe = Path(sys.executable).with_name("trl-text2grad")
    assert exe.exists(), "the console script is installed with the package (pip install -e .)"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ppo" in result.stdout
    # `accelerate launch -m trl_text2grad.cli.<name>` runs the module as __main__
    result = subprocess.run(
        [sys.executable, "-m", "trl_text2grad.cli.ppo", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "--total_episodes" in result.stdout


def test_unknown_recipe_field_is_a_clear_error(tmp_path):
    from trl_text2grad.cli.ppo import make_parser

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("task: humaneval\nkl_coeff: 0.1\n")
    with pytest.raises(ValueError, match="kl_coeff"):
        make_parser().parse_args_and_config(["--config", str(recipe), "--output_dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------------------------
# shared helpers of the scripts
# ------------------------------------------------------------------------------------------------------------


def test_resolve_model_path_aliases():
    from trl_text2grad.cli.common import resolve_model_path

    assert resolve_model_path("/some/checkpoint") == "/some/checkpoint"
    assert resolve_model_path("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    default = resolve_model_path("default")
    assert Path(default, "config.json").is_file()
    assert resolve_model_path(None) == default == resolve_model_path("SmolLM2")


def test_build_reward_function_errors_name_the_fix():
    from trl_text2grad.cli.common import build_reward_function

    with pytest.raises(ValueError, match="unit_tests"):
        build_reward_function("gpt4", "humaneval")
    with pytest.raises(ValueError, match="reward_model_path"):
        build_reward_function("reward_model", "slf5k")
    with pytest.raises(ValueError, match="critic_model"):
        build_reward_function("openai", "slf5k")


def test_humaneval_task_dataset_is_split_by_problem():
    from trl_text2grad.cli.common import load_task_dataset

    train = load_task_dataset("humaneval", "train")
    test = load_task_dataset("humaneval", "test")
    assert len(train) + len(test) == 164
    assert not set(train["task_id"]) & set(test["task_id"])
    assert {"prompt", "problem", "test", "entry_point"} <= set(train.column_names)
    with pytest.raises(ValueError, match="split"):
        load_task_dataset("humaneval", "validation")
    with pytest.raises(ValueError, match="Unknown task"):
        load_task_dataset("mmlu")


def test_custom_task_needs_a_prompt_column(tmp_path):
    from trl_text2grad.cli.common import load_task_dataset

    good = tmp_path / "rows.jsonl"
    good.write_text(json.dumps({"prompt": "Say hi.", "extra": 1}) + "\n")
    rows = load_task_dataset("custom", "train", dataset_name=str(good))
    assert rows[0]["prompt"] == "Say hi."
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Say hi."}) + "\n")
    with pytest.raises(ValueError, match="'prompt'"):
        load_task_dataset("custom", "train", dataset_name=str(bad))
    with pytest.raises(ValueError, match="dataset_name"):
        load_task_dataset("custom", "train")


# ------------------------------------------------------------------------------------------------------------
# hub task adapters (offline: rows with the hub's columns)
# ------------------------------------------------------------------------------------------------------------


def test_slf5k_adapter():
    from datasets import Dataset

    from trl_text2grad.tasks import slf5k

    rows = Dataset.from_list(
        [
            {"id": "a", "subreddit": "pets", "title": "Dog", "post": "My dog barks.", "feedback": "ok",
             "generated_summary_for_feedback": "Dog barks.", "ideal_human_summary": "My dog barks a lot."},
            {"id": "b", "subreddit": "pets", "title": "Empty", "post": "  ", "feedback": "",
             "generated_summary_for_feedback": "x", "ideal_human_summary": "x"},
        ]
    )  # fmt: skip
    out = slf5k.prepare(rows)
    assert len(out) == 1  # the row without a post is dropped (and counted in the log)
    row = out[0]
    assert row["prompt"][0]["role"] == "user" and "My dog barks." in row["prompt"][0]["content"]
    assert "r/pets" in row["prompt"][0]["content"] and row["response"] == "Dog barks."
    assert row["feedback"] == "ok" and row["reference"] == "My dog barks a lot."
    messages = slf5k.CRITIC_TEMPLATE.messages("POST TEXT", "SUMMARY", feedback="too short")
    assert "POST TEXT" in messages[1]["content"] and "too short" in messages[1]["content"]
    with pytest.raises(ValueError, match="post"):
        slf5k.prepare(Dataset.from_list([{"title": "t"}]))


def test_kodcode_adapter():
    from datasets import Dataset

    from trl_text2grad.tasks import kodcode

    rows = Dataset.from_list(
        [
            {
                "question_id": "q1",
                "question": "Add two numbers.",
                "solution": "def add(a, b):\n    return a + b",
                "test": "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3",
                "test_info": [{"function_name": "add", "function_declaration": "def add(a, b):"}],
            }
        ]
    )
    row = kodcode.prepare(rows)[0]
    assert "`def add(a, b):`" in row["prompt"][0]["content"]
    assert row["response"].startswith("```python\ndef add") and "assert add(1, 2)" in row["tests"]
    assert "UNIT TESTS" in kodcode.CRITIC_TEMPLATE.messages("p", "r", tests="T")[1]["content"]


def test_ultrafeedback_adapter():
    from datasets import Dataset

    from trl_text2grad.tasks import ultrafeedback

    conv = lambda answer: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]  # noqa: E731
    rows = Dataset.from_list(
        [{"prompt_id": "1", "prompt": "Q?", "chosen": conv("Good."), "rejected": conv("Bad."),
          "score_chosen": 8.0, "score_rejected": 2.0}]
    )  # fmt: skip
    chosen = ultrafeedback.prepare(rows)
    assert chosen[0]["response"] == "Good." and chosen[0]["source"] == "chosen"
    both = ultrafeedback.prepare(rows, response_from="both")
    assert both["response"] == ["Good.", "Bad."] and both["score"] == [8.0, 2.0]
    with pytest.raises(ValueError, match="response_from"):
        ultrafeedback.prepare(rows, response_from="best")


def test_hub_loader_reads_local_files_and_explains_failures(tmp_path):
    from trl_text2grad.tasks._hub import load_rows

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    assert len(load_rows(str(path), "train", max_samples=3)) == 3
    with pytest.raises(ValueError, match="unsupported file type"):
        odd = tmp_path / "rows.txt"
        odd.write_text("x")
        load_rows(str(odd), "train")


# ------------------------------------------------------------------------------------------------------------
# README and docs
# ------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cover_every_public_name():
    import trl_text2grad

    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in trl_text2grad.__all__ if f"`{name}" not in api]
    assert not missing, f"docs/api.md does not document {missing}"


def test_readme_has_exactly_the_two_quickstart_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("bash scripts/install.sh && ")]
    assert commands == [
        "bash scripts/install.sh && .venv/bin/trl-text2grad demo",
        'bash scripts/install.sh && .venv/bin/python -m pytest -m "not slow or ci_real_model"',
    ]
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for link in ("docs/concepts.md", "docs/quickstart.md", "docs/recipes.md", "docs/api.md"):
        assert link in readme and (ROOT / link).is_file()
