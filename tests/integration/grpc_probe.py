"""A stock gRPC v2 client run in its own process: `python -m tests.integration.grpc_probe HOST:PORT PNG...`.

tritonclient.grpc and kserve register the same protobuf package (`inference`) in protobuf's default
descriptor pool, so one process cannot import both (kserve/kserve#3099: "duplicate symbol
'inference.ServerLiveRequest'"). A real client never imports the server; the test process imports
kserve, so the client checks run here and print one JSON report on stdout.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

MODEL = "clipshield"
LABELS = ["a red circle", "a blue square", "a green star"]


def _tensor(grpcclient: Any, name: str, values: list, datatype: str = "BYTES") -> Any:
    t = grpcclient.InferInput(name, [len(values)], datatype)
    t.set_data_from_numpy(np.array(values, dtype={"BYTES": object, "INT32": np.int32}[datatype]))
    return t


def _answers(result: Any) -> list[dict[str, Any]]:
    out = []
    for i, status in enumerate(result.as_numpy("status")):
        labels = [s.decode() for s in result.as_numpy("labels")[i] if s]
        out.append({"status": int(status), "top": [[lab, float(v)] for lab, v in zip(labels, result.as_numpy("scores")[i])]})
    return out


def _refused(call: Callable[[], Any]) -> list[str]:
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as exc:
        return [str(exc.status()), str(exc.message())]
    return ["answered", ""]


def probe(address: str, pngs: Sequence[bytes]) -> dict[str, Any]:
    """Health, metadata, inference (with [K] labels and without) and three bad inputs, as tritonclient.grpc does them."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(address)
    try:
        image = lambda items: _tensor(grpcclient, "image", list(items))  # noqa: E731
        bad = {
            "not-an-image": [image([b"not an image at all"])],
            "duplicated-labels": [image(pngs[:1]), _tensor(grpcclient, "labels", ["cat", "cat"])],
            "top-k-zero": [image(pngs[:1]), _tensor(grpcclient, "top_k", [0], "INT32")],
        }
        return {
            "health": [c.is_server_live(), c.is_server_ready(), c.is_model_ready(MODEL)],
            "unknown_model": _refused(lambda: c.get_model_metadata("no-such-model")),
            "metadata": c.get_model_metadata(MODEL, as_json=True),
            "with_labels": _answers(c.infer(MODEL, [image(pngs), _tensor(grpcclient, "labels", LABELS)])),
            "without_labels": _answers(c.infer(MODEL, [image(pngs)])),
            "bad": {name: _refused(functools.partial(c.infer, MODEL, inputs)) for name, inputs in bad.items()},
            "after_bad": _answers(c.infer(MODEL, [image(pngs[:1])])),
        }
    finally:
        c.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print(json.dumps(probe(args[0], [Path(p).read_bytes() for p in args[1:]])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
