"""One search trial as Ray Tune runs it in a worker: train the proposed config, report each epoch with a checkpoint,
and resume from the last checkpoint when Ray restarts the trial after a failure or `--resume`.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.space import ProposedConfig, SearchSpace

if TYPE_CHECKING:
    from benchmarks.engine import EpochReport, ExperimentSpec
    from benchmarks.tracking import TrackingConfig
    from search.trial_runs import LiveTrialRun

FEATURES = "M"
CHECKPOINT_FILE = "state.pt"
DIVERGED_FILE = "diverged.txt"
OUT_OF_MEMORY_FILE = "out_of_memory.txt"
ARTIFACT_DIR = "artifacts"
SEARCH_METRIC = "val_loss_best"


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its proposed config; the same for every trial of one search.

    data_dir is absolute (Ray runs trials in other working directories); enc_in and sha256 describe the dataset
    file the driver checked, for the MLflow params. experiment_dir is the search's folder (absolute; Tune's storage,
    which every node of a cluster reaches). `tracking` is set only when trials log their own child runs (an http(s)
    tracking server); with a local store the driver logs them.
    """

    space: SearchSpace
    dataset: str
    model: str
    pred_len: int
    seq_len: int
    seed: int
    epochs: int
    limit_train_batches: int | None
    limit_eval_batches: int | None
    data_dir: str
    enc_in: int
    sha256: str
    cpus_per_trial: float
    gpus_per_trial: float
    experiment_dir: str
    tracking: TrackingConfig | None = None

    def spec(self, proposed: ProposedConfig, seed: int | None = None) -> ExperimentSpec:
        """The experiment a proposed config trains: recipe, then the proposal, then the search's epochs and limits."""
        from benchmarks.engine import ExperimentSpec

        return ExperimentSpec(
            dataset=self.dataset, model=self.model, pred_len=self.pred_len,
            seq_len=proposed.seq_len or self.seq_len, features=FEATURES,
            seed=self.seed if seed is None else seed, model_overrides=dict(proposed.model),
            train_overrides={**proposed.train, "epochs": self.epochs, "limit_train_batches": self.limit_train_batches,
                             "limit_eval_batches": self.limit_eval_batches},
            device="auto", data_dir=self.data_dir,
        )


@dataclass(frozen=True)
class ResolvedTrial:
    """A trial's experiment with every setting filled in, as its MLflow run records it."""

    spec: ExperimentSpec
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    data_config: dict[str, Any]


def resolve_trial(setup: TrialSetup, proposed: ProposedConfig) -> ResolvedTrial:
    """The resolved spec and configs of a proposal, without loading data or building the model.

    Raises InputError when the proposal plus the recipe is not a valid model config (the trial would fail alike).
    """
    from benchmarks.engine import resolve_experiment, run_data_config, run_model_config

    spec = resolve_experiment(setup.spec(proposed))
    return ResolvedTrial(spec, run_model_config(spec, setup.enc_in), asdict(spec.train),
                         run_data_config(spec, setup.sha256))


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune function trainable: train `config` (a proposal of setup.space), reporting every epoch.

    Each epoch but the last is reported with a checkpoint (the engine's state, torch.save'd) so ASHA can stop the
    trial and Ray can resume it. The last epoch is reported together with the test metrics and the artifact
    folder, once the run has ended: ASHA stops every trial at max_t, which would otherwise cut off the test.
    A NaN/inf loss raises NonFiniteLossError and running out of GPU memory GpuOutOfMemoryError, so Tune records the
    trial as failed and the search goes on.
    """
    import torch
    from ray import tune

    from benchmarks.engine import GpuOutOfMemoryError, NonFiniteLossError, run_experiment

    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_id = tune.get_context().get_trial_id()
    # Divergence and running out of GPU memory (same batch size, same share) repeat, so Ray's retry (FailureConfig) of
    # such a trial fails at once with the same error. The record is kept in the search's folder, not in trial_dir:
    # Ray gives a retry that runs in a reused actor another trial_dir than the first attempt's.
    records = Path(setup.experiment_dir) / trial_dirname(trial_id)
    repeating = {NonFiniteLossError: records / DIVERGED_FILE, GpuOutOfMemoryError: records / OUT_OF_MEMORY_FILE}
    for error_type, record in repeating.items():
        if record.is_file():
            raise error_type(record.read_text())
    torch.set_num_threads(max(1, int(setup.cpus_per_trial)))
    if 0 < setup.gpus_per_trial < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(setup.gpus_per_trial)
    proposed = setup.space.decode(config)
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume_state = load_checkpoint(Path(directory))
    live = None
    if setup.tracking is not None:
        from search.trial_runs import TrialRuns

        runs = TrialRuns(setup.tracking)
        live = runs.open(trial_id, resolve_trial(setup, proposed))
    reporter = EpochReporter(setup.epochs, live)
    try:
        result = run_experiment(setup.spec(proposed), on_epoch=reporter, resume_state=resume_state,
                                artifact_dir=trial_dir / ARTIFACT_DIR)
    except (NonFiniteLossError, GpuOutOfMemoryError) as error:
        records.mkdir(parents=True, exist_ok=True)
        repeating[type(error)].write_text(str(error))
        raise
    final = {"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
             "test_mse": result.test_mse, "test_mae": result.test_mae, "artifact_dir": str(result.artifact_dir)}
    if live is not None:
        live.finish(final, result.artifact_dir)
    tune.report({**result.history[-1], SEARCH_METRIC: result.best_val_loss, **final})


def trial_dirname(trial_id: str) -> str:
    """The folder of Tune trial `trial_id` in the search's folder (the runner's trial_dirname_creator)."""
    return f"trial_{trial_id}"


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """The engine state a trial checkpoint holds; weights_only, so a crafted pickle in it cannot run code."""
    import torch

    return torch.load(directory / CHECKPOINT_FILE, weights_only=True)


class EpochReporter:
    """The engine's on_epoch for a trial: one Tune report per epoch (the search metric is val_loss_best)."""

    def __init__(self, epochs: int, live: LiveTrialRun | None = None) -> None:
        self.epochs = epochs
        self.live = live

    def __call__(self, report: EpochReport) -> None:
        import torch
        from ray import tune

        row = epoch_row(report)
        if self.live is not None:
            self.live.log_epoch(row)
        if report.epoch >= self.epochs:
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(report.state(), Path(directory) / CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))


def epoch_row(report: EpochReport) -> dict[str, float]:
    """What each epoch reports: the search metric (best so far), this epoch's losses, learning rate and speed."""
    return {"epoch": report.epoch, SEARCH_METRIC: report.best_val_loss, "val_loss": report.val_loss,
            "val_mse": report.val_mse, "val_mae": report.val_mae, "train_loss": report.train_loss,
            "lr": report.learning_rate, "epoch_seconds": report.seconds, "samples_per_s": report.samples_per_s}
