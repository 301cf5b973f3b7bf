"""Search spaces: the shipped YAMLs parse, every proposal honours their constraints, and bad space files fail with
one line naming the file and the key."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pytest

from benchmarks.errors import SpaceError
from benchmarks.models.registry import MODEL_NAMES, model_config
from benchmarks.training.config import TrainConfig
from search.space import SPACES_DIR, default_space_path, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def proposals(space, count: int, seed: int = 0):
    """`count` proposals from a seeded random sampler (each told a dummy value so the study moves on)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found = []
    for _ in range(count):
        trial = study.ask()
        found.append(space.propose(trial))
        study.tell(trial, 0.0)
    return found


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_shipped_spaces_propose_valid_model_configs(model: str) -> None:
    space = load_space(default_space_path(model), model)
    assert not space.searches_seq_len
    for proposed in proposals(space, 60):
        config = model_config(model, 96, 96, 7, proposed.model)  # raises SettingError for an invalid combination
        assert set(proposed.train) == {"learning_rate", "batch_size"}
        if model == "mixmamba":
            assert 2 <= config.top_k <= config.num_experts
        if hasattr(config, "stride") and "stride" in proposed.model:
            assert config.stride <= config.patch_len
        if hasattr(config, "n_heads"):
            assert config.d_model % config.n_heads == 0


def test_the_wide_mixmamba_space_ranks_every_loss_on_validation_mse() -> None:
    space = load_space(SPACES_DIR / "mixmamba-wide.yaml", "mixmamba")
    found = proposals(space, 60)
    for proposed in found:
        config = model_config("mixmamba", 96, 96, 7, proposed.model)
        train = TrainConfig(**proposed.train)
        # Trials trained with different losses stay comparable: all are ranked on validation MSE.
        assert train.val_metric == "mse"
        assert set(proposed.train) == {"val_metric", "loss", "lradj", "learning_rate", "weight_decay", "batch_size"}
        assert 2 <= config.top_k <= config.num_experts and config.stride <= config.patch_len
        assert config.n_layers == 1 or config.variant == "paper"
    assert {proposed.train["loss"] for proposed in found} == {"mae", "mse"}
    assert {proposed.train["lradj"] for proposed in found} == {"type1", "cosine", "constant"}


def test_mixmamba_space_conditions_and_dependent_bounds() -> None:
    space = load_space(default_space_path("mixmamba"), "mixmamba")
    found = proposals(space, 200, seed=3)
    variants = {proposed.model["variant"] for proposed in found}
    assert variants == {"official", "paper"}
    for proposed in found:
        settings = proposed.model
        if settings["variant"] == "official":
            # the official code fixes d_state/expand; the space leaves d_state to the variant and keeps expand at 2
            assert settings["d_state"] is None and settings["expand"] == 2
        else:
            assert settings["d_state"] in (8, 16, 32) and settings["expand"] in (1, 2)
        assert settings["stride"] % 4 == 0 and 4 <= settings["stride"] <= settings["patch_len"]
        assert 1e-4 <= proposed.train["learning_rate"] <= 1e-2
    # top_k reaches its upper bound, which moves with num_experts
    assert any(p.model["top_k"] == p.model["num_experts"] > 2 for p in found)


def test_divides_filters_choices_per_value(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("model:\n  d_model: {choices: [12, 32]}\n  n_heads: {choices: [3, 4, 8], divides: d_model}\n")
    space = load_space(path, "patchtst")
    seen = {(p.model["d_model"], p.model["n_heads"]) for p in proposals(space, 80)}
    assert seen == {(12, 3), (12, 4), (32, 4), (32, 8)}


def test_same_seed_proposes_the_same_configs() -> None:
    space = load_space(default_space_path("mixmamba"), "mixmamba")

    def first(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))
        return [space.propose(study.ask()).flat() for _ in range(3)]

    assert first(7) == first(7)
    assert first(7) != first(8)


def test_yaml_text_numbers_count_as_numbers(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as text; the space takes it as the number it spells, as `mixbench train --set`.
    path = tmp_path / "space.yaml"
    path.write_text("model:\n  dropout: 1e-1\ntrain:\n  learning_rate: {choices: [1e-3, 1e-4]}\n"
                    "  weight_decay: {low: 1e-6, high: 1e-2, log: true}\n")
    space = load_space(path, "patchtst")
    for proposed in proposals(space, 10):
        assert proposed.model["dropout"] == 0.1
        assert proposed.train["learning_rate"] in (1e-3, 1e-4)
        assert 1e-6 <= proposed.train["weight_decay"] <= 1e-2


def test_a_pickled_space_proposes_as_the_original() -> None:
    # Ray Tune pickles the searcher, and the space in it, into the experiment folder for --resume.
    space = load_space(default_space_path("mixmamba"), "mixmamba")
    restored = pickle.loads(pickle.dumps(space))
    assert [p.flat() for p in proposals(restored, 40, seed=11)] == [p.flat() for p in proposals(space, 40, seed=11)]


def test_search_seq_len_and_outer_distributions_cover_every_proposal() -> None:
    space = load_space(default_space_path("patchtst"), "patchtst").with_seq_len_choices([96, 192])
    assert space.searches_seq_len
    distributions = space.outer_distributions()
    for proposed in proposals(space, 50):
        values = proposed.flat()
        assert values["seq_len"] in (96, 192)
        for key, value in values.items():
            assert distributions[key]._contains(distributions[key].to_internal_repr(value)), (key, value)
    assert space.describe()["space.model.n_heads"] == "choices [2, 4, 8, 16] dividing d_model"


@pytest.mark.parametrize(("text", "expected"), [
    ("model:\n  d_modl: {choices: [8]}\n", "model.d_modl is not a mixmamba setting; valid keys are seq_len, d_model"),
    ("train:\n  lr: {low: 1.0e-4, high: 1.0e-2}\n", "train.lr is not a training setting; valid keys are batch_size"),
    ("model:\n  d_model: {low: 64, high: 32}\n", "model.d_model: low 64 > high 32 leaves an empty range"),
    ("model:\n  dropout: {choices: []}\n", "model.dropout: choices must be a non-empty list"),
    ("model:\n  num_experts: {low: 2, high: 4}\n  top_k: {low: 5, high: num_experts}\n",
     "model.top_k: impossible constraint: low 5 can exceed high num_experts (as low as 2)"),
    ("model:\n  d_model: {choices: [30]}\n  n_heads: {choices: [4, 8], divides: d_model}\n",
     "impossible constraint: no choice in [4, 8] divides d_model=30"),
    ("model:\n  variant: {choices: [official]}\n  d_state: {choices: [8], when: {variant: papr}}\n",
     "model.d_state: impossible constraint: variant is never ['papr']"),
    ("model:\n  top_k: {low: 2, high: num_experts}\n  num_experts: {low: 2, high: 4}\n",
     "model.top_k: high names 'num_experts', which is not a parameter above it"),
    ("train:\n  epochs: {low: 1, high: 5}\n", "train.epochs is set by epochs"),
    ("model:\n  pred_len: 96\n", "model.pred_len is set by pred_len"),
    ("model:\n  variant: {low: 1, high: 2}\n", "model.variant is a str setting, not a number"),
    ("train:\n  learning_rate: {low: 0.0, high: 0.1, log: true}\n", "a log range needs low > 0"),
    ("model:\n  d_model: [8, 16\n", "is not valid YAML (line 3: expected ','"),
    ("search:\n  d_model: 8\n", "unknown section 'search'; valid sections are model, train"),
])
def test_bad_space_files_fail_with_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as raised:
        load_space(path, "patchtst" if "n_heads" in text else "mixmamba")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"space file {path}")
    assert expected in message


def test_the_same_seed_proposes_the_same_first_configs_as_before_the_one_spelling_change() -> None:
    """The first four TPE proposals (three random, one TPE) of every shipped space, seed 2021, as the code before
    settings were spelt `model.x` everywhere proposed them (recorded in first_proposals.json)."""
    recorded = json.loads((Path(__file__).with_name("first_proposals.json")).read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for model in MODEL_NAMES:
        space = load_space(default_space_path(model), model)
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=2021, n_startup_trials=3))
        proposals = []
        for value in range(4):
            trial = study.ask()
            proposals.append(space.propose(trial).flat())
            study.tell(trial, float(value))
        assert proposals == recorded[model]
