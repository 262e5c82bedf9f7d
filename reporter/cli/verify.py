"""`verify`: read back what Migration Hub shows for every task the outbox has delivered and
report, field by field, where it differs from what was last sent (README: Verifying what the
Hub shows; exit 0 all match, 6 some task differs or is missing, 4 blocked, 1 error).
Read-only, paced under the configured rate (a share of it beside replicas), reads only
(`mgh:Describe*`, `mgh:List*`)."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from reporter.config import Config
from reporter.delivery.compare import Difference, compare, delivered, view_of
from reporter.delivery.replicas import Membership
from reporter.delivery.retry import Backoff
from reporter.exits import Exit
from reporter.hub.client import Hub
from reporter.hub.errors import HubError, Outcome
from reporter.hub.limiter import AdaptiveLimiter, RateLimiter
from reporter.stores import Engine
from reporter.stores.contract import TaskRecord

__all__ = ["Checked", "Verifier", "verify"]

T = TypeVar("T")
READ_TRIES = 6  # a read that keeps failing transiently (after the SDK's own retries)
APPLICATIONS_PER_READ = 100  # ListApplicationStates' ApplicationIds (1-100) and MaxResults


@dataclass
class Checked:
    """One task verified: its differences (empty: the Hub shows what we sent), or why it could
    not be read."""

    record: TaskRecord
    problems: list[Difference] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """One entry of `verify --json`'s `tasks` list."""
        entry: dict[str, Any] = {"stream": self.record.stream, "task": self.record.task,
                                 "ok": not self.problems and self.error is None,
                                 "problems": [p.to_json() for p in self.problems]}
        if self.error is not None:
            entry["error"] = self.error
        return entry


class Verifier:
    """Reads tasks' Hub views `workers` at a time (the Hub adapter's rate cap and concurrency
    limiter pace them) and compares each with what was last sent."""

    def __init__(self, hub: Hub, workers: int, pause: Callable[[float], Any] = time.sleep,
                 backoff: Backoff | None = None) -> None:
        self._hub = hub
        self._workers = max(1, workers)
        self._pause = pause
        self._backoff = backoff or Backoff(0.5, 5.0)
        self._rng = random.Random()
        self._blocked = threading.Event()

    def streams(self) -> set[str]:
        """The streams the Hub has (ListProgressUpdateStreams, every page)."""
        return self.retrying(lambda: {s["ProgressUpdateStreamName"] for s in self._hub.pages(
            "ListProgressUpdateStreams", {}, "ProgressUpdateStreamSummaryList", 100)})

    def retrying(self, read: Callable[[], T]) -> T:
        """One read, tried again with backoff while it fails transiently (throttling, 5xx,
        timeouts): READ_TRIES in all, then its HubError is raised."""
        for attempt in range(1, READ_TRIES + 1):
            try:
                return read()
            except HubError as err:
                if err.failure.outcome is not Outcome.TRANSIENT or attempt == READ_TRIES:
                    raise
                self._pause(self._backoff.delay(attempt, self._rng, err.failure.retry_after))
        raise AssertionError("unreachable")

    def check(self, records: Iterable[TaskRecord]) -> Iterator[Checked]:
        """Each task's result, in the order given; a blocking failure (credentials, home
        Region) stops the run and raises its HubError."""
        streams = self.streams()
        window: deque[Future[Checked]] = deque()  # bounded: memory stays flat however many
        with ThreadPoolExecutor(self._workers, thread_name_prefix="verify") as pool:
            try:
                for record in records:
                    window.append(pool.submit(self._one, record, streams))
                    if len(window) >= 2 * self._workers:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def applications(self, records: Iterable[TaskRecord]) -> list[dict[str, Any]]:
        """Each application whose state we sent and the Hub shows otherwise (or not at all):
        ListApplicationStates, up to 100 applications a call, every page."""
        sent = {r.task: r for r in records if r.status is not None}
        ids = sorted(sent)
        shown: dict[str, str | None] = {}
        for start in range(0, len(ids), APPLICATIONS_PER_READ):
            chunk = ids[start:start + APPLICATIONS_PER_READ]
            shown.update(self.retrying(lambda chunk=chunk: {  # type: ignore[misc]
                str(a["ApplicationId"]): a.get("ApplicationStatus") for a in self._hub.pages(
                    "ListApplicationStates", {"ApplicationIds": chunk}, "ApplicationStateList",
                    APPLICATIONS_PER_READ)}))
        return [{"application": app, "problems": [Difference(
                    "application_status", sent[app].status, shown.get(app)).to_json()]}
                for app in ids if shown.get(app) != sent[app].status]

    def _one(self, record: TaskRecord, streams: set[str]) -> Checked:
        if record.stream not in streams:
            return Checked(record, compare(record, None, f"stream {record.stream} not found"))
        for attempt in range(1, READ_TRIES + 1):
            if self._blocked.is_set():
                return Checked(record, error="stopped: delivery is blocked")
            try:
                return Checked(record, compare(record, view_of(self._hub, record,
                                                               history=True)))
            except HubError as err:
                if err.failure.outcome is Outcome.BLOCKED:
                    self._blocked.set()
                    raise
                if err.failure.outcome is not Outcome.TRANSIENT or attempt == READ_TRIES:
                    return Checked(record, error=f"{err.operation}: {err.failure}")
                self._pause(self._backoff.delay(attempt, self._rng, err.failure.retry_after))
        raise AssertionError("unreachable")


def verify(config: Config, stream: str | None, task: str | None, as_json: bool) -> int:
    """The `verify` command: check, print (lines or JSON), return the exit code."""
    log = structlog.get_logger("reporter.verify")
    started = time.monotonic()
    calls = [0]
    counting = threading.Lock()

    def count(operation: str, outcome: str, seconds: float) -> None:
        with counting:  # called from the reading threads
            calls[0] += 1

    publish = config.publish
    store = Engine.of(config.outbox).open_view()
    try:
        records = (r for r in store.task_pages(stream) if delivered(r)
                   and (task is None or r.task == task))
        membership = Membership(store, "verify", publish.interval_seconds,
                                publish.max_requests_per_second)
        budget = membership.beat()  # beside replicas: a share of the account's rate
        rate = budget.rate if budget is not None else publish.max_requests_per_second
        if budget is not None and budget.ready_at > store.clock():
            time.sleep(budget.ready_at - store.clock())
        hub = Hub(config.aws, config.hub.region, observer=count,
                  limiter=AdaptiveLimiter(publish.concurrency, publish.max_concurrency),
                  rate=RateLimiter(rate) if rate else None)
        try:
            verifier = Verifier(hub, publish.concurrency)
            verifier.retrying(hub.resolve_region)
            checked = verifier.check(records)
            apps = store.applications() if stream is None and task is None else []
            return _report(checked, calls, started, as_json,
                           lambda: verifier.applications(apps))
        except HubError as err:
            blocked = err.failure.outcome is Outcome.BLOCKED
            log.error("verify_blocked" if blocked else "verify_failed", operation=err.operation,
                      error_code=err.failure.code, reason=err.failure.message)
            if not blocked:
                print(f"verify failed: {err.operation}: {err.failure}", file=sys.stderr)
                return Exit.ERROR
            if not as_json:
                print(f"verify blocked: {err.failure.message}")
            return Exit.BLOCKED
        finally:
            membership.leave()
    finally:
        store.close()


def _report(checked: Iterator[Checked], calls: list[int], started: float,
            as_json: bool, applications: Callable[[], list[dict[str, Any]]]) -> int:
    """Print as results come (matching tasks are counted, never kept): a line per task that
    differs, is missing or could not be read, then each application that differs, then the
    summary; with `as_json` one object whose `tasks` list is written entry by entry, then its
    `applications` list (those that differ)."""
    counts = {"checked": 0, "matching": 0, "differing": 0, "missing": 0, "unreadable": 0}
    if as_json:
        sys.stdout.write('{"tasks": [')
    try:
        for c in checked:
            counts["checked"] += 1
            kind = ("unreadable" if c.error is not None else "matching" if not c.problems
                    else "missing" if c.problems[0].field == "task" else "differing")
            counts[kind] += 1
            if as_json:
                sys.stdout.write(("" if counts["checked"] == 1 else ", ")
                                 + json.dumps(c.to_json()))
            elif kind != "matching":
                print(_line(c))
        differing_apps = applications()
    except HubError as err:  # blocked part-way (credentials expired): the JSON still closes
        if as_json:
            sys.stdout.write("], " + json.dumps({**counts, "calls": calls[0], "blocked":
                                                 err.failure.message})[1:] + "\n")
        raise
    seconds = time.monotonic() - started
    counts["applications_differing"] = len(differing_apps)
    summary = {**counts, "calls": calls[0], "seconds": round(seconds, 3)}
    if not as_json:
        for app in differing_apps:
            print(f"application {app['application']}: " + "; ".join(
                f"{p['field']} sent {_shown(p['sent'])}, the Hub shows {_shown(p['hub'])}"
                for p in app["problems"]))
    structlog.get_logger("reporter.verify").info("verify_finished", **summary)
    if as_json:
        sys.stdout.write("], " + json.dumps({"applications": differing_apps, **summary})[1:]
                         + "\n")
    else:
        print(f"verified {counts['checked']} tasks in {seconds:.1f} s ({calls[0]} calls):"
              f" {counts['matching']} match, {counts['differing']} differ, {counts['missing']}"
              " missing at the Hub" + (f", {counts['unreadable']} could not be read"
                                       if counts["unreadable"] else "")
              + (f"; {len(differing_apps)} applications differ" if differing_apps else ""))
    if counts["differing"] or counts["missing"] or differing_apps:
        return Exit.DIFFERS
    return Exit.ERROR if counts["unreadable"] else Exit.OK


def _line(c: Checked) -> str:
    where = f"{c.record.stream}/{c.record.task}"
    if c.error is not None:
        return f"{where}: could not be read: {c.error}"
    if c.problems[0].field == "task":
        return f"{where}: missing at the Hub ({c.problems[0].hub})"
    return f"{where}: " + "; ".join(
        f"{p.field} sent {_shown(p.sent)}, the Hub shows {_shown(p.hub)}" for p in c.problems)


def _shown(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)
