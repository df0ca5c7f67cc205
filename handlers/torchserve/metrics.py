"""`clipshield.service.metrics.MetricsSink` over TorchServe's metrics cache (kept out of the handler module:
TorchServe requires exactly one class in the handler file)."""

from __future__ import annotations

import logging
from typing import Any, Optional

from ts.metrics.metric_type_enum import MetricTypes

from clipshield.service.metrics import HANDLER_DIMENSIONS, METRICS, unit_of

log = logging.getLogger(__name__)

_TYPES = {"histogram": MetricTypes.HISTOGRAM, "counter": MetricTypes.COUNTER, "gauge": MetricTypes.GAUGE}


class TorchServeSink:
    """`clipshield.service.metrics.MetricsSink` over TorchServe's metrics cache (dimensions: ModelName, Level, labels)."""

    def __init__(self, metrics_cache: Any, model_name: str) -> None:
        self.model_name = model_name
        self._metrics = {}
        for name, (kind, _help, labels) in METRICS.items():
            self._metrics[name] = metrics_cache.add_metric_to_cache(
                metric_name=name, unit=unit_of(name), dimension_names=[*HANDLER_DIMENSIONS, *labels], metric_type=_TYPES[kind]
            )

    def _emit(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        label_names = METRICS[name][2]
        values = [self.model_name, "Model", *[(labels or {})[k] for k in label_names]]
        try:
            self._metrics[name].add_or_update(float(value), values)
        except Exception:
            log.warning("could not record metric %s", name, exc_info=True)

    observe = _emit
    set_gauge = _emit

    def increment(self, name: str, value: float = 1.0, labels: Optional[dict[str, str]] = None) -> None:
        self._emit(name, value, labels)
