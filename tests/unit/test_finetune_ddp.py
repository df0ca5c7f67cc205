"""torchrun data parallelism on CPU (gloo, 2 processes) gives the single-process result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipshield.models.checkpoint import load_weights, save_checkpoint
from clipshield.models.factory import from_record
from clipshield.training.finetune import finetune
from clipshield.training.finetune_config import recipe_config
from clipshield.training.pretrain import miniworld_record

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed")
@pytest.mark.parametrize("method", ["tecoa", "tga-zsr"])
def test_two_gloo_ranks_match_one_process(tmp_path, method):
    torch.manual_seed(0)
    record = miniworld_record()
    save_checkpoint(tmp_path / "model", record, from_record(record).clip.state_dict())
    # eps 0 makes the attack a no-op, so the only difference is the split of each batch over ranks;
    # every loss term is a batch mean, so averaging two equal halves gives the full-batch gradient
    # (TGA-ZSR also runs each rank's frozen-model memory over its own share of the data set indices)
    args = [
        "--method",
        method,
        "--model",
        str(tmp_path / "model"),
        "--data-limit",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--lr",
        "0.01",
        "--eps",
        "0",
        "--eval-datasets",
        "--threads",
        "1",
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
        "finetune",
        *args,
        "--output",
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the single process builds its config as the CLI does (the recipe's tuned loss weights included)
    finetune(
        recipe_config(
            method=method,
            model=str(tmp_path / "model"),
            data_limit=16,
            batch_size=8,
            steps=3,
            warmup=1,
            lr=0.01,
            eps=0.0,
            eval_datasets=[],
            threads=1,
            output=tmp_path / "single",
        )
    )
    ddp = load_weights(tmp_path / "ddp" / "final" / "model.safetensors")
    single = load_weights(tmp_path / "single" / "final" / "model.safetensors")
    base = load_weights(tmp_path / "model" / "model.safetensors")
    assert any(not torch.equal(single[k], base[k]) for k in single if k.startswith("visual."))
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4, msg=k)
