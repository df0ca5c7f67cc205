"""`clipshield release`: accept, refuse on a drop or a protocol difference, and a recorded --force."""

from __future__ import annotations

import shutil
import zipfile

import pytest

from clipshield.cli.main import main
from clipshield.service import bundle as B
from clipshield.service.card import AccuracyEntry

PRE = "[0,1] pixels: resize shortest side to 32 + centre crop 32x32"


def entry(attack: str, value: float, preprocessing: str = PRE) -> AccuracyEntry:
    return AccuracyEntry(
        dataset="miniworld/plain/color_shape/seen", attack=attack, purified=False, value=value, n=256, preprocessing=preprocessing
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from clipshield.export.exporter import export_model
    from clipshield.models.factory import load_model

    return export_model(load_model("miniworld"), tmp_path_factory.mktemp("gate") / "bundle")


def bundle_with(exported, folder, *entries: AccuracyEntry):
    """A copy of the exported bundle whose card carries `entries` (manifest refreshed, as export writes it)."""
    shutil.copytree(exported, folder)
    B.write_card(folder, B.read_card(folder).model_copy(update={"accuracy": tuple(entries)}))
    B.write_manifest(folder)
    return folder


def test_a_candidate_within_the_margins_is_accepted_and_the_decision_recorded(exported, tmp_path, capsys):
    base = bundle_with(exported, tmp_path / "base", entry("none", 0.90), entry("pgd10-linf-4/255", 0.60))
    cand = bundle_with(exported, tmp_path / "cand", entry("none", 0.89), entry("pgd10-linf-4/255", 0.605))
    assert main(["release", str(cand), "--baseline", str(base)]) == 0
    out = capsys.readouterr().out
    assert "ACCEPTED (2 entries compared)" in out and "| -1.0 |" in out
    card = B.read_card(cand)
    assert card.release.accepted and not card.release.forced and card.release.compared == 2
    B.verify_manifest(cand)  # the recorded decision keeps the bundle loadable


def test_a_robust_drop_beyond_the_margin_is_refused_with_a_nonzero_exit(exported, tmp_path, capsys):
    base = bundle_with(exported, tmp_path / "base", entry("none", 0.90), entry("pgd10-linf-4/255", 0.60))
    cand = bundle_with(exported, tmp_path / "cand", entry("none", 0.95), entry("pgd10-linf-4/255", 0.57))
    assert main(["release", str(cand), "--baseline", str(base)]) == 3
    out = capsys.readouterr().out
    assert "REFUSED" in out and "drop 3.0 > 1 points" in out
    assert main(["release", str(cand), "--baseline", str(base), "--max-robust-drop", "5"]) == 0  # the margin is configurable
    assert B.read_card(cand).release.max_robust_drop == 5


def test_protocol_differences_and_missing_measurements_are_refused(exported, tmp_path, capsys):
    base = bundle_with(exported, tmp_path / "base", entry("none", 0.90), entry("pgd10-linf-4/255", 0.60))
    other_pre = bundle_with(exported, tmp_path / "pre", entry("none", 0.95), entry("pgd10-linf-4/255", 0.70, preprocessing="paper"))
    assert main(["release", str(other_pre), "--baseline", str(base)]) == 3
    assert "protocol: preprocessing differs" in capsys.readouterr().out
    missing = bundle_with(exported, tmp_path / "missing", entry("none", 0.95))
    assert main(["release", str(missing), "--baseline", str(base)]) == 3
    assert "protocol: the candidate did not measure this" in capsys.readouterr().out
    nothing = bundle_with(exported, tmp_path / "nothing")
    assert main(["release", str(nothing), "--baseline", str(nothing)]) == 3
    assert "nothing comparable" in capsys.readouterr().out


def test_force_releases_a_refused_candidate_and_records_why(exported, tmp_path, capsys):
    base = bundle_with(exported, tmp_path / "base", entry("none", 0.90), entry("pgd10-linf-4/255", 0.60))
    cand = bundle_with(exported, tmp_path / "cand", entry("none", 0.80), entry("pgd10-linf-4/255", 0.70))
    assert main(["release", str(cand), "--baseline", str(base), "--force"]) == 2  # an override needs a reason
    assert main(["release", str(cand), "--baseline", str(base), "--force", "--reason", "clean drop accepted for +10 robust"]) == 0
    release = B.read_card(cand).release
    assert release.forced and release.accepted and release.reason == "clean drop accepted for +10 robust"
    assert base.name not in release.baseline and release.baseline.startswith(B.read_card(base).name)


def test_the_baseline_can_be_a_mar_archive(exported, tmp_path):
    base = bundle_with(exported, tmp_path / "base", entry("none", 0.90))
    cand = bundle_with(exported, tmp_path / "cand", entry("none", 0.90))
    mar = tmp_path / "clipshield.mar"
    with zipfile.ZipFile(mar, "w") as z:
        z.write(base / B.MODEL_CARD, B.MODEL_CARD)
    assert main(["release", str(cand), "--baseline", str(mar)]) == 0
