"""`pip install .` installs one top-level import package, `clipshield` (issue 16, Packaging).

Every product folder (tests/layout.py) ships as `clipshield.<folder>` (pyproject's `package-dir`). The wheel test builds the real wheel offline
(`pip wheel --no-deps --no-build-isolation` on a copy of the sources, a few seconds) and reads its file
list: the only top-level names are `clipshield` and the dist-info, and every source and data file of the
product folders is in it (a folder missing from pyproject's explicit `packages` list fails here). The
import test keeps old-style imports (`from service.x import`, `-m training.cli`) from creeping back: with
the repository root on sys.path they would still import, as a second copy of every module.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.layout import PACKAGES

REPO = Path(__file__).resolve().parents[2]
ROOTS = PACKAGES
SOURCES = ("pyproject.toml", "README.md", *ROOTS)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _shipped_files() -> set[str]:
    """Files of the product folders that the wheel must carry, as wheel paths (`clipshield/service/x.py`)."""
    out = set()
    for root in ROOTS:
        for path in (REPO / root).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.add("clipshield/" + path.relative_to(REPO).as_posix())
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=IGNORED)
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        str(out),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = out.glob("clipshield-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_has_one_top_level_package(wheel_names: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_names if not re.match(r"clipshield-[^/]+\.(dist-info|data)/", name)}
    assert tops == {"clipshield"}
    assert "clipshield/__init__.py" not in wheel_names  # an implicit namespace: nothing of its own to ship


def test_wheel_carries_every_source_and_data_file(wheel_names: list[str]) -> None:
    missing = sorted(_shipped_files() - set(wheel_names))
    assert not missing, f"not in the wheel (add the folder to [tool.setuptools] packages): {missing[:10]}"


def test_console_script_points_into_the_namespace(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert re.search(r"^clipshield = clipshield\.cli\.main:main$", text, re.MULTILINE), text


def _old_style_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ROOTS]
    return found


def test_no_import_bypasses_the_namespace() -> None:
    files = [p for p in REPO.rglob("*.py") if not {".venv", "build", "__pycache__"} & set(p.relative_to(REPO).parts)]
    found = [hit for path in files for hit in _old_style_imports(path)]
    assert not found, f"import via the namespace (clipshield.<folder>...): {found[:10]}"


def test_no_module_path_bypasses_the_namespace() -> None:
    pattern = re.compile(r"-m\s+\"?(service|training|handlers)\.|\"-m\", \"(service|training|handlers)\.")
    texts = [
        "Makefile",
        "Dockerfile",
        "README.md",
        *(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")),
        *(str(p.relative_to(REPO)) for p in (REPO / "k8s").rglob("*.yaml")),
    ]
    found = [
        f"{name}:{n}"
        for name in texts
        if (REPO / name).is_file()
        for n, line in enumerate((REPO / name).read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"`python -m` paths must start with clipshield.: {found[:10]}"
