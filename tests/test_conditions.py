"""Pure logic of operator output: conditions from repeated failures, the drain's tally and
summary, durations, failure kinds (no I/O, explicit times)."""

from __future__ import annotations

import pytest
from botocore import exceptions as bx

from reporter.cli.dead_letter_actions import parse_age
from reporter.cli.drain_tally import DrainTally, summary_line
from reporter.delivery.conditions import REJECTIONS_PER_WINDOW, ConditionTracker
from reporter.hub.errors import Failure, GarbledResponse, Outcome, classify

THROTTLED = Failure(Outcome.TRANSIENT, "ThrottlingException", "Rate exceeded")
UNAVAILABLE = Failure(Outcome.TRANSIENT, "ServiceUnavailableException", "try later")


def _names(lines: list) -> list[str]:
    return [line.event for line in lines]


def test_a_condition_starts_once_summarises_per_window_and_clears():
    t = ConditionTracker(summary_seconds=10)
    first = t.failed(0.0, THROTTLED, "NotifyMigrationTaskState", 1.5, task="a", attempt=1)
    assert _names(first) == ["condition_started"]
    assert first[0].level == "warning"
    assert first[0].fields["task"] == "a" and first[0].fields["error_code"] == "ThrottlingException"
    quiet = []
    for i in range(1, 100):  # 99 more failures within 9.9 s: nothing more yet
        quiet += t.failed(i * 0.1, THROTTLED, "ImportMigrationTask", i * 0.01)
    assert quiet == []
    summary = t.failed(10.0, THROTTLED, "NotifyMigrationTaskState", 0.2)
    assert _names(summary) == ["condition_ongoing"]
    fields = summary[0].fields
    assert fields["failures"] == 99 and fields["failures_total"] == 100
    assert fields["operations"] == {"ImportMigrationTask": 99}  # the first was in the start
    assert fields["worst_delay"] == 0.99 and fields["error_codes"] == {"ThrottlingException": 99}
    t.succeeded(10.5)
    assert t.tick(15.0) == []  # recovered, but not quiet for a whole window yet
    cleared = t.tick(20.0)
    assert _names(cleared) == ["condition_cleared"]
    assert cleared[0].fields["failures"] == 101 and t.active == []
    assert _names(t.failed(21.0, THROTTLED, "X", 1.0)) == ["condition_started"]  # anew


def test_a_condition_without_a_success_never_clears_and_says_so_at_exit():
    t = ConditionTracker(summary_seconds=5)
    t.failed(0.0, UNAVAILABLE, "NotifyMigrationTaskState", 1.0)
    assert t.tick(100.0) == []  # nothing new since the start: no empty summary
    t.failed(101.0, UNAVAILABLE, "NotifyMigrationTaskState", 2.0)
    end = t.finish(102.0)
    assert _names(end) == ["condition_ongoing"] and end[0].fields["ongoing_at_exit"]
    assert end[0].fields["condition"] == "server_errors"


def test_a_recovered_condition_clears_at_exit():
    t = ConditionTracker(summary_seconds=60)
    t.failed(0.0, THROTTLED, "A", 1.0)
    t.failed(1.0, THROTTLED, "A", 1.0)
    t.succeeded(2.0)
    assert _names(t.finish(3.0)) == ["condition_ongoing", "condition_cleared"]


def test_kinds_are_separate_conditions():
    t = ConditionTracker(summary_seconds=60)
    assert _names(t.failed(0.0, THROTTLED, "A", 1.0)) == ["condition_started"]
    assert _names(t.failed(0.1, UNAVAILABLE, "A", 1.0)) == ["condition_started"]
    assert t.active == ["server_errors", "throttling"]


def test_rejections_are_logged_up_to_a_burst_then_counted():
    t = ConditionTracker(summary_seconds=10)
    lines = []
    for i in range(REJECTIONS_PER_WINDOW + 30):
        lines += t.rejected(i * 0.01, f"status: must be one of ... (got {i})", {"row": i})
    assert _names(lines) == ["row_rejected"] * REJECTIONS_PER_WINDOW
    assert lines[0].fields == {"row": 0, "reason": "status: must be one of ... (got 0)"}
    folded = t.tick(10.0)
    assert _names(folded) == ["rows_rejected"]
    assert folded[0].fields["rows"] == 30 and folded[0].fields["by_rule"] == {"status": 30}
    assert _names(t.rejected(10.5, "x: y", {})) == ["row_rejected"]  # a new window


@pytest.mark.parametrize(
    ("failure", "condition"),
    [
        (THROTTLED, "throttling"),
        (Failure(Outcome.TRANSIENT, "TooManyRequestsException", ""), "throttling"),
        (UNAVAILABLE, "server_errors"),
        (Failure(Outcome.TRANSIENT, "Weird", "", server_error=True), "server_errors"),
        (Failure(Outcome.TRANSIENT, "RequestTimeout", ""), "timeouts"),
        (classify(bx.ReadTimeoutError(endpoint_url="http://x")), "timeouts"),
        (classify(bx.EndpointConnectionError(endpoint_url="http://x")), "network"),
        (classify(ConnectionRefusedError(111, "refused")), "network"),
        (classify(GarbledResponse(200, "text/html", b"<html>")), "garbled_responses"),
        (Failure(Outcome.TRANSIENT, "Unknown", ""), "other_errors"),
    ],
)
def test_failure_conditions(failure: Failure, condition: str):
    assert failure.condition == condition


def test_classify_marks_http_5xx_as_server_errors():
    err = bx.ClientError(
        {"Error": {"Code": "Gateway", "Message": "bad"},
         "ResponseMetadata": {"HTTPStatusCode": 502}}, "NotifyMigrationTaskState")
    assert classify(err).condition == "server_errors"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("12h", 43200), ("7d", 604800), ("1w", 604800), ("90s", 90),
     ("1d12h", 129600), ("1.5h", 5400), (" 2D ", 172800)],
)
def test_parse_age(text: str, seconds: float):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7 parsecs", "-1d", "1d-2h", "7dd", "1y"])
def test_parse_age_names_the_rule(text: str):
    with pytest.raises(ValueError, match="a number and a unit"):
        parse_age(text)


def test_drain_tally_pace_eta_and_summary():
    tally = DrainTally(started=100.0)
    snap = tally.snapshot(100.0, pending=100, tasks_left=50, retrying=0)
    assert snap.total == 100 and snap.eta_seconds is None and snap.calls_per_second == 0
    tally.add(101.0, sent=10, calls=20)
    tally.add(102.0, sent=10, superseded=5, rejected_at_intake=1, calls=20)
    snap = tally.snapshot(102.0, pending=74, tasks_left=30, retrying=4)
    assert snap.done == 26 and snap.total == 100
    assert snap.calls_per_second == 20.0  # 20 calls in the last second of the window
    assert snap.eta_seconds == pytest.approx(74 / 16)
    assert snap.fields()["retries_waiting"] == 4
    tally.add(200.0, sent=1)  # old samples leave the 10 s window
    assert tally.snapshot(200.0, 0, 0, 0).eta_seconds == 0.0
    summary = tally.summary(5, 203.0, 0, {"sent": 21, "superseded": 5, "rejected": 2}, None)
    assert summary["outcome"] == "rejected" and summary["seconds"] == 103.0
    assert summary["rejected_at_intake"] == 1 and summary["rejected"] == 2
    line = summary_line(summary)
    assert line == ("drain rejected: 21 sent, 5 superseded, 2 rejected, 0 still pending in"
                    " 103.0 s; see `mgh-reporter dead-letters list`")
    assert summary_line(tally.summary(3, 203.0, 7, {}, "interrupted")).startswith(
        "drain pending: 0 sent, 0 superseded, 0 rejected, 7 still pending in 103.0 s"
        " (interrupted)")


def test_activity_is_one_line_per_period_and_none_when_idle():
    from reporter.delivery.conditions import ActivityTracker

    a = ActivityTracker(summary_seconds=10)
    assert a.add(0.0, sent=3) == []
    assert a.add(5.0, sent=2, superseded=1, rejected_at_intake=1) == []
    line = a.add(10.0, sent=1)
    assert [x.event for x in line] == ["delivered"]
    assert line[0].fields == {"sent": 6, "superseded": 1, "rejected_at_intake": 1,
                              "rejected_by_hub": 0, "failed_lanes": 0, "seconds": 10.0}
    assert a.add(15.0) == [] and a.add(25.0) == []  # nothing happened: nothing said


@pytest.mark.parametrize(("given", "kept"), [(0, 0.0), (3, 3.0), (None, None)])
def test_a_throttle_keeps_the_retry_after_the_hub_named_zero_included(given: int | None,
                                                                       kept: float | None):
    """RetryAfterSeconds 0 is the Hub saying "at once", not "nothing said"."""
    body: dict[str, object] = {"Error": {"Code": "ThrottlingException", "Message": "slow"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}
    if given is not None:
        body["RetryAfterSeconds"] = given
    failure = classify(bx.ClientError(body, "NotifyMigrationTaskState"))  # type: ignore[arg-type]
    assert failure.outcome is Outcome.TRANSIENT and failure.throttled
    assert failure.retry_after == kept
