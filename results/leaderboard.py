"""The leaderboard maths: per (dataset, horizon, model) test MSE/MAE as mean and std over seeds, plus the average
over horizons, with the config chosen by validation loss (never by test).

Std is the sample standard deviation over seeds (ddof=1); with a single seed it is None.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from benchmarks.models.registry import model_label
from results.output import csv_safe
from results.runs import BenchmarkRecord

AVG = "Avg"
# Model display order of the MixMamba paper's tables; other models follow alphabetically.
MODEL_ORDER = ("mixmamba", "itransformer", "patchtst", "dlinear")
# Row-group order of the paper's long-term table; other datasets follow alphabetically.
DATASET_ORDER = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "exchange_rate", "weather", "electricity")


def _model_rank(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def _dataset_key(dataset: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: mean and sample std (ddof=1; None with one seed)."""

    mean: float
    std: float | None

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class LeaderboardRow:
    """One (dataset, horizon, model column) entry; horizon is a pred_len or AVG.

    An AVG row averages the per-horizon means (and the per-horizon stds) over every horizon of its dataset; it
    exists only for columns that have all of them, so averages are always over the same horizons.
    """

    dataset: str
    horizon: int | str
    model: str
    label: str
    config_hash: str  # the config chosen by validation loss; "" on AVG rows (each horizon chooses its own)
    seeds: int
    best_val_loss: float  # mean over seeds of the chosen config
    mse: Summary
    mae: Summary


@dataclass(frozen=True)
class Leaderboard:
    """All leaderboard rows of one suite, with the orders every table and figure uses."""

    suite: str
    rows: tuple[LeaderboardRow, ...]

    def datasets(self) -> list[str]:
        """Datasets in the paper's row-group order, then the others alphabetically."""
        return sorted({row.dataset for row in self.rows}, key=_dataset_key)

    def labels(self) -> list[str]:
        """Model columns: MixMamba, iTransformer, PatchTST, DLinear, then others; plain names before display names."""
        models = {(row.model, row.label) for row in self.rows}
        ordered = sorted(models, key=lambda pair: (
            _model_rank(pair[0]), pair[0], pair[1] != model_label(pair[0]), pair[1]))
        return [label for _, label in ordered]

    def horizons(self, dataset: str) -> list[int]:
        """The pred_lens that any column has for this dataset, ascending."""
        return sorted({row.horizon for row in self.rows if row.dataset == dataset and row.horizon != AVG})

    def get(self, dataset: str, horizon: int | str, label: str) -> LeaderboardRow | None:
        """The entry for one cell, or None when that cell has no complete runs."""
        for row in self.rows:
            if row.dataset == dataset and row.horizon == horizon and row.label == label:
                return row
        return None


def _latest_per_seed(records: list[BenchmarkRecord]) -> list[BenchmarkRecord]:
    """One record per seed: a cell that was run twice counts once, with its latest run."""
    by_seed: dict[int, BenchmarkRecord] = {}
    for record in sorted(records, key=lambda record: record.start_time):
        by_seed[record.seed] = record
    return [by_seed[seed] for seed in sorted(by_seed)]


def _choose_config(records: list[BenchmarkRecord]) -> tuple[str, list[BenchmarkRecord]]:
    """The config with the lowest mean best_val_loss over its seeds (ties: the smaller config_hash) and its runs."""
    by_config: dict[str, list[BenchmarkRecord]] = defaultdict(list)
    for record in records:
        by_config[record.config_hash].append(record)
    scored = []
    for config_hash, runs in by_config.items():
        runs = _latest_per_seed(runs)
        scored.append((statistics.fmean(run.best_val_loss for run in runs), config_hash, runs))
    _, config_hash, runs = min(scored, key=lambda item: (item[0], item[1]))
    return config_hash, runs


def build_leaderboard(records: Iterable[BenchmarkRecord], suite: str = "") -> Leaderboard:
    """Summarise complete benchmark runs: pick each cell's config by validation loss, then mean/std over seeds."""
    cells: dict[tuple[str, int, str, str], list[BenchmarkRecord]] = defaultdict(list)
    for record in records:
        cells[(record.dataset, record.pred_len, record.model, record.label)].append(record)
    rows: list[LeaderboardRow] = []
    for (dataset, pred_len, model, label), cell in sorted(cells.items()):
        config_hash, runs = _choose_config(cell)
        rows.append(
            LeaderboardRow(
                dataset=dataset,
                horizon=pred_len,
                model=model,
                label=label,
                config_hash=config_hash,
                seeds=len(runs),
                best_val_loss=statistics.fmean(run.best_val_loss for run in runs),
                mse=Summary.of([run.test_mse for run in runs]),
                mae=Summary.of([run.test_mae for run in runs]),
            )
        )
    per_horizon = Leaderboard(suite, tuple(rows))
    return Leaderboard(suite, tuple(rows) + tuple(_averages(per_horizon)))


def _average(summaries: list[Summary]) -> Summary:
    stds = [summary.std for summary in summaries]
    return Summary(
        statistics.fmean(summary.mean for summary in summaries),
        None if None in stds else statistics.fmean(stds),
    )


def _averages(board: Leaderboard) -> list[LeaderboardRow]:
    averages = []
    for dataset in board.datasets():
        horizons = board.horizons(dataset)
        for label in board.labels():
            entries = [board.get(dataset, horizon, label) for horizon in horizons]
            if None in entries:
                continue
            averages.append(
                LeaderboardRow(
                    dataset=dataset,
                    horizon=AVG,
                    model=entries[0].model,
                    label=label,
                    config_hash="",
                    seeds=min(entry.seeds for entry in entries),
                    best_val_loss=statistics.fmean(entry.best_val_loss for entry in entries),
                    mse=_average([entry.mse for entry in entries]),
                    mae=_average([entry.mae for entry in entries]),
                )
            )
    return averages


def ordered_rows(board: Leaderboard) -> list[LeaderboardRow]:
    """Rows in table order: dataset groups, horizons ascending then AVG, model columns in display order."""
    rows = []
    for dataset in board.datasets():
        for horizon in [*board.horizons(dataset), AVG]:
            rows.extend(row for label in board.labels() if (row := board.get(dataset, horizon, label)) is not None)
    return rows


LEADERBOARD_COLUMNS = (
    "dataset", "horizon", "model", "label", "config_hash", "seeds", "best_val_loss",
    "mse_mean", "mse_std", "mae_mean", "mae_std",
)


def leaderboard_csv(board: Leaderboard) -> str:
    """The leaderboard as CSV at full precision, one line per (dataset, horizon, model column); no std -> empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LEADERBOARD_COLUMNS)
    for row in ordered_rows(board):
        writer.writerow([
            csv_safe(row.dataset), row.horizon, csv_safe(row.model), csv_safe(row.label), csv_safe(row.config_hash),
            row.seeds, repr(row.best_val_loss),
            repr(row.mse.mean), "" if row.mse.std is None else repr(row.mse.std),
            repr(row.mae.mean), "" if row.mae.std is None else repr(row.mae.std),
        ])
    return out.getvalue()


def _mean_std(summary: Summary) -> str:
    return f"{summary.mean:.4f}" if summary.std is None else f"{summary.mean:.4f} ± {summary.std:.4f}"


def leaderboard_text(board: Leaderboard) -> str:
    """The leaderboard as an aligned plain-text table for the terminal (4 decimals)."""
    header = ("dataset", "horizon", "model", "seeds", "test MSE", "test MAE", "val loss", "config")
    lines = [header] + [
        (row.dataset, str(row.horizon), row.label, str(row.seeds), _mean_std(row.mse), _mean_std(row.mae),
         f"{row.best_val_loss:.4f}", row.config_hash or "-")
        for row in ordered_rows(board)
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [f"suite: {board.suite}", "  ".join(cell.ljust(width) for cell, width in zip(lines[0], widths)).rstrip()]
    text.append("  ".join("-" * width for width in widths))
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines[1:]]
    return "\n".join(text) + "\n"
