"""A trial that runs out of GPU memory inside a real search (ETTh1, DLinear, Ray Tune on CPU): it fails with the reason
in its MLflow run, Ray's retries fail at once instead of training again, and the other trial finishes.

On CPU no real CUDA OOM can be made: every Ray worker gets a setup hook that makes the first model built in the
search raise PyTorch's real `torch.OutOfMemoryError` from a forward hook, at its first forward (epoch 1 training).
Only the first: a retry of that trial would train normally, so a failed trial shows that no retry trained.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a real Ray Tune search

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACE = "model:\n  moving_avg: 25\ntrain:\n  learning_rate: {choices: [0.001, 0.002]}\n  batch_size: 16\n"
CLAIM_ENV = "MIXBENCH_TEST_OUT_OF_MEMORY_CLAIM"


def first_model_runs_out_of_gpu_memory() -> None:
    """Ray's worker_process_setup_hook: the first model built by any worker raises CUDA's OOM error at its forward."""
    import torch

    from benchmarks.experiment import Experiment

    real_build_model = Experiment.build_model

    def build_model(experiment):
        model = real_build_model(experiment)
        try:
            os.close(os.open(os.environ[CLAIM_ENV], os.O_CREAT | os.O_EXCL))  # atomic: one model in the search
        except FileExistsError:
            return model

        def allocate(module, inputs, output):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.register_forward_hook(allocate)
        return model

    Experiment.build_model = build_model


@pytest.fixture
def ray_runtime(tmp_path: Path):
    import ray

    # PYTHONPATH: workers import the hook (this module) and the platform before Ray adds the driver's paths.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"worker_process_setup_hook": first_model_runs_out_of_gpu_memory,
                          "env_vars": {CLAIM_ENV: str(tmp_path / "claimed"), "PYTHONPATH": str(REPO_ROOT)}})
    yield
    ray.shutdown()


def test_a_trial_out_of_gpu_memory_fails_once_with_the_reason_and_the_search_goes_on(ray_runtime, shared_data_dir,
                                                                                    tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from ray.tune import ExperimentAnalysis

    from search.config import SearchConfig
    from search.runner import run_search
    from search.trial import OUT_OF_MEMORY_FILE, trial_dirname

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    config = SearchConfig(dataset="ETTh1", model="dlinear", pred_len=24, trials=2, epochs=1, seed=3, space=str(space),
                          data_dir=str(shared_data_dir), limit_train_batches=2, limit_eval_batches=2,
                          scheduler="fifo", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          storage_path=str(tmp_path / "ray"), max_failures=2)
    outcome = run_search(config)

    assert (tmp_path / "claimed").is_file(), "no model was built with the out-of-memory hook"
    assert not outcome.interrupted
    assert outcome.counts["failed"] == 1 and outcome.counts["finished"] == 1
    (failed,) = [trial for trial in ExperimentAnalysis(str(outcome.experiment_dir)).trials if trial.status == "ERROR"]
    # Ray retried it max_failures times, and each retry failed at once on the record instead of training again.
    assert failed.run_metadata.num_failures == config.max_failures + 1
    assert (outcome.experiment_dir / trial_dirname(failed.trial_id) / OUT_OF_MEMORY_FILE).is_file()

    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name("mixbench")
    children = client.search_runs([experiment.experiment_id], filter_string="tags.`mixbench.kind` = 'trial'")
    by_trial = {run.data.tags["trial_id"]: run for run in children}
    assert len(by_trial) == 2
    run = by_trial[failed.trial_id]
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "failed"
    assert "val_loss" not in run.data.metrics  # no attempt got through an epoch
    assert run.data.tags["error"] == (
        "GpuOutOfMemoryError: dlinear on ETTh1 (pred_len 24) ran out of GPU memory in epoch 1 (training) at batch "
        "size 16; lower train.batch_size (e.g. train.batch_size=8) or give the run a larger GPU share"
    )
    (finished,) = [item for trial_id, item in by_trial.items() if trial_id != failed.trial_id]
    assert finished.info.status == "FINISHED" and "test_mse" in finished.data.metrics
