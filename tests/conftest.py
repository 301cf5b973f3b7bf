"""Shared test fixtures: the real benchmark data beside the repository and a private working directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MIXBENCH_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The unchanged Time-Series-Library datasets in ../shared/data (never copied into the repo)."""
    if not (SHARED_DATA / "ETT-small" / "ETTh1.csv").is_file():
        pytest.fail(f"benchmark data not found under {SHARED_DATA}; set MIXBENCH_DATA_DIR to the shared data folder")
    return SHARED_DATA


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
