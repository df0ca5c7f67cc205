"""Model loading: clear errors for every bad source, checkpoints round-trip, no unpickling of arbitrary objects."""

from __future__ import annotations

import pickle

import pytest
import torch

from clipshield.models.checkpoint import load_weights, save_checkpoint
from clipshield.models.factory import load_checkpoint_dir, load_model
from clipshield.service.errors import ModelLoadError


def test_unknown_name_lists_the_sources():
    with pytest.raises(ModelLoadError, match="miniworld"):
        load_model("no-such-model")


def test_open_clip_tag_offline_fails_clearly():
    with pytest.raises(ModelLoadError, match="offline"):
        load_model("ViT-B-32", pretrained="laion2b_s34b_b79k", offline=True)


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelLoadError, match="openai"):
        load_model("ViT-B-32", pretrained="no-such-tag", offline=True)


def test_checkpoint_round_trip(tmp_path, miniworld_model):
    save_checkpoint(tmp_path / "ck", miniworld_model.record, miniworld_model.clip.state_dict())
    again = load_checkpoint_dir(tmp_path / "ck")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), miniworld_model(x), atol=1e-6, rtol=0)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_weights(path)


def test_missing_checkpoint_folder_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(str(tmp_path / "empty"))
