"""Issue 27 through the CLI: a short fine-tune on a user's folder reaches its peak lr, is evaluated on the
folder's test split by default, records what ran, and never overwrites an earlier run."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from datetime import datetime, timezone

import pytest

from clipshield.cli.main import main
from clipshield.training.finetune_config import default_output, fitted_warmup, peak_lr_fraction, recipe_config
from clipshield.training.model_card import images_seen
from tests.unit.own_data_helpers import class_names, write_photo_tree

FAST = ["finetune", "--method", "tecoa", "--data", "folder/photos", "--threads", "1", "--eval-limit", "6", "--eval-steps", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_photo_tree(root)  # 3 classes, 12 train + 4 test images each
    return root


def _lrs(run):
    with (run / "metrics.csv").open() as fh:
        return [float(row["lr"]) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def tuned(data_root, tmp_path_factory):
    """A 5-step fine-tune on the folder, through the CLI: (run folder, what it printed)."""
    out = tmp_path_factory.mktemp("tuned") / "run"
    argv = [*FAST, "--data-root", str(data_root), "--steps", "5", "--batch-size", "128", "--output", str(out)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return out, buf.getvalue()


def test_short_run_reaches_peak_lr_and_is_evaluated_on_the_test_split(tuned):
    out, printed = tuned
    card = json.loads((out / "final" / "model_card.json").read_text())
    peak = card["training"]["hyperparameters"]["lr"]
    assert max(_lrs(out)) == pytest.approx(peak, rel=1e-5)  # before: 1000 warm-up steps kept lr <= 5e-3 x peak
    assert card["training"]["hyperparameters"]["warmup"] == 0
    # the card says what ran: 36 images, so each of the 5 steps used all 36 (before: "batch 128, 17.8 epochs")
    t = card["training"]
    assert (t["batch_size"], t["images_seen"], t["epochs"], t["requested_batch_size"]) == (36, 180, 5.0, 128)
    # evaluated by default on the folder's test split (before: "accuracy": [])
    evaluated = {(e["dataset"], e["n"]) for e in card["accuracy"]}
    assert evaluated == {("folder/photos", 6)} and len(card["accuracy"]) == 2
    assert "5 steps of batch 36 (180 images seen, 5 epochs)" in printed and "folder/photos" in printed


def test_second_run_into_the_same_folder_is_refused(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    assert main([*FAST, "--data-root", str(data_root), "--steps", "2", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a fine-tuning run (final)" in err and "--overwrite" in err


def test_a_warmup_the_run_never_finishes_is_refused_unless_asked(data_root, tmp_path, capsys):
    argv = [*FAST, "--data-root", str(data_root), "--steps", "4", "--warmup", "100", "--eval-datasets"]
    assert main([*argv, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "never pass 4% of its peak" in err and "--allow-low-lr" in err
    assert main([*argv, "--output", str(tmp_path / "b"), "--allow-low-lr"]) == 0
    peak = json.loads((tmp_path / "b" / "final" / "model_card.json").read_text())["training"]["hyperparameters"]["lr"]
    assert max(_lrs(tmp_path / "b")) == pytest.approx(peak * 4 / 100, rel=1e-5)  # asked for: the user's warm-up is kept


def test_schedule_rules():
    assert fitted_warmup(1000, 5, fit=True) == 0 and fitted_warmup(1000, 3910, fit=True) == 1000  # the papers' long runs keep it
    assert fitted_warmup(1000, 50, fit=False) == 1000 and fitted_warmup(None, 200, fit=False) == 20
    assert peak_lr_fraction(0, 5) == 1.0 and peak_lr_fraction(10, 5) == 0.5 and peak_lr_fraction(100, 4) == 0.04
    cfg = recipe_config("folder/photos", method="tecoa", steps=5)
    assert cfg.optim.warmup_fit and cfg.resolved(1).optim.warmup == 0
    assert not recipe_config("folder/photos", method="tecoa", steps=5, warmup=2).optim.warmup_fit  # the user's own: kept


def test_images_seen_follows_the_batches_dealt():
    assert images_seen(36, 128, 5) == 180  # a batch larger than the data is the data
    assert images_seen(10, 4, 3) == 10 and images_seen(10, 4, 4) == 14  # epochs of 4 + 4 + 2
    assert images_seen(0, 4, 3) == 0


def test_default_output_is_new_per_run(tmp_path, data_root):
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=timezone.utc)
    first = default_output("tga-zsr", "folder/photos", tmp_path, now)
    assert first == tmp_path / "tga-zsr-folder-photos-20261207-120000"
    first.mkdir()
    assert default_output("tga-zsr", "folder/photos", tmp_path, now).name == first.name + "-2"
    assert recipe_config("folder/photos", method="tecoa", data_root=data_root).evaluation.datasets == ["folder/photos"]
    assert recipe_config("folder/absent", method="tecoa", data_root=data_root).evaluation.datasets == []


def test_export_serves_the_runs_labels_and_names_the_run(tuned, data_root, tmp_path, capsys):
    from clipshield.cli.commands.export import load_labels
    from clipshield.export.describe import describe
    from clipshield.service.inference import ClipshieldService

    out, _ = tuned
    bundle = tmp_path / "export"
    assert main(["export", "--model", str(out / "final"), "--out", str(bundle), "--threads", "1"]) == 0
    card = json.loads((bundle / "model_card.json").read_text())
    # before: the 64 mini-world labels and version "1.0"
    assert json.loads((bundle / "labels.json").read_text())["classnames"] == class_names()
    assert card["version"] == f"ft5-{card['weights_digest'][:8]}" and "folder/photos" in card["labels_source"]
    d = describe(str(bundle))
    assert d["labels"]["classnames"] == class_names() and d["trained_on"]["name"] == "folder/photos"
    assert "orange" in d["vocabulary"] and "cat" not in d["vocabulary"]
    served = ClipshieldService.from_folder(bundle).describe()  # the describe API of both servers
    assert served["labels"] == d["labels"] and served["vocabulary"] == d["vocabulary"]
    # `--labels folder/<dir> --data-root DIR` (before: "no data folder given", then --data-root refused)
    choice = load_labels("folder/photos", data_root)
    assert list(choice.labels.classnames) == class_names() and str(data_root) in choice.source
    assert main(["describe", str(bundle)]) == 0
    assert "default labels (3):" in capsys.readouterr().out


def test_torchrun_ranks_need_one_named_output(monkeypatch):
    from clipshield.cli.commands.finetune import config_from_args
    from clipshield.cli.main import build_parser
    from clipshield.service.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun give --output"):
        config_from_args(build_parser().parse_args(["finetune", "--method", "tecoa"]))
    args = build_parser().parse_args(["finetune", "--method", "tecoa", "--output", "runs/x"])
    assert str(config_from_args(args).run.output) == "runs/x"
