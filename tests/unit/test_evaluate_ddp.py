"""`torchrun --nproc_per_node 2 ... clipshield evaluate` (gloo, CPU) gives exactly the single-process cells."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from clipshield.cli.main import main

from .test_finetune_ddp import TORCHRUN, free_port

REPO = Path(__file__).resolve().parents[2]


def cells(folder: Path) -> dict[str, dict]:
    """Cell file name -> (n, clean, robust, worst case) of every cell in `folder`."""
    out = {}
    for path in sorted((folder / "cells").glob("*.json")):
        data = json.loads(path.read_text())
        out[path.name] = {
            "n": data["n"],
            "clean": data["clean"],
            "robust": data["robust"],
            "worst": (data.get("adaptive") or {}).get("worst_case"),
        }
    return out


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed")
@pytest.mark.parametrize("extra", [[], ["--purify", "--purify-steps", "2", "--purify-step-size", "0.5"]], ids=["pgd", "purified"])
def test_two_gloo_processes_give_the_single_process_cells(tmp_path, extra):
    # batch 8 over 24 images: 3 batches, so the two ranks take unequal shares (2 and 1)
    args = [
        "evaluate",
        "--model",
        "miniworld",
        "--datasets",
        "miniworld/plain/shape/seen",
        "--attacks",
        "pgd",
        "--eps",
        "4",
        "--steps",
        "3",
        "--limit",
        "24",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        str(TORCHRUN),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "clipshield.cli.main",
        *args,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = cells(tmp_path / "one"), cells(tmp_path / "two")
    assert one and one == two  # same cell files (same keys), same numbers
    assert next(iter(one.values()))["n"] == 24
