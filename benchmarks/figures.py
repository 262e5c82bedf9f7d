"""What the benchmark results say, in one place: each scenario's verdict, the results table,
and the named figures the READMEs quote (pure: results in, text out). `run.py` rewrites the
docs from `results.json` with it; a fast test fails when the docs and the file disagree.

In a README a quoted figure is marked `<!--fig:NAME-->18.6x<!--/fig-->` (invisible when
rendered), and the results table sits between `<!--results-->` and `<!--/results-->`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "ORDER", "documents", "load", "problems", "table", "update", "verdicts"]

ORDER = [
    "drain", "coalesce", "idle", "memory", "latency", "wakeup", "budget", "impact", "scale",
    "profile", "faults", "writer", "pg-drain", "pg-latency", "verify", "idle-repair",
    "hostile-memory", "fleet",
]


def verdicts(name: str, r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) for one scenario's results: each verdict is written in run.py
    beside the scenario that measures it."""
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from run import VERDICTS

    return VERDICTS[name](r) if name in VERDICTS else []


def _scale_range(r: dict[str, Any]) -> str:
    rates = [v["calls_per_second"] for v in r["scale"].values() if isinstance(v, dict)]
    return f"{min(rates):,.0f}-{max(rates):,.0f} calls/s"


def _largest_scale(r: dict[str, Any]) -> dict[str, Any]:
    sizes = [k for k, v in r["scale"].items() if isinstance(v, dict)]
    return dict(r["scale"][max(sizes, key=int)])


def _fleet_range(r: dict[str, Any], key: str, scale: float, fmt: str) -> str:
    """The range of one figure over the fleet runs ("11-13%")."""
    values = sorted(scale * run[key] for run in r["fleet"]["runs"])
    low, high = fmt.format(values[0]), fmt.format(values[-1])
    return low if low == high else f"{low.rstrip('%x')}-{high}"


def documents(root: Path) -> list[Path]:
    """Every page that may quote a figure: both READMEs and the docs site's pages."""
    return [root / "benchmarks" / "README.md", root / "README.md",
            *sorted((root / "docs").rglob("*.md"))]


def load(directory: Path) -> dict[str, Any]:
    """results.json (the packages benchmark keeps its figures there too, as `packages`)."""
    results: dict[str, Any] = json.loads((directory / "results.json").read_text())
    return results


def _packages_table(p: dict[str, Any]) -> str:
    sizes = p["sizes_mb"]

    def size(suffix: str) -> str:
        return next(f"{v:.2f} MB" for k, v in sizes.items() if k.endswith(suffix))

    pkg, venv = p["daemons"]["package"], p["daemons"]["venv"]
    rows = [
        "| figure | measured |", "|---|---|",
        f"| artifact sizes | deb {size('.deb')}, rpm {size('.rpm')}, pyz {size('.pyz')}, "
        f"wheel {size('.whl')}, sdist {size('.tar.gz')} |",
        "| offline install | `dpkg -i` on a bare Debian 12 (minbase + python3, `--network "
        f"none`): {p['install_seconds']:.1f} s, median of 3, byte-compiling included |",
        f"| packaged daemon, idle `run` | RSS {pkg['rss_mib']:.1f} MiB (peak "
        f"{pkg['hwm_mib']:.1f}), {pkg['idle_cpu_percent']:.3f}% of a core over 60 s "
        "(schedstat) |",
        f"| the same daemon from wheels in a venv | RSS {venv['rss_mib']:.1f} MiB (peak "
        f"{venv['hwm_mib']:.1f}), {venv['idle_cpu_percent']:.3f}% of a core over 60 s |",
    ]
    return "\n" + "\n".join(rows) + "\n"


def _budget_table(b: dict[str, Any]) -> str:
    rows = ["| stage | RSS MiB | added |", "|---|---|---|"]
    before = None
    for stage in b["stages"]:
        added = "" if before is None else f"{stage['rss'] - before:+.1f}"
        rows.append(f"| {stage['stage']} | {stage['rss']:.1f} | {added} |")
        before = stage["rss"]
    rows.append(f"| high-water mark | {b['stages'][-1]['hwm']:.1f} | |")
    return "\n" + "\n".join(rows) + "\n"


def _share(r: dict[str, Any], prefix: str) -> float:
    return float(sum(v for k, v in r["profile"]["shares"].items() if k.startswith(prefix)))


def _profile_table(p: dict[str, Any]) -> str:
    cpu = p["drain_cpu_us_per_call"]
    rows = ["| where (innermost frame) | share of the drain's CPU | µs per call |",
            "|---|---|---|"]
    for name, share in sorted(p["shares"].items(), key=lambda kv: -kv[1]):
        rows.append(f"| {name} | {100 * share:.0f}% | {share * cpu:.0f} |")
    rows.append(f"| **the whole drain** ({p['calls_per_second']:.0f} calls/s) | 100% | "
                f"{cpu:.0f} |")
    rows.append(f"| **emulator (separate process)** | | {p['stand_in_cpu_us_per_call']:.0f} |")
    return "\n" + "\n".join(rows) + "\n"


# name -> the figure as the docs quote it, from results.json
FIGURES: dict[str, Callable[[dict[str, Any]], str]] = {
    "drain_speedup": lambda r: f"{r['drain']['speedup']:.1f}x",
    "fleet_throttled": lambda r: _fleet_range(r, "throttled_share", 100, "{:.0f}%"),
    "fleet_time_ratio": lambda r: _fleet_range(r, "time_ratio", 1, "{:.2f}x"),
    "drain_tasks": lambda r: f"{r['drain']['tasks']:,}",
    "cli_per_update": lambda r: f"{r['drain']['cli_seconds_per_update']:.2f} s",
    "idle_cpu": lambda r: f"{r['idle']['cpu_percent']:.2f}%",
    "run_peak": lambda r: f"{r['memory']['run_peak_mb']:.0f} MiB",
    "hostile_peak": lambda r: f"{r['hostile-memory']['peak_mb']:.0f} MiB",
    "memory_ratio": lambda r: f"{r['memory']['ratio']:.2f}x",
    "memory_rows": lambda r: f"{r['memory']['large_rows']:,}",
    "latency_p99": lambda r: f"{r['latency']['p99']:.2f} s",
    "wakeup_p99": lambda r: f"{r['wakeup']['p99']:.2f} s",
    "cpu_per_call": lambda r: f"{r['profile']['drain_cpu_us_per_call']:,.0f} µs",
    "botocore_share": lambda r: f"{100 * _share(r, 'botocore'):.0f}%",
    "own_share": lambda r: f"{100 * _share(r, 'mgh-reporter'):.0f}%",
    "profile_table": lambda r: _profile_table(r["profile"]),
    "packages_table": lambda r: _packages_table(r["packages"]),
    "budget_table": lambda r: _budget_table(r["budget"]),
    "calls_per_second": _scale_range,
    "profile_calls_per_second": lambda r: f"{r['profile']['calls_per_second']:.0f} calls/s",
    "gil_ceiling": lambda r: f"{1e6 / r['profile']['drain_cpu_us_per_call']:.0f} calls/s",
    "scale_largest_seconds": lambda r: f"{_largest_scale(r)['seconds']:.0f} s",
    "scale_largest_peak": lambda r: f"{_largest_scale(r)['peak_mb']:.1f} MiB",
    "scale_runs": lambda r: "; ".join(
        f"{k}: {', '.join(str(x) for x in v['runs'])}"
        for k, v in r["scale"].items() if isinstance(v, dict) and v.get("runs")),
    "writer_median": lambda r: f"{r['writer']['median']:.2f} s",
    "faults_median": lambda r: f"{r['faults']['median']:.1f} s",
    "pg_speedup": lambda r: f"{r['pg-drain']['speedup']:.2f}x",
    "pg_latency_p99": lambda r: f"{r['pg-latency']['p99']:.2f} s",
    "verify_tasks": lambda r: f"{r['verify']['tasks']:,}",
    "verify_seconds": lambda r: f"{r['verify']['seconds']:.0f} s",
    "verify_calls": lambda r: f"{r['verify']['calls']:,}",
    "verify_peak": lambda r: f"{r['verify']['peak_mb']:.1f} MiB",
    "repair_idle_cpu": lambda r: f"{r['idle-repair']['cpu_percent']:.2f}%",
    "repair_calls": lambda r: f"{r['idle-repair']['calls_per_second_per_1000_tasks']:.2f}",
    "repair_every": lambda r: f"{r['idle-repair']['every_seconds']:g} s",
}

_MARK = re.compile(r"<!--fig:([\w-]+)-->(.*?)<!--/fig-->", re.S)
_BLOCK = re.compile(r"(<!--results-->\n)(.*?)(<!--/results-->)", re.S)


def table(results: dict[str, Any]) -> str:
    """The results table (markdown), in the suite's order, with the machine it ran on."""
    meta = results.get("_meta", {})
    lines = []
    if meta:
        command = meta.get("command", "python benchmarks/run.py")
        lines += [f"Measured {meta.get('date', '?')} at commit `{meta.get('commit', '?')}` on "
                  f"{meta.get('machine', '?')}: `{command}`."]
        since = meta.get("since") or {}
        if since:
            lines += ["Re-measured since, alone (`python benchmarks/run.py NAME`): " + ", ".join(
                f"{name} at `{when}`" for name, when in sorted(since.items())) + "."]
        lines += [""]
    lines += ["| scenario | measured | target | met |", "|---|---|---|---|"]
    for name in [n for n in ORDER if n in results] + sorted(
        set(results) - set(ORDER) - {"_meta"}
    ):
        for figure, target, met in verdicts(name, results[name]):
            lines.append(f"| {name} | {figure} | {target} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def update(text: str, results: dict[str, Any]) -> str:
    """`text` with every marked figure and the results table as `results` has them."""

    def figure(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in FIGURES:
            raise KeyError(f"unknown figure {name!r} (known: {', '.join(sorted(FIGURES))})")
        return f"<!--fig:{name}-->{FIGURES[name](results)}<!--/fig-->"

    text = _MARK.sub(figure, text)
    return _BLOCK.sub(lambda m: m.group(1) + table(results) + m.group(3), text)


def problems(text: str, results: dict[str, Any]) -> list[str]:
    """Where `text` disagrees with `results`: each marked figure that differs, a table that
    differs, an unknown figure name."""
    found = []
    for match in _MARK.finditer(text):
        name, shown = match.group(1), match.group(2)
        if name not in FIGURES:
            found.append(f"unknown figure {name!r}")
        elif shown != FIGURES[name](results):
            expected = FIGURES[name](results)
            found.append(f"{name}: the text says {shown!r}, results.json {expected!r}")
    for match in _BLOCK.finditer(text):
        if match.group(2) != table(results):
            found.append("the results table differs from results.json")
    return found
