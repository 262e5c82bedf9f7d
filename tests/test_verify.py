"""`verify`: the Hub's view read back (DescribeMigrationTask and every page of the lists) and
compared field by field with what was last sent; the emulator made to lie behind our back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reporter.delivery.compare import Difference, compare
from reporter.emulator import Emulator
from reporter.emulator.state import TaskRecord as HubTask
from reporter.hub.client import MAX_PAGES, _check_body
from reporter.hub.errors import GarbledResponse
from reporter.hub.view import HubView, kept_by_hub
from reporter.stores.contract import TaskRecord

from .engines import Engine
from .helpers import Cli

ARN = "arn:aws:ec2:us-west-2:123456789012:instance/i-0aaa"
WHEN = 1_800_000_000.0
READS = {"DescribeMigrationTask", "ListCreatedArtifacts", "ListDiscoveredResources",
         "ListMigrationTaskUpdates", "ListProgressUpdateStreams", "GetHomeRegion"}


def _record(**values: object) -> TaskRecord:
    base: dict[str, object] = {"stream": "S", "task": "t1", "status": "IN_PROGRESS",
                               "percent": 40, "detail": "copying", "update_time": WHEN + 0.7,
                               "attributes": (("IPV4_ADDRESS", "10.0.0.1"), ("FQDN", "a.b"))}
    return TaskRecord(**{**base, **values})  # type: ignore[arg-type]


def _view(**values: object) -> HubView:
    base: dict[str, object] = {"status": "IN_PROGRESS", "percent": 40, "detail": "copying",
                               "update_time": WHEN,
                               "attributes": frozenset({("FQDN", "a.b"), ("IPV4_ADDRESS",
                                                                          "10.0.0.1")})}
    return HubView(**{**base, **values})  # type: ignore[arg-type]


def test_compare_names_each_field_that_differs():
    """Each field compared on its own; the attribute list as a set; UpdateDateTime within a
    millisecond; a task the Hub lacks is the `task` field."""
    assert compare(_record(), _view()) == []
    assert compare(_record(), _view(status="COMPLETED", percent=None)) == [
        Difference("status", "IN_PROGRESS", "COMPLETED"),
        Difference("progress_percent", 40, None)]
    assert compare(_record(), _view(detail=None, update_time=WHEN + 60)) == [
        Difference("status_detail", "copying", None),
        Difference("update_date_time", "2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z")]
    problems = compare(_record(), _view(attributes=frozenset({("FQDN", "a.b")})))
    assert [p.field for p in problems] == ["resource_attributes"]
    assert problems[0].sent == [{"Type": "FQDN", "Value": "a.b"},
                                {"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}]
    assert compare(_record(), None, "stream S not found") == [
        Difference("task", "t1", "stream S not found")]


def test_compare_follows_the_hubs_own_rules():
    """VM fields without VM_MANAGER_ID are discarded by the Hub (never a difference); another
    tool's artifacts and the auto-mapping are not differences; ours missing are."""
    vm = (("VM_NAME", "db"), ("FQDN", "a.b"))
    assert kept_by_hub(vm) == frozenset({("FQDN", "a.b")})
    assert kept_by_hub((("VM_MANAGER_ID", "vc"), *vm)) == frozenset(
        {("VM_MANAGER_ID", "vc"), ("VM_NAME", "db"), ("FQDN", "a.b")})
    assert compare(_record(attributes=vm), _view(attributes=frozenset({("FQDN", "a.b")}))) == []
    record = _record(artifacts=(ARN,), resources=("d-1",))
    view = _view(artifacts=frozenset({ARN, "arn:aws:ec2:us-west-2:123456789012:image/ami-1"}),
                 resources=frozenset({"d-1", "d-auto"}))
    assert compare(record, view) == []
    assert [p.field for p in compare(record, _view(artifacts=frozenset(),
                                                   resources=frozenset({"d-auto"})))] == [
        "artifact_name", "configuration_id"]
    assert compare(_record(status=None, attributes=None), _view(status="COMPLETED")) == []


def _deliver(cli: Cli, tasks: int = 6) -> None:
    assert cli("init").returncode == 0
    for i in range(tasks):
        stream = ["--stream", "Other"] if i == 4 else []
        assert cli("put-attributes", f"t{i}", "--attribute", "IPV4_ADDRESS=10.0.0.1",
                   "--attribute", f"FQDN=t{i}.example", *stream).returncode == 0
        assert cli("notify", f"t{i}", "--status", "IN_PROGRESS", "--percent", "40",
                   "--detail", "copying", *stream).returncode == 0
    assert cli("associate-artifact", "t3", ARN).returncode == 0
    assert cli("drain").returncode == 0


def test_verify_finds_what_the_hub_lost_or_changed(cli: Cli, emulator: Emulator):
    """A changed status, a changed percent, a missing attribute, a missing artifact, a deleted
    stream and a lost task: each named with what we sent and what the Hub shows; exit 6. The
    run only reads."""
    _deliver(cli)
    ok = cli("verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified 6 tasks" in ok.stdout and "6 match" in ok.stdout
    hub = emulator.state
    hub.change_task("ToolA", "t0", {"Status": "COMPLETED"})
    hub.change_task("ToolA", "t1", {"ProgressPercent": 90})
    hub.change_task("ToolA", "t2", attributes=[{"Type": "IPV4_ADDRESS", "Value": "10.0.0.1"}])
    hub.change_task("ToolA", "t3", artifacts=[])
    hub.delete_stream("Other")
    hub.lose_task("ToolA", "t5")
    before = len(hub.calls)
    result = cli("verify", "--json")
    assert result.returncode == 6, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["checked"], report["matching"], report["differing"], report["missing"]) == (
        6, 0, 4, 2)
    problems = {t["task"]: t["problems"] for t in report["tasks"]}
    assert problems["t0"] == [{"field": "status", "sent": "IN_PROGRESS", "hub": "COMPLETED"}]
    assert problems["t1"] == [{"field": "progress_percent", "sent": 40, "hub": 90}]
    assert [p["field"] for p in problems["t2"]] == ["resource_attributes"]
    assert problems["t3"] == [{"field": "artifact_name", "sent": [ARN], "hub": []}]
    assert problems["t4"] == [{"field": "task", "sent": "t4", "hub": "stream Other not found"}]
    assert problems["t5"] == [{"field": "task", "sent": "t5", "hub": "not found"}]
    assert {c["operation"] for c in hub.calls[before:]} <= READS
    lines = cli("verify", "--stream", "ToolA", "--task", "t1")
    assert lines.returncode == 6
    assert "ToolA/t1: progress_percent sent 40, the Hub shows 90" in lines.stdout
    assert "verified 1 tasks" in lines.stdout


def test_verify_reads_every_page(cli: Cli, emulator: Emulator):
    """More streams than one ListProgressUpdateStreams page holds and more artifacts than one
    ListCreatedArtifacts page: every page is read, and everything matches."""
    assert cli("init").returncode == 0
    arns = [f"arn:aws:ec2:us-west-2:123456789012:instance/i-{n:04d}" for n in range(23)]
    for arn in arns:
        assert cli("associate-artifact", "t1", arn).returncode == 0
    assert cli("drain").returncode == 0
    for n in range(120):  # other tools' streams, ahead of ours in name order
        emulator.state.streams[f"A-other-{n:03d}"] = {"x": HubTask("x")}
    before = len(emulator.state.calls)
    result = cli("verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [c["operation"] for c in emulator.state.calls[before:]]
    assert calls.count("ListProgressUpdateStreams") == 2
    assert calls.count("ListCreatedArtifacts") == 3
    emulator.state.change_task("ToolA", "t1", artifacts=arns[:-1])  # the last page's last item
    report = json.loads(cli("verify", "--json").stdout)
    assert report["tasks"][0]["problems"][0]["field"] == "artifact_name"


def test_verify_blocked_and_paced(cli: Cli, emulator: Emulator,
                                  make_config: Callable[..., Path]):
    """No home Region: exit 4 with the reason. A rate cap paces the reads (a lower bound on
    the time, which no slow machine can break)."""
    _deliver(cli)
    paced = make_config("paced.toml", publish={"max_requests_per_second": 4.0})
    result = cli("verify", "--json", config=paced)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["calls"] >= 8
    assert report["seconds"] >= (report["calls"] - 4) / 4.0 - 0.2
    emulator.state.home_region = None
    blocked = cli("verify")
    assert blocked.returncode == 4 and "home Region is not set" in blocked.stdout


def test_verify_shows_a_manual_mapping_on_both_engines(engine: Engine, engine_cli: Cli,
                                                       emulator: Emulator):
    """A delivered discovered_resource is compared (ConfigurationId among the Hub's); an
    auto-mapping beside it is never a difference; its loss is."""
    assert engine_cli("init").returncode == 0
    engine.insert(kind="discovered_resource", migration_task_name="t1",
                  configuration_id="d-server-000000000007")
    engine.insert(kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    assert engine_cli("drain", "--timeout", "30").returncode == 0
    emulator.state.task("ToolA", "t1").mapped_to = "d-auto"
    assert engine_cli("verify").returncode == 0
    emulator.state.change_task("ToolA", "t1", discovered=[])
    result = engine_cli("verify", "--json")
    assert result.returncode == 6
    assert json.loads(result.stdout)["tasks"][0]["problems"] == [
        {"field": "configuration_id", "sent": ["d-server-000000000007"], "hub": ["d-auto"]}]


def test_check_probes_the_reads_and_the_new_writes(cli: Cli, emulator: Emulator,
                                                   make_config: Callable[..., Path]):
    """`check` proves the reads `verify` needs and the manual-mapping writes: a missing one is
    a warning, unless the repair rounds are on (then a read is required: exit 4)."""
    assert cli("init").returncode == 0
    result = cli("check")
    assert result.returncode == 0, result.stdout
    for action in ("DescribeMigrationTask", "ListCreatedArtifacts", "ListProgressUpdateStreams",
                   "AssociateDiscoveredResource", "DisassociateDiscoveredResource",
                   "DisassociateCreatedArtifact"):
        assert f"[ ok ] permission   mgh:{action}" in result.stdout
    emulator.state.faults.update(deny={"DescribeMigrationTask", "AssociateDiscoveredResource"})
    warned = cli("check")
    assert warned.returncode == 0, warned.stdout
    assert "[warn] permission   mgh:DescribeMigrationTask is not allowed" in warned.stdout
    assert "[warn] permission   mgh:AssociateDiscoveredResource is not allowed" in warned.stdout
    repairing = make_config("repair.toml", verify={"every_seconds": 60})
    failed = cli("check", config=repairing)
    assert failed.returncode == 4
    assert "[FAIL] permission   mgh:DescribeMigrationTask is not allowed" in failed.stdout


def test_verify_says_what_failed_and_keeps_its_json_whole(cli: Cli, emulator: Emulator):
    """A Hub that keeps failing: exit 1 with the operation and the error, no traceback. A
    permission lost part-way: exit 4, and `--json` still prints one whole object that says
    so."""
    _deliver(cli, tasks=2)
    emulator.state.faults.update(fail_operations={"ListProgressUpdateStreams"})
    failed = cli("verify")
    assert failed.returncode == 1, failed.stderr
    assert "verify failed: ListProgressUpdateStreams" in failed.stderr
    assert "Traceback" not in failed.stderr
    emulator.state.faults.update(fail_operations=set(), deny={"DescribeMigrationTask"})
    blocked = cli("verify", "--json")
    assert blocked.returncode == 4, blocked.stderr
    report = json.loads(blocked.stdout)
    assert report["tasks"] == [] and "DescribeMigrationTask" in report["blocked"]


def test_verify_rides_out_throttling_of_every_read(cli: Cli, emulator: Emulator):
    """Throttled reads (the home Region, the stream list, a task) are tried again with
    backoff: the run still exits 0 (a single throttled call used to be exit 1)."""
    _deliver(cli, tasks=2)
    emulator.state.faults.update(throttle_next={
        "GetHomeRegion": 3, "ListProgressUpdateStreams": 3, "DescribeMigrationTask": 3})
    result = cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert not emulator.state.faults.throttle_next  # every throttle was met


@pytest.mark.parametrize("pages", ["repeat", "endless"])
def test_a_list_that_never_ends_ends_the_read(cli: Cli, emulator: Emulator, pages: str):
    """A reply whose NextToken repeats, or never stops coming: the read ends as an error
    naming why (a bounded number of pages), and `verify` exits 1 instead of looping."""
    _deliver(cli, tasks=2)
    emulator.state.faults.update(pages=pages)
    started = time.monotonic()
    result = cli("verify", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    code = "RepeatedNextToken" if pages == "repeat" else "EndlessPages"
    assert f"verify failed: ListProgressUpdateStreams: {code}" in result.stderr
    assert "Traceback" not in result.stderr
    lists = emulator.state.op_count("ListProgressUpdateStreams")
    assert lists <= (2 if pages == "repeat" else MAX_PAGES + 1)
    assert time.monotonic() - started < 100


@pytest.mark.parametrize("body", [b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
                                  b'{"HomeRegion": "' + b"a" * (8 << 20) + b'"}'])
def test_a_deep_or_huge_body_is_garbled_before_the_parser(body: bytes):
    """botocore's before-parse hook: a 2xx body nested 100,000 deep, or of 8 MiB, is a garbled
    answer (a transient failure), never handed to the recursive parser."""
    with pytest.raises(GarbledResponse):
        _check_body({"status_code": 200, "body": body, "headers": {}})
    _check_body({"status_code": 200, "body": b'{"HomeRegion": "us-west-2"}', "headers": {}})


def test_a_hostile_body_is_refused_before_parsing(cli: Cli, emulator: Emulator):
    """Over HTTP, a 2xx JSON body nested 100,000 deep for every task read: each read is a
    garbled answer, tried again, then the task is unreadable (exit 1), no traceback."""
    _deliver(cli, tasks=1)
    emulator.state.faults.update(garble=1.0, garble_kind="deep",
                                 garble_only={"DescribeMigrationTask"})
    result = cli("verify", "--json", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    tasks = json.loads(result.stdout)["tasks"]
    assert tasks and all("GarbledResponse" in t["error"] for t in tasks)
    assert "Traceback" not in result.stderr


def test_verify_reads_the_hubs_own_history(cli: Cli, emulator: Emulator, outbox_path: Path):
    """Every state the Hub recorded (ListMigrationTaskUpdates, every page), judged by date:
    an older state applied after a newer one (planted at the Hub) is a `history` problem, as is
    a history without our last state; exit 6. Reads: the Region, the stream list, then two
    per task (its description and its history)."""
    from datetime import UTC, datetime

    from .helpers import insert

    assert cli("init").returncode == 0
    base = int(time.time()) - 600  # states a minute apart, in the past (never today's date)
    stamps = [datetime.fromtimestamp(base + 60 * n, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
              for n in range(3)]
    for n, percent in enumerate((10, 50, 90)):
        for task in ("t1", "t2", "t3"):
            insert(outbox_path, kind="task_state", migration_task_name=task,
                   status="IN_PROGRESS", progress_percent=percent,
                   update_date_time=stamps[n])
        assert cli("drain").returncode == 0  # each state sent, in order
    before = len(emulator.state.calls)
    clean = json.loads(cli("verify", "--json").stdout)
    assert clean["differing"] == 0 and clean["matching"] == 3, clean
    calls = [c["operation"] for c in emulator.state.calls[before:]]
    assert len(calls) == 2 + 2 * 3 and calls.count("ListMigrationTaskUpdates") == 3, calls
    newest = emulator.state.task("ToolA", "t1").updates[-1]["UpdateDateTime"]
    emulator.state.change_task("ToolA", "t1", task_fields={"ProgressPercent": 90},
                               update_date_time=newest - 60)  # older, applied last
    emulator.state.task("ToolA", "t2").updates.pop()  # the Hub lost our last state
    result = cli("verify", "--json")
    assert result.returncode == 6
    report = {t["task"]: t for t in json.loads(result.stdout)["tasks"]}
    t1 = {p["field"]: p for p in report["t1"]["problems"]}
    assert "an older state was applied after a newer one" in t1["history"]["hub"]
    assert t1["history"]["sent"] == stamps[2]
    t2 = {p["field"]: p for p in report["t2"]["problems"]}
    assert t2["history"]["hub"] == "not among the 2 states the Hub recorded"
    assert report["t3"]["ok"]
    human = cli("verify").stdout
    assert "ToolA/t1: " in human and f"history sent '{stamps[2]}'" in human
