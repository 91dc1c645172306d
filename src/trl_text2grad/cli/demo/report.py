"""The demo's report: the learning curve (PNG and a text table), token-reward heatmaps (terminal and HTML), the
other training curves (PNG) and ``report.html`` (curve first, then held-out before/after, then heatmaps)."""

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

__all__ = ["heatmap", "plot_curves", "plot_learning_curve", "curve_table", "html_report", "honesty"]


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
    plt = _pyplot()
    if plt is None:
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
    return _png(fig, plt, path)


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or ``None`` when matplotlib is unavailable (logged)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as err:  # matplotlib is in the demo extra; the report says so when it is missing
        logger.warning("no plots: matplotlib is unavailable (%s); pip install matplotlib", err)
        return None
    return plt


def _png(fig, plt, path: Path) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.write_bytes(buffer.getvalue())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_learning_curve(curve: dict | None, path: Path) -> str | None:
    """The learning curve (see ``run.learning_curve``) → PNG file: per-update rollout success (dots), the moving
    average with its 95 % band, and the first-k / last-k success with their intervals. Returns the base64 PNG or
    ``None`` (no curve, or matplotlib missing)."""
    if not curve or not curve.get("rate"):
        return None
    plt = _pyplot()
    if plt is None:
        return None
    updates = list(range(1, len(curve["rate"]) + 1))
    fig, ax = plt.subplots(figsize=(8.4, 3.8))
    dots = [(u, r) for u, r in zip(updates, curve["rate"]) if r is not None]
    if dots:
        ax.plot(*zip(*dots), "o", color="#888888", markersize=4, label="success of the update's rollout")
    band = [
        (u, a, lo, hi)
        for u, a, lo, hi in zip(updates, curve["moving_average"], curve["band_low"], curve["band_high"])
        if a is not None
    ]
    if band:
        us, averages, lows, highs = zip(*band)
        ax.fill_between(us, lows, highs, color="#1f77b4", alpha=0.18, label="95% band (Wilson, pooled window)")
        ax.plot(us, averages, color="#1f77b4", linewidth=2, label=f"moving average ({curve['window']} updates)")
    verdict = curve["verdict"]
    difference = verdict.get("difference")
    if difference is not None:
        k, n = verdict["k"], len(updates)
        for (start, end), side, colour in (((1, k), "first", "#d62728"), ((n - k + 1, n), "second", "#2ca02c")):
            group = difference[side]
            ax.hlines(group["rate"], start, end, colors=colour, linewidth=2.5)
            ax.fill_between([start, end], group["low"], group["high"], color=colour, alpha=0.12)
            label = "first" if side == "first" else "last"
            ax.annotate(
                f"{label} {k}: {group['rate']:.2f}",
                (start, group["high"]),
                fontsize=8,
                color=colour,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("PPO update")
    ax.set_ylabel("rollout success rate")
    ax.set_title(f"Rollout success: {verdict['label']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig, plt, path)


def curve_table(curve: dict, rows: int = 10) -> str:
    """A compact text table of the learning curve: about ``rows`` evenly spaced updates (always the last one) with
    their own success, the moving average and its band."""
    n = len(curve["rate"])
    if n == 0:
        return "(no updates)"
    step = max(1, math.ceil(n / rows))
    chosen = sorted(set(range(0, n, step)) | {n - 1})
    lines = [f"  {'update':>6}  {'success':>9}  {'moving avg':>10}  {'95% band':>13}"]
    for i in chosen:
        rate = curve["rate"][i]
        own = f"{curve['successes'][i]}/{curve['responses'][i]}" if rate is not None else "n/a"
        average = curve["moving_average"][i]
        shown = f"{average:.2f}" if average is not None else "n/a"
        lines.append(f"  {i + 1:>6}  {own:>9}  {shown:>10}  [{curve['band_low'][i]:.2f}, {curve['band_high'][i]:.2f}]")
    return "\n".join(lines)


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


def _held_out_html(held_out: dict) -> list[str]:
    esc = html.escape
    out = [
        f"<h2>Held-out {esc(held_out['metric'])}: before and after training</h2>",
        f"<p>Prompts never used in training; {esc(held_out['decoding'])}; judged by the task's own metric. "
        "95% Wilson intervals; the difference has a 95% Newcombe (hybrid score) interval. Every answer counts as an "
        "independent trial, which answers to the same prompt are only approximately.</p>",
        "<table><tr><th></th><th>rate</th><th>95% interval</th><th>successes</th></tr>",
    ]
    for when in ("before", "after"):
        side = held_out.get(when)
        if side is None or side.get("rate") is None:
            out.append(f"<tr><td>{when}</td><td colspan='3'><i>not measured</i></td></tr>")
        else:
            out.append(
                f"<tr><td>{when}</td><td>{side['rate']:.3f}</td><td>[{side['low']:.3f}, {side['high']:.3f}]</td>"
                f"<td>{side['successes']}/{side['n']}</td></tr>"
            )
    difference = held_out.get("difference")
    if difference is not None:
        out.append(
            f"<tr><td>after − before</td><td>{difference['value']:+.3f}</td>"
            f"<td>[{difference['low']:+.3f}, {difference['high']:+.3f}]</td><td></td></tr>"
        )
    out.append("</table>")
    return out


def html_report(
    summary: dict,
    samples: list[dict],
    curves_b64: str | None,
    prompts_table: list[dict],
    learning_b64: str | None = None,
) -> str:
    """``report.html``: the learning curve first, then held-out before/after, then the token-reward heatmaps, the
    other training curves, the per-prompt table and the settings."""
    esc = html.escape
    m = summary["metrics"]
    curve = summary.get("curve")
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>trl-text2grad demo report</title>"]
    out.append(f"<style>{CSS}</style></head><body>")
    out.append("<h1>trl-text2grad demo</h1>")
    out.append(
        f"<p>Text2Grad span-level PPO on <code>{esc(summary.get('task', 'humaneval'))}</code> with "
        f"<code>{esc(summary['model'])}</code>, critic <code>{esc(summary['critic'])}</code>. Finished "
        f"{esc(summary['finished'])} in {summary['runtime_s']:.0f} s.</p>"
    )
    if summary["skipped"]:
        out.append("<div class='skip'><b>Skipped stages.</b><ul>")
        out += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in summary["skipped"].items()]
        out.append("</ul></div>")

    out.append("<h2 id='learning-curve'>Learning curve: rollout success per PPO update</h2>")
    if curve:
        out.append(
            f"<p class='verdict'><b>Verdict: {esc(curve['verdict']['label'])}.</b> {esc(curve['verdict_text'])}</p>"
        )
        if learning_b64:
            out.append(f"<img alt='learning curve' style='max-width:100%' src='data:image/png;base64,{learning_b64}'>")
        out.append(
            f"<p>Success = the task's own metric on the responses sampled in each rollout (before that update's "
            f"optimisation). Band: {esc(curve['band'])}. Rule: {esc(curve['verdict']['rule'])}.</p>"
        )
        out.append(f"<pre>{esc(curve['sparkline'])}   (one character per update, ▁ = 0 … █ = 1)</pre>")
    else:
        out.append("<p><i>No learning curve (training skipped or no rollout was scored).</i></p>")

    out += _held_out_html(summary.get("held_out") or {"metric": "success", "decoding": "", "difference": None})

    out.append(f"<div class='note'><b>How small this run is.</b> {esc(summary['honesty'])}</div>")

    out.append("<h2>Token-reward heatmaps</h2>")
    out.append(
        "<p class='legend'><span style='background: rgba(0,170,0,0.6)'>good span (+)</span>"
        "<span style='background: rgba(220,0,0,0.6)'>poor span (−)</span> neutral tokens uncoloured; hover a token "
        "for its reward. Spans come from the critic; token rewards from <code>spans_to_token_rewards</code>.</p>"
    )
    for sample in samples:
        status = {True: " · success", False: " · no success"}.get(sample.get("passed"), "")
        out.append(
            f"<div class='sample'><b>{esc(sample['stage'])}</b> · <code>{esc(sample['task_id'])}</code>{status}"
            f"<div class='critique'>{esc(sample['critique'])}</div>{sample['html']}</div>"
        )

    out.append("<h2>Other training curves</h2>")
    if curves_b64:
        out.append(f"<img alt='training curves' style='max-width:100%' src='data:image/png;base64,{curves_b64}'>")
    else:
        out.append("<p><i>No training curves (training skipped, nothing logged, or matplotlib missing).</i></p>")

    out.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    for key, value in m.items():
        shown = f"{value:.3f}" if isinstance(value, float) else esc(str(value))
        out.append(f"<tr><td>{esc(key)}</td><td>{shown}</td></tr>")
    out.append("</table>")

    if prompts_table:
        out.append(
            "<h2>Held-out prompts</h2><table><tr><th>prompt</th><th>successes before</th><th>successes after</th></tr>"
        )
        for row in prompts_table:
            cells = []
            for when in ("before", "after"):
                value = row[when]
                if value is None:
                    cells.append("—")
                elif row["of"] == 1:
                    cells.append("✔" if value else "✘")
                else:
                    cells.append(f"{value}/{row['of']}")
            out.append(f"<tr><td><code>{esc(row['task_id'])}</code></td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
        out.append("</table>")
    out.append("<h2>Settings</h2><pre>" + esc(json.dumps(summary["config"], indent=2)) + "</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def honesty(config: DemoConfig, n_params: int, n_train: int, n_eval: int, trained: bool, unit: str = "problem") -> str:
    """A plain statement of how small the run is (shown in the terminal and the report)."""
    episodes = config.steps * config.batch_size if trained else 0
    per_prompt = max(1, config.eval_samples)
    answers = n_eval * per_prompt
    decoding = (
        f"{per_prompt} answers sampled at temperature {config.temperature:g} per {unit}"
        if config.eval_samples > 0
        else "one greedy answer per " + unit
    )
    return (
        f"This is a demonstration of the pipeline, not an experiment. The policy has {n_params / 1e6:.1f}M "
        f"parameters; PPO ran {config.steps if trained else 0} update(s) of {config.batch_size} prompts "
        f"({episodes} sampled answers in total, LoRA rank {config.lora_r}) on {n_train} training {unit}s, and the "
        f"held-out measurement uses {n_eval} {unit}s ({decoding}, {answers} answers), so one answer moves it by "
        f"{100 / max(answers, 1):.1f} points and the intervals above are wide. The intervals count every answer as "
        f"an independent trial; answers to the same {unit} are correlated, so the true uncertainty is larger. The "
        "paper's gains need thousands of episodes on a much larger model (see recipes/ and docs/recipes.md)."
    )
