"""Fused search on CPU (ETTh1, a tiny MixMamba space, `--fuse 2`): each group's members share every shape setting and
differ in their own (learning rate, dropout); every member is its own MLflow child run and its own Optuna trial told
its own result; ASHA decides per member exactly as Ray Tune's ASHA decides per trial; a killed search resumes
keeping finished groups once after Ctrl+C; the refit trains its seeds as one fused array.
"""
from __future__ import annotations

import json
import math
import pickle
import random
import re
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from search.groups import GroupPlan, GroupSearcher, member_id, member_paths, tune_trial_of
from search.member_rungs import Rungs, milestones
from search.space import EXPERIMENT_KEY, BoundSpace, load_space
from tests.search.test_search import CLI, REPO_ROOT, TINY_SPACE, kind, store, wait_for_finished_trial

# test_search's space (learning_rate 1e30 makes a member diverge: it fails alone while its group goes on) with a
# per-member model setting.
FUSED_SPACE = TINY_SPACE.replace("train:", "  dropout: {low: 0.0, high: 0.3}\ntrain:")
SEED = 5
TRIALS = 4
SHAPE_KEYS = ("model.num_experts", "model.top_k", "model.patch_len", "model.stride")


def test_a_member_run_names_its_group_trial_and_a_plain_run_itself() -> None:
    assert tune_trial_of(member_id("b8f2425b", 3)) == "b8f2425b"
    assert tune_trial_of("b8f2425b") == "b8f2425b"
    assert tune_trial_of(member_id("b8f2425b", 12)) == tune_trial_of(member_id("b8f2425b", 0))


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fused-space") / "tiny.yaml"
    path.write_text(FUSED_SPACE)
    return path


def fused_args(space: Path, data_dir: Path, root: Path, *extra: str) -> list[str]:
    # 500 training batches: the second group trains for seconds, so Ctrl+C, sent once the first has ended (polled
    # every second), finds it running.
    return ["--dataset", "ETTh1", "--model", "mixmamba", "--trials", str(TRIALS), "--epochs", "2", "--seed", str(SEED),
            "--space", str(space), "--data-dir", str(data_dir), "--limit-train-batches", "500",
            "--limit-eval-batches", "1", "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--storage-path", str(root / "ray"), "--fuse", "2", "--max-concurrent", "1", *extra]


def test_a_group_shares_its_shape_settings_and_optuna_is_told_every_member(space_file: Path, shared_data_dir: Path,
                                                                           tmp_path: Path) -> None:
    from benchmarks.data.files import resolve_dataset
    from benchmarks.experiment import resolve_experiment

    data = resolve_dataset("ETTh1", str(shared_data_dir))
    bound = BoundSpace(load_space(space_file, "mixmamba"), resolve_experiment("mixmamba", data, pred_len=96))
    assert member_paths(bound.space) == {"model.dropout", "train.learning_rate"}
    searcher = GroupSearcher(bound, GroupPlan(trials=5, members=2), "val_loss_best", seed=SEED, startup_groups=2)
    assert searcher.startup_trials == 4
    groups = [searcher.suggest(f"group{index}") for index in range(3)]
    assert searcher.suggest("group3") is GroupSearcher.FINISHED
    assert [len(group["members"]) for group in groups] == [2, 2, 1]
    for group in groups[:2]:
        first, second = group["members"]
        assert {key: first[key] for key in SHAPE_KEYS} == {key: second[key] for key in SHAPE_KEYS}
        assert first["model.dropout"] != second["model.dropout"]
        assert first[EXPERIMENT_KEY].model_config.num_experts == first["model.num_experts"]
    searcher.on_trial_complete("group0", {"members": [{"state": "finished", "val_loss_best": 0.5},
                                                      {"state": "failed", "error": "NonFiniteLossError: ..."}]})
    searcher.on_trial_complete("group1", None, error=True)
    states = [(trial.state, trial.value) for trial in searcher.study.trials]
    assert states[:4] == [(optuna.trial.TrialState.COMPLETE, 0.5), (optuna.trial.TrialState.FAIL, None),
                          (optuna.trial.TrialState.FAIL, None), (optuna.trial.TrialState.FAIL, None)]
    # Tune pickles the searcher into the experiment and saves its state with `save`; `restore` brings the study back
    # with the group still running, which is told when it completes.
    restored = pickle.loads(pickle.dumps(searcher))
    searcher.save(str(tmp_path / "searcher-state.json"))
    restored.restore(str(tmp_path / "searcher-state.json"))
    assert [(trial.state, trial.value, trial.params) for trial in restored.study.trials] == [
        (trial.state, trial.value, trial.params) for trial in searcher.study.trials]
    assert restored.asked.keys() == {"group2"} and restored.proposed == 5
    restored.on_trial_complete("group2", {"members": [{"state": "stopped", "val_loss_best": 0.25}]})
    assert restored.study.trials[4].value == 0.25
    assert restored.suggest("group3") is GroupSearcher.FINISHED
    # the restored sampler is seeded anew: it does not propose again what it proposed before
    longer = GroupSearcher(bound, GroupPlan(trials=12, members=2), "val_loss_best", seed=SEED, startup_groups=6)
    before = [longer.suggest(f"g{index}") for index in range(3)]
    longer.save(str(tmp_path / "longer.json"))
    longer.restore(str(tmp_path / "longer.json"))
    after = [longer.suggest(f"g{index}") for index in range(3, 6)]
    seen = {repr(sorted((k, v) for k, v in member.items() if k != EXPERIMENT_KEY))
            for group in before for member in group["members"]}
    assert not seen & {repr(sorted((k, v) for k, v in member.items() if k != EXPERIMENT_KEY))
                       for group in after for member in group["members"]}


@pytest.mark.parametrize("max_epochs", [2, 5, 20])
def test_member_rungs_decide_as_ray_tunes_asha(max_epochs: int, tmp_path: Path) -> None:
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(min_t=1, max_t=max_epochs, reduction_factor=4, s=0)
    rungs = Rungs(max_epochs, str(tmp_path / "rungs.json"))
    generator = random.Random(max_epochs)
    epochs: dict[str, int] = {}
    stopped: dict[str, int] = {}
    decisions = 0
    for step in range(400):
        member = f"m{generator.randrange(40)}"
        epoch = epochs[member] = epochs.get(member, 0) + 1
        if member in stopped or epoch >= max_epochs:
            continue
        value = generator.uniform(0.3, 0.9) if step % 17 else math.inf  # a diverged member's loss now and then
        ours = rungs.decide(member, epoch, value)
        # Ray maximises internally (min mode negates the metric) and records a diverged trial as NaN.
        ray = bracket.on_result(SimpleNamespace(trial_id=member), epoch, -value if math.isfinite(value) else math.nan)
        assert ours == (ray == "CONTINUE") or not math.isfinite(value), (member, epoch, value)
        decisions += epoch in milestones(max_epochs)
        if not ours:
            stopped[member] = epoch
    assert decisions > 20 and stopped
    # The rungs come back from their file (a resumed search), and a member whose group runs again from its first
    # epoch gets its first answers, whatever its losses are this time.
    reloaded = Rungs(max_epochs, str(tmp_path / "rungs.json"))
    assert reloaded.recorded == rungs.recorded
    for member, epoch in stopped.items():
        assert all(reloaded.decide(member, earlier, 0.0) for earlier in range(1, epoch))
        assert not reloaded.decide(member, epoch, 0.0)


@pytest.mark.slow  # two searches in subprocesses
def test_fused_search_logs_every_member_and_resumes(space_file: Path, shared_data_dir: Path, tmp_path: Path) -> None:
    args = fused_args(space_file, shared_data_dir, tmp_path, "--refit-seeds", "2")
    process = subprocess.Popen(CLI + args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_finished_trial(tmp_path, process, timeout_s=400)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C: Tune stops the running group and saves
        first_output, _ = process.communicate(timeout=300)
    assert "fused groups: 2 trials each, 2 groups (as --fuse asks)" in first_output
    assert "continue it with the same command plus --resume" in first_output
    _, runs = store(tmp_path)
    ended_before = {run.info.run_id: run.info.end_time for run in kind(runs, "trial")
                    if run.info.status in ("FINISHED", "FAILED")}
    # the first group's two members, ended together, and a member of the interrupted group that diverged at once;
    # its other member was killed
    killed = [run.info.status for run in kind(runs, "trial")].count("KILLED")
    assert killed >= 1 and len(ended_before) + killed == TRIALS

    resumed = subprocess.run(CLI + args + ["--resume"], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "best trial's weights tested on all 2785 test windows" in resumed.stdout
    assert re.search(r"refit over seeds .* \(on 16/2785 test windows, --limit-eval-batches: a smoke number", resumed.stdout)
    client, runs = store(tmp_path)
    (parent,) = kind(runs, "search")
    assert parent.info.status == "FINISHED" and parent.data.params["fuse"] == "2"
    assert parent.data.tags["best_test_complete"] == "true"
    children = kind(runs, "trial")
    member_ids = sorted(run.data.tags["trial_id"] for run in children)
    assert len(children) == TRIALS and len(set(member_ids)) == TRIALS
    groups = {member.rsplit("_", 1)[0] for member in member_ids}
    assert len(groups) == 2 and all(member.rsplit("_", 1)[1] in ("0", "1") for member in member_ids)
    for run_id, end_time in ended_before.items():
        assert next(run for run in children if run.info.run_id == run_id).info.end_time == end_time  # kept once
    by_group: dict[str, list] = {}
    for run in children:
        by_group.setdefault(run.data.tags["trial_id"].rsplit("_", 1)[0], []).append(run)
        assert run.info.status in ("FINISHED", "FAILED")
        if run.info.status == "FINISHED":
            assert run.data.tags["trial_state"] in ("finished", "stopped")
            epochs = client.get_metric_history(run.info.run_id, "val_loss")
            assert sorted(metric.step for metric in epochs) == list(range(1, int(run.data.metrics["epochs_run"]) + 1))
            assert "test_mse" in run.data.metrics
        else:
            assert run.data.tags["error"].startswith("NonFiniteLossError")
    for members in by_group.values():
        first, second = (member.data.params for member in members)
        assert all(first[key] == second[key] for key in SHAPE_KEYS)

    # Optuna was told every member: its study holds one trial per member, valued as the member's best_val_loss.
    experiment_dir = tmp_path / "ray" / f"mixmamba-ETTh1-pred96-seed{SEED}"
    state_file = max(experiment_dir.glob("searcher-state-*.pkl"), key=lambda path: path.name)  # the resumed session's
    # (Tune names it .pkl; GroupSearcher.save writes JSON)
    trials = json.loads(state_file.read_text())["trials"]
    told = sorted(trial["value"] for trial in trials if trial["state"] == "COMPLETE")
    finished = sorted(run.data.metrics["best_val_loss"] for run in children if run.info.status == "FINISHED")
    assert len(trials) == TRIALS and told == pytest.approx(finished)

    refits = kind(runs, "refit")
    assert sorted(run.data.tags["seed"] for run in refits) == [str(SEED), str(SEED + 1)]
