"""The runtime-agnostic inference pipeline a server adapter calls (no server imports here).

`ClipshieldService.from_folder(bundle)` loads a verified export bundle (see `clipshield.service.bundle`);
`predict(requests)` answers a server-side batch: each item is parsed and decoded on its own, so a
bad item gets its own 4xx (as an exception object in its slot) and never fails its batch mates; the
valid images go through the image encoder together, then each item gets its own zero-shot head,
optional per-sample CLIPure-Cos purification and top-k softmax. The one adversarial-input detector is the
model card's calibrated attack score (`clipshield.service.attack_score_np`): `flagged` is its decision. A score
of free signals only (the anchor-only flag: `AttackScoreConfig.is_free`) runs on every request; a richer one
(extra encoder passes on squeezed or noisy copies) runs on items that ask for the score, or on all when the
serving config's default is on, and the others answer `flagged: false`. A new server needs only a new
adapter that builds `RawRequest`s and maps results to HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from clipshield.service import bundle as B, purify_np
from clipshield.service.api import AttackScoreResult, ModelInfo, Prediction, PredictOptions, PredictResponse, parse_request
from clipshield.service.attack_score_np import NumpyAttackScorer
from clipshield.service.bundle_info import read_bundle_info
from clipshield.service.card import gauge_samples
from clipshield.service.config import ModelRecord
from clipshield.service.errors import BadInput, ClipshieldError, ConfigError, ModelLoadError, PayloadTooLarge, UnsupportedMediaType
from clipshield.service.heads import HeadCache, ensemble, ensemble_prompts, head_key
from clipshield.service.metrics import MetricsSink, NullSink
from clipshield.service.precision import served_image_encoder
from clipshield.service.preprocess import load_pixels
from clipshield.service.provenance import package_version
from clipshield.service.runtime import OnnxEncoder, onnxruntime_package, text_encoder
from clipshield.service.settings import ServingConfig
from clipshield.service.tokenizer import check_known_words, create_tokenizer

log = logging.getLogger(__name__)

Result = Union[PredictResponse, ClipshieldError]


@dataclass(frozen=True)
class RawRequest:
    """One request as a server hands it over: body parts by name, and its Content-Type header."""

    parts: Mapping[str, Any]
    content_type: Optional[str] = None


@dataclass
class _Item:
    index: int
    options: PredictOptions
    pixels: np.ndarray
    embedding: Optional[np.ndarray] = field(default=None)
    attack_score: Optional[float] = None

    def encoded(self) -> np.ndarray:
        """The image embedding [E]: set by `_encode` on every item that reaches scoring and answering."""
        if self.embedding is None:
            raise RuntimeError(f"request {self.index} reached the head without an embedding")
        return self.embedding


def outcome_of(error: Optional[ClipshieldError]) -> str:
    """Label of `clipshield_requests_total` for a result."""
    if error is None:
        return "ok"
    for cls, name in ((PayloadTooLarge, "too_large"), (UnsupportedMediaType, "unsupported_media"), (BadInput, "bad_input")):
        if isinstance(error, cls):
            return name
    return "error"


def _load_array(path: Path) -> np.ndarray:
    """float32 array from a bundle .npy; never unpickles (a pickled object array is refused)."""
    try:
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    except ValueError as exc:
        raise ModelLoadError(f"{path.name} is not a plain numeric array (pickled objects are refused)") from exc


class ClipshieldService:
    """Zero-shot classification with optional purification over an exported bundle."""

    def __init__(self, folder: Path, config: ServingConfig, metrics: MetricsSink) -> None:
        self.folder = folder
        self.config = config
        self.metrics = metrics
        self.bundle_info = read_bundle_info(folder)  # first: a bundle of another format is refused before anything else
        if config.verify_checksums:
            B.verify_manifest(folder)
            B.check_vocab(folder)
        self.record = ModelRecord.model_validate_json((folder / B.RECORD).read_text())
        self.card = B.read_card(folder)
        self.labels = B.LabelSet.model_validate_json((folder / B.LABELS).read_text())
        self.head = _load_array(folder / B.TEXT_HEAD)
        self.anchor = _load_array(folder / B.ANCHOR)
        self.image_encoder: OnnxEncoder = served_image_encoder(folder, self.card.precision, config.runtime)
        self.text_encoder: OnnxEncoder = text_encoder(folder / B.TEXT_ONNX, config.runtime)
        self.tokenizer = create_tokenizer(self.record.tokenizer, B.vocab_file(folder))  # the bundle's own vocabulary
        self.heads: HeadCache[np.ndarray] = HeadCache(config.label_cache_size)
        self.info = ModelInfo(name=self.card.name, version=self.card.version)
        self.scorer = self._attack_scorer()  # the one detector; None: nothing is flagged
        for value, labels in gauge_samples(self.card):
            metrics.set_gauge("clipshield_model_accuracy", value, labels)
        metrics.set_gauge("clipshield_runtime_info", 1.0, self.runtime_labels())
        log.info(
            "loaded %s %s from %s (%d default labels; bundle format %d, exported by clipshield %s; on %s)",
            self.info.name,
            self.info.version,
            folder,
            len(self.labels.classnames),
            self.bundle_info.format_version,
            self.bundle_info.exported_by.clipshield_version,
            self.image_encoder.provider,
        )

    def _attack_scorer(self) -> Optional[NumpyAttackScorer]:
        """The card's calibrated attack score over the image encoder; None without one (ModelLoadError when the
        serving config turns it on by default, or the card's score needs what a bundle does not carry)."""
        cal = self.card.attack_score
        if cal is None:
            if self.config.attack_score.default:
                raise ModelLoadError(
                    "the serving config turns the attack score on by default, but the model card has no "
                    "calibrated attack score (export with `clipshield export --calibrate-score N`)"
                )
            return None
        try:
            return NumpyAttackScorer(cal.config, cal.params, self.image_encoder, self.head, self.anchor, self.card.logit_scale)
        except ConfigError as exc:
            raise ModelLoadError(f"the model card's attack score cannot be served from this bundle: {exc}") from exc

    def wants_score(self, options: PredictOptions) -> bool:
        """Whether a request's answer carries the attack score: its `attack_score` field, else the serving default."""
        return self.config.attack_score.default if options.attack_score is None else options.attack_score

    def detects(self, options: PredictOptions) -> bool:
        """Whether the detector runs on a request: always for a score of free signals, else when the score is wanted."""
        return self.scorer is not None and (self.scorer.cfg.is_free or self.wants_score(options))

    def runtime_labels(self) -> dict[str, str]:
        """Labels of the `clipshield_runtime_info` gauge: execution provider, onnxruntime, bundle versions."""
        return {
            "provider": self.image_encoder.provider,
            "onnxruntime": onnxruntime_package(),
            "bundle_format": str(self.bundle_info.format_version),
            "built_by": self.bundle_info.exported_by.clipshield_version,
            "precision": self.card.precision.served,
        }

    def describe(self) -> dict[str, Any]:
        """What is served: model card, default labels and vocabulary, bundle versions, execution providers,
        server version (JSON-able)."""
        runtime = self.config.runtime
        return {
            "model": self.card.model_dump(mode="json", exclude_none=True),  # sections never measured are left out
            # what a request without labels is answered with, and the words labels may use (empty: any text)
            "labels": {"classnames": list(self.labels.classnames), "templates": list(self.labels.templates)},
            "vocabulary": self.tokenizer.known_words(),
            "bundle": self.bundle_info.model_dump(mode="json"),
            "runtime": {
                "image_encoder_provider": self.image_encoder.provider,
                "image_encoder_precision": self.card.precision.served,
                "text_encoder_provider": self.text_encoder.provider,
                "requested_providers": list(runtime.providers),
                "provider_policy": runtime.provider_policy,
                "onnxruntime": onnxruntime_package(),
            },
            "server": {"clipshield_version": package_version()},
        }

    @classmethod
    def from_folder(cls, folder: Path, config: Optional[ServingConfig] = None, metrics: Optional[MetricsSink] = None) -> ClipshieldService:
        return cls(Path(folder), config or ServingConfig(), metrics or NullSink())

    def encode_labels(self, classnames: Sequence[str], templates: Optional[Sequence[str]] = None) -> np.ndarray:
        """Unit-norm zero-shot head [C, E] for `classnames` (prompt ensemble over the default templates).

        BadInput (400, per item) when a label has words the model's vocabulary cannot represent.
        """
        check_known_words(self.tokenizer, classnames)
        tokens = self.tokenizer(ensemble_prompts(classnames, templates or self.labels.templates))
        emb = np.concatenate([self.text_encoder(tokens[i : i + 256]) for i in range(0, len(tokens), 256)])
        return ensemble(emb, len(classnames))

    def head_for(self, labels: Optional[Sequence[str]]) -> tuple[tuple[str, ...], np.ndarray]:
        """(class names, head) for a request: the precomputed default, or a cached custom head."""
        if labels is None or tuple(labels) == self.labels.classnames:
            return self.labels.classnames, self.head
        key = head_key(self.info.name + ":" + self.info.version, labels, self.labels.templates)
        return tuple(labels), self.heads.get_or_build(key, lambda: self.encode_labels(labels))

    def _decode(self, index: int, request: RawRequest) -> _Item:
        start = time.perf_counter()
        image, options = parse_request(request.parts, request.content_type, self.config.requests)
        if options.attack_score and self.scorer is None:
            raise BadInput("this model has no calibrated attack score: field 'attack_score' must be false or left out")
        pixels = load_pixels(image, self.record.preprocess, self.config.decode)
        self.metrics.observe("clipshield_decode_seconds", time.perf_counter() - start)
        return _Item(index, options, pixels)

    def _answer(self, item: _Item) -> PredictResponse:
        opts = item.options
        start = time.perf_counter()
        classnames, head = self.head_for(opts.labels)
        e = purify_np.normalize(item.encoded()[None, :])
        base = purify_np.logits(e, head, self.card.logit_scale)
        self.metrics.observe("clipshield_head_seconds", time.perf_counter() - start)
        anchor_score = float(purify_np.cosine(e, self.anchor)[0])
        self.metrics.observe("clipshield_anchor_score", anchor_score)
        defaults = self.card.purify
        purified = defaults.enabled if opts.purify is None else opts.purify
        final, shift = base, 0.0
        if purified:
            start = time.perf_counter()
            p = purify_np.purify(e, self.anchor, defaults.steps, defaults.step_size)
            final = purify_np.logits(p, head, self.card.logit_scale)
            self.metrics.observe("clipshield_purify_seconds", time.perf_counter() - start)
            shift = purify_np.prediction_shift(purify_np.softmax(base)[0], purify_np.softmax(final)[0])
            self.metrics.observe("clipshield_prediction_shift", shift)
        probs = purify_np.softmax(final)[0]
        flipped = bool(np.argmax(base[0]) != np.argmax(final[0]))
        if flipped:
            self.metrics.increment("clipshield_flipped_total")
        score = self._score_result(item)
        flagged = score is not None and score.flagged
        k = min(opts.top_k or self.config.requests.default_top_k, len(classnames))
        order = np.argsort(-probs, kind="stable")[:k]
        return PredictResponse(
            predictions=[Prediction(label=classnames[i], score=float(probs[i])) for i in order],
            purified=purified,
            anchor_score=anchor_score,
            prediction_shift=shift,
            flipped=flipped,
            flagged=flagged,
            model=self.info,
            attack_score=score if self.wants_score(opts) else None,
        )

    def _score_result(self, item: _Item) -> Optional[AttackScoreResult]:
        """The detector's result for an item scored in `_score` (None when it did not run), recorded in metrics."""
        if item.attack_score is None or self.scorer is None:
            return None
        threshold = self.scorer.params.threshold
        flagged = item.attack_score > threshold
        self.metrics.observe("clipshield_attack_score", item.attack_score)
        if flagged:
            self.metrics.increment("clipshield_flagged_total")
        return AttackScoreResult(score=item.attack_score, threshold=threshold, flagged=flagged)

    def predict(self, requests: Sequence[RawRequest]) -> list[Result]:
        """One result per request, in order: a response, or the ClipshieldError for that item alone."""
        results: list[Optional[Result]] = [None] * len(requests)
        items: list[_Item] = []
        for i, req in enumerate(requests):
            try:
                items.append(self._decode(i, req))
            except ClipshieldError as exc:
                results[i] = exc
            except Exception as exc:
                log.exception("unexpected error decoding request %d", i)
                results[i] = ClipshieldError(f"internal error decoding the request ({type(exc).__name__})")
        if items:
            self._encode(items, results)
            self._score(items, results)
        for item in items:
            if results[item.index] is not None:
                continue
            try:
                results[item.index] = self._answer(item)
            except ClipshieldError as exc:
                results[item.index] = exc
            except Exception as exc:
                log.exception("unexpected error answering request %d", item.index)
                results[item.index] = ClipshieldError(f"internal error ({type(exc).__name__})")
        final: list[Result] = [r if r is not None else ClipshieldError("internal error: request left unanswered") for r in results]
        for r in final:
            error = r if isinstance(r, ClipshieldError) else None
            self.metrics.increment("clipshield_requests_total", labels={"outcome": outcome_of(error)})
        return final

    def _encode(self, items: list[_Item], results: list[Optional[Result]]) -> None:
        """Image embeddings of the decoded items, one encoder call for the batch."""
        emb = self._timed_batch(
            items,
            results,
            "image encoder",
            "clipshield_encode_seconds",
            lambda: self.image_encoder(np.stack([it.pixels for it in items]).astype(np.float32)),
        )
        if emb is not None:
            for it, row in zip(items, emb):
                it.embedding = row

    def _score(self, items: list[_Item], results: list[Optional[Result]]) -> None:
        """Detector scores of the encoded items it runs on (`detects`), in one pass over their squeezed or noisy copies."""
        wanted = [it for it in items if results[it.index] is None and self.detects(it.options)]
        scorer = self.scorer
        if not wanted or scorer is None:
            return
        seed = self.config.attack_score.seed
        scores = self._timed_batch(
            wanted,
            results,
            "attack score",
            "clipshield_attack_score_seconds",
            lambda: scorer.score(
                np.stack([it.pixels for it in wanted]).astype(np.float32), np.stack([it.encoded() for it in wanted]), seed
            ),
        )
        if scores is not None:
            for it, value in zip(wanted, scores):
                it.attack_score = float(value)

    def _timed_batch(
        self, items: list[_Item], results: list[Optional[Result]], stage: str, metric: str, run: Callable[[], np.ndarray]
    ) -> Optional[np.ndarray]:
        """`run()` timed into `metric`; on failure every item of the batch gets an internal error naming `stage`
        (logged with its traceback) and None comes back, so one bad batch never takes the worker down."""
        start = time.perf_counter()
        try:
            out = run()
        except Exception as exc:
            log.exception("%s failed on a batch of %d", stage, len(items))
            for it in items:
                results[it.index] = ClipshieldError(f"internal error in the {stage} ({type(exc).__name__})")
            return None
        self.metrics.observe(metric, time.perf_counter() - start)
        return out
