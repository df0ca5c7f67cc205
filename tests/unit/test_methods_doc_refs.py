"""Every `methods.md §N` cited in code or docs names a section that docs/methods.md has, and nothing
cites the method specification outside the repository (a reader could not open it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITE = re.compile(r"methods\.md §(\d+(?:\.\d+)?)((?:(?:, | / |/|-)§?\d+(?:\.\d+)?)*)")


def _sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / f for f in out.split() if not f.startswith("tests/data/") and (REPO / f).is_file()]


def _sections() -> set[str]:
    heads = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", (REPO / "docs" / "methods.md").read_text(), flags=re.M)
    return set(heads)


def test_cited_sections_exist():
    sections = _sections()
    assert {"0.2", "0.7", "3.1", "7.3", "11.4"} <= sections
    cited: dict[str, set[str]] = {}
    for path in _sources():
        for first, rest in CITE.findall(path.read_text()):
            for number in [first, *re.findall(r"\d+(?:\.\d+)?", rest)]:
                cited.setdefault(number, set()).add(str(path.relative_to(REPO)))
    assert len(cited) > 20
    missing = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert not missing, f"cited sections not in docs/methods.md: {missing}"


def test_no_reference_to_the_unshipped_specification():
    pattern = re.compile("shared" + r"/spec/|\bspec (?:§|section|\d)")
    found = [str(p.relative_to(REPO)) for p in _sources() if pattern.search(p.read_text())]
    assert not found, found
