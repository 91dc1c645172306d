"""Token-reward heatmaps of sampled PPO completions (``heatmap_every_n_steps``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..visualize import render_token_rewards_html, render_token_rewards_terminal

__all__ = ["write_rollout_heatmaps"]


def write_rollout_heatmaps(
    tokenizer,
    prompts: Sequence,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    texts: Sequence[str],
    offsets: Sequence[Sequence[tuple[int, int]]],
    task_rewards: torch.Tensor,
    rollout_index: int,
    output_dir: str,
    to_terminal: bool,
    max_samples: int = 4,
) -> str:
    """Render up to ``max_samples`` completions of a rollout, each token coloured by its task reward.

    Each token is shown as the text its character range covers (its token string when the range is empty). Writes
    ``<output_dir>/heatmaps/rollout_<index>.html`` (returned) and, when ``to_terminal``, prints a terminal rendering.
    """
    task_rewards = task_rewards.detach().float().cpu()
    parts = ["<html><body>"]
    for row in range(min(max_samples, len(texts))):
        text, row_offsets = texts[row], offsets[row]
        ids = responses[row][response_mask[row].bool()].tolist()
        pieces = [
            text[start:end] if end > start else tokenizer.convert_ids_to_tokens(token)
            for (start, end), token in zip(row_offsets, ids)
        ]
        rewards = task_rewards[row, : len(pieces)].tolist()
        title = f"rollout {rollout_index} sample {row}: {str(prompts[row])[-200:]}"
        parts.append(render_token_rewards_html(pieces, rewards, title=title))
        if to_terminal:
            print(title)
            print(render_token_rewards_terminal(pieces, rewards))
    parts.append("</body></html>")
    directory = os.path.join(output_dir, "heatmaps")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"rollout_{rollout_index:06d}.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
