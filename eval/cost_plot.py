"""Accuracy against what it cost: the comparison table's trade-off chart (``mm-adapter table --cost-plot``).

One point per row with training costs: its test Avg with the bootstrap interval as an error bar, against its
trainable parameters on a log axis, since methods span four decades (a LoRA of a few hundred thousand weights,
full fine-tuning of all of them). Rows without costs (zero-shot, imported adapters) have no place on the x axis
and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mm_adapter.eval.run_costs import RunCosts
from mm_adapter.files.atomic import atomic_write_bytes
from mm_adapter.scienceqa.metrics import Scores
from mm_adapter.scienceqa.report import png_bytes


def cost_plot(scores: Sequence[Scores], costs: Mapping[str, RunCosts], path: str | Path,
              title: str = "ScienceQA") -> list[tuple[str, int, float]]:
    """Write the chart as PNG (atomically); returns the points drawn: (row name, trainable parameters, Avg)."""
    png, points = cost_plot_png(scores, costs, title)
    atomic_write_bytes(path, png)
    return points


def cost_plot_png(scores: Sequence[Scores], costs: Mapping[str, RunCosts],
                  title: str = "ScienceQA") -> tuple[bytes, list[tuple[str, int, float]]]:
    """The chart as PNG bytes, and the points drawn: (row name, trainable parameters, Avg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(s, costs[s.name]) for s in scores if s.name in costs and costs[s.name].trainable]
    fig, ax = plt.subplots(figsize=(7, 5))
    for (s, cost), x in zip(shown, _spread([cost.trainable for _, cost in shown])):
        avg = s.columns["Avg"]
        yerr = [[avg.acc - avg.ci[0]], [avg.ci[1] - avg.acc]] if avg.ci else None
        ax.errorbar([x], [avg.acc], yerr=yerr, fmt="o", capsize=3, label=f"{s.name} ({cost.trainable:,})")
    ax.set_xscale("log")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("Avg accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig), [(s.name, cost.trainable, s.columns["Avg"].acc) for s, cost in shown]


def _spread(xs: list[int], step: float = 1.08) -> list[float]:
    """Where to draw each x: methods sized alike (within 10%) would hide each other's error bars, so the k-th of a
    cluster moves right by step**k (the legend keeps the exact counts)."""
    drawn, starts = [], []
    for x in xs:
        cluster = [start for start in starts if start <= x <= 1.1 * start or x <= start <= 1.1 * x]
        drawn.append(x * step ** len(cluster))
        starts.append(x)
    return drawn
