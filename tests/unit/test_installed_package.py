"""Nothing in the installed package reads a file from the source checkout (issue 24): every path a product
module builds from its own `__file__` stays inside the `clipshield` package. A wheel has no `model_store/`,
`k8s/` or `monitoring/`; what a module needs from beside it ships as package data (pyproject.toml).

Fast: it parses the source with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.layout import PACKAGES, REPO


def escaping_paths(root: Path, path: Path) -> list[str]:
    """`file:line` of each `<...>.parents[N]` / `.parent.parent...` on `__file__` that reaches the root (`root`):
    in a checkout that is the repository (model_store/, k8s/), installed it is `clipshield/`, so such a path
    finds different files in the two."""
    depth = len(path.relative_to(root).parts) - 1  # folders between the package root and the module
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.expr) or not any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node)):
            continue
        up = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            up = node.slice.value + 1 if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int) else None
        elif isinstance(node, ast.Attribute) and node.attr == "parent":
            up, inner = 1, node.value
            while isinstance(inner, ast.Attribute) and inner.attr == "parent":
                up, inner = up + 1, inner.value
        if up is not None and up > depth:  # `up` folders above the file; `depth` reaches the root: in a checkout, the repository
            out.append(f"{path.relative_to(root)}:{node.lineno}")
    return out


def test_no_module_reaches_outside_the_package():
    found = [hit for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py")) for hit in escaping_paths(REPO, p)]
    assert not found, f"paths built from __file__ that leave the installed package: {found}"


def test_the_check_sees_an_escape(tmp_path):
    module = tmp_path / "handlers" / "torchserve" / "launcher.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from pathlib import Path\n"
        "OK = Path(__file__).resolve().parents[1] / 'x'\n"
        "STORE = Path(__file__).resolve().parents[2] / 'model_store'\n"
        "ALSO = Path(__file__).parent.parent.parent / 'k8s'\n"
    )
    assert escaping_paths(tmp_path, module) == ["handlers/torchserve/launcher.py:3", "handlers/torchserve/launcher.py:4"]
