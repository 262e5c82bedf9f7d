"""The package's shape, held as the code changes: the development page's layout map names every group and
every module at the top, at most 14 modules sit at the top, no module is over 600 lines and no
class over 250 outside the stores and the emulator's validator (import layers and cycles are
`lint-imports`' job, a CI step of its own)."""

from __future__ import annotations

import ast
import re

from .helpers import ROOT

PACKAGE = ROOT / "reporter"
CLASS_EXEMPT = ("reporter/stores/", "reporter/emulator/validator.py")


def _layout_block() -> str:
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("## How the code is laid out", 1)[1]
    return section.split("```", 2)[1]


def test_the_layout_map_names_every_group_and_every_module_at_the_top():
    block = _layout_block()
    groups = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py",
                                                                        "__main__.py"))
    assert [g for g in groups if f"{g}/" not in block] == []
    assert [m for m in top if not re.search(rf"\b{re.escape(m)}\b", block)] == []
    assert len(top) <= 14, top


def test_no_module_over_600_lines_nor_class_over_250():
    long_modules, long_classes = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        lines = path.read_text().count("\n")
        if lines > 600:
            long_modules.append((where, lines))
        if where.startswith(CLASS_EXEMPT):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > 250:
                    long_classes.append((where, node.name, size))
    assert long_modules == [] and long_classes == []


def test_every_module_says_what_it_owns():
    missing = [str(p.relative_to(ROOT)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__main__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []
