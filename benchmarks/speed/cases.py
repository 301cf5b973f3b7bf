"""The models the training-speed benchmarks measure (recipe plus settings, on weather at lookback and horizon 96) and
how one becomes a resolved experiment and a fresh model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from benchmarks.data.files import DatasetFile
from benchmarks.data.protocol import DataProtocol, ForecastData, load_forecast_data
from benchmarks.experiment import Experiment, resolve_experiment

DATASET = "weather"
PROTOCOL = DataProtocol(seq_len=96, pred_len=96)


@dataclass(frozen=True)
class BenchConfig:
    """A benchmarked model: registry name plus settings (`model.x`, `train.x`) over its weather recipe
    (benchmarks/models/recipes.yaml), and where those come from."""

    model: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """The config as the reports record it: model, its model and train overrides (bare field names), source."""
        sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        for key, value in self.settings.items():
            section, _, name = key.partition(".")
            sections[section][name] = value
        return {"model": self.model, "model_overrides": sections["model"], "train_overrides": sections["train"],
                "source": self.source}


CONFIGS = {
    "mixmamba-small": BenchConfig("mixmamba", source="official ETTh1 script: d_model 64, 2 experts, top-2, batch 32 "
                                                     "(the weather recipe)"),
    "mixmamba-moe16": BenchConfig("mixmamba", {"model.d_model": 256, "model.num_experts": 16, "model.top_k": 5,
                                               "train.batch_size": 16, "train.learning_rate": 1e-3},
                                  source="official Exchange script: d_model 256, 16 experts, top-5, batch 16"),
    "patchtst": BenchConfig("patchtst", source="TSLib Weather_script/PatchTST.sh"),
    "itransformer": BenchConfig("itransformer", source="TSLib Weather_script/iTransformer.sh"),
    "dlinear": BenchConfig("dlinear", source="TSLib run.py defaults"),
}


@dataclass(frozen=True, eq=False)
class BenchData:
    """The benchmark's dataset file and its windows under PROTOCOL on the measuring device."""

    file: DatasetFile
    windows: ForecastData


def load_bench_data(file: DatasetFile, device: torch.device) -> BenchData:
    """`file`'s windows under PROTOCOL on `device`."""
    return BenchData(file, load_forecast_data(file, PROTOCOL, device=device))


def resolve_case(config: BenchConfig, file: DatasetFile, device: torch.device,
                 settings: Mapping[str, Any] | None = None) -> Experiment:
    """The experiment of `config` on `file` under PROTOCOL, with `settings` (one spelling) over the config's."""
    return resolve_experiment(config.model, file, pred_len=PROTOCOL.pred_len, seq_len=PROTOCOL.seq_len,
                              settings={**config.settings, **(settings or {})}, device=str(device))


def build_case(config: BenchConfig, backend: str | None, file: DatasetFile,
               device: torch.device) -> tuple[Experiment, nn.Module]:
    """The resolved experiment and a freshly initialised model (seeded, on `device`) for a benchmark config; a
    MixMamba `backend` picks its selective-scan backend."""
    experiment = resolve_case(config, file, device, {"model.scan_backend": backend} if backend is not None else None)
    torch.manual_seed(experiment.seed)
    return experiment, experiment.build_model().to(device)
