"""Token-reward heatmaps of sampled PPO completions (``heatmap_every_n_steps``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..visualize import (
    heatmap_legend_html,
    heatmap_legend_text,
    render_token_rewards_html,
    render_token_rewards_terminal,
)

__all__ = ["HEATMAP_QUANTITY", "write_rollout_heatmaps"]

#: What the rollout heatmaps show (their legend).
HEATMAP_QUANTITY = (
    "per-token task reward of the sampled response (span rewards, plus any scalar reward on its last token), "
    "before the KL penalty"
)


def write_rollout_heatmaps(
    tokenizer,
    prompts: Sequence,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    texts: Sequence[str],
    offsets: Sequence[Sequence[tuple[int, int]]],
    task_rewards: torch.Tensor,
    update: int,
    output_dir: str,
    to_terminal: bool,
    max_samples: int = 4,
) -> str:
    """Render up to ``max_samples`` completions of update ``update`` (1-based), each token coloured by its task reward.

    Each token is shown as the text its character range covers (its token string when the range is empty); the
    colour scale is the largest absolute reward shown, stated in the legend. Writes
    ``<output_dir>/heatmaps/update_<N>.html`` (returned) and, when ``to_terminal``, prints a terminal rendering.
    """
    task_rewards = task_rewards.detach().float().cpu()
    shown = min(max_samples, len(texts))
    scale = float(task_rewards[:shown].abs().max()) if shown else 0.0
    parts = ["<html><body>", heatmap_legend_html(HEATMAP_QUANTITY, scale or None)]
    for row in range(shown):
        text, row_offsets = texts[row], offsets[row]
        ids = responses[row][response_mask[row].bool()].tolist()
        pieces = [
            text[start:end] if end > start else tokenizer.convert_ids_to_tokens(token)
            for (start, end), token in zip(row_offsets, ids)
        ]
        rewards = task_rewards[row, : len(pieces)].tolist()
        title = f"update {update} sample {row}: {str(prompts[row])[-200:]}"
        parts.append(render_token_rewards_html(pieces, rewards, max_abs=scale or None, title=title))
        if to_terminal:
            if row == 0:
                print(heatmap_legend_text(HEATMAP_QUANTITY))
            print(title)
            print(render_token_rewards_terminal(pieces, rewards))
    parts.append("</body></html>")
    directory = os.path.join(output_dir, "heatmaps")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"update_{update:06d}.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
