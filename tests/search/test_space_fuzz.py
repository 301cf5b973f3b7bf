"""Fuzzing the search-space parser: random YAML mappings give a space that proposes valid values, or SpaceError."""
from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.errors import SpaceError
from search.space import load_space

NAMES = ["moving_avg", "individual", "learning_rate", "batch_size", "patience", "d_model", "seq_len", "epochs", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-100, 300), st.floats(-1e3, 1e3),
                    st.sampled_from(["moving_avg", "batch_size", "abc", ""]))
domains = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.fixed_dictionaries({}, optional={
        "low": scalars, "high": scalars, "step": scalars, "log": scalars, "choices": st.lists(scalars, max_size=4),
        "divides": scalars, "when": scalars, "extra": scalars,
    }),
)
sections = st.dictionaries(st.sampled_from(NAMES), domains, max_size=4)
documents = st.one_of(
    st.dictionaries(st.sampled_from(["model", "train", "other"]), st.one_of(sections, scalars), max_size=3),
    scalars,
    st.lists(scalars, max_size=2),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_random_yaml_gives_a_valid_space_or_space_error(document, tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        space = load_space(path, "dlinear")
    except SpaceError as error:
        assert str(error).startswith(f"space file {path}") and "\n" not in str(error)
        return
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        proposed = space.propose(study.ask())
        assert set(proposed.model) | set(proposed.train) <= set(NAMES)


def test_broken_yaml_syntax_is_an_space_error(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("model: {moving_avg: [5, 7\n")
    try:
        load_space(path, "dlinear")
    except SpaceError as error:
        assert "is not valid YAML" in str(error)
    else:
        raise AssertionError("broken YAML was accepted")
