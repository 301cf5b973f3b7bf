"""Figures of a leaderboard: one PNG per dataset, test MSE by horizon, one line per model, error bars over seeds."""
from __future__ import annotations

import io
import re
from pathlib import Path

from matplotlib.figure import Figure

from results.leaderboard import Leaderboard
from results.output import write_atomic


def figure_path(directory: Path, dataset: str) -> Path:
    """Where the figure of `dataset` goes: `<directory>/<dataset>_mse.png` (unsafe characters become `_`)."""
    return Path(directory) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', dataset)}_mse.png"


def write_figures(board: Leaderboard, directory: Path) -> list[Path]:
    """Write one PNG per dataset of `board` into `directory` (created if needed); the paths written.

    Error bars are the sample std over seeds (none for a single seed); missing horizons leave gaps in a line.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)  # the command has checked it up front (results.output)
    paths = []
    for dataset in board.datasets():
        horizons = board.horizons(dataset)
        # A bare Figure (no pyplot) draws with Agg and sets no global backend in the importing process.
        figure = Figure(figsize=(6, 4), dpi=120)
        axes = figure.subplots()
        for label in board.labels():
            entries = [board.get(dataset, horizon, label) for horizon in horizons]
            points = [(horizon, entry) for horizon, entry in zip(horizons, entries) if entry is not None]
            if not points:
                continue
            axes.errorbar(
                [horizon for horizon, _ in points],
                [entry.mse.mean for _, entry in points],
                yerr=[entry.mse.std or 0.0 for _, entry in points],
                marker="o", capsize=3, label=label,
            )
        axes.set_xscale("log", base=2)
        axes.set_xticks(horizons, [str(horizon) for horizon in horizons])
        axes.minorticks_off()
        axes.set_xlabel("forecast horizon (pred_len)")
        axes.set_ylabel("test MSE (mean ± std over seeds)")
        axes.set_title(f"{dataset} (suite {board.suite})")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        image = io.BytesIO()
        figure.savefig(image, format="png")
        paths.append(write_atomic(figure_path(directory, dataset), image.getvalue()))
    return paths
