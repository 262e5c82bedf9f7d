"""The gate: blocked and its recheck, the home-Region lookup and its backoff, the outage brake
judged over a window of recent calls; built from a state value, persisted as one record."""

from __future__ import annotations

import random
import time
from pathlib import Path

from freezegun import freeze_time

from reporter import config as config_mod
from reporter.config import PublishConfig
from reporter.delivery.gate import OUTAGE_MIN_CALLS, Blocked, CallResult, Gate, Hold, Open
from reporter.delivery.relay import Relay
from reporter.emulator import Emulator
from reporter.hub.client import Hub
from reporter.hub.errors import Failure, HubError, Outcome
from reporter.stores.contract import GateState
from reporter.stores.sqlite import SqliteStore

from .helpers import frozen_clock, insert, row_clock

NOW = 1_800_000_000.0
DOWN = Failure(Outcome.TRANSIENT, "ServiceUnavailableException", "down")
DENIED = Failure(Outcome.BLOCKED, "AccessDeniedException", "access denied")
NO_HOME = Failure(Outcome.BLOCKED, "HomeRegionNotSet", "home Region not set")


class Regions:
    """A scripted home-Region lookup (None: succeed with us-west-2)."""

    def __init__(self, *script: Failure | None, region: str | None = None) -> None:
        self.script = list(script)
        self.region = region
        self.lookups = 0

    def resolve_region(self) -> str:
        self.lookups += 1
        failure = self.script.pop(0) if self.script else None
        if failure is not None:
            raise HubError(failure, "GetHomeRegion")
        self.region = "us-west-2"
        return self.region


def _gate(state: GateState | None = None, regions: Regions | None = None,
          saved: list[GateState] | None = None, **publish: float) -> Gate:
    return Gate(state or GateState(), regions or Regions(region="us-west-2"),
                PublishConfig(**publish),  # type: ignore[arg-type]
                save=(saved.append if saved is not None else lambda s: None),
                rng=random.Random(4))


def test_a_blocked_state_holds_until_its_recheck_then_resumes():
    """Blocked by a lookup: no further lookup until the recheck; at the recheck a good lookup
    resumes delivery and the cleared record is saved."""
    regions, saved = Regions(NO_HOME), []
    gate = _gate(None, regions, saved, blocked_recheck_seconds=60)
    assert isinstance(gate.admit(NOW), Blocked) and regions.lookups == 1
    assert isinstance(gate.admit(NOW + 59), Blocked) and regions.lookups == 1
    assert gate.admit(NOW + 60) == Open()
    assert regions.lookups == 2 and gate.blocked is None
    assert saved[-1].blocked_reason is None and saved[-1].home_region == "us-west-2"


def test_a_fresh_start_rechecks_a_saved_block_at_once():
    """A saved block (a recheck an hour away) is looked at again by the first admission of a
    new gate (a restart, a reload): the cause fixed meanwhile costs no wait."""
    state = GateState(blocked_code="HomeRegionNotSet", blocked_reason="home Region not set",
                      blocked_since=NOW - 100, recheck_at=NOW + 3600)
    regions = Regions()
    gate = _gate(state, regions)
    assert gate.admit(NOW) == Open() and regions.lookups == 1 and gate.blocked is None
    still = _gate(state, Regions(NO_HOME))
    assert isinstance(still.admit(NOW), Blocked)
    assert still.state.blocked_since == NOW - 100  # the same block, not a new one


def test_a_blocking_lookup_keeps_the_first_since_and_pushes_the_recheck():
    """A recheck that fails again stays blocked, keeps `blocked_since`, re-checks later."""
    state = GateState(blocked_code="HomeRegionNotSet", blocked_reason="not set",
                      blocked_since=NOW - 100)
    gate = _gate(state, Regions(NO_HOME), blocked_recheck_seconds=30)
    assert isinstance(gate.admit(NOW), Blocked)
    assert gate.state.blocked_since == NOW - 100 and gate.state.recheck_at == NOW + 30


def test_a_block_of_another_cause_is_dated_from_that_cause():
    """Blocked by access denied, then (still blocked) by the home Region: `blocked_since` is
    when the home Region block began, not the earlier, different cause; the Region we knew is
    forgotten, so no report names a home Region beside "not set"."""
    state = GateState(home_region="us-west-2")
    gate = _gate(state, Regions(region="us-west-2"))
    gate.learn([DENIED], NOW)
    assert gate.state.blocked_since == NOW and gate.state.home_region == "us-west-2"
    gate.learn([DENIED], NOW + 50)
    assert gate.state.blocked_since == NOW  # the same cause: the same block
    gate.learn([Failure(Outcome.BLOCKED, "HomeRegionNotSetException", "not set")], NOW + 100)
    assert gate.state.blocked_code == "HomeRegionNotSetException"
    assert gate.state.blocked_since == NOW + 100 and gate.state.home_region is None


def test_recheck_now_skips_the_slow_schedule():
    """`recheck_now` (drain after a fix) makes the next admission look again."""
    state = GateState(blocked_code="X", blocked_reason="denied", recheck_at=NOW + 600)
    regions = Regions()
    gate = _gate(state, regions)
    gate.recheck_now()
    assert gate.admit(NOW) == Open() and regions.lookups == 1


def test_region_lookup_backs_off_on_its_own_schedule():
    """A failing GetHomeRegion is retried on the backoff schedule: ten admissions in one
    instant make one lookup, and the hold ends when the next lookup is due."""
    regions = Regions(DOWN, DOWN, DOWN)
    gate = _gate(regions=regions, backoff_base_seconds=1.0, backoff_max_seconds=20.0)
    now = NOW
    for attempt in range(1, 4):
        holds = [gate.admit(now) for _ in range(10)]
        assert regions.lookups == attempt
        hold = holds[0]
        assert isinstance(hold, Hold) and all(h == hold for h in holds)
        assert now <= hold.until <= now + min(20.0, 2 ** (attempt - 1))
        assert gate.hold_until == hold.until
        now = hold.until
    assert gate.admit(now) == Open() and gate.state.region_attempts == 0


def _learn(gate: Gate, results: list[CallResult], now: float, per_pass: int = 10) -> None:
    for i in range(0, len(results), per_pass):
        gate.learn(results[i:i + per_pass], now)


def test_random_failures_of_sixty_percent_never_engage_the_brake():
    """Thousands of calls failing at random 60% of the time never look like an outage."""
    rng = random.Random(11)
    gate = _gate()
    for step in range(400):
        _learn(gate, [DOWN if rng.random() < 0.6 else None for _ in range(10)], NOW + step)
        assert not gate.braking, step


def test_the_failure_ratio_needs_evidence():
    """Below OUTAGE_MIN_CALLS recent calls the ratio is 0 (no evidence); then it is the share
    of transient failures in the window, which forgets calls older than a minute."""
    gate = _gate()
    gate.learn([DOWN] * 20, NOW)
    assert OUTAGE_MIN_CALLS > 20 and gate.failure_ratio(NOW) == 0.0
    gate.learn([None] * 20, NOW)
    assert gate.failure_ratio(NOW) == 0.5
    gate.learn([None] * 20, NOW)  # the window keeps the last 50 calls
    assert gate.failure_ratio(NOW) == 10 / 50
    assert gate.failure_ratio(NOW + 61) == 0.0


def test_one_pass_of_two_failing_tasks_is_no_outage():
    """The one or two due tasks failing in a pass is not evidence of an outage."""
    gate = _gate()
    for step in range(20):
        gate.learn([DOWN, DOWN], NOW + step * 120)  # far apart: the window forgets
    assert not gate.braking


def test_a_full_outage_engages_the_brake_then_probes_then_releases():
    """Every call failing: the brake engages, admits one probe at a time at its own backoff
    (capped by outage_backoff_max_seconds), and the first answered probe releases it."""
    saved: list[GateState] = []
    gate = _gate(saved=saved, backoff_base_seconds=1.0, backoff_max_seconds=2.0,
                 outage_backoff_max_seconds=50.0)
    _learn(gate, [DOWN] * OUTAGE_MIN_CALLS, NOW)
    assert gate.braking and saved[-1].brake_attempts == 1
    hold = gate.admit(NOW)
    assert isinstance(hold, Hold) and hold.until == gate.state.brake_until
    now = gate.state.brake_until
    delays = []
    for attempt in range(2, 12):
        assert gate.admit(now) == Open(probe=True)
        gate.learn([DOWN], now)
        assert gate.state.brake_attempts == attempt
        delays.append(gate.state.brake_until - now)
        now = gate.state.brake_until
    assert max(delays) <= 50.0 and max(delays) > 2.0  # its own cap, not one call's
    gate.learn([None], now)
    assert not gate.braking and gate.admit(now) == Open(probe=False)
    assert gate.state.last_success_at == now


def test_a_refusal_is_an_answer_not_an_outage():
    """Rejections mean the Hub is up: they neither engage nor prolong the brake."""
    refused = Failure(Outcome.REJECTED, "InvalidInputException", "bad")
    gate = _gate()
    _learn(gate, [refused] * 100, NOW)
    assert not gate.braking


def test_a_blocking_call_blocks_delivery():
    """AccessDenied from any call blocks, logged once, with a recheck scheduled."""
    gate = _gate(blocked_recheck_seconds=60)
    gate.learn([None, DENIED], NOW)
    assert gate.blocked == DENIED and gate.state.recheck_at == NOW + 60
    assert isinstance(gate.admit(NOW + 1), Blocked)


def test_the_gate_record_round_trips_through_the_store(tmp_path: Path):
    """What the gate saves is what the next process loads (one typed record)."""
    store = SqliteStore.create(tmp_path / "o.db")
    state = GateState(blocked_code="AccessDeniedException", blocked_reason="denied",
                      blocked_since=NOW, recheck_at=NOW + 60, home_region="eu-west-1",
                      region_attempts=2, region_retry_at=NOW + 3, brake_attempts=4,
                      brake_until=NOW + 9, last_success_at=NOW - 5)
    store.save_gate(state)
    store.close()
    again = SqliteStore.open(tmp_path / "o.db")
    assert again.load_gate() == state
    again.close()


def test_an_outbox_of_0_1_0_migrates(tmp_path: Path):
    """An outbox written by 0.1.0 keeps its blocked state and home Region (string meta keys to
    the gate record) and the rows past its intake cursor (to the intake queue)."""
    path = tmp_path / "o.db"
    store = SqliteStore.create(path)
    conn = store.conn
    conn.execute("DELETE FROM _sqlite_migrations WHERE name IN"
                 " ('0002_gate_lanes_leases', '0003_inbox')")
    conn.execute("DROP TRIGGER mgh_outbox_intake")
    conn.execute("DROP TABLE mgh_inbox")
    conn.execute("DROP TABLE mgh_gate")
    conn.execute("DROP TABLE mgh_lanes")
    conn.execute("ALTER TABLE mgh_tasks DROP COLUMN lease_token")
    conn.execute("ALTER TABLE mgh_tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    conn.executemany("INSERT INTO outbox(kind, migration_task_name, status)"
                     " VALUES ('task_state', ?, 'IN_PROGRESS')", [(f"t{i}",) for i in range(9)])
    conn.executemany("INSERT INTO mgh_meta(key, value) VALUES (?, ?)", [
        ("blocked_reason", "access denied"), ("blocked_code", "AccessDeniedException"),
        ("blocked_since", "1700000000.5"), ("home_region", "us-west-2"), ("cursor", "7")])
    store.close()
    store = SqliteStore.create(path)
    state = store.load_gate()
    assert (state.blocked_reason, state.blocked_code, state.blocked_since, state.home_region) == (
        "access denied", "AccessDeniedException", 1700000000.5, "us-west-2")
    keys = [r[0] for r in store.conn.execute("SELECT key FROM mgh_meta")]
    assert keys == []  # the cursor went too: intake is queued by a trigger since 0003
    queued = [r[0] for r in store.conn.execute("SELECT row_id FROM mgh_inbox ORDER BY seq")]
    assert queued == [8, 9]  # what was past the old cursor
    store.close()


def test_region_lookup_backoff_end_to_end(aws_env: dict[str, str], emulator: Emulator,
                                          tmp_path: Path):
    """Over real HTTP: while the config service fails, passes in one instant make one lookup,
    lookups follow the relay's wake-up, and delivery starts on the first good lookup."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    insert(path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    emulator.state.faults.update(outage=True)
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"}, "outbox": {"path": str(path)},
                            "publish": {"backoff_base_seconds": 2.0}})
    with freeze_time(row_clock(path)) as frozen:
        store = SqliteStore.open(path)
        store.clock = clock = frozen_clock(frozen)
        relay = Relay(store, Hub(cfg.aws), cfg, clock=clock, rng=random.Random(3))
        lookups = []
        for _ in range(6):
            for _ in range(10):
                relay.run_once()
            lookups.append(emulator.state.op_count("GetHomeRegion"))
            wakeup = relay.status().wakeup
            assert wakeup is not None and wakeup > time.time()
            assert relay.quiet() or wakeup > time.time()
            frozen.tick(wakeup - time.time() + 0.001)
        assert lookups == [1, 2, 3, 4, 5, 6]
        emulator.state.faults.update(outage=False)
        relay.run_once()
        assert emulator.state.task("S", "t1").updates
        assert relay.gate.state.region_attempts == 0
        relay.close()
        store.close()


def test_a_saved_block_is_rechecked_once_then_lookups_back_off():
    """A restart rechecks a saved block at once; a lookup that then fails transiently (the Hub
    is down) waits its backoff like any lookup: no lookup per pass (it used to look up on
    every admission while the block stood)."""
    state = GateState(blocked_code="HomeRegionNotSet", blocked_reason="home Region not set",
                      blocked_since=NOW - 100, recheck_at=NOW + 3600)
    regions = Regions(DOWN, DOWN, None)
    gate = _gate(state, regions, backoff_base_seconds=5.0, backoff_max_seconds=60.0)
    assert isinstance(gate.admit(NOW), Hold) and regions.lookups == 1
    retry = gate.state.region_retry_at
    assert retry > NOW and gate.recheck_time == retry
    for moment in (NOW, NOW + 0.1, retry - 0.01):
        assert isinstance(gate.admit(moment), Blocked)
    assert regions.lookups == 1
    assert isinstance(gate.admit(retry), Hold) and regions.lookups == 2
    assert gate.state.region_attempts == 2 and gate.state.region_retry_at > retry
    assert gate.admit(gate.state.region_retry_at) == Open() and regions.lookups == 3
    assert gate.blocked is None and gate.state.region_attempts == 0


def test_after_a_block_a_failing_config_service_is_looked_up_no_more_than_ever(
        aws_env: dict[str, str], emulator: Emulator, tmp_path: Path):
    """Over real HTTP, an outbox whose saved gate is blocked against a config service that
    fails: passes in one instant make one lookup, the relay is quiet until the lookup's retry
    time, and the lookups follow the backoff as when it was never blocked."""
    path = tmp_path / "o.db"
    SqliteStore.create(path).close()
    insert(path, kind="task_state", migration_task_name="t1", status="IN_PROGRESS")
    cfg = config_mod.parse({"hub": {"progress_update_stream": "S"}, "outbox": {"path": str(path)},
                            "publish": {"backoff_base_seconds": 2.0}})
    with freeze_time(row_clock(path)) as frozen:
        store = SqliteStore.open(path)
        store.clock = clock = frozen_clock(frozen)
        store.save_gate(GateState(blocked_code="HomeRegionNotSet", blocked_reason="not set",
                                  blocked_since=time.time() - 60, recheck_at=time.time() + 600))
        emulator.state.faults.update(outage=True)
        relay = Relay(store, Hub(cfg.aws), cfg, clock=clock, rng=random.Random(3))
        lookups = []
        for _ in range(6):
            for _ in range(10):
                relay.run_once()
            lookups.append(emulator.state.op_count("GetHomeRegion"))
            relay.quiet()  # the first look sees the passes' own commits
            assert relay.quiet()
            frozen.tick(relay.gate.recheck_time - time.time() + 0.001)
        assert lookups == [1, 2, 3, 4, 5, 6]
        emulator.state.faults.update(outage=False)
        relay.run_once()
        relay.run_once()
        assert emulator.state.task("S", "t1").updates
        relay.close()
        store.close()
