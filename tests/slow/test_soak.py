"""The soak (`make soak`): 10 minutes of moderate load per runtime (CLIPSHIELD_SOAK_MINUTES to change it).

Two clients, one PNG request each then 20 ms of think time, on the mini-world bundle. Passes with 0
failed requests, the server's resident memory (whole process tree) grown <= 10 % from the first
2-minute window after a 1-minute warm-up to the last one, and p95 latency drifted <= 20 % between them.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.parametrize("runtime", ["kserve", "torchserve"])
def test_soak(runtime):
    if runtime == "torchserve" and shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17+ on PATH")
    if runtime == "kserve":
        pytest.importorskip("kserve")
    from tests.load.soak import SoakConfig, run_soak

    summary = run_soak(SoakConfig(runtime=runtime, minutes=float(os.environ.get("CLIPSHIELD_SOAK_MINUTES", "10"))))
    print(summary)
    assert summary["requests"] > 0 and not summary["problems"], summary
