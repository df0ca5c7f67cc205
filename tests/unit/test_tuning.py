"""`clipshield experiment tune`: equal-budget Optuna studies on validation splits only, resumable after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from clipshield.datasets import registry
from clipshield.datasets.recipe import TunedSetting
from clipshield.experiments.tuning import TuneConfig, run_tuning, tune_method
from clipshield.experiments.tuning.objective import Objective, default_point, trial_config
from clipshield.experiments.tuning.report import best_trial, pareto_front, record_recipe, write_report
from clipshield.experiments.tuning.study import load_study
from clipshield.service.errors import ConfigError
from clipshield.training.methods import LossOutput, get_method, list_methods, register_method
from clipshield.training.methods.search_space import LR_SCALE, Range
from clipshield.training.methods.tecoa import TeCoAParams

TINY = {"steps": 4, "batch_size": 8, "attack_steps": 1, "val_limit": 8, "eval_steps": 1}


def tiny(tmp_path, **over) -> TuneConfig:
    return TuneConfig(**{"methods": ["tecoa"], "trials": 2, "output": tmp_path / "tune", **TINY, **over})


@pytest.fixture()
def splits_read(monkeypatch):
    """Every (data set, split) any builder is asked for, whatever module called `build_dataset`."""
    seen: list[tuple[str, str]] = []

    def spy(builder, name=None):
        def wrapped(*args):
            req = args[-1]
            seen.append((name or args[0], req.split))
            return builder(*args)

        return wrapped

    monkeypatch.setattr(registry, "_BUILDERS", {k: spy(b, k) for k, b in registry._BUILDERS.items()})
    monkeypatch.setattr(registry, "_PREFIX_BUILDERS", {k: spy(b) for k, b in registry._PREFIX_BUILDERS.items()})
    return seen


def test_every_method_declares_lr_and_only_its_own_weights():
    for name in list_methods():
        space = get_method(name).search_space
        assert LR_SCALE in space and set(space) - {LR_SCALE} <= set(get_method(name).params.model_fields)
    assert {"general_weight", "clean_weight"} <= set(get_method("pmg-aft").search_space)
    with pytest.raises(ValueError, match=r"search space key.*gamma.*allowed: lr_scale"):
        register_method("no-such", params=TeCoAParams, adversary=None, lr=1e-3, search_space={"gamma": Range(low=0.1, high=1)})
    with pytest.raises(ValueError, match="low < high"):
        Range(low=1.0, high=0.5)
    point = default_point("pmg-aft")
    assert point == {LR_SCALE: 1.0, "general_weight": 1.0, "clean_weight": 1.0}  # the untuned recipe is trial 0


def test_a_two_trial_study_reads_validation_splits_only_and_reports(tmp_path, splits_read):
    torch.set_num_threads(1)
    cfg = tiny(tmp_path)
    finished = []
    studies = run_tuning(cfg, on_trial=lambda method, trial: finished.append((method, trial.state)))
    assert finished == [("tecoa", TrialState.COMPLETE)] * 2
    trials = studies["tecoa"].trials
    assert trials[0].params == {LR_SCALE: 1.0}  # the shared recipe's setting is measured first
    assert all(cfg.steps // 2 in t.intermediate_values for t in trials)  # the half-way check the pruner reads
    assert {t.user_attrs["lr"] for t in trials} == {0.005 * t.params[LR_SCALE] for t in trials}
    # the objective: every evaluation set on `val`, training on `train`, nothing on `test`
    assert {split for _name, split in splits_read} == {"train", "val"}
    evaluated = {name for name, split in splits_read if split == "val"}
    assert evaluated == {f"miniworld/{d}/color_shape/seen" for d in ("plain", "noisy", "textured", "outlined")}
    text = write_report(cfg, studies)
    assert "| tecoa | 2 / 0 / 0 | " in text and "validation split" in text and "s/trial" in text
    base = studies["tecoa"].user_attrs["base"]  # the untrained model, scored once on the same sets and attack
    assert base["value"] == pytest.approx(0.5 * base["seen_robust"] + 0.5 * base["heldout_clean"])
    assert f"| *base, not fine-tuned* | - | - | - | {base['value']:.1f} | " in text
    assert (cfg.output / "pareto.png").stat().st_size > 1000
    chosen = json.loads((cfg.output / "chosen.json").read_text())
    setting = TunedSetting.model_validate(chosen["tecoa"])
    assert setting.chosen_by.study == "miniworld-tecoa" and setting.chosen_by.storage.startswith("sqlite:///")
    assert setting.chosen_by.value == pytest.approx(studies["tecoa"].best_value, abs=1e-3)
    robust_first = best_trial(studies["tecoa"], 1.0)  # another trade-off re-scores the same trials
    assert robust_first.user_attrs["seen_robust"] == max(t.user_attrs["seen_robust"] for t in trials)
    record_recipe("miniworld", chosen, tmp_path / "tuned.json")
    assert json.loads((tmp_path / "tuned.json").read_text())["miniworld"]["tecoa"]["lr"] == setting.lr


KILLED_WORKER = """
import os, signal, sys, time
from pathlib import Path
import clipshield.experiments.tuning.study as study
from clipshield.experiments.tuning import TuneConfig, tune_method

class Dies:
    def __init__(self, cfg, method):
        pass

    def base_scores(self):
        from clipshield.experiments.tuning.objective import Scores

        return Scores(0.0, 0.0, 0.0, 0.0, 0.0)

    def __call__(self, trial):
        trial.suggest_float("lr_scale", 0.05, 4.0, log=True)
        time.sleep(1.5)  # a heartbeat recorded, then the process is killed mid-trial
        os.kill(os.getpid(), signal.SIGKILL)

study.Objective = Dies
tune_method(TuneConfig.model_validate_json(sys.argv[1]), "tecoa")
"""


def test_a_study_resumes_after_a_kill(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny(tmp_path, trials=1, heartbeat_s=1, grace_s=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WORKER), cfg.model_dump_json()], env=env, timeout=120)
    assert killed.returncode == -9
    left = load_study(cfg, "tecoa").trials
    assert [t.state for t in left] == [TrialState.RUNNING]  # what a killed worker leaves behind
    time.sleep(cfg.grace_s + 1)
    study = tune_method(cfg, "tecoa")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == cfg.trials
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == left[0].params and retried[0].state == TrialState.COMPLETE


def test_a_non_finite_loss_prunes_at_once(tmp_path):
    objective = Objective.__new__(Objective)
    objective.cfg = tiny(tmp_path)
    study = optuna.create_study(direction="maximize")
    observe = objective._observer(study.ask())
    with pytest.raises(optuna.TrialPruned, match="non-finite loss at step 0"):
        observe(0, None, LossOutput(torch.tensor(float("nan")), {}, {}))


def test_trial_runs_use_the_untuned_recipe_scaled(tmp_path):
    cfg = tiny(tmp_path, methods=["fare"], steps=10)
    run = trial_config(cfg, "fare", {LR_SCALE: 2.0}, number=3).resolved(batches_per_epoch=10)
    assert (run.optim.optimizer, run.optim.lr) == ("adamw", pytest.approx(2e-4))  # 2 x the world's AdamW 1e-4
    assert run.run.output == cfg.output / "trials" / "fare" / "0003" and run.evaluation.datasets == []
    assert run.dataset.limit == 10 * 8  # one pass over what the trial's steps read


def test_tuning_refuses_a_folder_without_a_validation_split(tmp_path):
    (tmp_path / "mine" / "train" / "cat").mkdir(parents=True)
    cfg = TuneConfig(methods=["tecoa"], data="folder/mine", data_root=tmp_path)
    with pytest.raises(ConfigError, match=r"never the test images; add .*mine/val/<class>"):
        cfg.checked()
    (tmp_path / "mine" / "val").mkdir()
    assert cfg.checked().validation_sets() == (("folder/mine",), ("folder/mine",))
    with pytest.raises(ConfigError, match=r"unknown method.*known:"):
        TuneConfig(methods=["nope"]).checked()


def test_a_warm_start_enqueues_each_methods_transferred_point_once(tmp_path):
    chosen = {
        "tga-anchor": {"lr": 0.0005, "method_params": {"alpha": 6.0, "beta": 11.0, "gamma": 1000.0}},
        "tecoa": {"lr": 0.0025, "method_params": {}},
    }
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "chosen.json").write_text(json.dumps(chosen))
    cfg = tiny(tmp_path, methods=["tga-anchor", "fare"], trials=3, warm_start=tmp_path / "other")
    study = load_study(cfg, "tga-anchor")
    queued = [t.system_attrs["fixed_params"] for t in study.trials]  # waiting trials hold their enqueued params there
    gamma_high = get_method("tga-anchor").search_space["gamma"].high
    assert queued[0] == default_point("tga-anchor")  # the untuned setting stays the first trial
    # the absolute lr re-expressed against this data set's recipe rate (SGD 0.005), gamma clipped into its range
    assert queued[1] == {"lr_scale": pytest.approx(0.1), "alpha": 6.0, "beta": 11.0, "gamma": gamma_high}
    assert study.trials[1].user_attrs["warm_start"] == str(tmp_path / "other")
    assert len(load_study(cfg, "tga-anchor").trials) == 2  # resuming does not queue it again
    assert len(load_study(cfg, "fare").trials) == 1  # a method the file does not name: no transferred trial
    (tmp_path / "bad.json").write_text(json.dumps({"tecoa": {"no_lr": 1}}))
    with pytest.raises(ConfigError, match=r"not a chosen\.json written by `clipshield experiment tune`"):
        load_study(tiny(tmp_path, warm_start=tmp_path / "bad.json"), "tecoa")


def test_the_untrained_base_is_measured_once_per_run(tmp_path, monkeypatch):
    import clipshield.experiments.tuning.study as study_module
    from clipshield.experiments.tuning.objective import Scores

    measured = []

    class Instant:  # no training: this test is about the base row's bookkeeping
        def __init__(self, cfg, method):
            pass

        def base_scores(self):
            measured.append(1)
            return Scores(96.0, 40.0, 90.0, 30.0, 65.0)

        def __call__(self, trial):
            return 1.0

    monkeypatch.setattr(study_module, "Objective", Instant)
    studies = run_tuning(tiny(tmp_path, methods=["tecoa", "fare"], trials=1))
    assert len(measured) == 1  # one pass serves every method of the run: same sets, same attack
    assert [s.user_attrs["base"]["value"] for s in studies.values()] == [65.0, 65.0]
    run_tuning(tiny(tmp_path, methods=["tecoa", "fare"], trials=1))
    assert len(measured) == 1  # a re-run reads it back from the studies


def test_pareto_front_keeps_the_undominated():
    assert pareto_front([(1, 5), (2, 4), (1, 4), (3, 1), (2, 2)]) == [(1, 5), (2, 4), (3, 1)]


@pytest.fixture()
def tuned_world(monkeypatch):
    """The 32-px world's recipe with a tuned TGA-ZSR entry (whatever the checked-in file holds)."""
    from clipshield.datasets.miniworld_sets import MINIWORLD_RECIPE

    record = {"study": "miniworld-tga-zsr", "storage": "sqlite:///x.db", "trial": 4, "value": 61.5, "date": "2026-12-07"}
    tuned = {"tga-zsr": TunedSetting(lr=0.002, method_params={"alpha": 0.01, "distance": "rms"}, chosen_by=record)}
    recipe = MINIWORLD_RECIPE.model_copy(update={"tuned": tuned})
    monkeypatch.setitem(registry._RECIPES, "miniworld-train", recipe)
    return recipe


def test_a_recipe_applies_each_methods_tuned_setting(tuned_world):
    from clipshield.training.finetune_config import recipe_config

    cfg = recipe_config("miniworld-train", method="tga-zsr")
    assert cfg.optim.lr == 0.002 and cfg.method_params == {"alpha": 0.01, "distance": "rms"}
    mixed = recipe_config("miniworld-train", method="tga-zsr", method_params={"alpha": 0.2, "beta": 0.3}, lr=0.1)
    assert mixed.optim.lr == 0.1 and mixed.method_params == {"alpha": 0.2, "distance": "rms", "beta": 0.3}  # given values win
    shared = recipe_config("miniworld-train", method="tga-zsr", tuned=False)
    assert shared.optim.lr == 0.005 and shared.method_params == {}
    assert recipe_config("miniworld-train", method="tecoa").optim.lr == 0.005  # not tuned: the shared rate
    assert recipe_config("miniworld-train", method="tga-zsr", optimizer="adamw").optim.lr == 1e-4  # another optimiser's


def test_experiment_miniworld_runs_the_shared_or_the_tuned_recipe(tuned_world, tmp_path):
    from clipshield.cli.main import build_parser
    from clipshield.experiments.miniworld import experiment_config, markdown

    parse = build_parser().parse_args
    shared = parse(["experiment", "miniworld", "--output", str(tmp_path)])
    tuned = parse(["experiment", "miniworld", "--output", str(tmp_path), "--settings", "tuned"])
    assert experiment_config(shared, "tga-zsr", 0).optim.lr == 0.005 and experiment_config(shared, "tga-zsr", 0).method_params == {}
    run = experiment_config(tuned, "tga-zsr", 0)
    assert run.optim.lr == 0.002 and run.method_params["alpha"] == 0.01
    assert "tuned lr and loss weights" in markdown({}, tuned) and "SGD lr 0.005" in markdown({}, shared)


def test_the_tune_command_line_becomes_a_checked_config(tmp_path):
    from clipshield.cli.commands.experiment import run_tune, tune_config
    from clipshield.cli.main import build_parser

    parse = build_parser().parse_args
    cfg = tune_config(parse(["experiment", "tune", "--world", "miniworld224", "--methods", "tecoa", "fare", "--trials", "3", "--eps", "2"]))
    assert (cfg.data, cfg.methods, cfg.trials, cfg.eps) == ("miniworld224-train", ["tecoa", "fare"], 3, pytest.approx(2 / 255))
    assert cfg.output.as_posix() == "runs/tune-miniworld224" and cfg.storage_url() == "sqlite:///runs/tune-miniworld224/study.db"
    with pytest.raises(ConfigError, match="--robust-weight"):
        tune_config(parse(["experiment", "tune", "--robust-weight", "2"]))
    (tmp_path / "mine" / "val").mkdir(parents=True)
    own = ["experiment", "tune", "--data", "folder/mine", "--data-root", str(tmp_path), "--record-recipe"]
    with pytest.raises(ConfigError, match=r"--record-recipe .* needs --world"):
        run_tune(parse(own))


def test_a_study_on_your_own_folder_reads_its_val_folder(tmp_path, splits_read):
    from tests.unit.own_data_helpers import write_photo_tree

    torch.set_num_threads(1)
    tree = write_photo_tree(tmp_path, per_class=(8, 3))
    (tree / "test").rename(tree / "val")
    cfg = TuneConfig(
        data="folder/photos", data_root=tmp_path, methods=["tecoa"], trials=1, steps=2, batch_size=4, val_limit=6, output=tmp_path / "t"
    )
    study = run_tuning(cfg)["tecoa"]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] and study.study_name == "folder-photos-tecoa"
    assert sorted(set(splits_read)) == [("folder/photos", "train"), ("folder/photos", "val")]
