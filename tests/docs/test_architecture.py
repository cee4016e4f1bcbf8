"""The code cites docs/architecture.md by section; every citation must name a section that exists, and the
repository cites no document it does not hold."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
CITATION = re.compile(r"docs/architecture\.md, ([A-Z][A-Za-z -]*[a-z])")
FOREIGN_SECTION = re.compile(r"DESIGN" + r" §")


def sources() -> list[Path]:
    return [
        path
        for folder in ("src", "tests", "benchmarks", "scripts", "examples")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".sh", ".md", ".yaml") and path.is_file()
    ]


def test_every_citation_names_a_section() -> None:
    headings = set(re.findall(r"^#{2,3} (.+)$", ARCHITECTURE.read_text(), flags=re.MULTILINE))
    cited = {(path.relative_to(ROOT), section) for path in sources() for section in CITATION.findall(path.read_text())}
    assert cited, "the code cites the architecture document"
    assert [(str(path), section) for path, section in sorted(cited) if section not in headings] == []


def test_no_citation_of_a_document_outside_the_repository() -> None:
    assert [str(path.relative_to(ROOT)) for path in sources() if FOREIGN_SECTION.search(path.read_text())] == []
