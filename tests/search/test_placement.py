"""Placement on several GPUs (issue 23), proven on CPU with Ray's custom GPU resources: every packed trial and every
fused group runs on exactly one GPU (its child runs are tagged with it), and a GPU share that is not 1/n of a GPU,
which would leave remainders Ray could place trials on, is refused up front.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.errors import SettingError
from search.config import SearchConfig, resolve_resources
from search.groups import tune_trial_of
from tests.search.test_search import TINY_SPACE, kind, store

pytestmark = pytest.mark.slow  # Ray Tune searches in this process

GPUS = 2


@pytest.fixture(scope="module")
def two_gpu_runtime():
    import ray

    # No GPU is present: Ray hands out the ids of two simulated ones, which the trials record (they train on the CPU).
    ray.init(num_cpus=4, num_gpus=GPUS, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("share", [0.15, 0.3, 0.4, 0.7])
def test_a_share_that_is_not_one_nth_of_a_gpu_is_refused(share: float) -> None:
    with pytest.raises(SettingError, match="is not 1/n of a GPU"):
        resolve_resources(SearchConfig(dataset="weather", gpus_per_trial=share), cpus=16, gpus=4)


@pytest.mark.parametrize("share", [0.125, 0.2, 0.25, 1 / 3, 0.5, 1.0, 2.0])
def test_one_nth_shares_are_taken(share: float) -> None:
    config = resolve_resources(SearchConfig(dataset="weather", gpus_per_trial=share), cpus=16, gpus=4)
    assert config.gpus_per_trial == share


@pytest.mark.parametrize("fuse", ["off", "2"])
def test_each_trial_and_fused_group_runs_on_one_gpu(fuse: str, two_gpu_runtime, shared_data_dir: Path,
                                                    tmp_path: Path) -> None:
    from search.runner import run_search

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.replace("1.0e+30", "0.003"))  # no diverging trial here
    outcome = run_search(SearchConfig(
        dataset="ETTh1", trials=4, epochs=1, seed=3, space=str(space), data_dir=str(shared_data_dir),
        gpus_per_trial=0.5, cpus_per_trial=1, fuse=fuse, limit_train_batches=2, limit_eval_batches=1,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", storage_path=str(tmp_path / "ray")))
    assert not outcome.interrupted and outcome.counts["failed"] == 0
    _, runs = store(tmp_path)
    children = kind(runs, "trial")
    assert len(children) == 4
    placed = [run.data.tags["gpu_ids"] for run in children]
    assert set(placed) <= {str(gpu) for gpu in range(GPUS)}  # one id each: no trial or group spans two GPUs
    devices = {run.data.tags["cuda_device"] for run in children}  # recorded: "" where no CUDA device is visible
    assert devices == {""} if not torch.cuda.is_available() else "" not in devices
    if fuse == "2":
        by_group: dict[str, set[str]] = {}
        for run in children:
            by_group.setdefault(tune_trial_of(run.data.tags["trial_id"]), set()).add(run.data.tags["gpu_ids"])
        assert len(by_group) == 2 and all(len(gpus) == 1 for gpus in by_group.values())
