"""Models as plugins through the `mixbench.models` entry points: the built-ins, broken plugins (one line naming them,
other commands unaffected), and the worked example of docs/examples installed with pip and run through a search, a
benchmark and a table."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.errors import SettingError, SpaceError
from benchmarks.models import registry
from benchmarks.models.plugins import BUILTIN_MODELS, installed_model_names, load_plugin
from search.space import default_space_path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "docs" / "examples" / "mixbench-example-model"
MIXBENCH = [sys.executable, "-c", "import cli; cli.main()"]

MODULES = {
    "missing_module": None,  # the entry point names a module that does not exist
    "bad_config": '''
from dataclasses import dataclass
from torch import nn
from benchmarks.models.plugins import ModelPlugin

@dataclass(frozen=True)
class Config:
    hidden: int = 8
    seq_len: int = 96
    pred_len: int = 96
    enc_in: int = 7

class Model(nn.Module):
    pass

plugin = ModelPlugin("bad_config", Config, Model)
''',
    "spaceless": '''
from dataclasses import dataclass
from torch import nn
from benchmarks.models.plugins import ModelPlugin

@dataclass(frozen=True)
class Config:
    seq_len: int
    pred_len: int
    enc_in: int

class Model(nn.Module):
    pass

plugin = ModelPlugin("spaceless", Config, Model)
''',
}


def write_distributions(folder: Path) -> Path:
    """Installed-package metadata (dist-info with entry_points.txt) and modules for the plugins in MODULES."""
    for name, source in MODULES.items():
        info = folder / f"{name}_plugin-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
        module = f"{name}_module" if source is not None else "no_such_module"
        (info / "entry_points.txt").write_text(f"[mixbench.models]\n{name} = {module}:plugin\n")
        if source is not None:
            (folder / f"{module}.py").write_text(source)
    return folder


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_distributions(tmp_path / "site")))
    monkeypatch.setattr(registry, "MODEL_NAMES", installed_model_names())
    load_plugin.cache_clear()
    yield tmp_path / "site"
    load_plugin.cache_clear()


def test_the_builtins_register_through_the_entry_points():
    assert registry.MODEL_NAMES[:4] == BUILTIN_MODELS
    plugin = registry.model_plugin("patchtst")
    assert plugin.label == "PatchTST" and plugin.recipe == registry.builtin_recipe("patchtst")
    assert registry.model_label("itransformer") == "iTransformer"
    assert registry.model_label("not-installed") == "not-installed"


@pytest.mark.parametrize("name, fragment", [
    ("missing_module", ("model plugin 'missing_module' (no_such_module:plugin, package missing_module-plugin) cannot "
                        "be loaded (ModuleNotFoundError: No module named 'no_such_module')")),
    ("bad_config", ("model plugin 'bad_config' (bad_config_module:plugin, package bad_config-plugin) is broken: "
                    "config_class Config's first fields are ('hidden', 'seq_len', 'pred_len')")),
])
def test_a_broken_plugin_is_one_line_naming_it(fake_plugins, name, fragment):
    assert name in registry.MODEL_NAMES
    with pytest.raises(SettingError) as error:
        registry.model_classes(name)
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert registry.model_label(name) == name
    assert registry.model_classes("dlinear")[1].__name__ == "DLinear"


def test_a_plugin_without_a_space_asks_for_one(fake_plugins):
    with pytest.raises(SpaceError, match="model 'spaceless' ships no search space; .* pass it as space FILE"):
        default_space_path("spaceless")


@pytest.mark.slow
def test_a_broken_plugin_fails_only_the_commands_that_use_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(write_distributions(tmp_path / "site")), str(REPO_ROOT)]),
           "MIXBENCH_HOME": str(tmp_path / "home"), "MIXBENCH_CACHE_DIR": str(tmp_path / "cache")}
    used = subprocess.run([*MIXBENCH, "train", "--model", "missing_module", "--dataset", "ETTh1", "--pred-len", "24",
                           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert used.returncode == 2 and used.stderr.count("\n") == 1, used.stderr
    assert used.stderr.startswith("error: model plugin 'missing_module' (no_such_module:plugin")
    unused = subprocess.run([*MIXBENCH, "data", "list"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert unused.returncode == 0 and "weather" in unused.stdout, unused.stderr


@pytest.fixture
def installed_example(tmp_path):
    """docs/examples/mixbench-example-model pip-installed into this environment (a copy, so no build files land in
    the repository), uninstalled afterwards."""
    source = tmp_path / "example"
    shutil.copytree(EXAMPLE, source)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(source)], check=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "mixbench-example-model"], check=True)


@pytest.mark.slow
def test_the_example_plugin_is_searched_benchmarked_and_tabled(tmp_path, installed_example):
    steps = np.arange(1200)
    frame = pd.DataFrame({"a": np.sin(steps / 4.0), "b": np.cos(steps / 6.0), "load": np.sin(steps / 3.0)})
    frame.insert(0, "date", pd.date_range("2022-01-01", periods=len(steps), freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    csv = tmp_path / "site_load.csv"
    frame.to_csv(csv, index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MIXBENCH_HOME": str(tmp_path / "home"),
           "MIXBENCH_CACHE_DIR": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}

    def mixbench(*args: str) -> str:
        done = subprocess.run([*MIXBENCH, *args], env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    mixbench("data", "add", "site", str(csv), "--target", "load")
    searched = mixbench("search", "--model", "tinymlp", "--dataset", "site", "--pred-len", "24", "--trials", "2",
                        "--epochs", "1", "--limit-train-batches", "3", "--limit-eval-batches", "2",
                        "--cpus-per-trial", "1", "--storage-path", str(tmp_path / "ray"))
    assert "tinymlp on site, pred_len 24, 2 trials x 1 epochs" in searched and "hidden=" in searched
    benchmarked = mixbench("benchmark", "--datasets", "site", "--models", "tinymlp,dlinear", "--horizons", "24",
                           "--seeds", "1", "--epochs", "1", "--limit-train-batches", "3", "--suite", "own",
                           "--cpus-per-run", "1")
    assert "suite own: 2 runs logged, 0 skipped as complete, 0 failed" in benchmarked
    table = mixbench("table", "--suite", "own", "--format", "markdown", "--reference", "paper")
    assert "TinyMLP MSE" in table and "DLinear MSE" in table and "| site | 24 |" in table
