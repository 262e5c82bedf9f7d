"""The docs stay true: every fenced command of the README and the docs site is run by a test
(or says why it cannot run here), the site builds strictly with references generated from the
code, the figures quoted agree with benchmarks/results.json, the contract's SQLite DDL is the
table, config.example.toml shows the defaults."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from reporter.config import Config, parse
from reporter.stores.sqlite_schema import REQUIRED_COLUMNS

from .docblocks import COMMAND_LANGS, Block, all_blocks, blocks, pages, run_by
from .helpers import CONTRACT_DDL, ROOT, build_module, free_port, load_script

RESULTS = ROOT / "benchmarks" / "results.json"
DOCS = [*pages(), ROOT / "benchmarks" / "README.md"]
PERFORMANCE = ROOT / "docs" / "performance.md"


def figures() -> ModuleType:
    return load_script(ROOT / "benchmarks" / "figures.py", "mgh_figures")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_figures_agree_with_results_json(doc: Path):
    """Every marked figure (and the results table) is what results.json says."""
    mod = figures()
    assert mod.problems(doc.read_text(), mod.load(RESULTS.parent)) == []


def test_the_performance_page_quotes_its_figures_from_results():
    text = PERFORMANCE.read_text()
    # The measured part (the fleet-sizing example after it is arithmetic, not a measurement).
    section = text[:text.index("**Sizing a fleet.**")]
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
    text = PERFORMANCE.read_text()
    stale = re.sub(r"(<!--fig:drain_speedup-->)[^<]*", r"\g<1>99.9x", text, count=1)
    assert any(p.startswith("drain_speedup:") for p in mod.problems(stale, results))
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    assert mod.problems(bench.replace("| yes |", "| NO |", 1), results) == [
        "the results table differs from results.json"]
    assert mod.problems("<!--fig:nope-->1<!--/fig-->", results) == ["unknown figure 'nope'"]
    assert mod.update(stale, results) == text  # and a run puts it right


def test_the_contract_sqlite_ddl_is_the_contract_table(tmp_path: Path):
    """The contract page's block (docs/contract.md) makes exactly the contract's columns (the
    tests' host tables come from it too), and the daemon accepts it."""
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
    """The emulator walkthrough's block (docs/getting-started.md), run by bash (on a free port
    instead of 4566, which the demo's hint uses): boto3 with the dummy credentials reaches it,
    the home Region unsets and sets, a fault is taken."""
    block = run_by("getting-started.md", "tests/test_docs.py::test_the_stand_in_block_works")[
        0].text
    port = free_port()
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


# -- every fenced command is run by a test, or says why it cannot run here ---------------------

def _test_source(target: str) -> str:
    """The source of the test a `run:` marker names (FILE::NAME)."""
    file, _, name = target.partition("::")
    path = ROOT / file
    assert path.is_file(), f"no test file {file}"
    text = path.read_text()
    found = re.search(rf"^def {re.escape(name)}\(.*?(?=^def |^class |^# --|\Z)", text,
                      re.S | re.M)
    assert found, f"{file} has no test {name}"
    return found.group(0)


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.lang in COMMAND_LANGS],
                         ids=lambda b: f"{b.page.relative_to(ROOT)}:{b.line}")
def test_every_command_block_is_run_or_says_why(block: Block):
    """A fenced command (shell, SQL, Python, Go) carries a marker: the test that runs it,
    which must exist and read that page, or why it cannot run here (an rpm host, Ubuntu, a
    cluster, the AWS CLI, a toolchain this machine lacks)."""
    assert block.marker is not None, (
        f"{block.page.name}:{block.line}: a ```{block.lang} block needs <!-- run: "
        "tests/FILE.py::TEST --> or <!-- not run: REASON --> on the line above")
    if block.marker == "not run":
        assert len(block.target.split()) >= 6, "say why it cannot run here, in a sentence"
        return
    source = _test_source(block.target)
    module = (ROOT / block.target.partition("::")[0]).read_text()
    page = block.page.name
    reads = "README" if page == "README.md" else page
    assert "run_by(" in source or reads in source or reads in module, (
        f"{block.target} does not read {page}")


def test_a_block_without_a_marker_is_caught(tmp_path: Path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```sh\nrm -rf /\n```\n\n<!-- not run: x -->\n```sql\nSELECT 1;\n```\n")
    found = blocks(page)
    assert [(b.lang, b.marker) for b in found] == [("sh", None), ("sql", "not run")]
    assert found[0].text == "rm -rf /\n"


def test_the_newcomer_commands_run(tmp_path: Path):
    """The README's first two blocks are the newcomer commands, unchanged; the getting-started
    page's demo is the first of them. The demo runs here as written (`.ci/run`'s install step
    is the pip line; its README step is the test command, which is running this test)."""
    readme = run_by("README.md", "tests/test_docs.py::test_the_newcomer_commands_run")
    assert readme == blocks(ROOT / "README.md")[:2]
    commands = [b.text.strip() for b in readme]
    assert commands == ["python -m pip install -e . && mgh-reporter demo",
                        "python -m pip install -e '.[test]' && python -m pytest"]
    start = run_by("getting-started.md", "tests/test_docs.py::test_the_newcomer_commands_run")
    assert start[0].text.strip() == commands[0]
    assert "python -m pytest -p no:cacheprovider" in (ROOT / ".ci" / "run").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    demo = subprocess.run(["bash", "-c", commands[0].split(" && ")[1]], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "COMPLETED" in demo.stdout, demo.stdout[-2000:]


# The sqlite3 shell as the contract's block uses it (`-cmd '.timeout MS' DB`, SQL on stdin), for
# hosts without it.
SQLITE3_STAND_IN = """#!{python}
import sqlite3, sys
args, timeout, db = sys.argv[1:], 5.0, None
while args:
    arg = args.pop(0)
    if arg == "-cmd":
        command = args.pop(0).split()
        if command[0] == ".timeout":
            timeout = int(command[1]) / 1000
    else:
        db = arg
conn = sqlite3.connect(db, timeout=timeout, isolation_level=None)
cur = conn.cursor()
buffer = ""
for line in sys.stdin.read().splitlines(keepends=True):
    buffer += line
    if sqlite3.complete_statement(buffer):
        for row in cur.execute(buffer):
            print("|".join(str(v) for v in row))
        buffer = ""
"""


def test_the_contract_writer_blocks_run(tmp_path: Path, emulator: Any, aws_env: dict[str, str],
                                        make_config: Any):
    """The contract page's writers as written (the outbox path swapped for a temporary one):
    the sqlite3 shell, the shell writers (through $MGH_REPORTER_CONFIG), the Python API, then
    the fate query; delivered, the Hub holds what they wrote and each row's fate says sent or
    superseded."""
    outbox = tmp_path / "outbox.db"
    config = make_config()
    env = {**os.environ, "MGH_REPORTER_CONFIG": str(config),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    assert subprocess.run([sys.executable, "-m", "reporter", "init"], env=env,
                          capture_output=True).returncode == 0
    if shutil.which("sqlite3") is None:  # a minimal image (the 3.13/3.14 containers)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "sqlite3").write_text(SQLITE3_STAND_IN.format(python=sys.executable))
        (bin_dir / "sqlite3").chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    test = "tests/test_docs.py::test_the_contract_writer_blocks_run"
    sql_shell, shell, python, fate = run_by("contract.md", test)
    default = "/var/lib/mgh-reporter/outbox.db"
    for block in (sql_shell, shell):
        assert block.lang == "sh"
        done = subprocess.run(["bash", "-e", "-c", block.text.replace(default, str(outbox))],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    assert python.lang == "python" and default in python.text
    done = subprocess.run([sys.executable, "-c", python.text.replace(default, str(outbox))],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    drained = subprocess.run([sys.executable, "-m", "reporter", "drain"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    task = emulator.state.task("ToolA", "vm-042")
    assert task.attributes and task.artifacts
    percents = [u["Task"].get("ProgressPercent")
                for u in emulator.state.updates()["ToolA"]["vm-042"]]
    assert percents[-1] == 100 and percents == sorted(percents)
    conn = sqlite3.connect(outbox)
    rows = conn.execute(fate.text.replace("= 1234", "> 0")).fetchall()
    conn.close()
    assert len(rows) == 8 and {r[1] for r in rows} <= {"sent", "superseded"}, rows
    shown = subprocess.run([sys.executable, "-m", "reporter", "rows", "1", "--json"], env=env,
                           capture_output=True, text=True)
    assert json.loads(shown.stdout)[0]["state"] in ("sent", "superseded")


def test_the_docs_site_builds_strictly(tmp_path: Path):
    """`mkdocs build --strict` (the docs extra): every page in the nav, no broken link or
    anchor, the references generated; a broken link fails it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")]
    done = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("reference/cli", "reference/config", "reference/metrics", "reference/log-events",
                 "reference/exit-codes", "troubleshooting", "contract"):
        assert (tmp_path / "s" / page / "index.html").is_file(), page
    cli_page = (tmp_path / "s" / "reference" / "cli" / "index.html").read_text()
    from reporter.cli import cli as group
    for name in group.commands:  # type: ignore[attr-defined]
        assert f'id="mgh-reporter-{name}"' in cli_page, name
    broken = tmp_path / "broken"
    shutil.copytree(ROOT / "docs", broken / "docs")
    shutil.copy(ROOT / "mkdocs.yml", broken / "mkdocs.yml")
    shutil.copy(ROOT / "config.example.toml", broken / "config.example.toml")
    (broken / "reporter").symlink_to(ROOT / "reporter")
    with (broken / "docs" / "index.md").open("a") as page:
        page.write("\n[gone](no-such-page.md)\n")
    failed = subprocess.run([*build[:-1], str(broken / "s")], cwd=broken, capture_output=True,
                            text=True, env=env, timeout=120)
    assert failed.returncode != 0 and "no-such-page.md" in failed.stderr


def _generated() -> ModuleType:
    return load_script(ROOT / "docs" / "gen_reference.py", "mgh_gen_reference")


def test_the_generated_references_cover_the_code():
    """Every config key with its default, every metric, the events operators are told to look
    for, every exit code."""
    gen = _generated()
    config_page = gen.config_page()
    for section, keys in _flatten_sections(asdict(Config())).items():
        for key, _value in keys.items():
            assert f"| `{key}` |" in config_page, (section, key)
    assert '| `batch_size` | an integer | `500` |' in config_page
    metrics_page = gen.metrics_page()
    for name in ("mgh_reporter_pending_rows", "mgh_reporter_api_requests_total",
                 "mgh_reporter_hub_repaired_total", "mgh_reporter_concurrency_limit"):
        assert f"`{name}`" in metrics_page
    events = gen.log_events()
    for name in ("outbox_lost", "condition_started", "condition_ongoing", "sdk_file_ignored",
                 "replicas", "delivery_blocked", "hub_repaired", "outbox_upgrade_refused",
                 "row_rejected", "wakeups_polling"):
        assert name in events, name
    assert events["replicas"]["levels"] == {"info", "debug"}
    from reporter.exits import Exit
    codes = gen.exit_codes_page()
    for code in Exit:
        assert re.search(rf"^\| {code.value} \| `{code.name}` \| \w", codes, re.M), code


def _flatten_sections(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {section: keys for section, keys in data.items() if isinstance(keys, dict)}


def test_every_event_the_docs_name_is_one_the_code_writes():
    """An event name in backticks followed by "event" or "in its log" in the pages is one the
    code logs."""
    events = set(_generated().log_events())
    named = set()
    for page in pages():
        text = page.read_text()
        named |= set(re.findall(r"`([a-z]+_[a-z_]+)` (?:event|in (?:its|the) log)", text))
        named |= set(re.findall(r"[Oo]ne (?:loud )?`([a-z]+_[a-z_]+)` event", text))
    assert named and named <= events, named - events


def test_the_readme_is_short_and_its_newcomer_commands_come_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    demo, tests, quick = blocks(ROOT / "README.md")[:3]
    assert "mgh-reporter demo" in demo.text and "python -m pytest" in tests.text
    assert quick.target == "tests/deploy/test_packages.py::test_readme_quick_start_as_written"
    assert len(quick.text.strip().splitlines()) <= 10


def test_every_package_name_in_the_docs_is_this_version():
    """A deb, rpm or pyz the pages name is the one this tree builds (or `<version>`)."""
    build = build_module()
    version, _ = build.project()
    package = build.package_version(version)
    expected = {f"mgh-reporter_{package}_all.deb", f"mgh-reporter-{package}-1.noarch.rpm",
                f"mgh-reporter-{version}.pyz"}
    for page in pages():
        for name in re.findall(r"mgh-reporter[_-][0-9][^\s/`)]*?(?:_all\.deb|\.noarch\.rpm|\.pyz)",
                               page.read_text()):
            assert name in expected, (page.name, name)


def test_the_detail_rule_is_told_alike_by_the_help_and_the_contract():
    """`notify --help` and the contract page say what the judge does with a status detail:
    line breaks become spaces, cut at MAX_STATUS_DETAIL; every kind in the DDL's comment and
    the table under it."""
    from click.testing import CliRunner

    from reporter.cli import cli as group
    from reporter.rows import MAX_STATUS_DETAIL, normalise_detail

    assert normalise_detail("a\nb" + "x" * 3000) == ("a b" + "x" * 3000)[:MAX_STATUS_DETAIL]
    limit = f"{MAX_STATUS_DETAIL:,}"
    shown = " ".join(CliRunner().invoke(group, ["notify", "--help"]).output.split())
    assert "line breaks become spaces" in shown and limit in shown
    contract = (ROOT / "docs" / "contract.md").read_text()
    assert f"line breaks become spaces, and it is cut at {limit} characters" in contract
    from reporter.hub_requests import Kind

    kinds = re.findall(r"^\| `([a-z_]+)` \| `[A-Z]", contract, re.M)
    assert kinds == [k.value for k in Kind] and "one of the nine kinds" in contract
