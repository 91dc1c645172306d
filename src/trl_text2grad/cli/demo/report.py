"""The demo's report: token-reward heatmaps (terminal and HTML), training curves (PNG) and ``report.html``."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ...alignment import spans_to_token_rewards
from ...visualize import render_token_rewards_html, render_token_rewards_terminal, tokens_for_display
from .config import DemoConfig

logger = logging.getLogger(__name__)

__all__ = ["heatmap", "plot_curves", "html_report", "honesty"]


def heatmap(tokenizer, text: str, spans: Sequence[tuple], color: bool) -> tuple[str, str, list[float]]:
    """(terminal rendering, HTML rendering, token rewards) of ``text`` with ``spans``."""
    if not text:
        return "(empty response)", "<div><i>(empty response)</i></div>", []
    tokens = tokens_for_display(tokenizer, text)
    rewards = spans_to_token_rewards(text, [tuple(s) for s in spans], tokenizer)
    return (
        render_token_rewards_terminal(tokens, rewards, color=color),
        render_token_rewards_html(tokens, rewards),
        rewards,
    )


def plot_curves(log_history: list[dict], path: Path) -> str | None:
    """Training curves from ``trainer.state.log_history`` → PNG file; returns the base64 PNG or ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as err:  # matplotlib is in the demo extra; the report says so when it is missing
        logger.warning("no training curves: matplotlib is unavailable (%s); pip install matplotlib", err)
        return None
    rows = [r for r in log_history if "step" in r]
    numeric = sorted(
        {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
    )
    preferred = [
        "objective/scores",
        "objective/rlhf_reward",
        "objective/kl",
        "loss/policy_avg",
        "loss/value_avg",
        "policy/entropy_avg",
        "span/frac_tokens_rewarded",
        "loss",
    ]
    chosen = [key for key in preferred if key in numeric][:6]
    for word in ("reward", "score", "kl", "loss"):  # other trainers' names
        chosen += [k for k in numeric if word in k and k not in chosen][: max(0, 6 - len(chosen))]
    if not chosen:
        return None
    cols = 3 if len(chosen) > 4 else 2
    nrows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.9 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, chosen):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", linewidth=1.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.write_bytes(buffer.getvalue())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f4f4f4; } .note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 1em; }
.skip { background: #fdecea; border-left: 4px solid #d93025; padding: 0.6em 1em; }
.sample { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.6em 0.9em; margin: 0.8em 0; }
.critique { color: #444; font-style: italic; margin: 0.3em 0 0.5em 0; } code { background: #f4f4f4; }
.legend span { padding: 1px 6px; margin-right: 8px; }
"""


def html_report(summary: dict, samples: list[dict], curves_b64: str | None, problems_table: list[dict]) -> str:
    esc = html.escape
    m = summary["metrics"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>trl-text2grad demo report</title>"]
    out.append(f"<style>{CSS}</style></head><body>")
    out.append("<h1>trl-text2grad demo</h1>")
    out.append(
        f"<p>Text2Grad span-level PPO on HumanEval with <code>{esc(summary['model'])}</code>, critic "
        f"<code>{esc(summary['critic'])}</code>. Finished {esc(summary['finished'])} in "
        f"{summary['runtime_s']:.0f} s.</p>"
    )
    out.append(f"<div class='note'><b>How small this run is.</b> {esc(summary['honesty'])}</div>")
    if summary["skipped"]:
        out.append("<div class='skip'><b>Skipped stages.</b><ul>")
        out += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in summary["skipped"].items()]
        out.append("</ul></div>")

    out.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    for key, value in m.items():
        shown = f"{value:.3f}" if isinstance(value, float) else esc(str(value))
        out.append(f"<tr><td>{esc(key)}</td><td>{shown}</td></tr>")
    out.append("</table>")

    out.append("<h2>Training curves</h2>")
    if curves_b64:
        out.append(f"<img alt='training curves' style='max-width:100%' src='data:image/png;base64,{curves_b64}'>")
    else:
        out.append("<p><i>No training curves (training skipped, nothing logged, or matplotlib missing).</i></p>")

    out.append("<h2>Token-reward heatmaps</h2>")
    out.append(
        "<p class='legend'><span style='background: rgba(0,170,0,0.6)'>good span (+)</span>"
        "<span style='background: rgba(220,0,0,0.6)'>poor span (−)</span> neutral tokens uncoloured; hover a token "
        "for its reward. Spans come from the critic; token rewards from <code>spans_to_token_rewards</code>.</p>"
    )
    for sample in samples:
        status = {True: " · tests passed", False: " · tests failed"}.get(sample.get("passed"), "")
        out.append(
            f"<div class='sample'><b>{esc(sample['stage'])}</b> · <code>{esc(sample['task_id'])}</code>{status}"
            f"<div class='critique'>{esc(sample['critique'])}</div>{sample['html']}</div>"
        )

    if problems_table:
        out.append("<h2>Held-out problems</h2><table><tr><th>problem</th><th>before</th><th>after</th></tr>")
        for row in problems_table:
            before = "✔" if row["before"] else "✘"
            after = "—" if row["after"] is None else ("✔" if row["after"] else "✘")
            out.append(f"<tr><td><code>{esc(row['task_id'])}</code></td><td>{before}</td><td>{after}</td></tr>")
        out.append("</table>")
    out.append("<h2>Settings</h2><pre>" + esc(json.dumps(summary["config"], indent=2)) + "</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def honesty(config: DemoConfig, n_params: int, n_train: int, n_eval: int, trained: bool) -> str:
    episodes = config.steps * config.batch_size if trained else 0
    return (
        f"This is a demonstration of the pipeline, not an experiment. The policy has {n_params / 1e6:.1f}M "
        "parameters; PPO ran "
        f"{config.steps if trained else 0} rollout(s) of {config.batch_size} prompts ({episodes} sampled answers in "
        f"total, LoRA rank {config.lora_r}) on {n_train} training problems, and pass@1 is measured with greedy "
        f"decoding on only {n_eval} held-out problems, so one problem moves pass@1 by {100 / max(n_eval, 1):.1f} "
        "points. A difference between 'before' and 'after' of this size is noise; the paper's gains need thousands "
        "of episodes on a much larger model (see recipes/ and docs/recipes.md)."
    )
