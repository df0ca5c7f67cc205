"""`benchmarks/bench_batching.py` end to end on a tiny grid (KServe only: no JVM start), in its own process
because the script's locust patches the standard library with gevent: it serves, measures every point, prints
the table and the rule's choice, writes the plot and the points, and exits 0 only when every answer was a 200."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_sweep_prints_the_table_and_the_default(tmp_path):
    points, plot = tmp_path / "points.json", tmp_path / "curves.png"
    grid = ["--runtimes", "kserve", "--batches", "1,4", "--delays", "2", "--users", "1,4", "--seconds", "1", "--warmup", "0.5"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_batching.py"), *grid, "--plot", str(plot), "--json", str(points)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    measured = json.loads(points.read_text())
    assert [(p["batch"], p["users"]) for p in measured] == [(1, 1), (1, 4), (4, 1), (4, 4)]
    assert all(p["requests"] > 0 and p["failures"] == 0 and p["p95_ms"] >= p["p50_ms"] > 0 for p in measured)
    assert "| kserve | 4 | 2 | 4 |" in proc.stdout
    assert "kserve default by the rule (slack 1.25): batch " in proc.stdout
    assert plot.stat().st_size > 10_000
