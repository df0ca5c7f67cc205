"""`make venv TORCH_INDEX_URL=...` takes the torch pair from that index (docs/development.md: CPU-only venv).

Read from `make -n` (prints the recipe, runs nothing): the default installs the pinned pair from pip's
configured indexes, the knob adds `--index-url` to that one command only, and a venv built from another
index gets another install stamp, so switching the knob rebuilds instead of reusing the old venv.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _recipe(tmp_path: Path, *overrides: str) -> list[str]:
    cmd = ["make", "-n", "-C", str(REPO), "venv", f"VENV={tmp_path / 'venv'}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()


def _pip_installs(lines: list[str]) -> list[str]:
    return [line for line in lines if " -m pip install " in line]


def test_default_takes_torch_from_the_configured_indexes(tmp_path: Path) -> None:
    installs = _pip_installs(_recipe(tmp_path))
    (torch_line,) = [line for line in installs if "torch==" in line]
    assert "--index-url" not in " ".join(installs)
    assert re.search(r"torch==\S+ torchvision==\S+$", torch_line)


def test_knob_sets_the_index_of_the_torch_pair_only(tmp_path: Path) -> None:
    installs = _pip_installs(_recipe(tmp_path, f"TORCH_INDEX_URL={CPU_INDEX}"))
    with_index = [line for line in installs if "--index-url" in line]
    assert len(with_index) == 1 and f'--index-url "{CPU_INDEX}" torch==' in with_index[0]


def test_knob_changes_the_install_stamp(tmp_path: Path) -> None:
    def stamp(lines: list[str]) -> str:
        return next(line.split()[-1] for line in lines if line.startswith("touch "))

    assert stamp(_recipe(tmp_path)) != stamp(_recipe(tmp_path, f"TORCH_INDEX_URL={CPU_INDEX}"))
