"""Summary bar chart of an excerpt-level result: median per stem, one bar per model and baseline."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synth_server.tools.spectrogram import plt

LABELS = {"mixture": "mixture", "oracle": "IRM oracle"}


def systems_of(result: dict) -> list[str]:
    return [m["name"] for m in result["models"]] + list(result["baselines"])


def write_bar_chart(path: Path, result: dict) -> Path:
    """PNG: one row per condition, one panel per metric (SI-SDR, and SDR with BSS-eval), grouped
    bars of the median per stem for every model and baseline."""
    metrics = ["si_sdr"] + (["sdr"] if result["bss"] is not None else [])
    conditions, systems, stems = result["conditions"], systems_of(result), result["stems"]
    fig, axes = plt.subplots(len(conditions), len(metrics), squeeze=False,
                             figsize=(max(5.0, 1.3 * len(stems) * len(systems) / 2) * len(metrics),
                                      3.2 * len(conditions)))
    width = 0.8 / len(systems)
    for row, cond in zip(axes, conditions):
        for ax, metric in zip(row, metrics):
            for k, system in enumerate(systems):
                values = [cond["summary"][system][stem].get(metric, {}).get("median") for stem in stems]
                ax.bar(np.arange(len(stems)) + (k - (len(systems) - 1) / 2) * width,
                       [np.nan if v is None else v for v in values], width, label=LABELS.get(system, system))
            ax.set_xticks(np.arange(len(stems)), stems)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_ylabel(f"median {metric.upper().replace('_', '-')} (dB)")
            ax.set_title(f"{cond['name']}: {len(cond['excerpts'])} excerpts", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
