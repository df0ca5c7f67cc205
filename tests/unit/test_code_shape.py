"""The project's size rules, checked on every module of the product (not tests, benchmarks or scripts):
no module over 400 lines, no function over 60 lines; and every package-data pattern ships a file.

Fast: it parses source with `ast`, imports nothing of the product.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.layout import PACKAGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python is >= 3.10; tomllib is 3.11+
    tomllib = pytest.importorskip("tomli", reason="on Python 3.10 the package-data check reads pyproject.toml with tomli")

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def product_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`name (first line, length)` of every function or method in `path` longer than `limit` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [f"{node.name} (line {node.lineno}, {_lines(node)} lines)" for node in functions if _lines(node) > limit]


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Source lines of a parsed function (`end_lineno` is always set by `ast.parse`)."""
    return (node.end_lineno or node.lineno) - node.lineno + 1


def test_the_checker_sees_every_package_and_measures_functions(tmp_path):
    assert {p.relative_to(REPO).parts[0] for p in product_modules()} == set(PACKAGES)
    sample = tmp_path / "sample.py"
    sample.write_text("def short():\n    return 1\n\n\nclass A:\n    def long(self):\n" + "        x = 1\n" * 60 + "        return x\n")
    assert long_functions(sample) == ["long (line 6, 62 lines)"]


def test_no_module_over_400_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in product_modules()}
    assert not {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES}, "split these modules by concern"


def test_no_function_over_60_lines():
    found = {str(p.relative_to(REPO)): long_functions(p) for p in product_modules()}
    assert not {k: v for k, v in found.items() if v}, "split these functions"


SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


@pytest.mark.parametrize(
    "package, pattern", [(pkg, pattern) for pkg, patterns in SETUPTOOLS["package-data"].items() for pattern in patterns]
)
def test_every_package_data_pattern_matches_a_file(package, pattern):
    dirs = SETUPTOOLS.get("package-dir", {})
    top = max((name for name in dirs if package == name or package.startswith(name + ".")), key=len, default=None)
    folder = REPO / (dirs[top] + package[len(top) :].replace(".", "/") if top else package.replace(".", "/"))
    assert any(p.is_file() for p in folder.glob(pattern)), f"{package}: {pattern} matches nothing"
