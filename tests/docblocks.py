"""The fenced blocks of the README and the docs site, with the marker above each: a test that
runs it (`<!-- run: tests/FILE.py::TEST -->`) or why it cannot run here (`<!-- not run:
REASON -->`). Tests take the blocks they run from here, so a page and its test never drift."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Languages whose blocks are commands or code someone runs (configs, JSON, output are not).
COMMAND_LANGS = frozenset({"sh", "bash", "shell", "console", "sql", "python", "go", "psql"})
MARKER = re.compile(r"^<!-- (run|not run): (.+?) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its page, first line number, language, text and marker."""

    page: Path
    line: int
    lang: str
    text: str
    marker: str | None  # "run" or "not run"
    target: str  # the test (run) or the reason (not run)


def pages() -> list[Path]:
    """The README and every Markdown page of the docs site (generated ones are not files)."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """Every fenced block of one page, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        above = lines[i - 1].strip() if i > 0 else ""
        mark = MARKER.match(above)
        body = "\n".join(line[len(indent):] for line in lines[i + 1:end])
        found.append(Block(page, i + 1, lang, body + "\n", mark.group(1) if mark else None,
                           mark.group(2) if mark else ""))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in pages() for b in blocks(page)]


def run_by(page: str, test: str) -> list[Block]:
    """The blocks of `page` (a name under docs/, or README.md) that `test` (FILE::NAME) says it
    runs, in page order; at least one."""
    path = ROOT / page if page == "README.md" else DOCS / page
    found = [b for b in blocks(path) if b.marker == "run" and b.target == test]
    assert found, f"{page} has no block marked <!-- run: {test} -->"
    return found
