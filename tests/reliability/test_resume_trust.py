"""Finding 3 of issue 20 (deliverable 2): `search --resume` runs no code from a file the search did not write.

One real search (ETTh1, DLinear, CPU) is copied per probe; then a planted pickle, a truncated one, an extra state
file, a digest made stale (what a SIGKILLed driver can leave), a group-writable file: each is refused with one
SettingError naming another --name, before Ray reads anything, and the planted payload never runs.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from benchmarks.errors import SettingError
from search.folder_trust import DIGEST_FILE

pytestmark = pytest.mark.slow  # a real search on a local Ray runtime

SPACE = "model:\n  moving_avg: 25\ntrain:\n  learning_rate: {choices: [0.001, 0.002]}\n  batch_size: 16\n"


class Payload:
    """Unpickling this creates `marker`: proof that code from the folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data_dir: Path):
    from search.config import SearchConfig
    from search.runner import run_search

    root = tmp_path_factory.mktemp("trust")
    space = root / "space.yaml"
    space.write_text(SPACE)
    config = SearchConfig(dataset="ETTh1", model="dlinear", trials=1, epochs=1, seed=9, space=str(space),
                          data_dir=str(shared_data_dir), limit_train_batches=3, limit_eval_batches=2,
                          scheduler="fifo", tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                          storage_path=str(root / "ray"), name="trusted")
    outcome = run_search(config)
    assert outcome.counts["finished"] == 1
    return config, outcome.experiment_dir


def tamper_tuner(folder: Path, marker: Path) -> None:
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))


def truncate_tuner(folder: Path, marker: Path) -> None:
    data = (folder / "tuner.pkl").read_bytes()
    (folder / "tuner.pkl").write_bytes(data[: len(data) // 2])


def plant_state(folder: Path, marker: Path) -> None:
    (folder / "experiment_state-2099-01-01_00-00-00.json").write_text("{}")


def stale_digest(folder: Path, marker: Path) -> None:
    # A driver SIGKILLed between Tune's save and the digest update: the state changed after the last record.
    state = max(folder.glob("experiment_state-*.json"))
    state.write_text(state.read_text() + " ")


def group_writable(folder: Path, marker: Path) -> None:
    os.chmod(folder / "tuner.pkl", 0o664)


def no_record(folder: Path, marker: Path) -> None:
    (folder / DIGEST_FILE).unlink()


@pytest.mark.parametrize("tamper, reason", [
    (tamper_tuner, "tuner.pkl changed"), (truncate_tuner, "tuner.pkl changed"),
    (plant_state, "not written by the search"), (stale_digest, "changed after the search last recorded it"),
    (group_writable, "writable by other users"), (no_record, "is missing"),
])
def test_resume_refuses_files_the_search_did_not_write(finished, tamper, reason, tmp_path: Path):
    import dataclasses

    from search.runner import run_search

    config, experiment_dir = finished
    storage = tmp_path / "ray"
    copy = storage / experiment_dir.name
    shutil.copytree(experiment_dir, copy)
    marker = tmp_path / "payload-ran"
    tamper(copy, marker)
    with pytest.raises(SettingError, match=reason) as refused:
        run_search(dataclasses.replace(config, resume=True, storage_path=str(storage)))
    assert refused.value.setting == "name" and "\n" not in str(refused.value)
    assert "Start afresh with another name" in str(refused.value)
    assert not marker.exists()


def test_an_untouched_folder_resumes(finished, tmp_path: Path):
    import dataclasses

    from search.runner import run_search

    config, experiment_dir = finished
    storage = tmp_path / "ray"
    shutil.copytree(experiment_dir, storage / experiment_dir.name)
    outcome = run_search(dataclasses.replace(config, resume=True, storage_path=str(storage)))
    assert outcome.counts["finished"] == 1
