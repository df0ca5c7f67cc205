"""Evaluation across processes: 1 process vs `torchrun --nproc_per_node 2`, same cells (run on demand).

    python benchmarks/bench_eval_scaling.py [--limit 512] [--steps 20] [--threads 1]

Each process gets `--threads` torch threads, so 2 processes use twice the cores of 1; the scaling
efficiency is t1 / (2 * t2) (1.0 = perfect). Both runs evaluate the same PGD cell of the shipped
mini-world model into separate folders, and the script checks that the two cells agree exactly.
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def cell(folder: Path) -> dict:
    (path,) = list((folder / "cells").glob("*.json"))
    data = json.loads(path.read_text())
    return {"n": data["n"], "clean": data["clean"], "robust": data["robust"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=512, help="images (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    args = p.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    common = [
        "evaluate",
        "--model",
        "miniworld",
        "--datasets",
        "miniworld/plain/color_shape/seen",
        "--attacks",
        "pgd",
        "--eps",
        "4",
        "--steps",
        str(args.steps),
        "--limit",
        str(args.limit),
        "--batch-size",
        str(args.batch_size),
        "--device",
        "cpu",
        "--stop",
        "final",
    ]  # every image runs every step: the compute scales, not the early exits
    one = [sys.executable, "-m", "clipshield.cli.main", *common, "--out", str(out / "one")]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "clipshield.cli.main",
        *common,
        "--out",
        str(out / "two"),
    ]
    t1, t2 = timed(one, args.threads), timed(two, args.threads)
    same = cell(out / "one") == cell(out / "two")
    print(f"PGD-{args.steps} eps 4/255 on {args.limit} mini-world images, batch {args.batch_size}, {args.threads} thread(s) per process")
    print(f"1 process : {t1:7.1f} s")
    print(f"2 processes: {t2:7.1f} s   speed-up {t1 / t2:.2f}x, scaling efficiency {t1 / (2 * t2):.2f}")
    print(f"cells identical: {same}  {cell(out / 'one')}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
