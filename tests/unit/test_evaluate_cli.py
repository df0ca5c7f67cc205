"""`clipshield evaluate` for a new user: the default eps comes from the data set registry, an opening line
says what will run before anything slow, progress shows on stderr, and --skip-missing with nothing
present is an error listing what was looked for."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipshield.cli.commands import evaluate as evaluate_command
from clipshield.cli.commands.evaluate import eps_groups
from clipshield.cli.main import main
from clipshield.datasets import reference_eps
from clipshield.evaluation.runner import EvalConfig, Evaluator, _StepProgress
from clipshield.evaluation.schema import load_all

SHAPE = "miniworld/plain/shape/seen"
TINY = ["evaluate", "--steps", "2", "--limit", "8", "--batch-size", "8", "--device", "cpu"]


def test_registry_carries_each_data_set_reference_eps():
    assert reference_eps(SHAPE) == pytest.approx(4 / 255) and reference_eps("miniworld-train") == pytest.approx(4 / 255)
    assert reference_eps("cifar10") == pytest.approx(1 / 255) and reference_eps("folder/mine") == pytest.approx(1 / 255)
    with pytest.raises(KeyError, match=r"unknown data set 'nope'; known: .*cifar10"):
        reference_eps("nope")


def test_eps_groups_follow_the_references_unless_eps_is_given():
    groups = sorted(eps_groups(None, [SHAPE, "cifar10", "dtd"]).items())
    assert groups == [(pytest.approx(1 / 255), ["cifar10", "dtd"]), (pytest.approx(4 / 255), [SHAPE])]
    (only,) = eps_groups(2.0, [SHAPE, "cifar10"]).items()
    assert only == (pytest.approx(2 / 255), [SHAPE, "cifar10"])


def test_default_eps_opening_line_and_progress(tmp_path, capsys, monkeypatch):
    """Without --eps the mini world is attacked at its reference 4/255; the plan is printed before the model loads."""
    load = evaluate_command.model_from_args
    printed_before_load = []

    def spy(args):
        printed_before_load.append(capsys.readouterr().out)
        return load(args)

    monkeypatch.setattr(evaluate_command, "model_from_args", spy)
    out = tmp_path / "eval"
    assert main([*TINY, "--datasets", SHAPE, "--out", str(out)]) == 0
    (opening,) = printed_before_load
    assert opening.startswith("evaluate: 1 cell(s) = 1 data set(s) x pgd, up to 8 images each")
    assert "eps 4/255 (the data sets' registered reference" in opening
    captured = capsys.readouterr()
    assert f"{SHAPE} | pgd" in captured.err and "16/16" in captured.err  # tqdm bar: clean + attacked images
    assert "eps=4/255" in captured.out
    (cell,) = load_all(out)
    assert cell.key.eps == pytest.approx(4 / 255)


def write_folder_dataset(root, classes=("red", "blue"), per_class=4):
    for c, colour in enumerate(classes):
        (root / colour).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (200 * (c == 0), 30 * i, 200 * (c == 1))).save(root / colour / f"{i}.png")


def test_mixed_references_attack_each_set_at_its_own(tmp_path, capsys):
    write_folder_dataset(tmp_path / "data" / "mine")
    out = tmp_path / "eval"
    args = [*TINY, "--datasets", SHAPE, "folder/mine", "--data-root", str(tmp_path / "data"), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "eps 4/255 for 1 set(s), 1/255 for 1 set(s)" in printed.splitlines()[0]
    eps = {c.key.dataset: c.key.eps for c in load_all(out)}
    assert eps == {SHAPE: pytest.approx(4 / 255), "folder/mine": pytest.approx(1 / 255)}
    assert "eps=4/255" in printed and "eps=1/255" in printed  # each result line says what was used
    # --eps overrides the references for every set
    assert main([*args[:-1], str(tmp_path / "eval2"), "--eps", "2"]) == 0
    overridden = load_all(tmp_path / "eval2")
    assert len(overridden) == 2 and all(c.key.eps == pytest.approx(2 / 255) for c in overridden)


def test_skip_missing_with_nothing_present_fails_listing_what_was_looked_for(tmp_path, capsys):
    root = tmp_path / "no-data"
    out = tmp_path / "o"
    code = main([*TINY, "--datasets", "cifar10", "dtd", "--data-root", str(root), "--skip-missing", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "none of the 2 requested data set(s) was found" in err
    assert "cifar10: folder" in err and "dtd: folder" in err and str(root) in err and "expected layout" in err
    assert not (out / "summary.json").exists() and not (out / "results.md").exists()


def test_skip_missing_keeps_working_across_eps_groups(tmp_path, capsys):
    """Mini world present (4/255), the only real set missing (1/255): the others are evaluated."""
    out = tmp_path / "o"
    assert main([*TINY, "--datasets", SHAPE, "cifar10", "--data-root", str(tmp_path / "none"), "--skip-missing", "--out", str(out)]) == 0
    assert "skipped missing data set: cifar10" in capsys.readouterr().out
    assert [c.key.dataset for c in load_all(out)] == [SHAPE]


class FakeBar:
    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.updates: list[int] = []

    def update(self, n: int) -> None:
        assert n >= 0
        self.n += n
        self.updates.append(n)

    def close(self) -> None:
        pass


def test_step_progress_moves_during_a_batch_and_settles_exactly():
    bar = FakeBar(16)
    ticker = _StepProgress(bar, expected=4)
    for _ in range(3):
        ticker.forward(8)
    assert 0 < bar.n < 8  # moved before the batch finished
    for _ in range(10):  # more forward passes than expected: never past the batch
        ticker.forward(8)
    assert bar.n == 7
    ticker.batch_done(8)
    assert bar.n == 8
    ticker.batch_done(8)  # a clean batch
    assert bar.n == 16 and all(isinstance(u, int) for u in bar.updates)


def test_progress_ticks_during_attack_steps_without_changing_numbers(miniworld_model, tmp_path):
    bars: list[FakeBar] = []

    def factory(total, desc):
        bars.append(FakeBar(total))
        return bars[-1]

    def run(folder, progress):
        cfg = EvalConfig(model_id="mw", datasets=[SHAPE], attacks=["pgd"], eps=4 / 255, steps=5, limit=16, batch_size=16, out_dir=folder)
        return Evaluator(miniworld_model, cfg, progress=progress).run()[0]

    with_bar, without = run(tmp_path / "a", factory), run(tmp_path / "b", None)
    assert (with_bar.clean, with_bar.robust) == (without.clean, without.robust)
    (bar,) = bars
    assert bar.n == bar.total == 32
    assert len(bar.updates) > 2  # one clean batch + several updates while the attack ran + the settling one
    assert miniworld_model.training is False and torch.is_grad_enabled()


def test_evaluator_with_skip_missing_and_nothing_present_raises(miniworld_model, tmp_path):
    from clipshield.service.errors import DatasetNotFound

    cfg = EvalConfig(model_id="m", datasets=["cifar10"], data_root=tmp_path / "none", skip_missing=True, out_dir=tmp_path / "o")
    with pytest.raises(DatasetNotFound, match=r"none of the 1 requested data set\(s\) was found.*cifar10: folder"):
        Evaluator(miniworld_model, cfg).run()
    assert not (tmp_path / "o").exists()


def test_attack_score_mode_maps_flags_and_refuses_attacks_it_cannot_judge(tmp_path, capsys):
    """`--attack-score`: --limit is the held-out count, --eps the reference budget, 10 steps unless --steps;
    an attack other than pgd/cw is refused in one line naming the allowed ones, before any model loads."""
    from clipshield.cli.commands.evaluate_score import detection_config
    from clipshield.cli.main import build_parser

    argv = ["evaluate", "--attack-score", "--datasets", SHAPE, "--attacks", "pgd", "cw", "--limit", "16", "--eps", "2"]
    args = build_parser().parse_args([*argv, "--out", str(tmp_path)])
    cfg = detection_config(args, [SHAPE], 2 / 255)
    assert (cfg.n_eval, cfg.steps, cfg.calibration_dataset, cfg.attacks) == (16, 10, SHAPE, ("pgd", "cw"))
    assert cfg.ref_eps == pytest.approx(2 / 255) and cfg.score.signals == ("anchor", "margin", "pixel_median")
    assert main(["evaluate", "--attack-score", "--attacks", "autoattack", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pgd and cw; not autoattack" in err and "Traceback" not in err
    assert main(["evaluate", "--attack-score", "--score-fpr", "1.5", "--out", str(tmp_path)]) == 2
    assert "score-fpr" in capsys.readouterr().err
