"""Benchmark config files (`--configs FILE`) and the grid they expand to, without running anything."""
from __future__ import annotations

import pytest

from benchmarks.errors import MixbenchError
from benchmarks.data.files import resolve_dataset
from benchmarks.tracking.store import TrackingStore
from benchmarks.grid.runner import FIRST_SEED, BenchmarkConfig, config_entries, plan_cells
from benchmarks.grid.configs import ConfigEntry, load_config_file

# What `mixbench search` writes (search/summary.py write_best_config): one mapping under a comment line.
SEARCH_BEST = """\
# best of search x (trial 0001, val_loss_best 0.4); use with: mixbench benchmark --configs <this file>
model: patchtst
dataset: ETTh1
pred_len: 96
seq_len: 96
model_overrides: {d_model: 16, d_ff: 32, n_heads: 2, e_layers: 1}
train_overrides: {learning_rate: 0.001}
"""


def test_a_search_best_config_file_loads_as_one_entry(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text(SEARCH_BEST)
    (entry,) = load_config_file(path)
    assert entry == ConfigEntry("patchtst", "ETTh1", 96, 96, None, {"d_model": 16, "d_ff": 32, "n_heads": 2,
                                                                    "e_layers": 1}, {"learning_rate": 0.001})


def test_lists_and_configs_key_with_display_names(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("configs:\n  - model: dlinear\n  - {model: mixmamba, display_name: MixMamba (searched)}\n")
    entries = load_config_file(path)
    assert [(e.model, e.display_name, e.dataset, e.pred_len) for e in entries] == [
        ("dlinear", None, None, None), ("mixmamba", "MixMamba (searched)", None, None)]


@pytest.mark.parametrize("text, message", [
    ("- model: dlinear\n  overrides: {}\n", "unknown key 'overrides'"),
    ("- dataset: ETTh1\n", "needs `model:`"),
    ("- model: dlinear\n  pred_len: -3\n", "pred_len=-3 must be a positive integer"),
    ("- model: dlinear\n  model_overrides: [1, 2]\n", "model_overrides must be a mapping"),
    ("[]\n", "has no entries"),
    ("model: [unclosed\n", "is not valid YAML"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MixbenchError, match=message.replace("[", r"\[")):
        load_config_file(path)


def test_missing_file_says_what_configs_accepts(tmp_path):
    with pytest.raises(MixbenchError, match="pass default, best or a YAML file"):
        load_config_file(tmp_path / "nope.yaml")


def grid(tmp_path, text: str, **flags) -> list:
    path = tmp_path / "configs.yaml"
    path.write_text(text)
    config = BenchmarkConfig(datasets=["etth1"], models=["dlinear", "patchtst"], horizons=[96, 192], seeds=2,
                             configs=str(path), **flags)
    store = TrackingStore.resolve(f"sqlite:///{tmp_path}/unused.db")
    return plan_cells(config, config_entries(config, store), {"ETTh1": resolve_dataset("ETTh1")})


def test_file_entries_expand_over_the_grid_cells_they_match(tmp_path):
    cells = grid(tmp_path, "- model: dlinear\n- {model: patchtst, pred_len: 192, display_name: tiny}\n"
                           "- {model: patchtst, dataset: weather}\n")
    keys = sorted((c.experiment.dataset, c.experiment.model, c.experiment.pred_len, c.experiment.seed,
                   c.display_name or "") for c in cells)
    assert keys == sorted(
        [("ETTh1", "dlinear", h, FIRST_SEED + s, "") for h in (96, 192) for s in (0, 1)]
        + [("ETTh1", "patchtst", 192, FIRST_SEED + s, "tiny") for s in (0, 1)]
    )


def test_seeds_share_a_config_hash_and_overrides_change_it(tmp_path):
    cells = grid(tmp_path, "- model: dlinear\n"
                           "- {model: dlinear, display_name: big, model_overrides: {moving_avg: 13}}\n", epochs=1)
    by_name = {}
    for cell in cells:
        by_name.setdefault((cell.display_name, cell.experiment.pred_len), set()).add(cell.config_hash)
    assert all(len(hashes) == 1 for hashes in by_name.values())
    assert by_name[(None, 96)] != by_name[("big", 96)]
    assert all(cell.experiment.train.epochs == 1 for cell in cells)


def test_bad_overrides_fail_while_planning(tmp_path):
    with pytest.raises(MixbenchError, match="d_modle"):
        grid(tmp_path, "- {model: patchtst, model_overrides: {d_modle: 8}}\n")
    with pytest.raises(MixbenchError, match="no entry matches the grid"):
        grid(tmp_path, "- {model: itransformer}\n")
