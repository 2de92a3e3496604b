"""Accuracy against what it cost: the comparison table's trade-off chart (``mm-adapter table --cost-plot``).

One point per row with training costs: its test Avg with the bootstrap interval as an error bar, against its
trainable parameters on a log axis, since methods span four decades (a LoRA of a few hundred thousand weights,
full fine-tuning of all of them). Rows without costs (zero-shot, imported adapters) have no place on the x axis
and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mm_adapter.atomic import atomic_path
from mm_adapter.eval.run_costs import RunCosts
from mm_adapter.scienceqa.metrics import Scores


def cost_plot(scores: Sequence[Scores], costs: Mapping[str, RunCosts], path: str | Path,
              title: str = "ScienceQA") -> list[tuple[str, int, float]]:
    """Write the chart as PNG; returns the points drawn: (row name, trainable parameters, Avg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(s, costs[s.name]) for s in scores if s.name in costs and costs[s.name].trainable]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, cost in shown:
        avg = s.columns["Avg"]
        yerr = [[avg.acc - avg.ci[0]], [avg.ci[1] - avg.acc]] if avg.ci else None
        ax.errorbar([cost.trainable], [avg.acc], yerr=yerr, fmt="o", capsize=3, label=s.name)
        ax.annotate(s.name, (cost.trainable, avg.acc), textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("Avg accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return [(s.name, cost.trainable, s.columns["Avg"].acc) for s, cost in shown]
