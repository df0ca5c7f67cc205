"""Labels the model cannot read are refused, naming the words (issue 17 item 2).

The mini-world model's compact vocabulary maps every other word to one unknown id, which used to
give confident answers such as 'a woman' at 0.4999 for a picture of a red circle. Real CLIP
vocabularies (open_clip's byte-level BPE) read any text and are unaffected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipshield.service.api import PredictResponse
from clipshield.service.errors import BadInput
from clipshield.service.inference import ClipshieldService, RawRequest
from clipshield.service.tokenizer import ClipBpeTokenizer, CompactTokenizer, build_compact_vocab, check_known_words

REPO = Path(__file__).resolve().parents[2]
NEW_USER_LABELS = ["a red circle", "a woman", "a car"]


@pytest.fixture(scope="module")
def compact(miniworld_model) -> CompactTokenizer:
    tok = miniworld_model.tokenizer
    assert isinstance(tok, CompactTokenizer)
    return tok


def test_compact_tokenizer_names_the_words_it_cannot_read(compact):
    assert compact.unknown_words(NEW_USER_LABELS) == ["woman", "car"]
    assert compact.unknown_words(["A Photo of a ZEBRA!", "zebra"]) == ["zebra", "!"]
    assert compact.unknown_words(["a small cyan crescent .", "a grainy picture of a checkered heart"]) == []


def test_unknown_words_are_exactly_those_that_become_unk(compact):
    """The check agrees with the tokenizer itself: a label is refused iff its tokens hold UNK."""
    from clipshield.service.tokenizer import UNK_ID

    for label in ["red circle", "a woman", "striped star", "car", "cyan", "cyanide", "3 hearts", "line"]:
        has_unk = UNK_ID in compact([label])[0].tolist()
        assert bool(compact.unknown_words([label])) == has_unk, label


def test_check_known_words_message_names_words_labels_and_vocabulary(compact):
    with pytest.raises(BadInput) as info:
        check_known_words(compact, NEW_USER_LABELS)
    message = str(info.value)
    assert info.value.http_status == 400
    assert "'woman', 'car'" in message and "'a woman', 'a car'" in message and "'a red circle'" not in message
    known = message.split("it knows only: ")[1].split(" (")[0].split()
    assert known == compact.known_words() and {"red", "circle", "cy-"} <= set(known)
    check_known_words(compact, ["a red circle", "blue square"])  # known words: no error


def test_known_words_are_the_vocabulary_pieces():
    vocab = build_compact_vocab(["a cyan star"])
    tok = CompactTokenizer(vocab, context_length=8)
    assert tok.known_words() == sorted(["a", "an", "cy-", "star"])


def test_open_clip_vocabulary_reads_anything():
    tok = ClipBpeTokenizer(77)
    labels = NEW_USER_LABELS + ["Zebra!", "日本語のラベル", "3 hearts"]
    assert tok.unknown_words(labels) == [] and tok.known_words() == []
    check_known_words(tok, labels)


def test_text_head_on_the_miniworld_model_refuses_unknown_class_names(miniworld_model):
    from clipshield.models.zero_shot import build_text_head

    with pytest.raises(BadInput, match="'woman'"):
        build_text_head(miniworld_model, NEW_USER_LABELS, ["a photo of a {}"])
    assert build_text_head(miniworld_model, ["red circle", "blue square"], ["a photo of a {}"]).shape[0] == 2


@pytest.fixture(scope="module")
def miniworld_service(miniworld_model, tmp_path_factory) -> ClipshieldService:
    from clipshield.export import export_model

    return ClipshieldService.from_folder(export_model(miniworld_model, tmp_path_factory.mktemp("vocab")))


def _png(seed: int = 0) -> bytes:
    from clipshield.service.preprocess import encode_png

    return encode_png(np.random.default_rng(seed).random((3, 32, 32)).astype(np.float32))


def _ask(service: ClipshieldService, labels: list[str]) -> RawRequest:
    return RawRequest({"image": _png(), "labels": json.dumps(labels).encode()}, "multipart/form-data")


def test_service_answers_unknown_words_with_a_per_item_400(miniworld_service):
    bad, good = miniworld_service.predict([_ask(miniworld_service, NEW_USER_LABELS), _ask(miniworld_service, ["red circle", "blue star"])])
    assert isinstance(bad, BadInput) and bad.http_status == 400
    assert "'woman', 'car'" in str(bad)
    assert isinstance(good, PredictResponse) and {p.label for p in good.predictions} == {"red circle", "blue star"}


def test_service_over_an_open_clip_vocabulary_answers_any_words(tmp_path):
    """A (tiny, random) model with open_clip's full vocabulary: everyday labels are answered."""
    import torch

    from clipshield.export import export_model
    from clipshield.models.factory import from_record, record_from_arch

    arch = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = from_record(record_from_arch("tiny-bpe", arch))
    service = ClipshieldService.from_folder(export_model(model, tmp_path / "bundle"))
    assert service.record.tokenizer.kind == "open_clip"
    (answer,) = service.predict([_ask(service, NEW_USER_LABELS)])
    assert isinstance(answer, PredictResponse), answer
    assert {p.label for p in answer.predictions} == set(NEW_USER_LABELS)


def test_cli_evaluate_on_folder_class_names_fails_naming_the_words(tmp_path, capsys):
    from clipshield.cli.main import main

    for i, cls in enumerate(["woman", "red_circle", "car"]):
        (tmp_path / "mine" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "mine" / cls / "0.png")
    rc = main(
        [
            "evaluate",
            "--model",
            "miniworld",
            "--datasets",
            "folder/mine",
            "--data-root",
            str(tmp_path),
            "--attacks",
            "none",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2 and len(err) == 1, err
    words, labels = re.search(r"no word\(s\) (.*?) \(in label\(s\) (.*?)\);", err[0]).groups()
    assert sorted(words.split(", ")) == ["'car'", "'woman'"] and sorted(labels.split(", ")) == ["'car'", "'woman'"]


def _documented_words() -> list[str]:
    text = (REPO / "docs" / "serving.md").read_text()
    section = text.split("### Vocabulary of the mini-world model")[1]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block, "the vocabulary section has no ```text block"
    return block.group(1).split()


def test_docs_list_exactly_the_words_the_miniworld_model_reads(compact):
    """docs/serving.md's list: every word readable, every vocabulary piece used, same as the corpus."""
    from clipshield.datasets.miniworld.captions import vocabulary_corpus

    words = _documented_words()
    assert words == sorted(set(words)) and compact.unknown_words(words) == []
    corpus = {w for text in vocabulary_corpus() for w in compact._bpe.pat.findall(compact._bpe.clean_fn(text))}
    assert set(words) == corpus
    used = {b for w in words for b in compact._word_ids(w)}
    assert used == set(compact._map), "a vocabulary piece no documented word uses"
