"""The real search's throughput: `run_search` on weather at one GPU share per trial, timed; trials counted from its
`SearchOutcome`, epochs and concurrency read from Ray Tune's per-trial result files (trial_*/result.json)."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Mapping

from benchmarks.data.files import resolve_data_dir
from benchmarks.speed.cases import DATASET
from search.config import SearchConfig
from search.group_trial import MEMBER_ROWS_KEY
from search.runner import run_search

# Tune stamps each report with whole seconds (int(time.time())), so two trials that ran one after the other can
# look as if they overlapped by up to this much.
TIMESTAMP_RESOLUTION_S = 1.0


def search_throughput(gpu_share: float, trials: int, epochs: int, budget_s: float, data_dir: str | None,
                      workdir: Path, fuse: int | str = "off") -> dict[str, Any]:
    """A search of MixMamba on weather (`trials` trials x `epochs` epochs, `gpu_share` GPU per trial or fused
    group, `budget_s` seconds of time budget, `fuse` as --fuse) in this process, with its Ray results and MLflow store
    under `workdir`, summarised; trials are counted as members with fused groups."""
    name = f"perf-gpu{gpu_share:g}-fuse{fuse}"
    config = SearchConfig(dataset=DATASET, trials=trials, epochs=epochs, gpus_per_trial=gpu_share,
                          time_budget_s=budget_s, name=name, storage_path=str(workdir / "ray"),
                          tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                          data_dir=str(resolve_data_dir(data_dir).resolve()), fuse=fuse)
    started = time.perf_counter()
    outcome = run_search(config)
    wall = time.perf_counter() - started
    summary = {"gpus_per_trial": gpu_share, "trials": trials, "epochs": epochs, "time_budget_s": budget_s,
               "fuse": fuse, "command": _equivalent_command(config) + f" --fuse {fuse}",
               "interrupted": outcome.interrupted, "best_val_loss": outcome.best_value,
               "best_test": outcome.best_test}
    summary.update(summarize_search(outcome.experiment_dir, outcome.counts, wall))
    return summary


def read_search_trials(experiment_dir: Path) -> list[dict[str, Any]]:
    """Each Tune trial's reports (trial_*/result.json, one JSON object per line), in folder order."""
    trials = []
    for result_file in sorted(experiment_dir.glob("trial_*/result.json")):
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if reports:
            trials.append({"trial": result_file.parent.name, "reports": reports})
    return trials


def peak_concurrency(intervals: list[tuple[float, float]], resolution: float = 0.0) -> int:
    """Most intervals open at one time. Two intervals count as overlapping only when they share more than
    `resolution` (the clock's); one ending when another starts does not overlap it."""
    shrunk = [(start, max(start, end - resolution)) for start, end in intervals]
    events = sorted([(end, -1) for _, end in shrunk] + [(start, 1) for start, _ in shrunk])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def summarize_search(experiment_dir: Path, counts: Mapping[str, int], wall: float) -> dict[str, Any]:
    """Trials/hour and trial outcomes of a finished search (`counts`: its SearchOutcome's trials per state; trials
    the time budget skipped are not counted), with the epochs its trials (or fused groups' members) reported and
    the peak number of Tune trials running at once, from Tune's result files."""
    trials = read_search_trials(experiment_dir)
    # A trial runs from its first report minus that report's iteration time until its last report.
    intervals = [(trial["reports"][0]["timestamp"] - trial["reports"][0].get("time_this_iter_s", 0.0),
                  trial["reports"][-1]["timestamp"]) for trial in trials]
    # A plain trial reports each epoch's row; a fused group reports one row per member in each epoch's report.
    rows = [row for trial in trials for report in trial["reports"]
            for row in ([report] if "epoch_seconds" in report else
                        [member_row for _, member_row in report.get(MEMBER_ROWS_KEY, [])])]
    epochs = [row["epoch_seconds"] for row in rows]
    done = counts.get("finished", 0) + counts.get("stopped", 0)
    return {"wall_seconds": wall, "trials_reporting": len(trials), "trials_finished": counts.get("finished", 0),
            "trials_stopped_early": counts.get("stopped", 0), "trials_failed": counts.get("failed", 0),
            "trials_skipped": counts.get("skipped", 0),
            "trials_per_hour": done * 3600 / wall, "epochs_reported": len(epochs),
            "epochs_per_hour": len(epochs) * 3600 / wall,
            "median_epoch_seconds": statistics.median(epochs) if epochs else None,
            "peak_concurrent_trials": peak_concurrency(intervals, TIMESTAMP_RESOLUTION_S) if intervals else 0}


def _equivalent_command(config: SearchConfig) -> str:
    """The `mixbench search` command line that runs the same search."""
    return (f"mixbench search --dataset {config.dataset} --trials {config.trials} --epochs {config.epochs} "
            f"--gpus-per-trial {config.gpus_per_trial:g} --time-budget {config.time_budget_s:g} --name {config.name} "
            f"--storage-path {config.storage_path} --tracking-uri {config.tracking_uri} --data-dir {config.data_dir}")
