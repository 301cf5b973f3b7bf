"""The long-term forecasting table in the MixMamba paper's layout, as data: row groups per dataset (horizons then
Avg), a (MSE, MAE) column pair per model, best/second marks, the 1st Count row and the optional paper reference.

Marks compare values as displayed (rounded to DECIMALS): every model tied at the best displayed value is marked
first (bold) and counts in 1st Count; second (underlined) is the next distinct displayed value, all tied models
included. Missing cells take no part. 1st Count counts the first marks over every row, the Avg rows included.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.errors import SettingError
from results.leaderboard import AVG, Leaderboard
from results.paper import REFERENCES, published, relative_difference

DECIMALS = 3
METRICS = ("mse", "mae")
FIRST, SECOND = "first", "second"


@dataclass(frozen=True)
class Cell:
    """One number of the table; mean None means the cell is missing (not run or not finished)."""

    mean: float | None = None
    std: float | None = None
    mark: str = ""  # FIRST, SECOND or ""


@dataclass(frozen=True)
class Reference:
    """The published number for one of our cells and our relative difference to it, in percent."""

    paper: float | None = None
    difference: float | None = None


@dataclass(frozen=True)
class TableRow:
    """One horizon (or Avg) of one dataset: cells and references keyed by (model column label, metric)."""

    dataset: str
    horizon: int | str
    cells: dict[tuple[str, str], Cell]
    references: dict[tuple[str, str], Reference] = field(default_factory=dict)


@dataclass(frozen=True)
class ForecastTable:
    """Everything a renderer needs; `reference_labels` are the columns that get a published-numbers group."""

    suite: str
    labels: list[str]
    models: dict[str, str]  # column label -> registry model (whose published numbers the reference shows)
    rows: list[TableRow]
    first_count: dict[tuple[str, str], int]
    reference_labels: list[str]
    reference: str | None = None


def displayed(value: float) -> float:
    """The value as the table shows it; marks compare these so readers see why a number is bold."""
    return float(f"{value:.{DECIMALS}f}")


def mark_row(values: dict[str, float | None]) -> dict[str, str]:
    """FIRST/SECOND/"" per column for one metric of one row (lower is better, ties share a mark)."""
    present = sorted({displayed(value) for value in values.values() if value is not None})
    marks = {}
    for label, value in values.items():
        if value is None:
            marks[label] = ""
        elif displayed(value) == present[0]:
            marks[label] = FIRST
        elif len(present) > 1 and displayed(value) == present[1]:
            marks[label] = SECOND
        else:
            marks[label] = ""
    return marks


def _cells(board: Leaderboard, dataset: str, horizon: int | str, labels: list[str]) -> dict[tuple[str, str], Cell]:
    """Our numbers of one row with their marks; a column without an entry gets an empty Cell."""
    cells: dict[tuple[str, str], Cell] = {}
    for metric in METRICS:
        summaries = {}
        for label in labels:
            entry = board.get(dataset, horizon, label)
            summaries[label] = None if entry is None else getattr(entry, metric)
        marks = mark_row({label: None if summary is None else summary.mean for label, summary in summaries.items()})
        for label, summary in summaries.items():
            cells[(label, metric)] = Cell() if summary is None else Cell(summary.mean, summary.std, marks[label])
    return cells


def _references(cells: dict[tuple[str, str], Cell], dataset: str, horizon: int | str, horizons: list[int],
                models: dict[str, str]) -> dict[tuple[str, str], Reference]:
    """The paper's numbers for one row and our relative difference to them, per (column, metric)."""
    references = {}
    for label, model in models.items():
        paper = published(dataset, horizon, model, horizons)
        for metric in METRICS:
            value = None if paper is None else getattr(paper, metric)
            ours = cells[(label, metric)].mean
            difference = None if value is None or ours is None else relative_difference(ours, value)
            references[(label, metric)] = Reference(value, difference)
    return references


def build_table(board: Leaderboard, reference: str | None = None) -> ForecastTable:
    """Lay the leaderboard out as the paper's table; `reference="paper"` adds the published numbers."""
    if reference is not None and reference not in REFERENCES:
        raise SettingError(f"unknown reference '{reference}'; {{setting}} must be one of: {', '.join(REFERENCES)}",
                           setting="reference")
    labels = board.labels()
    models = {label: next(row.model for row in board.rows if row.label == label) for label in labels}
    rows: list[TableRow] = []
    for dataset in board.datasets():
        horizons = board.horizons(dataset)
        for horizon in [*horizons, AVG]:
            cells = _cells(board, dataset, horizon, labels)
            references = {} if reference is None else _references(cells, dataset, horizon, horizons, models)
            rows.append(TableRow(dataset, horizon, cells, references))
    first_count = {
        (label, metric): sum(row.cells[(label, metric)].mark == FIRST for row in rows)
        for label in labels for metric in METRICS
    }
    reference_labels = [
        label for label in labels
        if any(row.references.get((label, metric), Reference()).paper is not None for row in rows for metric in METRICS)
    ]
    return ForecastTable(board.suite, labels, models, rows, first_count, reference_labels, reference)
