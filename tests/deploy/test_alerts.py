"""The alert rules an operator pastes (deploy/prometheus/alerts.yml) pass `promtool check rules`
and their unit tests (`promtool test rules`), and the Grafana dashboard queries only metrics
the daemon exports. promtool comes from Debian's prometheus package, unpacked, not installed
(installing it would start a Prometheus server)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from reporter.daemon.metrics import Metrics

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
CACHE = Path("/var/tmp/mgh-reporter-promtool")


@pytest.fixture(scope="module")
def promtool() -> Path:
    tool = CACHE / "usr" / "bin" / "promtool"
    if tool.exists():
        return tool
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"apt-get download prometheus failed: {done.stderr}"
        deb = next(Path(tmp).glob("prometheus_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE)], check=True, timeout=300)
    assert tool.exists()
    return tool


def test_rules_are_valid_and_their_unit_tests_pass(promtool: Path):
    check = subprocess.run([str(promtool), "check", "rules", "alerts.yml"], cwd=RULES,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    tests = subprocess.run([str(promtool), "test", "rules", "alerts_test.yml"], cwd=RULES,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_rule_tests_can_fail(promtool: Path, tmp_path: Path):
    """The unit tests are sharp: the blocked alert with a 1-minute `for` fails them."""
    (tmp_path / "alerts.yml").write_text(
        (RULES / "alerts.yml").read_text().replace("for: 5m", "for: 1m", 1))
    (tmp_path / "alerts_test.yml").write_text((RULES / "alerts_test.yml").read_text())
    tests = subprocess.run([str(promtool), "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert tests.returncode != 0


def _exported() -> set[str]:
    metrics = Metrics()
    metrics.observe_call("NotifyMigrationTaskState", "ok", 0.03)  # labelled series appear
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = _exported() | {"up"}
    expressions = re.findall(r"expr: >-\n((?:\s{10}.*\n)+)|expr: (.*)",
                             (RULES / "alerts.yml").read_text())
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "mgh-reporter.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    text = " ".join(a or b for a, b in expressions) + " " + " ".join(queries)
    used = set(re.findall(r"\b(mgh_reporter_[a-z_]+|up)\b", text))
    assert used and used <= exported, used - exported
