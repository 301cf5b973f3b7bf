"""The MixMamba paper's published long-term forecasting numbers (results/paper_mixmamba.csv), keyed by our
registry names, and the reference value for each row of our tables.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from results.leaderboard import AVG

PAPER_CSV = Path(__file__).with_name("paper_mixmamba.csv")
PAPER_HORIZONS = (96, 192, 336, 720)
REFERENCES = ("paper",)


@dataclass(frozen=True)
class Published:
    """One published (MSE, MAE) pair."""

    mse: float
    mae: float


@lru_cache(maxsize=1)
def paper_results() -> dict[tuple[str, int | str, str], Published]:
    """(dataset, horizon or AVG, registry model) -> published numbers; the paper's `avg` rows are keyed by AVG."""
    with PAPER_CSV.open() as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return {
            (row["dataset"], AVG if row["horizon"] == "avg" else int(row["horizon"]), row["model"]):
                Published(float(row["mse"]), float(row["mae"]))
            for row in rows
        }


def published(dataset: str, horizon: int | str, model: str, horizons: list[int]) -> Published | None:
    """The paper's number for one cell of our table, or None when the paper has none.

    For the AVG row `horizons` are the horizons our table averages over: with the paper's four horizons this is
    the paper's own Avg row; otherwise the mean of the published numbers over those same horizons (so ours and
    the paper's average over the same horizons), or None if the paper lacks one of them.
    """
    results = paper_results()
    if horizon != AVG:
        return results.get((dataset, horizon, model))
    if tuple(horizons) == PAPER_HORIZONS and (dataset, AVG, model) in results:
        return results[(dataset, AVG, model)]
    cells = [results.get((dataset, h, model)) for h in horizons]
    if not cells or None in cells:
        return None
    return Published(statistics.fmean(cell.mse for cell in cells), statistics.fmean(cell.mae for cell in cells))


def relative_difference(ours: float, paper: float) -> float:
    """(ours - paper) / paper in percent: positive means our error is higher than published."""
    return (ours - paper) / paper * 100.0
