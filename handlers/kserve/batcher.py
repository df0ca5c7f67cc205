"""Cross-request micro-batching for the KServe Python model server (`--max-batch-size`; 1 turns it off).

kserve's own batcher is the Go agent sidecar of an InferenceService (`spec.predictor.batcher`), which runs
only in a cluster; the Python `kserve` package (0.21) answers each request on its own. So this small
asyncio batcher does what TorchServe's frontend does: requests are queued, and the queue is flushed when it
holds `max_batch_size` images or `max_batch_delay_ms` after its first request arrived. A flush is one
`ClipshieldService.predict` call over every queued image (THE predict path of a client-sent `[N]` batch),
whose per-item results go back to the request each came from: an item's error is its own, its batch mates
are answered, and a failing flush fails each of its requests (nothing waits forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.service.errors import ClipshieldError
from clipshield.service.inference import ClipshieldService, RawRequest, Result

log = logging.getLogger(__name__)

# The shipped defaults, chosen from the measured curves (docs/serving.md, "Batching by measurement").
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_DELAY_MS = 2.0


class KServeBatchingConfig(StrictModel):
    """Cross-request batching of the KServe server: `max_batch_size` 1 turns it off (each request on its own)."""

    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=64)
    max_batch_delay_ms: float = Field(default=DEFAULT_MAX_BATCH_DELAY_MS, ge=0, le=1000)

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass
class _Queued:
    service: ClipshieldService
    requests: Sequence[RawRequest]
    future: asyncio.Future


Predict = Callable[[ClipshieldService, list[RawRequest]], list[Result]]


def _predict(service: ClipshieldService, requests: list[RawRequest]) -> list[Result]:
    return service.predict(requests)


class MicroBatcher:
    """Queue of requests flushed by size or delay; `submit` answers one request's items, in order."""

    def __init__(self, config: KServeBatchingConfig, predict: Predict = _predict) -> None:
        self.config = config
        self._predict = predict
        self._queue: list[_Queued] = []
        self._items = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._flushes: set[asyncio.Task] = set()

    async def submit(self, service: ClipshieldService, requests: Sequence[RawRequest]) -> list[Result]:
        """Results of `requests` (one per item), computed in a flush shared with other requests."""
        loop = asyncio.get_running_loop()
        queued = _Queued(service, requests, loop.create_future())
        self._queue.append(queued)
        self._items += len(requests)
        if self._items >= self.config.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.config.max_batch_delay_ms / 1e3, self._flush)
        return await queued.future

    def _flush(self) -> None:
        """Hand every queued request to one predict run (in the default executor) and start a new queue."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue, self._items = self._queue, [], 0
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._flushes.add(task)  # a reference until done: the loop keeps only weak ones
            task.add_done_callback(self._flushes.discard)

    async def _run(self, batch: list[_Queued]) -> None:
        """One predict call per served model in the batch (one, unless the model was switched meanwhile)."""
        for service in {id(q.service): q.service for q in batch}.values():
            mates = [q for q in batch if q.service is service]
            requests = [r for q in mates for r in q.requests]
            try:
                results = await asyncio.get_running_loop().run_in_executor(None, self._predict, service, requests)
                if len(results) != len(requests):
                    raise RuntimeError(f"predict answered {len(results)} of {len(requests)} items")
            except Exception as exc:  # a bug, not bad input: every request of the flush gets the error
                log.exception("a batch of %d items failed", len(requests))
                for q in mates:
                    if not q.future.done():
                        q.future.set_exception(ClipshieldError(f"internal error in a server batch ({type(exc).__name__})"))
                continue
            start = 0
            for q in mates:
                if not q.future.done():  # a client that went away leaves a cancelled future
                    q.future.set_result(results[start : start + len(q.requests)])
                start += len(q.requests)
