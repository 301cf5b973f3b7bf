"""The tests find benchmark data as the product does: $MIXBENCH_DATA_DIR, ../shared/data, ./dataset, then a
checksummed download; only when none works are data tests skipped, with one reason naming MIXBENCH_DATA_DIR."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import huggingface_hub.constants

_spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).with_name("conftest.py"))
finder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(finder)


def copy_of_test_data(source: Path, target: Path) -> Path:
    from benchmarks.data.registry import get_dataset

    for name in finder.TEST_DATASETS:
        path = get_dataset(name).path
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).symlink_to(source / path)  # the shared files themselves, never a copy
    return target


def test_candidates_are_the_environment_then_shared_data_then_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXBENCH_DATA_DIR", str(tmp_path))
    assert finder.data_candidates() == [tmp_path.resolve(), (finder.REPO_ROOT.parent / "shared" / "data").resolve(),
                                        (finder.REPO_ROOT / "dataset").resolve()]
    monkeypatch.delenv("MIXBENCH_DATA_DIR")
    assert finder.data_candidates()[0] == (finder.REPO_ROOT.parent / "shared" / "data").resolve()


def test_the_first_folder_that_holds_the_data_wins(shared_data_dir, tmp_path):
    empty, later = tmp_path / "empty", copy_of_test_data(shared_data_dir, tmp_path / "later")
    empty.mkdir()
    assert finder.find_benchmark_data([empty, later, shared_data_dir], tmp_path / "download") == (later.resolve(), "")


def test_without_data_or_hub_the_reason_is_one_line_naming_the_variable(monkeypatch, tmp_path):
    # The hub's own offline switch: the download is really attempted and really fails, at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    download = tmp_path / "dataset"
    folder, reason = finder.find_benchmark_data([tmp_path / "nowhere"], download)
    assert folder is None and len(reason.splitlines()) == 1
    assert reason.endswith("set MIXBENCH_DATA_DIR to a folder holding it") and str(tmp_path / "nowhere") in reason
    assert not [path for path in download.rglob("*") if path.is_file()]  # nothing half-downloaded is left
