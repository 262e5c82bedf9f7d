"""The docs stay true: the figures both READMEs quote agree with benchmarks/results.json, the
README's SQLite DDL is the contract's table, config.example.toml shows the defaults."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sqlite3
import tomllib
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from reporter.config import Config, parse
from reporter.stores.sqlite_schema import REQUIRED_COLUMNS

from .helpers import CONTRACT_DDL, ROOT

RESULTS = ROOT / "benchmarks" / "results.json"
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]


def figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mgh_figures",
                                                  ROOT / "benchmarks" / "figures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_figures_agree_with_results_json(doc: Path):
    """Every marked figure (and the results table) is what results.json says."""
    mod = figures()
    assert mod.problems(doc.read_text(), mod.load(RESULTS.parent)) == []


def test_the_readme_quotes_its_performance_figures_from_results():
    text = (ROOT / "README.md").read_text()
    # The measured part (the fleet-sizing example after it is arithmetic, not a measurement).
    section = text[text.index("## Performance and fleet sizing"):text.index("**Sizing a fleet.**")]
    marked = set(re.findall(r"<!--fig:([\w-]+)-->", section))
    assert {"drain_speedup", "idle_cpu", "wakeup_p99", "run_peak", "cpu_per_call",
            "calls_per_second"} <= marked
    # No figure of the benchmark kinds left unmarked in that section.
    bare = re.sub(r"<!--fig:[\w-]+-->.*?<!--/fig-->", "", section, flags=re.S)
    assert not re.findall(r"\d[\d.,]*\s*(?:x |µs|us |calls/s|% of a core)", bare), bare
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    assert "<!--results-->" in bench and "| scenario | measured | target | met |" in bench


def test_a_stale_figure_is_caught():
    """The check can fail: a changed figure, a changed table, an unknown name."""
    mod = figures()
    results = mod.load(RESULTS.parent)
    text = (ROOT / "README.md").read_text()
    stale = re.sub(r"(<!--fig:drain_speedup-->)[^<]*", r"\g<1>99.9x", text, count=1)
    assert any(p.startswith("drain_speedup:") for p in mod.problems(stale, results))
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    assert mod.problems(bench.replace("| yes |", "| NO |", 1), results) == [
        "the results table differs from results.json"]
    assert mod.problems("<!--fig:nope-->1<!--/fig-->", results) == ["unknown figure 'nope'"]
    assert mod.update(stale, results) == text  # and a run puts it right


def test_the_readme_sqlite_ddl_is_the_contract_table(tmp_path: Path):
    """The README's block makes exactly the contract's columns (the tests' host tables come
    from it too), and the daemon accepts it."""
    conn = sqlite3.connect(tmp_path / "o.db")
    conn.executescript(CONTRACT_DDL)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(outbox)")]
    conn.close()
    assert tuple(columns) == REQUIRED_COLUMNS


def _flatten(data: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(section, key): value for section, keys in data.items()
            for key, value in keys.items()}


def test_the_example_config_shows_the_defaults():
    """Every value config.example.toml sets is the default, except the stream it marks as an
    example; its header says so."""
    text = (ROOT / "config.example.toml").read_text()
    assert "the value shown for it is its default" in text
    shown = _flatten(tomllib.loads(text))
    defaults = _flatten(asdict(Config()))
    parsed = _flatten(asdict(parse(tomllib.loads(text), "example")))
    differs = {k for k in shown if parsed[k] != defaults.get(k)}
    assert differs == {("hub", "progress_update_stream")}
    assert "Required, no default: this is an example." in text


# The curl options the README's block uses (-s, -X METHOD, -d DATA, URL), for hosts without curl.
CURL_STAND_IN = """#!{python}
import sys, urllib.request
args, method, data, url = sys.argv[1:], "GET", None, None
while args:
    arg = args.pop(0)
    if arg == "-X":
        method = args.pop(0)
    elif arg == "-d":
        data = args.pop(0).encode()
    elif not arg.startswith("-"):
        url = arg
request = urllib.request.Request(url, data=data, method=method)
sys.stdout.write(urllib.request.urlopen(request).read().decode())
"""


def test_the_stand_in_block_works(tmp_path: Path):
    """The README's emulator block, run by bash (on a free port instead of 4566, which the
    demo's hint uses): boto3 with the dummy credentials reaches it, the home Region unsets
    and sets, a fault is taken."""
    import os
    import socket
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The emulator"):]
    start = section.index("```sh") + 5
    block = section[start:section.index("```", start)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = [line.split("  #")[0].rstrip() for line in block.strip().splitlines()]
    probe = (
        "import boto3; c = boto3.client('migrationhub-config');"
        " print('HOME', c.get_home_region().get('HomeRegion'))"
    )
    script = ["set -e", "trap 'kill %1 2>/dev/null' EXIT"]
    for line in lines:
        script.append(line.replace("4566", str(port)))
        if line.startswith("mgh-reporter emulator"):
            script.append(f"for i in $(seq 50); do curl -s http://127.0.0.1:{port}/_emulator/state"
                          " >/dev/null && break; sleep 0.1; done")
        if line.startswith("curl") and "home-region" in line:
            script.append(f"echo; python -c \"{probe}\"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    if shutil.which("curl") is None:  # a minimal image (the 3.13/3.14 containers): an emulator
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "curl").write_text(CURL_STAND_IN.format(python=sys.executable))
        (bin_dir / "curl").chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HOME None" in done.stdout and "HOME us-west-2" in done.stdout
    assert done.stdout.index("HOME None") < done.stdout.index("HOME us-west-2")
    assert '"throttle": 0.3' in done.stdout.splitlines()[-1]  # the state after the fault
