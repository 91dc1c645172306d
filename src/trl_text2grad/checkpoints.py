"""Crash-safe checkpoints for the trainers of this package (``SpanPPOTrainer``, ``SpanRewardTrainer``).

A checkpoint becomes visible only when it is complete:

1. the ``transformers.Trainer`` writes ``checkpoint-N`` (weights, optimizer, scheduler, RNG states,
   ``trainer_state.json``) into a hidden staging folder ``<run_dir>/.tmp-checkpoint-N/checkpoint-N``;
2. the trainer adds its own files (e.g. the PPO rollout state, one file per process);
3. after every process is done, the main process writes a completion marker (:data:`COMPLETE_MARKER`, a manifest of
   every file and its size), flushes everything to disk and renames the folder to ``<run_dir>/checkpoint-N``;
4. only then are old checkpoints rotated away (``save_total_limit``), so a kill at any moment leaves at least the
   previous complete checkpoint.

``train(resume_from_checkpoint=True)`` resumes from the newest *complete* checkpoint and logs each newer one it
skipped and why; a checkpoint named explicitly must be complete, otherwise :class:`IncompleteCheckpointError` names
the missing file. A checkpoint is complete when its marker exists, every file the marker lists exists with the
recorded size, and the trainer's own mandatory files (:meth:`AtomicCheckpointMixin.checkpoint_required_files`) are
there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

__all__ = [
    "COMPLETE_MARKER",
    "STAGING_PREFIX",
    "IncompleteCheckpointError",
    "AtomicCheckpointMixin",
    "checkpoint_problem",
    "find_latest_complete_checkpoint",
    "parse_resume_argument",
    "resolve_resume_checkpoint",
    "write_completion_marker",
]

logger = logging.getLogger(__name__)

#: Written last into a checkpoint folder: ``{"global_step": N, "files": {relative path: size in bytes}}``.
COMPLETE_MARKER = "checkpoint_complete.json"
#: Prefix of the hidden staging folders next to the checkpoints (never matched by ``checkpoint-*``).
STAGING_PREFIX = ".tmp-"

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_RESUME_LATEST = frozenset({"true", "latest", "last", "yes", "1"})
_RESUME_NONE = frozenset({"", "false", "none", "no", "0", "null"})


class IncompleteCheckpointError(ValueError):
    """A checkpoint named for resuming lacks a file (its save was interrupted, or it was damaged)."""


# ----------------------------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------------------------
def checkpoint_problem(path: str | os.PathLike, required_files: Sequence[str] = ()) -> tuple[str, str] | None:
    """Why ``path`` is not a complete checkpoint: ``(missing or damaged file, reason)``, or ``None`` when complete.

    Complete means: the completion marker exists and is readable, every file it lists exists with the recorded size,
    and every name in ``required_files`` (relative to ``path``) exists.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return os.path.basename(path), f"{path} is not a folder"
    marker = os.path.join(path, COMPLETE_MARKER)
    if not os.path.isfile(marker):
        return COMPLETE_MARKER, f"no {COMPLETE_MARKER} (the save was interrupted, or an older version wrote it)"
    try:
        with open(marker, encoding="utf-8") as f:
            files = json.load(f)["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return COMPLETE_MARKER, f"{COMPLETE_MARKER} is unreadable ({type(error).__name__}: {error})"
    for name, size in sorted(sizes.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return name, f"{name} is missing"
        actual = os.path.getsize(file)
        if actual != size:
            return name, f"{name} has {actual} bytes, the completed save wrote {size}"
    for name in required_files:
        if not os.path.exists(os.path.join(path, name)):
            return name, f"{name} is missing"
    return None


def _checkpoint_folders(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` folder in ``output_dir``, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match is not None and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found, reverse=True)


def find_latest_complete_checkpoint(
    output_dir: str | os.PathLike, required_files: Sequence[str] = ()
) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete ``checkpoint-N`` in ``output_dir`` and the newer ones skipped, as ``(path, reason)``."""
    skipped: list[tuple[str, str]] = []
    for _, path in _checkpoint_folders(os.fspath(output_dir)):
        problem = checkpoint_problem(path, required_files)
        if problem is None:
            return path, skipped
        skipped.append((path, problem[1]))
    return None, skipped


def _checkpoint_global_step(path: str) -> int | None:
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def parse_resume_argument(value: Any) -> bool | str | None:
    """A ``--resume_from_checkpoint`` value from a command line or YAML: ``true``/``latest`` mean the newest complete
    checkpoint (``True``), ``false``/``none``/empty mean no resume (``None``), anything else is a path."""
    if value is None or isinstance(value, bool):
        return value or None
    text = str(value).strip()
    if text.lower() in _RESUME_LATEST:
        return True
    if text.lower() in _RESUME_NONE:
        return None
    return text


def resolve_resume_checkpoint(
    resume_from_checkpoint: bool | str | os.PathLike | None,
    output_dir: str | os.PathLike,
    required_files: Sequence[str] = (),
) -> str | None:
    """The checkpoint folder to resume from, checked for completeness.

    Args:
        resume_from_checkpoint: ``None``/``False``: no resume. ``True``: the newest complete ``checkpoint-N`` in
            ``output_dir`` (each newer, incomplete one is logged with the reason it was skipped). A path: that
            checkpoint, which must be complete.
        output_dir: Where ``True`` looks for checkpoints.
        required_files: Files (relative to a checkpoint) without which a checkpoint is incomplete.

    Raises:
        ValueError: ``True`` but no complete checkpoint in ``output_dir``.
        FileNotFoundError: The named checkpoint does not exist.
        IncompleteCheckpointError: The named checkpoint is incomplete; the message names the missing file.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        path, skipped = find_latest_complete_checkpoint(output_dir, required_files)
        for skipped_path, reason in skipped:
            logger.warning("resume: skipping incomplete checkpoint %s: %s.", skipped_path, reason)
        if path is None:
            detail = "; ".join(f"{p}: {r}" for p, r in skipped) or "there is no checkpoint-N folder"
            raise ValueError(
                f"resume_from_checkpoint=True but {os.fspath(output_dir)!r} holds no complete checkpoint ({detail}). "
                "Start without resume_from_checkpoint, or name a checkpoint folder."
            )
        logger.info("resume: newest complete checkpoint is %s.", path)
        return path
    path = os.fspath(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"resume_from_checkpoint={path!r} is not a folder; pass a checkpoint-N folder or True."
        )
    problem = checkpoint_problem(path, required_files)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"cannot resume from {path}: it is incomplete ({problem[1]}; missing or damaged file: {problem[0]}). "
            "Resume from an earlier checkpoint, or pass resume_from_checkpoint=True to take the newest complete one."
        )
    return path


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------
def _fsync_path(path: str) -> None:
    """Flush a file or folder to disk (best effort where the platform cannot open folders)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_completion_marker(path: str | os.PathLike, global_step: int) -> None:
    """Flush every file of the checkpoint folder ``path`` to disk, then write :data:`COMPLETE_MARKER` atomically."""
    path = os.fspath(path)
    files: dict[str, int] = {}
    for root, _, names in os.walk(path):
        for name in names:
            file = os.path.join(root, name)
            rel = os.path.relpath(file, path)
            if rel == COMPLETE_MARKER:
                continue
            _fsync_path(file)
            files[rel.replace(os.sep, "/")] = os.path.getsize(file)
        _fsync_path(root)
    temporary = os.path.join(path, COMPLETE_MARKER + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"global_step": int(global_step), "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, os.path.join(path, COMPLETE_MARKER))
    _fsync_path(path)


def _publish(staged: str, final: str) -> None:
    """Rename the complete ``staged`` folder to ``final`` (an existing ``final`` is moved aside, then deleted)."""
    parent = os.path.dirname(final)
    replaced = None
    if os.path.lexists(final):
        replaced = os.path.join(parent, f"{STAGING_PREFIX}replaced-{os.path.basename(final)}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staged, final)
    _fsync_path(parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


class AtomicCheckpointMixin:
    """Mixin for ``transformers.Trainer`` subclasses (put it first in the bases): atomic checkpoints and resuming
    only from complete ones (see the module docstring).

    Subclasses add files with :meth:`save_checkpoint_extra_state` (called on every process, inside the staging
    folder, before the checkpoint is marked complete) and declare mandatory files with
    :meth:`checkpoint_required_files`.
    """

    _staging_run_dir: str | None = None

    def checkpoint_required_files(self) -> list[str]:
        """Files (relative to a checkpoint folder) this process needs to resume; checked besides the marker."""
        return ["trainer_state.json"]

    def save_checkpoint_extra_state(self, checkpoint_dir: str) -> None:
        """Write the trainer's own state into ``checkpoint_dir`` (every process; before the completion marker)."""

    # The Trainer writes checkpoint-N under this folder: while saving it is the hidden staging folder.
    def _get_output_dir(self, trial) -> str:
        if self._staging_run_dir is not None:
            return self._staging_run_dir
        return super()._get_output_dir(trial)

    # The Trainer writes checkpoint-N in place and rotates old ones before it is complete: stage, mark, rename.
    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, folder)
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{folder}")
        staged = os.path.join(staging_root, folder)
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # left over by a killed save
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        os.makedirs(staged, exist_ok=True)
        self.save_checkpoint_extra_state(staged)
        if self.state.best_model_checkpoint is not None and os.path.normpath(
            self.state.best_model_checkpoint
        ) == os.path.normpath(staged):
            self.state.best_model_checkpoint = final
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.state.best_model_checkpoint == final:  # trainer_state.json recorded the staging path
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            write_completion_marker(staged, self.state.global_step)
            _publish(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,  # checkpoints become visible in step order
            )
        self.accelerator.wait_for_everyone()

    # Resumed at max_steps, the Trainer would run one more step when max_steps is not a whole number of epochs.
    def _run_epoch(self, *args, **kwargs):
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # The Trainer's `True` takes the highest-numbered folder unchecked: take the newest complete one instead.
    def train(self, resume_from_checkpoint: bool | str | None = None, trial=None, **kwargs):
        checkpoint = resolve_resume_checkpoint(
            resume_from_checkpoint, self.args.output_dir, self.checkpoint_required_files()
        )
        output = super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
        if checkpoint is not None and self.state.global_step == _checkpoint_global_step(checkpoint):
            self._load_rng_state(checkpoint)  # a finished run resumed: no step ran, end with the RNG it ended with
        return output
