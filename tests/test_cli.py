"""The `trl-text2grad` console script, the script modules, the shared script helpers and the hub task adapters."""

from __future__ import annotations

import json
import re
import shlex
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
    assert set(SUBCOMMANDS) == {"annotate", "reward", "ppo", "demo"}
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
    with pytest.raises(ValueError, match="(?i)unknown task 'mmlu'"):
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


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [
        line for line in readme.splitlines() if line.startswith("bash scripts/install.sh && ") and "pytest" in line
    ]
    assert len(commands) == 1, f"expected one test command in README.md, found {commands}"
    return commands[0]


def test_ci_runs_exactly_the_readme_test_command(tmp_path):
    """.ci/run, executed in a copy of the checkout whose install script and interpreter only record how they were
    called, runs what the README's test command runs: the install script, then the interpreter with the same
    arguments."""
    steps = [shlex.split(part) for part in _readme_test_command().split("&&")]
    assert [argv[:2] for argv in steps] == [["bash", "scripts/install.sh"], [".venv/bin/python", "-m"]]
    log = tmp_path / "calls.jsonl"
    recorder = tmp_path / "record.py"
    recorder.write_text(
        f"import json, sys\nwith open({str(log)!r}, 'a') as f:\n    f.write(json.dumps(sys.argv) + '\\n')\n"
    )
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install.sh").write_text(f'"{sys.executable}" "{recorder}" install "$@"\n')
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{recorder}" python "$@"\n')
    python.chmod(0o755)
    result = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], cwd="/", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line)[1:] for line in log.read_text().splitlines()]
    assert calls == [["install", *steps[0][2:]], ["python", *steps[1][1:]]]


def test_readme_links_point_at_existing_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [target for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in target]
    assert links, "README.md links to no documentation"
    missing = [target for target in links if not (ROOT / target).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


# ------------------------------------------------------------------------------------------------------------
# own data, own reward, local files
# ------------------------------------------------------------------------------------------------------------


def test_missing_local_files_say_file_not_found_and_which_step_writes_them(tmp_path, monkeypatch):
    from trl_text2grad.cli.common import build_reward_function, load_task_dataset
    from trl_text2grad.cli.reward import RewardScriptArguments, load_annotations
    from trl_text2grad.tasks._hub import load_rows

    monkeypatch.chdir(tmp_path)
    missing = "runs/slf5k_annotations.jsonl"
    with pytest.raises(
        FileNotFoundError, match=r"file not found: 'runs/slf5k_annotations.jsonl'; run `trl-text2grad annotate` first"
    ):
        load_annotations(RewardScriptArguments(dataset_name=missing))
    for name in ("rows.jsonl", "./data/rows", "/nonexistent/rows.parquet", "~/nonexistent_t2g.csv"):
        with pytest.raises(FileNotFoundError, match="file not found"):
            load_rows(name, "train")
    # a paper task given a missing local file: not a hub download attempt
    with pytest.raises(FileNotFoundError, match="file not found: 'my_slf5k.jsonl'"):
        load_task_dataset("slf5k", "train", dataset_name="my_slf5k.jsonl")
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_task_dataset("custom", "train", dataset_name="prompts.jsonl")
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_task_dataset("humaneval", "train", dataset_name="HumanEval.jsonl.gz")
    # reward model: no default, and a missing folder names the step that writes it
    with pytest.raises(ValueError, match="needs reward_model_path"):
        build_reward_function("reward_model", "slf5k", reward_model_path=None)
    with pytest.raises(FileNotFoundError, match=r"runs/slf5k_reward.*does not exist.*trl-text2grad reward"):
        build_reward_function("reward_model", "slf5k", reward_model_path="runs/slf5k_reward")
    (tmp_path / "not_a_reward_model").mkdir()
    with pytest.raises(FileNotFoundError, match="has no span_reward_config.json"):
        build_reward_function("reward_model", "slf5k", reward_model_path="not_a_reward_model")


def test_ppo_reward_model_path_has_no_hub_default(tmp_path):
    from trl_text2grad.cli import ppo

    script_args, training_args, _ = ppo.make_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--critic", "reward_model", "--bf16", "false"]
    )
    assert ppo.given_reward_model_path(training_args) is None  # TRL's placeholder default is not a path
    with pytest.raises(ValueError, match="needs reward_model_path"):
        ppo.run(script_args, training_args, None)  # fails before any model is loaded
    _, training_args, _ = ppo.make_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--reward_model_path", "runs/rm", "--bf16", "false"]
    )
    assert ppo.given_reward_model_path(training_args) == "runs/rm"


_REWARD_MODULE = """
from trl_text2grad import Critique

def length_penalty(prompts, completions, **context):
    return [-len(c) / 100 for c in completions]

class Polite:
    def __call__(self, prompts, completions, **context):
        return [Critique("", good=["please"], poor=[]) for _ in completions]

NOT_CALLABLE = 3
"""


def test_load_reward_function_module_and_file_forms(tmp_path, monkeypatch):
    import sys

    from trl_text2grad.cli.common import build_reward_function, load_reward_function

    (tmp_path / "t2g_user_rewards.py").write_text(_REWARD_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "t2g_user_rewards", raising=False)
    # module form: found in the current directory, as `python -m` would
    function = load_reward_function("t2g_user_rewards:length_penalty")
    assert function(["p"], ["abcd", ""]) == [-0.04, 0.0]
    # file form, and a class is instantiated
    polite = load_reward_function(f"{tmp_path / 't2g_user_rewards.py'}:Polite")
    assert polite(["p"], ["say please"])[0].good == ["please"]
    # the reward function wins over the critic
    assert build_reward_function("unit_tests", "custom", reward_function="t2g_user_rewards:length_penalty")(
        ["p"], ["ab"]
    ) == [-0.02]
    with pytest.raises(ValueError, match="module:function"):
        load_reward_function("t2g_user_rewards")
    with pytest.raises(ValueError, match="no attribute 'missing'.*length_penalty"):
        load_reward_function("t2g_user_rewards:missing")
    with pytest.raises(ValueError, match="not a callable"):
        load_reward_function("t2g_user_rewards:NOT_CALLABLE")
    with pytest.raises(ImportError, match="no module named 'no_such_t2g_module'"):
        load_reward_function("no_such_t2g_module:f")
    with pytest.raises(FileNotFoundError, match="file not found: 'nowhere/r.py'"):
        load_reward_function("nowhere/r.py:f")


def test_parse_task_source_forms():
    from trl_text2grad.tasks.registry import TaskSource, parse_task_source

    assert parse_task_source("slf5k") == TaskSource("slf5k", "train", None)
    assert parse_task_source("ultrafeedback:test_prefs") == TaskSource("ultrafeedback", "test_prefs", None)
    assert parse_task_source("slf5k:/data/rows.jsonl") == TaskSource("slf5k", "train", "/data/rows.jsonl")
    assert parse_task_source("kodcode:rows.parquet") == TaskSource("kodcode", "train", "rows.parquet")
    assert parse_task_source("slf5k:validation:data/rows.jsonl") == TaskSource(
        "slf5k", "validation", "data/rows.jsonl"
    )
    assert parse_task_source("my_rows.jsonl") is None
    assert parse_task_source("/abs/path.jsonl") is None


def test_custom_task_reads_parquet_and_drops_empty_prompts(tmp_path, caplog):
    from datasets import Dataset

    from trl_text2grad.cli.common import load_task_dataset

    path = tmp_path / "rows.parquet"
    Dataset.from_list(
        [{"prompt": "Say hi.", "ref": "hi"}, {"prompt": "", "ref": "x"}, {"prompt": "Bye?", "ref": "bye"}]
    ).to_parquet(str(path))
    rows = load_task_dataset("custom", "train", dataset_name=str(path))
    assert rows["prompt"] == ["Say hi.", "Bye?"] and rows["ref"] == ["hi", "bye"]
    assert "dropped 1 rows" in caplog.text
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ValueError, match="non-empty 'prompt'"):
        load_task_dataset("custom", "train", dataset_name=str(empty))


def test_annotate_reads_a_paper_task_from_a_local_file(tmp_path, monkeypatch):
    from trl_text2grad import Critique
    from trl_text2grad.cli import annotate as annotate_cli

    hub_row = {"id": "p0", "subreddit": "cats", "title": "My cat", "post": "The cat sleeps all day. Is it ill?",
               "generated_summary_for_feedback": "Cat sleeps a lot, owner worried.", "feedback": "fine"}  # fmt: skip
    data = tmp_path / "slf5k_rows.jsonl"
    data.write_text(json.dumps(hub_row) + "\n")
    seen = {}

    class Recorder:
        last_errors: list = []

        def critique(self, prompts, responses, **context):
            seen.update(responses=list(responses), **context)
            return [Critique("ok", good=["Cat sleeps"], poor=[]) for _ in responses]

        __call__ = critique

    monkeypatch.setattr(annotate_cli, "build_critic", lambda config: Recorder())
    out = tmp_path / "ann.jsonl"
    rows = annotate_cli.main(["--dataset_path", f"slf5k:train:{data}", "--output_path", str(out), "--task", "slf5k"])
    assert len(rows) == 1 and seen["responses"] == ["Cat sleeps a lot, owner worried."]
    assert seen["feedback"] == ["fine"]  # the task template's context column reached the critic
    with pytest.raises(FileNotFoundError, match="file not found"):
        annotate_cli.main(["--dataset_path", f"slf5k:{tmp_path / 'missing.jsonl'}", "--output_path", str(out)])


def test_annotate_help_names_the_subcommand_and_the_task_form(capsys):
    from trl_text2grad.cli import annotate as annotate_cli

    with pytest.raises(SystemExit):
        annotate_cli.main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: trl-text2grad annotate")
    assert "<task>[:<split>][:<file>]" in text
