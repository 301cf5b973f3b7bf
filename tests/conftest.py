"""Shared test fixtures: the real benchmark data, found as the product finds it, and a GPU out-of-memory trigger."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "MIXBENCH_DATA_DIR"
# The built-in datasets the tests read; fetched (checksummed) only when no folder holds them.
TEST_DATASETS = ("ETTh1", "weather")


def data_candidates() -> list[Path]:
    """Where the tests look, in order: $MIXBENCH_DATA_DIR, ../shared/data beside the checkout, ./dataset (the
    product's default folder)."""
    candidates = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
    candidates += [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "dataset"]
    return list(dict.fromkeys(folder.resolve() for folder in candidates))


def holds_test_data(folder: Path) -> bool:
    """Whether `folder` holds every file of TEST_DATASETS in the Time-Series-Library layout."""
    from benchmarks.data.registry import get_dataset

    return all((folder / get_dataset(name).path).is_file() for name in TEST_DATASETS)


def find_benchmark_data(candidates: list[Path], download_dir: Path) -> tuple[Path | None, str]:
    """(the first candidate that holds the test data, ""), else the data downloaded into `download_dir` with the
    registry's sha256 checks, else (None, why: one line naming MIXBENCH_DATA_DIR)."""
    from benchmarks.data.files import download_file
    from benchmarks.data.registry import get_dataset
    from benchmarks.errors import DataError

    for folder in candidates:
        if holds_test_data(folder):
            return folder.resolve(), ""
    try:
        for name in TEST_DATASETS:
            spec = get_dataset(name)
            if not (download_dir / spec.path).is_file():
                download_file(spec, download_dir)
    except DataError as error:
        looked = ", ".join(str(folder) for folder in candidates)
        return None, (f"benchmark data not found (looked in {looked}) and not downloadable "
                      f"({str(error).split(';')[0]}); set {DATA_ENV} to a folder holding it")
    return download_dir.resolve(), ""


@functools.lru_cache(maxsize=1)
def _benchmark_data() -> tuple[Path | None, str]:
    return find_benchmark_data(data_candidates(), REPO_ROOT / "dataset")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The unchanged Time-Series-Library datasets (never copied into the repo): see `find_benchmark_data`. Tests that
    need them are skipped, with one reason, only when no folder holds them and the hub is out of reach."""
    folder, reason = _benchmark_data()
    if folder is None:
        pytest.skip(reason)
    return folder


@pytest.fixture
def out_of_gpu_memory(monkeypatch):
    """`out_of_gpu_memory(after)`: every model built from now on raises PyTorch's real CUDA out-of-memory error from a
    forward hook once it has run `after` forwards (training and evaluation passes both count).

    On CPU no real CUDA OOM can be made; this raises the same exception type at the same place in the engine.
    """
    import torch

    from benchmarks.experiment import Experiment

    real_build_model = Experiment.build_model

    def arm(after: int) -> None:
        def build_model(experiment):
            model = real_build_model(experiment)
            forwards = 0

            def allocate(module, inputs, output):
                nonlocal forwards
                forwards += 1
                if forwards > after:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

            model.register_forward_hook(allocate)
            return model

        monkeypatch.setattr(Experiment, "build_model", build_model)

    return arm
