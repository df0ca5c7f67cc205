"""Files a run writes get ordinary permissions (0666 minus the umask), safetensors included.

safetensors creates files with mode 0600; a fine-tuned `final/model.safetensors` used to be the one
file others on a shared machine (or a serving container's user) could not read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from clipshield.models.checkpoint import save_checkpoint, write_safetensors
from clipshield.training.finetune import FinetuneConfig, finetune
from clipshield.training.pretrain import miniworld_record


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_write_safetensors_respects_the_umask(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"x": torch.zeros(3)})
    assert _mode(path) == 0o666 & ~mask
    assert not list(tmp_path.glob("*.tmp"))


def test_every_file_of_a_tiny_finetune_has_the_same_mode(tmp_path, umask):
    from clipshield.models.factory import from_record

    umask(0o022)
    torch.manual_seed(0)
    record = miniworld_record()
    save_checkpoint(tmp_path / "base", record, from_record(record).clip.state_dict())
    out = tmp_path / "run"
    cfg = FinetuneConfig(
        method="tecoa",
        model=str(tmp_path / "base"),
        data_limit=16,
        batch_size=8,
        steps=2,
        warmup=1,
        eps=4 / 255,
        checkpoint_every=1,
        output=out,
        eval_datasets=[],
        threads=1,
        seed=0,
    )
    finetune(cfg)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert out / "final" / "model.safetensors" in files
    assert any(p.suffix == ".safetensors" and p.parent.name != "final" for p in files), files
    modes = {str(p.relative_to(out)): oct(_mode(p)) for p in files}
    assert set(modes.values()) == {oct(0o644)}, modes
