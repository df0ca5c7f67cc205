"""`clipshield finetune` argument handling: method choices, mini-world defaults, --param parsing."""

from __future__ import annotations

import pytest

from clipshield.cli.commands.finetune import config_from_args, parse_params
from clipshield.cli.main import build_parser


def parse(*argv):
    return build_parser().parse_args(["finetune", *argv])


def test_miniworld_defaults():
    from clipshield.datasets import finetune_recipe

    tuned = finetune_recipe("miniworld-train").tuned  # a study's lr and loss weights replace the shared ones
    cfg = config_from_args(parse("--method", "tga-zsr"))
    assert cfg.dataset.name == "miniworld-train" and cfg.attack.eps == pytest.approx(4 / 255)
    o = cfg.optim
    lr = tuned["tga-zsr"].lr if "tga-zsr" in tuned else 0.005
    assert o.steps == 200 and o.batch_size == 32 and o.lr == lr and o.warmup is None and cfg.evaluation.datasets
    resolved = cfg.resolved(batches_per_epoch=100)
    assert resolved.optim.steps == 200 and resolved.optim.warmup == 20 and resolved.optim.optimizer == "sgd"
    assert config_from_args(parse("--method", "fare")).optim.lr == (tuned["fare"].lr if "fare" in tuned else 1e-4)  # AdamW
    assert config_from_args(parse("--method", "tecoa", "--lr", "0.1", "--epochs", "2")).optim.steps is None
    paper = {"alpha": 0.08, "beta": 0.05, "distance": "l2", "map_norm": "token_axis", "minmax_eps": 0.0}
    assert resolved.method_params == paper | (tuned["tga-zsr"].method_params if "tga-zsr" in tuned else {})


def test_real_data_defaults_and_params():
    cfg = config_from_args(
        parse("--method", "pmg-aft", "--data", "tinyimagenet", "--param", "normalization=model", "--param", "general_weight=0.5")
    )
    assert (
        cfg.attack.eps == pytest.approx(1 / 255) and cfg.optim.epochs == 10 and cfg.optim.warmup == 1000 and cfg.evaluation.datasets == []
    )
    resolved = cfg.resolved(batches_per_epoch=391)
    assert resolved.optim.batch_size == 256 and resolved.optim.lr == 5e-5 and resolved.optim.steps == 3910
    assert resolved.method_params["normalization"] == "model" and resolved.method_params["general_weight"] == 0.5


def test_bad_inputs():
    with pytest.raises(SystemExit):
        parse("--method", "trades")
    from clipshield.service.errors import ConfigError

    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_params(["alpha"])

    with pytest.raises(ConfigError, match=r"distance.*options: alpha, beta, distance, map_norm, minmax_eps"):
        config_from_args(parse("--method", "tga-zsr", "--param", "distance=kl"))


def test_experiment_table_mean_and_std(tmp_path):
    from clipshield.cli.commands.experiment import EVAL_SETS, HELDOUT_DOMAINS, markdown, plot, summarise

    def result(clean, robust):
        return {name: {"clean": clean, "robust": robust, "n": 10} for name in EVAL_SETS}

    table = summarise({"base": [result(0.9, 0.0), result(0.9, 0.0)], "tecoa": [result(0.6, 0.3), result(0.8, 0.5)]})
    assert table["tecoa"]["seen robust"] == pytest.approx({"mean": 40.0, "std": pytest.approx(14.142, abs=1e-3)})
    assert table["base"]["heldout_domains clean"]["mean"] == pytest.approx(90.0)
    assert table["base"]["heldout_domains clean"]["std"] == pytest.approx(0.0)
    assert len(HELDOUT_DOMAINS) == 3
    args = build_parser().parse_args(["experiment", "miniworld", "--seeds", "0", "1"])
    text = markdown(table, args)
    assert "| tecoa | 70.0 ± 14.1 | 40.0 ± 14.1 |" in text
    assert "SGD lr 0.005 (FARE: AdamW lr 0.0001)" in text
    plot(table, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_experiment_runs_share_the_budget_and_keep_each_recipe_optimiser(tmp_path):
    from clipshield.cli.commands.experiment import experiment_config

    args = build_parser().parse_args(["experiment", "miniworld", "--output", str(tmp_path), "--lr", "0.01", "--adamw-lr", "3e-4"])
    runs = {m: experiment_config(args, m, seed=1).resolved(batches_per_epoch=50) for m in ("tecoa", "tga-zsr", "pmg-aft", "fare")}
    for cfg in runs.values():
        assert (cfg.optim.steps, cfg.optim.batch_size, cfg.attack.eps, cfg.run.seed) == (200, 32, pytest.approx(4 / 255), 1)
    assert {m: (c.optim.optimizer, c.optim.lr) for m, c in runs.items()} == {
        "tecoa": ("sgd", 0.01),
        "tga-zsr": ("sgd", 0.01),
        "pmg-aft": ("sgd", 0.01),
        "fare": ("adamw", 3e-4),
    }
    assert runs["fare"].optim.weight_decay == 1e-4 and runs["tecoa"].optim.weight_decay == 0.0
    assert runs["fare"].run.output == tmp_path / "fare" / "seed1"


def test_experiment_jobs_run_in_processes_and_give_the_same_results(tmp_path):
    from clipshield.cli.commands.experiment import run, run_all
    from clipshield.service.errors import ConfigError

    common = ["experiment", "miniworld", "--steps", "2", "--batch-size", "8", "--eval-limit", "8", "--eval-steps", "1", "--threads", "1"]
    runs = [("tecoa", 0), ("tecoa", 1)]
    serial = run_all(build_parser().parse_args([*common, "--output", str(tmp_path / "serial")]), runs)
    parallel = run_all(build_parser().parse_args([*common, "--output", str(tmp_path / "parallel"), "--jobs", "2"]), runs)
    assert serial == parallel and serial[("tecoa", 0)] != serial[("tecoa", 1)]  # seeds differ, jobs do not matter
    with pytest.raises(ConfigError, match="--jobs must be at least 1"):
        run(build_parser().parse_args(["experiment", "miniworld", "--jobs", "0", "--output", str(tmp_path / "none")]))


def test_experiment_refuses_to_reuse_a_finished_run_with_other_settings(tmp_path):
    from clipshield.cli.commands.experiment import run_all
    from clipshield.service.errors import ConfigError

    common = ["experiment", "miniworld", "--steps", "2", "--batch-size", "8", "--eval-limit", "8", "--eval-steps", "1"]
    out = ["--output", str(tmp_path), "--threads", "1"]
    first = run_all(build_parser().parse_args([*common, *out, "--lr", "0.01"]), [("tecoa", 0)])
    again = run_all(build_parser().parse_args([*common, *out, "--lr", "0.01", "--eval-limit", "4"]), [("tecoa", 0)])
    assert again == first  # read back: evaluation settings do not make a run stale
    with pytest.raises(ConfigError, match=r"other settings \(lr\)"):
        run_all(build_parser().parse_args([*common, *out, "--lr", "0.02"]), [("tecoa", 0)])
