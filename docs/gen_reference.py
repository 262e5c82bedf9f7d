"""The docs site's generated references (run by mkdocs-gen-files inside `mkdocs build`): every
config key from the config schema with its default, every metric from the daemon's registry,
every log event the code writes, every exit code. Each page is made from the code, so it cannot
fall behind it; a key the documented example leaves unexplained fails the build."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reporter import config as config_mod  # noqa: E402
from reporter.daemon.metrics import Metrics  # noqa: E402
from reporter.exits import Exit  # noqa: E402

LEVELS = ("debug", "info", "warning", "error", "critical", "exception")
LOGGERS = re.compile(r"^(self\.)?_?(log|logger)$")
EVENT = re.compile(r"^[a-z][a-z0-9_]*$")


def _example_comments() -> dict[tuple[str, str], str]:
    """(section, key) -> the comment lines above it in config.example.toml (the documented
    example, which the tests hold to the defaults); keys written one under the other share
    the comment above the first."""
    found: dict[tuple[str, str], str] = {}
    section, comments, shared = "", list[str](), ""
    for line in (ROOT / "config.example.toml").read_text().splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"\[(\w+)\]", stripped)
        key = re.match(r"^#? ?(\w+) = ", stripped)
        if header:
            section, comments, shared = header.group(1), [], ""
        elif key and section:
            if comments:
                shared = " ".join(comments)
            found.setdefault((section, key.group(1)), shared)
            comments = []
        elif stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
        else:
            comments, shared = [], ""
    return found


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path | str):
        return f'`"{value}"`' if str(value) else "required"
    return f"`{value}`"


def config_page() -> str:
    """Every key of every section: its type, its default and what it does."""
    comments = _example_comments()
    out = ["# Configuration keys", "",
           "Generated from the config schema (`reporter/config.py`: the section dataclasses "
           "and their rules) with the explanations of `config.example.toml`. Unknown keys are "
           "an error; a value that breaks a rule is refused naming the key and the rule.", ""]
    missing = []
    for section, kind in config_mod._SECTION_TYPES.items():
        out += [f"## [{section}]", "", "| key | type | default | what it does |",
                "|---|---|---|---|"]
        for spec in dataclasses.fields(kind):
            rule = config_mod._RULES[section].get(spec.name)
            if rule is None:
                continue
            text = comments.get((section, spec.name), "")
            if not text:
                missing.append(f"[{section}] {spec.name}")
            default = (spec.default if spec.default is not dataclasses.MISSING
                       else spec.default_factory())  # type: ignore[misc]
            cell = text.replace("|", "\\|")
            out.append(f"| `{spec.name}` | {config_mod._type_name(rule[0])} | "
                       f"{_default(default)} | {cell} |")
        out.append("")
    if missing:
        raise SystemExit("config.example.toml explains no " + ", ".join(missing))
    return "\n".join(out)


def metrics_page() -> str:
    """Every instrument of the daemon's registry."""
    out = ["# Metrics", "", "Generated from the daemon's registry (`reporter/daemon/metrics.py`)."
           " Served at `GET /metrics` with `[metrics] listen` set; counters carry the "
           "`_total` suffix.", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
    metrics = Metrics()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name is None:
            continue
        kind = getattr(value, "_type", "")
        shown = f"{name}_total" if kind == "counter" else name
        labels = ", ".join(f"`{label}`" for label in getattr(value, "_labelnames", ()))
        out.append(f"| `{shown}` | {kind} | {labels} | {value._documentation} |")
    return "\n".join(out) + "\n"


def log_events() -> dict[str, dict[str, set[str]]]:
    """event -> {"levels", "fields", "modules"} for every event the code logs by name."""
    events: dict[str, dict[str, set[str]]] = defaultdict(
        lambda: {"levels": set(), "fields": set(), "modules": set()})
    for path in sorted((ROOT / "reporter").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            found = _event_call(node) if isinstance(node, ast.Call) else None
            if found is None:
                continue
            name, levels, fields = found
            entry = events[name]
            entry["levels"].update(levels)
            entry["fields"].update(fields)
            entry["modules"].add(str(path.relative_to(ROOT)))
    return dict(events)


def _text(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _event_call(node: ast.Call) -> tuple[str, set[str], set[str]] | None:
    """(event, levels, fields) of a logging call: `log.<level>("event", k=...)` on a logger
    (also `structlog.get_logger().<level>`, and `(log.info if x else log.debug)(...)`), a
    condition's `Line("level", "event", {...})` and the SDK files' `_warn_once(key, "event",
    k=...)` (a warning)."""
    func = node.func
    keywords = {k.arg for k in node.keywords if k.arg}
    name = _text(node.args[0]) if node.args else None
    branches = [func.body, func.orelse] if isinstance(func, ast.IfExp) else [func]
    if name and EVENT.match(name) and all(
            isinstance(b, ast.Attribute) and b.attr in LEVELS
            and (LOGGERS.match(ast.unparse(b.value)) or "get_logger(" in ast.unparse(b.value))
            for b in branches):
        return name, {b.attr for b in branches if isinstance(b, ast.Attribute)}, keywords
    if isinstance(func, ast.Name) and func.id == "Line" and len(node.args) >= 2:
        level, name = _text(node.args[0]), _text(node.args[1])
        if level in LEVELS and name and EVENT.match(name):
            fields = ({_text(k) or "" for k in node.args[2].keys if k is not None} - {""}
                      if len(node.args) > 2 and isinstance(node.args[2], ast.Dict) else set())
            return name, {level or ""}, fields
    if isinstance(func, ast.Name) and func.id == "_warn_once" and len(node.args) >= 2:
        name = _text(node.args[1])
        if name and EVENT.match(name):
            return name, {"warning"}, keywords
    return None


def events_page() -> str:
    """Every log event, its level and its fields."""
    out = ["# Log events", "",
           "Generated from the code (every call of a logger with an event name). Each line of"
           " the log is one JSON object with `event`, `level`, `timestamp` and these fields.",
           "", "| event | level | fields | written by |", "|---|---|---|---|"]
    for name, entry in sorted(log_events().items()):
        fields = ", ".join(f"`{f}`" for f in sorted(entry["fields"]))
        modules = ", ".join(f"`{m}`" for m in sorted(entry["modules"]))
        out.append(f"| `{name}` | {', '.join(sorted(entry['levels']))} | {fields} | {modules} |")
    return "\n".join(out) + "\n"


def exit_codes_page() -> str:
    """Every exit code, with what it says (the comments of `reporter/exits.py`)."""
    source = (ROOT / "reporter" / "exits.py").read_text()
    notes = dict(re.findall(r"^\s+([A-Z]+) = \d+(?:\s+# (.*))?$", source, re.MULTILINE))
    out = ["# Exit codes", "", "Generated from `reporter/exits.py`; every command uses these.",
           "", "| code | name | meaning |", "|---|---|---|"]
    for code in Exit:
        out.append(f"| {code.value} | `{code.name}` | {notes.get(code.name) or ''} |")
    return "\n".join(out) + "\n"


PAGES = {
    "reference/config.md": config_page,
    "reference/metrics.md": metrics_page,
    "reference/log-events.md": events_page,
    "reference/exit-codes.md": exit_codes_page,
}

if __name__ in ("__main__", "<run_path>"):
    import mkdocs_gen_files

    for page, make in PAGES.items():
        with mkdocs_gen_files.open(page, "w") as handle:
            handle.write(make())
