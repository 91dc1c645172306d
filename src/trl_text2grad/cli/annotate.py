"""``trl-text2grad annotate``: annotate a JSONL data set (or HumanEval) with a critic.

Usage::

    trl-text2grad annotate --config recipes/slf5k/annotate.yaml
    trl-text2grad annotate --config recipes/slf5k/annotate.yaml --dataset_path slf5k:train:my_slf5k_rows.jsonl
    python -m trl_text2grad.cli.annotate --dataset_path data.jsonl --output_path out.jsonl \\
        --critic openai --model gpt-4o-mini --base_url https://api.openai.com/v1 --task summarization

The YAML keys are the fields of :class:`AnnotateConfig`; command-line flags override them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from trl import TrlParser

from ..annotate import DEFAULT_CONTEXT_COLUMNS, annotate
from ..critics import OpenAICompatibleCritic, TransformersCritic, UnitTestCritic
from ..tasks.humaneval import load_humaneval
from ..tasks.registry import parse_task_source
from .common import critic_template, load_task_dataset

__all__ = ["AnnotateConfig", "build_critic", "main"]


@dataclass
class AnnotateConfig:
    """Configuration of an annotation run.

    Args:
        dataset_path: Input rows: a ``.jsonl``/``.json`` file, or ``humaneval`` for the bundled HumanEval problems
            (with ``response_column`` naming a column of completions you added, or ``canonical_solution``), or a
            hub task ``slf5k``/``kodcode``/``ultrafeedback`` as ``<task>[:<split>][:<file>]`` (``<file>``: a local
            ``.jsonl``/``.parquet`` with the hub data set's columns; see ``trl_text2grad.tasks.registry``).
        output_path: Output JSONL (also the resume cache).
        critic: ``openai`` (OpenAI-compatible server), ``transformers`` (local model) or ``unit_tests``.
        task: Critique template: ``summarization``, ``code`` or ``qa`` (LLM critics); ``slf5k``, ``kodcode`` or
            ``ultrafeedback`` select that task's own template (``trl_text2grad.tasks.<task>.CRITIC_TEMPLATE``).
        system_prompt: Override the template's system message.
        user_template: Override the template's user message (placeholders ``{prompt}`` and ``{response}``).
        model: Model name on the server (``openai``) or checkpoint path (``transformers``; empty = default SmolLM2).
        base_url: OpenAI-compatible endpoint root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: Environment variable that holds the API key (the key itself never goes in a config).
        max_concurrency: Simultaneous requests (``openai``).
        max_retries: Retries with backoff on 429/5xx/timeouts (``openai``).
        request_timeout: Per-request timeout in seconds (``openai``).
        max_tokens: Maximum tokens of a critique answer.
        temperature: Sampling temperature of the critic.
        json_mode: ``auto``, ``true`` or ``false``: ask the server for JSON output (``openai``).
        batch_size: Rows per critic call and per cache append.
        prompt_column: Input column with the prompt.
        response_column: Input column with the response.
        max_rows: Annotate only the first N rows (``None``: all).
        resume: Continue from an existing output file.
        fuzzy_threshold: Fuzzy threshold (0–100) for locating quotes.
        sandbox_timeout: Seconds per program (``unit_tests``).
        good_span: Good span of passing code for ``unit_tests``: ``last_line``, ``body`` or ``none``.
        log_level: Python logging level.
    """

    dataset_path: str = field(
        default="",
        metadata={"help": "Input .jsonl/.json file, 'humaneval', or <task>[:<split>][:<file>] for slf5k, kodcode, "
                  "ultrafeedback (file: a local .jsonl with the hub set's columns)."},
    )  # fmt: skip
    output_path: str = field(default="annotations.jsonl", metadata={"help": "Output JSONL (also the resume cache)."})
    critic: str = field(default="openai", metadata={"help": "Critic: 'openai', 'transformers' or 'unit_tests'."})
    task: str = field(default="qa", metadata={"help": "Critique template: 'summarization', 'code' or 'qa'."})
    system_prompt: str | None = field(default=None, metadata={"help": "Override the template's system message."})
    user_template: str | None = field(
        default=None, metadata={"help": "Override the template's user message ({prompt} and {response})."}
    )
    model: str = field(default="", metadata={"help": "Server model name, or local checkpoint path."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint root (…/v1)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env var holding the API key."})
    max_concurrency: int = field(default=8, metadata={"help": "Simultaneous requests (openai critic)."})
    max_retries: int = field(default=3, metadata={"help": "Retries with backoff on 429/5xx/timeouts."})
    request_timeout: float = field(default=60.0, metadata={"help": "Per-request timeout in seconds."})
    max_tokens: int = field(default=512, metadata={"help": "Maximum tokens of a critique answer."})
    temperature: float = field(default=0.0, metadata={"help": "Critic sampling temperature."})
    json_mode: str = field(default="auto", metadata={"help": "'auto', 'true' or 'false': request JSON output."})
    batch_size: int = field(default=8, metadata={"help": "Rows per critic call and per cache append."})
    prompt_column: str = field(default="prompt", metadata={"help": "Input column with the prompt."})
    response_column: str = field(default="response", metadata={"help": "Input column with the response."})
    max_rows: int | None = field(default=None, metadata={"help": "Annotate only the first N rows."})
    resume: bool = field(default=True, metadata={"help": "Continue from an existing output file."})
    fuzzy_threshold: float = field(default=90.0, metadata={"help": "Fuzzy threshold (0-100) for locating quotes."})
    sandbox_timeout: float = field(default=10.0, metadata={"help": "Seconds per program (unit_tests critic)."})
    good_span: str = field(
        default="last_line", metadata={"help": "unit_tests good span: 'last_line', 'body' or 'none'."}
    )
    log_level: str = field(default="INFO", metadata={"help": "Python logging level."})

    def __post_init__(self) -> None:
        if self.critic not in ("openai", "transformers", "unit_tests"):
            raise ValueError(f"critic must be 'openai', 'transformers' or 'unit_tests', got {self.critic!r}")
        if str(self.json_mode).lower() not in ("auto", "true", "false"):
            raise ValueError(f"json_mode must be 'auto', 'true' or 'false', got {self.json_mode!r}")


#: Hub task adapters (``trl_text2grad.tasks``) usable as ``dataset_path: <task>[:<split>]``, with their default split.
_HUB_TASKS = {"slf5k": "train", "kodcode": "train", "ultrafeedback": "train_prefs"}


def _template(task: str):
    """The task's own critique template for the hub tasks, else the built-in template name."""
    if task.lower() in _HUB_TASKS:
        return critic_template(task.lower())
    return task


def build_critic(config: AnnotateConfig):
    """The critic an :class:`AnnotateConfig` describes."""
    if config.critic == "openai":
        if not config.model:
            raise ValueError("critic 'openai' needs model: the model name as the server knows it")
        json_mode = {"auto": "auto", "true": True, "false": False}[str(config.json_mode).lower()]
        return OpenAICompatibleCritic(
            model=config.model,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            template=_template(config.task),
            system_prompt=config.system_prompt,
            user_template=config.user_template,
            max_concurrency=config.max_concurrency,
            max_retries=config.max_retries,
            timeout=config.request_timeout,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            json_mode=json_mode,
        )
    if config.critic == "transformers":
        return TransformersCritic(
            model=config.model or None,
            template=_template(config.task),
            system_prompt=config.system_prompt,
            user_template=config.user_template,
            batch_size=config.batch_size,
            max_new_tokens=config.max_tokens,
            do_sample=config.temperature > 0,
            temperature=config.temperature or 1.0,
        )
    return UnitTestCritic(timeout=config.sandbox_timeout, good_span=config.good_span)  # type: ignore[arg-type]


def run(config: AnnotateConfig):
    """Annotate as configured; returns the annotated ``datasets.Dataset``."""
    if not config.dataset_path:
        raise ValueError("dataset_path is required: a .jsonl/.json file or 'humaneval'")
    data = config.dataset_path
    context_columns = None
    source = parse_task_source(config.dataset_path)
    if config.dataset_path.lower() == "humaneval":
        data = load_humaneval()
    elif source is not None and source.task in _HUB_TASKS:  # "slf5k", "kodcode:train", "slf5k:train:rows.jsonl"
        data = load_task_dataset(source.task, source.split, dataset_name=source.dataset_name)
        wanted = critic_template(source.task).placeholders() - {"prompt", "response"}
        context_columns = {c: k for c, k in DEFAULT_CONTEXT_COLUMNS.items() if c in data.column_names}
        context_columns.update({c: c for c in wanted if c in data.column_names})
    critic = build_critic(config)
    return annotate(
        data,
        critic,
        config.output_path,
        batch_size=config.batch_size,
        prompt_column=config.prompt_column,
        response_column=config.response_column,
        max_rows=config.max_rows,
        resume=config.resume,
        fuzzy_threshold=config.fuzzy_threshold,
        context_columns=context_columns,
    )


def main(argv: Sequence[str] | None = None):
    """Entry point: parse ``--config x.yaml`` and flags with ``TrlParser``, then annotate."""
    parser = TrlParser((AnnotateConfig,), prog="trl-text2grad annotate")
    (config,) = parser.parse_args_and_config(args=list(argv) if argv is not None else None)
    logging.basicConfig(level=getattr(logging, str(config.log_level).upper(), logging.INFO))
    dataset = run(config)
    rows = len(dataset)
    errors = sum(1 for e in dataset["critic_error"] if e) if rows else 0
    unlocated = sum(dataset["num_unlocated"]) if rows else 0
    print(f"annotated {rows} rows -> {config.output_path} ({errors} with critic errors, {unlocated} unlocated quotes)")
    return dataset


if __name__ == "__main__":  # pragma: no cover
    main()
