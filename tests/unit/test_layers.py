"""The import layers of docs/ARCHITECTURE.md ("Layers"), enforced: every `import` of the product, at module
level or inside a function, goes down the layers or sideways to a peer, never up; `service/` and `handlers/`
import no torch, torchvision, open_clip, torchattacks or onnx, not even lazily; and no two modules import
each other, directly or through others (a cycle, lazy imports included).

Fast: it parses source with `ast` and imports nothing of the product.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tests.layout import PACKAGES

REPO = Path(__file__).resolve().parents[2]

# The layers, bottom first; a package imports its own layer (its peers) and the layers below it.
RANKS: tuple[tuple[str, ...], ...] = (
    ("service",),
    ("models",),
    ("datasets", "attacks"),
    ("training", "evaluation"),
    ("experiments",),
    ("export",),
    ("cli",),
)
# handlers/ sits beside the stack: it imports service/ only (a server never loads the offline side), and
# only export/ (the demo's serving path) and cli/ import it.
HANDLERS_IMPORT = frozenset({"service"})
IMPORTS_HANDLERS = frozenset({"export", "cli"})
# Packages a server process must never load: the serving install (`.[serve-kserve]`) has none of them.
HEAVY = frozenset({"torch", "torchvision", "torchaudio", "open_clip", "torchattacks", "onnx"})
TORCH_FREE = frozenset({"service", "handlers"})


def allowed(importer: str, imported: str) -> bool:
    """True when package `importer` may import package `imported` (both top-level folder names)."""
    if importer == imported:
        return True
    if importer == "handlers":
        return imported in HANDLERS_IMPORT
    if imported == "handlers":
        return importer in IMPORTS_HANDLERS
    rank = {pkg: i for i, layer in enumerate(RANKS) for pkg in layer}
    return rank[imported] <= rank[importer]


class Import(NamedTuple):
    module: str  # the importing module, dotted (clipshield.models.factory)
    target: str  # the imported module, dotted, resolved to a submodule where `from pkg import sub` names one
    path: str  # repository-relative file
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["clipshield", *parts])


def product_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the product folders under `root`."""
    return {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py")) if "__pycache__" not in p.parts}


def _from_target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(root: Path, packages: tuple[str, ...] = PACKAGES) -> Iterator[Import]:
    """Every import statement of the product (any depth: module level, functions, TYPE_CHECKING blocks)."""
    files = product_files(root, packages)
    for module, path in files.items():
        rel, is_package = path.relative_to(root).as_posix(), path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                yield from (Import(module, alias.name, rel, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _from_target(module, is_package, node)
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files]
                if len(subs) < len(node.names):
                    yield Import(module, target, rel, node.lineno)
                yield from (Import(module, sub, rel, node.lineno) for sub in subs)


def layer_violations(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """`file:line: a -> b (x imports y)` for every import that goes up a layer or loads torch where it must not."""
    out = []
    for imp in imports_of(root, packages):
        importer, top = imp.module.split(".")[1], imp.target.split(".")[0]
        if top == "clipshield":
            imported = imp.target.split(".")[1]
            if not allowed(importer, imported):
                out.append(f"{imp.path}:{imp.line}: {importer} -> {imported} ({imp.module} imports {imp.target})")
        elif importer in TORCH_FREE and top in HEAVY:
            out.append(f"{imp.path}:{imp.line}: {importer} imports {imp.target} (service/ and handlers/ are torch-free)")
    return out


def import_cycles(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Groups of product modules that import each other (strongly connected components of the import
    graph, lazy imports included), each sorted; empty when the graph has no cycle."""
    graph: dict[str, set[str]] = {m: set() for m in product_files(root, packages)}
    for imp in imports_of(root, packages):
        if imp.target in graph and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph has ~150 nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_every_import_goes_down_the_layers():
    found = layer_violations(REPO)
    assert not found, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(found)


def test_no_import_cycles():
    cycles = import_cycles(REPO)
    assert not cycles, "modules importing each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_every_package_has_a_layer():
    assert {pkg for layer in RANKS for pkg in layer} | {"handlers"} == set(PACKAGES)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_sees_bad_imports_and_cycles(tmp_path):
    root = _tree(
        tmp_path,
        {
            "service/__init__.py": "",
            "service/a.py": "def f():\n    import torch\n",  # lazy torch in service
            "models/__init__.py": "",
            "models/b.py": "from clipshield.service import a\nfrom . import c\n",
            "models/c.py": "def g():\n    from clipshield.models.b import x\n",  # lazy cycle b <-> c
            "handlers/__init__.py": "",
            "handlers/h.py": "from clipshield.models import b\n",  # handlers import service only
            "cli/__init__.py": "",
            "cli/m.py": "from clipshield.handlers.h import y\nfrom clipshield.models.b import z\n",
        },
    )
    packages = ("service", "models", "handlers", "cli")
    assert layer_violations(root, packages) == [
        "service/a.py:2: service imports torch (service/ and handlers/ are torch-free)",
        "handlers/h.py:1: handlers -> models (clipshield.handlers.h imports clipshield.models.b)",
    ]
    assert import_cycles(root, packages) == [["clipshield.models.b", "clipshield.models.c"]]
    assert not allowed("models", "datasets") and allowed("attacks", "datasets") and allowed("evaluation", "training")
