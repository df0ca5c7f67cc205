"""The KServe micro-batcher (`handlers/kserve/batcher.py`): flushed by size or delay, one predict call per flush,
each request answered with its own items' results (an item's error stays its own), a failing flush fails its
requests instead of leaving them waiting, and a batched answer equals the unbatched one on the real service."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kserve")

from clipshield.handlers.kserve.batcher import KServeBatchingConfig, MicroBatcher
from clipshield.service.config import flag_config
from clipshield.service.errors import BadInput, ClipshieldError, ConfigError
from clipshield.service.inference import RawRequest


class Recorder:
    """A stand-in for `ClipshieldService.predict`: answers each item with its own tag, refuses tag 'bad'."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, _service, requests: list[RawRequest]) -> list:
        tags = [r.parts["tag"] for r in requests]
        self.calls.append(tags)
        return [BadInput(f"item {t} refused") if t == "bad" else f"answer {t}" for t in tags]


def _reqs(*tags: str) -> list[RawRequest]:
    return [RawRequest({"tag": t}) for t in tags]


async def _submit_all(batcher: MicroBatcher, groups: list[list[RawRequest]]) -> list[list]:
    service = object()  # one served model
    return await asyncio.gather(*(batcher.submit(service, g) for g in groups))  # type: ignore[arg-type]


def test_a_full_batch_is_flushed_without_waiting_for_the_delay():
    predict = Recorder()
    batcher = MicroBatcher(KServeBatchingConfig(max_batch_size=4, max_batch_delay_ms=1000), predict)
    start = time.perf_counter()
    answers = asyncio.run(_submit_all(batcher, [_reqs("a"), _reqs("b", "c"), _reqs("d")]))
    assert time.perf_counter() - start < 0.5  # the 1 s delay never ran out
    assert predict.calls == [["a", "b", "c", "d"]]
    assert answers == [["answer a"], ["answer b", "answer c"], ["answer d"]]


def test_a_partial_batch_is_flushed_after_the_delay():
    predict = Recorder()
    batcher = MicroBatcher(KServeBatchingConfig(max_batch_size=16, max_batch_delay_ms=30), predict)
    start = time.perf_counter()
    answers = asyncio.run(_submit_all(batcher, [_reqs("a"), _reqs("b")]))
    assert time.perf_counter() - start >= 0.025
    assert predict.calls == [["a", "b"]] and answers == [["answer a"], ["answer b"]]


def test_a_bad_item_gets_its_own_error_and_its_batch_mates_are_answered():
    predict = Recorder()
    batcher = MicroBatcher(KServeBatchingConfig(max_batch_size=3, max_batch_delay_ms=1000), predict)
    first, second = asyncio.run(_submit_all(batcher, [_reqs("a", "bad"), _reqs("c")]))
    assert first[0] == "answer a" and isinstance(first[1], BadInput) and second == ["answer c"]


def test_a_failing_flush_fails_each_of_its_requests_and_the_next_flush_serves():
    calls = []

    def predict(_service, requests):
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("encoder crashed")
        return [f"answer {r.parts['tag']}" for r in requests]

    batcher = MicroBatcher(KServeBatchingConfig(max_batch_size=2, max_batch_delay_ms=1000), predict)

    async def scenario():
        service = object()
        failed = await asyncio.gather(*(batcher.submit(service, g) for g in (_reqs("a"), _reqs("b"))), return_exceptions=True)  # type: ignore[arg-type]
        served = await asyncio.gather(*(batcher.submit(service, g) for g in (_reqs("c"), _reqs("d"))))  # type: ignore[arg-type]
        return failed, served

    failed, served = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert all(isinstance(f, ClipshieldError) and "internal error" in str(f) for f in failed)
    assert served == [["answer c"], ["answer d"]] and calls == [2, 2]


def test_requests_of_two_models_in_one_flush_go_to_their_own_model():
    predict = Recorder()
    seen = []
    batcher = MicroBatcher(KServeBatchingConfig(max_batch_size=3, max_batch_delay_ms=1000), lambda s, r: (seen.append(s), predict(s, r))[1])
    old, new = object(), object()

    async def scenario():
        return await asyncio.gather(batcher.submit(old, _reqs("a")), batcher.submit(new, _reqs("b")), batcher.submit(old, _reqs("c")))  # type: ignore[arg-type]

    assert asyncio.run(scenario()) == [["answer a"], ["answer b"], ["answer c"]]
    assert seen == [old, new] and predict.calls == [["a", "c"], ["b"]]


@pytest.mark.parametrize("field,value,flag", [("max_batch_size", 0, "max-batch-size"), ("max_batch_delay_ms", -1, "max-batch-delay-ms")])
def test_out_of_range_settings_name_the_flag(field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        flag_config(KServeBatchingConfig, {field: flag}, **{field: value})


def test_batched_answers_equal_unbatched_ones_on_the_served_model(miniworld_model, tmp_path):
    """Same predict path: four requests (one with a bad image, options differing) answered through a flush of
    the real service equal each request answered on its own."""
    from kserve import InferInput, InferRequest

    from clipshield.export import export_model
    from clipshield.handlers.kserve.model import ClipshieldKServeModel
    from clipshield.service.metrics import NullSink
    from clipshield.service.preprocess import encode_png
    from clipshield.service.settings import ServingConfig

    bundle = export_model(miniworld_model, tmp_path / "bundle")
    rng = np.random.default_rng(0)
    pngs = [encode_png(rng.random((3, 32, 32)).astype(np.float32)) for _ in range(3)] + [b"not an image"]
    options = [{"purify": "true"}, {"labels": json.dumps(["red star", "blue circle"])}, {"top_k": 2}, {}]

    def request(png: bytes, params: dict) -> InferRequest:
        image = InferInput(name="image", shape=[1], datatype="BYTES")
        image.set_data_from_numpy(np.array([base64.b64encode(png)], dtype=object))
        return InferRequest(model_name="clipshield", infer_inputs=[image], parameters=params)

    flushes: list[int] = []

    def counted(service, reqs):
        flushes.append(len(reqs))
        return service.predict(reqs)

    def answers(batching: KServeBatchingConfig) -> list:
        model = ClipshieldKServeModel("clipshield", bundle, ServingConfig(), NullSink(), batching)
        model.load()
        if model.batcher is not None:  # count the flushes' sizes
            model.batcher._predict = counted

        async def all_at_once():
            return await asyncio.gather(*(model.predict(request(p, o)) for p, o in zip(pngs, options)), return_exceptions=True)

        return asyncio.run(all_at_once())

    batched, alone = (
        answers(KServeBatchingConfig(max_batch_size=4, max_batch_delay_ms=1000)),
        answers(KServeBatchingConfig(max_batch_size=1)),
    )
    assert flushes == [4]  # all four requests in one predict call
    assert isinstance(batched[3], BadInput) and isinstance(alone[3], BadInput)
    for b, a in zip(batched[:3], alone[:3]):
        out_b, out_a = ({o.name: o.data for o in r.outputs} for r in (b, a))
        assert out_b["labels"] == out_a["labels"] and out_b["purified"] == out_a["purified"]
        np.testing.assert_allclose(out_b["scores"], out_a["scores"], atol=1e-5)


def test_launcher_settings_reach_the_server_process_flags(tmp_path):
    from clipshield.handlers.kserve.app import parse_args
    from clipshield.handlers.kserve.launcher import KServeConfig, _app_command

    cfg = KServeConfig(batching=KServeBatchingConfig(max_batch_size=8, max_batch_delay_ms=2.5))
    args = parse_args(_app_command(tmp_path, cfg)[3:])  # after `python -m clipshield.handlers.kserve.app`
    assert (args.max_batch_size, args.max_batch_delay_ms) == (8, 2.5)
    defaults = parse_args(["--bundle", str(tmp_path)])
    assert (defaults.max_batch_size, defaults.max_batch_delay_ms) == (
        KServeBatchingConfig().max_batch_size,
        KServeBatchingConfig().max_batch_delay_ms,
    )


def test_serve_refuses_an_out_of_range_batch_size_naming_the_flag(tmp_path, capsys):
    from clipshield.cli.main import main

    assert main(["serve", "--runtime", "kserve", "--model-store", str(tmp_path), "--kserve-batch-size", "0"]) == 2
    assert "kserve-batch-size" in capsys.readouterr().err


def test_the_kserve_manifest_spells_out_the_code_default():
    import yaml

    from clipshield.handlers.kserve.app import parse_args

    docs = list(yaml.safe_load_all(Path(__file__).resolve().parents[2].joinpath("k8s/kserve/inferenceservice.yaml").read_text()))
    (container,) = next(d for d in docs if d and d["kind"] == "InferenceService")["spec"]["predictor"]["containers"]
    assert "--max-batch-size" in container["args"] and "--max-batch-delay-ms" in container["args"]
    args, default = parse_args(container["args"]), KServeBatchingConfig()
    assert (args.max_batch_size, args.max_batch_delay_ms) == (default.max_batch_size, default.max_batch_delay_ms)
