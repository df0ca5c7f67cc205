"""Read locust's CSV statistics into a typed summary and decide pass/fail.

Locust writes `<prefix>_stats.csv` with one row per request name plus an `Aggregated` row; response
times are in milliseconds (locust buckets them to 10 ms above 100 ms, to 100 ms above 1 s).
The server-side view comes from TorchServe's `clipshield_requests_total{outcome}` counter, so an
error the client did not see (or miscounted) still fails the run.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.service.errors import ClipshieldError

AGGREGATED = "Aggregated"
_OUTCOME = re.compile(r'^clipshield_requests_total\{.*?outcome="([^"]+)".*\}\s+([0-9.eE+-]+)$')


class ReportError(ClipshieldError):
    """Locust's output is missing or unreadable."""


class RowStats(StrictModel):
    """One row of locust's stats CSV (times in ms)."""

    name: str
    requests: int = Field(ge=0)
    failures: int = Field(ge=0)
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class LoadSummary(StrictModel):
    """The figures a load run is judged by: the aggregate, each request kind, the server's outcome counts."""

    total: RowStats
    rows: tuple[RowStats, ...]
    server_outcomes: dict[str, float] = Field(default_factory=dict)


def _num(value: str) -> float:
    """Locust writes 'N/A' for percentiles of names without requests."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def _row(rec: dict[str, str]) -> RowStats:
    return RowStats(
        name=rec["Name"],
        requests=int(rec["Request Count"]),
        failures=int(rec["Failure Count"]),
        rps=_num(rec["Requests/s"]),
        p50_ms=_num(rec["50%"]),
        p95_ms=_num(rec["95%"]),
        p99_ms=_num(rec["99%"]),
        max_ms=_num(rec["Max Response Time"]),
    )


def read_stats(csv_prefix: Path, server_outcomes: dict[str, float] | None = None) -> LoadSummary:
    """Summary of `<csv_prefix>_stats.csv`; ReportError when the file or its Aggregated row is missing."""
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.is_file():
        raise ReportError(f"locust wrote no statistics: {path} is missing (see the locust log beside it)")
    with path.open(newline="") as fh:
        rows = [_row(rec) for rec in csv.DictReader(fh)]
    total = [r for r in rows if r.name == AGGREGATED]
    if not total:
        raise ReportError(f"no '{AGGREGATED}' row in {path}")
    return LoadSummary(total=total[0], rows=tuple(r for r in rows if r.name != AGGREGATED), server_outcomes=server_outcomes or {})


def parse_outcomes(metric_lines: Iterable[str]) -> dict[str, float]:
    """{outcome: count} from `clipshield_requests_total{outcome=...}` Prometheus sample lines."""
    counts: dict[str, float] = {}
    for line in metric_lines:
        m = _OUTCOME.match(line.strip())
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0.0) + float(m.group(2))
    return counts


def problems(summary: LoadSummary, max_p95_ms: float) -> list[str]:
    """Reasons the run fails (empty list = pass): no requests, any failure, a server-side error, p95 over the bound."""
    out: list[str] = []
    t = summary.total
    if t.requests == 0:
        out.append("no requests were made")
    if t.failures:
        out.append(f"{t.failures} of {t.requests} requests failed")
    bad = {k: v for k, v in summary.server_outcomes.items() if k != "ok" and v > 0}
    if bad:
        out.append(f"server counted non-ok outcomes {bad}")
    if not t.p95_ms <= max_p95_ms:  # also catches NaN
        out.append(f"p95 {t.p95_ms:.0f} ms above the bound of {max_p95_ms:.0f} ms")
    return out


def format_summary(summary: LoadSummary) -> list[str]:
    """Human-readable lines: the aggregate first, then one line per request kind."""

    def line(r: RowStats) -> str:
        return (
            f"{r.name:32s} {r.requests:7d} req {r.failures:4d} fail {r.rps:8.1f} req/s  "
            f"p50 {r.p50_ms:6.0f}  p95 {r.p95_ms:6.0f}  p99 {r.p99_ms:6.0f}  max {r.max_ms:6.0f} ms"
        )

    lines = [line(summary.total)] + ["  " + line(r) for r in sorted(summary.rows, key=lambda r: r.name)]
    if summary.server_outcomes:
        lines.append(f"server outcomes (clipshield_requests_total): {summary.server_outcomes}")
    return lines
