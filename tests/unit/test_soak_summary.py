"""The soak's pass criteria (tests/load/soak.py `summarize`) on synthetic traffic: 0 errors, RSS growth <= 10 %
and p95 drift <= 20 % between the first window after warm-up and the last one. The soak itself is slow
(tests/slow/test_soak.py); here each criterion is shown to fail when it should and only then."""

from __future__ import annotations

import pytest

from tests.load.soak import SoakConfig, summarize

CFG = SoakConfig(minutes=5, warmup_s=60, window_s=60, sample_s=5)
DURATION = 300.0


def traffic(late_latency: float = 0.010, errors_at: tuple[float, ...] = ()) -> list[tuple[float, float, int]]:
    """One request every 0.1 s: 10 ms each (late_latency after 240 s); status 0 at the given send times."""
    out = []
    for i in range(int(DURATION * 10)):
        sent = i / 10
        out.append((sent, late_latency if sent >= 240 else 0.010, 0 if sent in errors_at else 200))
    return out


def memory(late_mb: float = 200.0, warmup_mb: float = 400.0) -> list[tuple[float, float]]:
    """An RSS sample every 5 s: `warmup_mb` during warm-up (ignored), 200 MB after, `late_mb` in the last window."""
    mb = lambda t: warmup_mb if t < 60 else (late_mb if t >= 240 else 200.0)  # noqa: E731
    return [(float(t), mb(t) * 2**20) for t in range(0, int(DURATION) + 1, 5)]


def test_flat_traffic_passes_and_warmup_is_ignored():
    out = summarize(CFG, traffic(), memory(), DURATION)
    assert out["problems"] == [] and out["errors"] == 0 and out["requests"] == 3000
    assert out["rss_growth"] == 0.0 and out["p95_drift"] == 0.0 and out["rss_first_window_mb"] == 200.0


@pytest.mark.parametrize(
    "late_mb,late_ms,errors,problem",
    [
        (221.0, 10, (), "RSS grew 10.5%"),
        (200.0, 12.5, (), "p95 drifted 25.0%"),
        (200.0, 10, (150.0,), "1 failed requests"),
    ],
)
def test_each_criterion_fails_alone(late_mb, late_ms, errors, problem):
    out = summarize(CFG, traffic(late_ms / 1000, errors), memory(late_mb), DURATION)
    assert out["problems"] == [next(p for p in out["problems"] if p.startswith(problem))], out["problems"]


def test_limits_are_inclusive():
    out = summarize(CFG, traffic(0.0119), memory(219.0), DURATION)
    assert out["problems"] == [] and 0.09 < out["rss_growth"] <= 0.10 and 0.18 < out["p95_drift"] <= 0.20
