"""What the benchmark results say, in one place: each scenario's verdict, the results table,
and the named figures the READMEs quote (pure: results in, text out). `run.py` rewrites the
docs from `results.json` with it; a fast test fails when the docs and the file disagree.

In a README a quoted figure is marked `<!--fig:NAME-->18.6x<!--/fig-->` (invisible when
rendered), and the results table sits between `<!--results-->` and `<!--/results-->`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FIGURES", "ORDER", "load", "problems", "table", "update", "verdicts"]

ORDER = [
    "drain", "coalesce", "idle", "memory", "latency", "wakeup", "budget", "impact", "scale",
    "profile", "faults", "writer", "pg-drain", "pg-latency",
]


def verdicts(name: str, r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(figure, target, met) for one scenario's results."""
    if name == "drain":
        return [
            (f"{r['tasks']} tasks: drain {r['reporter_seconds']:.2f} s, sequential boto3 loop "
             f"{r['loop_seconds']:.2f} s ({r['speedup']:.1f}x); " + (
                 f"AWS CLI per update {r['cli_seconds_per_update']:.2f} s each, "
                 f"{r['cli_seconds_projected']:.0f} s projected" if r["cli_sample"]
                 else "AWS CLI not installed"),
             ">= 8x the loop", r["speedup"] >= 8 and r["delivered"] == r["tasks"]),
        ]
    if name == "coalesce":
        return [(f"{r['rows']} rows: {r['notify_calls']} Notify calls, "
                 f"{r['tasks_not_at_last_state']} tasks not at their last state",
                 f"<= {r['tasks']} calls, all at last state",
                 r["notify_calls"] <= r["tasks"] and r["tasks_not_at_last_state"] == 0)]
    if name == "idle":
        return [(f"{r['cpu_percent']:.3f}% of a core over {r['seconds']:.0f} s at the default "
                 f"interval (schedstat), {r['hub_calls']} Hub calls after start-up",
                 "<= 0.1%, no Hub call", r["cpu_percent"] <= 0.1 and r["hub_calls"] == 0)]
    if name == "budget":
        stages = "; ".join(f"{x['stage']} {x['rss']:.1f}" for x in r["stages"])
        return [(f"RSS MB by stage ({r['rows']} rows): {stages}; high-water "
                 f"{r['stages'][-1]['hwm']:.1f}", "(measured)", True)]
    if name == "wakeup":
        return [
            (f"{r['rows']} rows at {r['rate']:.0f}/s, {r['interval']:.0f} s interval: p50 "
             f"{r['p50']:.3f} s, p99 {r['p99']:.3f} s, max {r['max']:.3f} s", "p99 <= 0.25 s",
             r["p99"] <= 0.25),
            (f"{r['burst_rows']} INSERTs for one task in {r['burst_seconds']:.2f} s: "
             f"{r['burst_notify_calls']} NotifyMigrationTaskState calls", "<= 5",
             r["burst_notify_calls"] <= 5),
        ]
    if name == "memory":
        return [(f"drain peak RSS {r['small_peak_mb']:.1f} MiB ({r['small_rows']} rows) vs "
                 f"{r['large_peak_mb']:.1f} MiB ({r['large_rows']} rows): {r['ratio']:.2f}x; "
                 f"`run` through the {r['large_rows']} rows {r['run_peak_mb']:.1f} MiB",
                 "<= 1.1x, both <= 55 MiB",
                 r["ratio"] <= 1.1 and max(r["large_peak_mb"], r["run_peak_mb"]) <= 55)]
    if name == "latency":
        return [(f"{r['rows']} rows at {r['rate']:.0f}/s: p50 {r['p50']:.3f} s, p99 "
                 f"{r['p99']:.3f} s, max {r['max']:.3f} s", "p99 < 1.0 s", r["p99"] < 1.0)]
    if name == "impact":
        return [(f"{r['alone_per_second']:.0f}/s alone, {r['beside_per_second']:.0f}/s beside "
                 f"the daemon ({r['ratio']:.2f}x); errors {r['alone_errors']} alone, "
                 f"{r['beside_errors']} beside; busy-timeout retries {r['alone_busy_retries']} "
                 f"alone, {r['beside_busy_retries']} beside",
                 ">= 0.7x, zero errors", r["ratio"] >= 0.7 and r["beside_errors"] == 0)]
    if name == "scale":
        parts = ", ".join(f"{k}: {v['calls_per_second']:.0f} calls/s" for k, v in r.items()
                          if isinstance(v, dict))
        return [(f"{parts} (spread {100 * r['spread']:.0f}%)", "within 25%", r["spread"] <= 0.25)]
    if name == "pg-drain":
        one, two = r["replicas_1"], r["replicas_2"]
        return [(f"{r['tasks']} tasks at a 30 ms Hub on PostgreSQL: 1 replica "
                 f"{one['seconds']:.1f} s ({one['calls_per_second']:.0f} calls/s), 2 replicas "
                 f"{two['seconds']:.1f} s ({two['calls_per_second']:.0f} calls/s): "
                 f"{r['speedup']:.2f}x", ">= 1.5x", r["speedup"] >= 1.5)]
    if name == "pg-latency":
        return [(f"PostgreSQL, LISTEN/NOTIFY, {r['interval']:.0f} s interval: {r['rows']} rows at "
                 f"{r['rate']:.0f}/s: p50 {r['p50']:.3f} s, p99 {r['p99']:.3f} s, max "
                 f"{r['max']:.3f} s", "p99 < 0.3 s", r["p99"] < 0.3)]
    if name == "writer":
        return [(f"`notify` median {r['median']:.3f} s, max {r['max']:.3f} s over {r['runs']} "
                 "runs", "<= 0.1 s", r["median"] <= 0.1)]
    if name == "faults":
        runs = ", ".join(f"{x:.1f}" for x in r["seconds"])
        return [(f"{r['rows']} rows under 30% throttle + 10% 5xx, {r['runs']} runs: {runs} s "
                 f"(slowest {r['slowest']:.1f} s, median {r['median']:.1f} s); "
                 f"{r['tasks_not_at_last_state']} tasks not at their last state",
                 "every run < 90 s, most well under 30 s",
                 r["slowest"] < 90 and r["median"] < 30 and r["tasks_not_at_last_state"] == 0)]
    if name == "profile":
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["shares"].items())
        return [(f"{r['tasks']} tasks, {r['calls_per_second']:.0f} calls/s: "
                 f"{r['drain_cpu_us_per_call']:.0f} us CPU per call in the drain ({shares}); "
                 f"emulator {r['stand_in_cpu_us_per_call']:.0f} us per call", "(measured)", True)]
    return []


def _scale_range(r: dict[str, Any]) -> str:
    rates = [v["calls_per_second"] for v in r["scale"].values() if isinstance(v, dict)]
    return f"{min(rates):,.0f}-{max(rates):,.0f} calls/s"


def _largest_scale(r: dict[str, Any]) -> dict[str, Any]:
    sizes = [k for k, v in r["scale"].items() if isinstance(v, dict)]
    return dict(r["scale"][max(sizes, key=int)])


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
    "drain_tasks": lambda r: f"{r['drain']['tasks']:,}",
    "cli_per_update": lambda r: f"{r['drain']['cli_seconds_per_update']:.2f} s",
    "idle_cpu": lambda r: f"{r['idle']['cpu_percent']:.2f}%",
    "run_peak": lambda r: f"{r['memory']['run_peak_mb']:.0f} MiB",
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
    "scale_largest_seconds": lambda r: f"{_largest_scale(r)['seconds']:.0f} s",
    "scale_largest_peak": lambda r: f"{_largest_scale(r)['peak_mb']:.1f} MiB",
    "scale_runs": lambda r: "; ".join(
        f"{k}: {', '.join(str(x) for x in v['runs'])}"
        for k, v in r["scale"].items() if isinstance(v, dict) and v.get("runs")),
    "writer_median": lambda r: f"{r['writer']['median']:.2f} s",
    "faults_median": lambda r: f"{r['faults']['median']:.1f} s",
    "pg_speedup": lambda r: f"{r['pg-drain']['speedup']:.2f}x",
    "pg_latency_p99": lambda r: f"{r['pg-latency']['p99']:.2f} s",
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
