"""The serving path needs no torch: a process that cannot import torch, torchvision or open_clip loads a
real bundle through the KServe adapter and answers like the full install (`pip install .[serve-kserve]`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("kserve")

# Runs in a fresh interpreter: a meta-path finder refuses the training-only packages before anything
# else is imported, then the KServe model loads the bundle (manifest, vocabulary, ONNX sessions) and
# answers one request with custom labels (tokenizer + text encoder + prompt ensemble) and purification.
LEAN_CLIENT = textwrap.dedent(
    """
    import base64, json, sys

    BLOCKED = ("torch", "torchvision", "open_clip", "torchaudio")
    attempts = []

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} is not installed in a lean serving environment")
            return None

    sys.meta_path.insert(0, Refuse())

    import numpy as np
    from kserve import InferInput, InferRequest

    from clipshield.handlers.kserve.model import ClipshieldKServeModel, raw_requests
    from clipshield.service.metrics import NullSink
    from clipshield.service.settings import ServingConfig

    bundle, png_path, labels = sys.argv[1], sys.argv[2], sys.argv[3]
    model = ClipshieldKServeModel("clipshield", bundle, ServingConfig(), NullSink())
    model.load()
    image = InferInput(name="image", shape=[1], datatype="BYTES")
    image.set_data_from_numpy(np.array([base64.b64encode(open(png_path, "rb").read())], dtype=object))
    request = InferRequest(model_name="clipshield", infer_inputs=[image], parameters={"labels": labels, "purify": "true"})
    answers = model.service.predict(raw_requests(request))
    loaded = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in BLOCKED})
    print(json.dumps({"answers": [a.model_dump(mode="json") for a in answers], "loaded": loaded, "attempts": attempts}))
    """
)


@pytest.fixture(scope="module")
def bundle(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    return export_model(miniworld_model, tmp_path_factory.mktemp("lean-bundle"))


def test_served_answer_without_torch_equals_the_full_install(bundle, tmp_path):
    import numpy as np

    from clipshield.service.inference import ClipshieldService, RawRequest
    from clipshield.service.preprocess import encode_png

    rng = np.random.default_rng(0)
    png = encode_png(rng.random((3, 40, 56)).astype(np.float32))  # not square, not 32x32: resize + crop run
    (tmp_path / "x.png").write_bytes(png)
    labels = json.dumps(["red star", "blue circle", "green square"])
    out = subprocess.run(
        [sys.executable, "-c", LEAN_CLIENT, str(bundle), str(tmp_path / "x.png"), labels],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lean = json.loads(out.stdout.strip().splitlines()[-1])
    assert lean["loaded"] == []
    full = ClipshieldService.from_folder(bundle).predict(
        [RawRequest({"image": png, "labels": labels.encode(), "purify": b"true"}, "multipart/form-data")]
    )
    assert [a.model_dump(mode="json") for a in full] == lean["answers"]
    assert lean["answers"][0]["purified"] is True and len(lean["answers"][0]["predictions"]) == 3
