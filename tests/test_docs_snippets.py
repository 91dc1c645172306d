"""Every Python snippet of README.md and docs/*.md runs, so the docs cannot drift from the code.

The harness reads each page top to bottom and, in a fresh temporary working directory per page:

* runs every fenced ```python block, in order, in one namespace per page (later blocks see earlier names);
* writes the block that follows ``<!-- snippet-file: NAME -->`` to ``NAME`` (data files and modules a walkthrough
  creates, e.g. ``prompts.jsonl`` and ``my_rewards.py``) instead of running it;
* runs the ``trl-text2grad`` commands of the ```bash block that follows ``<!-- snippet-run -->`` through the console
  script's ``main`` (exactly as written, plus the tiny-size overrides below appended, which win);
* skips a block preceded by ``<!-- skip-snippet: REASON -->`` (a reason is required; kept for blocks that need a
  network server, the hub or GPUs).

Pages run in a folder that has the repository's ``recipes/`` (as a clone's root does).
Sizes: every ``SpanPPOConfig`` gets 8-token responses and one PPO epoch (``tiny_ppo_sizes``); the packaged default model is swapped for a 2-layer random Llama through ``$TRL_TEXT2GRAD_CACHE`` (the cache
folder the default model is read from), so ``load_default_model()`` and ``model_name_or_path: default`` load it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Appended to every ``trl-text2grad <step>`` command a page runs: tiny sizes, CPU, no loggers.
TINY_OVERRIDES = {
    "ppo": ["--total_episodes", "4", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--response_length", "8", "--num_ppo_epochs", "1", "--bf16", "false", "--report_to", "none",
            "--use_cpu", "true", "--gradient_checkpointing", "false", "--save_strategy", "no"],
}  # fmt: skip

_DIRECTIVE = re.compile(r"^<!--\s*(skip-snippet|snippet-file|snippet-run)\s*:?\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    directive: str | None = None
    argument: str = ""


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, each with the directive comment right before it (if any)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: tuple[str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _DIRECTIVE.match(line.strip())
        if match:
            pending = (match.group(1), match.group(2))
            index += 1
            continue
        if line.startswith("```"):
            lang = line[3:].strip().lower()
            start = index + 1
            end = start
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            directive, argument = pending if pending else (None, "")
            blocks.append(Block(path.name, start, lang, "\n".join(lines[start:end]) + "\n", directive, argument))
            pending = None
            index = end + 1
            continue
        if line.strip():
            pending = None  # a directive applies to the block right after it
        index += 1
    return blocks


def _commands(code: str) -> list[list[str]]:
    """``trl-text2grad`` command lines of a bash block (continuation lines joined, comments dropped)."""
    joined = code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "trl-text2grad":
            commands.append(words[1:])
    return commands


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" or b.directive for b in parse_blocks(p))]


def test_directives_are_well_formed():
    for page in PAGES:
        for block in parse_blocks(page):
            where = f"{page.name}:{block.line}"
            if block.directive == "skip-snippet":
                assert block.argument, f"{where}: skip-snippet needs a reason"
            if block.directive == "snippet-file":
                assert block.argument and "/" not in block.argument.strip("./"), f"{where}: snippet-file NAME"
            if block.directive == "snippet-run":
                assert block.lang == "bash" and _commands(block.code), f"{where}: snippet-run needs trl-text2grad"
    # skips stay rare: every skipped block is counted here, and the count can only be raised on purpose
    skipped = [f"{p.name}:{b.line}" for p in PAGES for b in parse_blocks(p) if b.directive == "skip-snippet"]
    assert len(skipped) <= 8, skipped


@pytest.fixture
def tiny_default_model(tiny_model_dir, tmp_path, monkeypatch):
    """``$TRL_TEXT2GRAD_CACHE`` with the tiny model in the default model's cache folder."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_model_dir, cache / "smollm2-135m-instruct")
    monkeypatch.setenv("TRL_TEXT2GRAD_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_ppo_sizes(monkeypatch):
    """Every ``SpanPPOConfig`` a page builds gets at most 8-token responses and one PPO epoch per rollout (the page's
    other values, its batch sizes and episode counts, are kept)."""
    from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig

    original = SpanPPOConfig.__post_init__

    def tiny(self):
        self.response_length = min(self.response_length, 8)
        self.num_ppo_epochs = 1
        self.gradient_checkpointing = False
        original(self)

    monkeypatch.setattr(SpanPPOConfig, "__post_init__", tiny)


@pytest.mark.usefixtures("one_thread", "tiny_ppo_sizes")
@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: p.name)
def test_page_snippets_run(page, tiny_default_model, tmp_path, monkeypatch, capsys):
    from trl_text2grad.cli.main import main as cli_main

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "recipes").symlink_to(ROOT / "recipes")  # pages run commands from a clone's root
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", [str(workdir), *sys.path])
    modules_before = set(sys.modules)
    namespace: dict = {"__name__": f"snippets_{page.stem}"}
    ran = 0
    try:
        for block in parse_blocks(page):
            where = f"{page.name}:{block.line}"
            if block.directive == "skip-snippet":
                continue
            if block.directive == "snippet-file":
                (workdir / block.argument).write_text(block.code, encoding="utf-8")
                continue
            if block.directive == "snippet-run":
                for argv in _commands(block.code):
                    extra = TINY_OVERRIDES.get(argv[0], []) if argv else []
                    code = cli_main([*argv, *extra])
                    assert code in (0, None), f"{where}: `trl-text2grad {' '.join(argv)}` exited {code}"
                    ran += 1
                continue
            if block.lang != "python":
                continue
            try:
                exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - the docs' own code
            except Exception as error:
                raise AssertionError(f"{where}: the snippet raised {type(error).__name__}: {error}") from error
            ran += 1
    finally:
        for name in set(sys.modules) - modules_before:  # modules a page wrote (my_rewards, ...)
            module = sys.modules.get(name)
            if module is not None and str(getattr(module, "__file__", "") or "").startswith(str(workdir)):
                del sys.modules[name]
    assert ran, f"{page.name}: nothing ran"
