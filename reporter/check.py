"""`check`: prove config, outbox, credentials, home Region and permissions, step by step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reporter import config as config_mod
from reporter.errors import HubError, Outcome
from reporter.hub import CALL_OPERATIONS, Hub
from reporter.store import Store, StoreError

__all__ = ["run_checks"]

PROBE_TASK = "mgh-reporter-check"


def _probe_params(operation: str, stream: str) -> dict[str, object]:
    base: dict[str, object] = {"ProgressUpdateStream": stream, "MigrationTaskName": PROBE_TASK}
    if operation == "CreateProgressUpdateStream":
        return {"ProgressUpdateStreamName": stream}
    if operation == "NotifyMigrationTaskState":
        import datetime

        return {
            **base,
            "Task": {"Status": "NOT_STARTED"},
            "NextUpdateSeconds": 0,
            "UpdateDateTime": datetime.datetime.now(datetime.UTC),
        }
    if operation == "PutResourceAttributes":
        return {**base, "ResourceAttributeList": [{"Type": "FQDN", "Value": "check.invalid"}]}
    if operation == "AssociateCreatedArtifact":
        return {
            **base,
            "CreatedArtifact": {
                "Name": "arn:aws:ec2:us-east-1:123456789012:instance/i-0mghreportercheck"
            },
        }
    return base


def run_checks(path: Path, say: Callable[[str], None]) -> int:
    """Run every step in order; stop at the first failure. Returns the exit code."""

    def ok(step: str, detail: str) -> None:
        say(f"[ ok ] {step:<12} {detail}")

    def fail(step: str, detail: str, code: int) -> int:
        say(f"[FAIL] {step:<12} {detail}")
        return code

    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        return fail("config", str(exc), 1)
    ok("config", str(path))

    try:
        Store.open(cfg.outbox.path, cfg.outbox.busy_timeout_ms).close()
    except StoreError as exc:
        return fail("outbox", str(exc), 1)
    ok("outbox", f"{cfg.outbox.path} is initialised and writable")

    hub = Hub(cfg.aws, cfg.hub.region)
    source = hub.credential_source()
    if source is None:
        return fail(
            "credentials",
            "no AWS credentials found (environment, shared files, instance or container role)",
            4,
        )
    ok("credentials", f"found via {source}")

    try:
        region = hub.resolve_region()
    except HubError as err:
        code = 4 if err.failure.outcome is Outcome.BLOCKED else 1
        return fail("home region", str(err.failure.message or err.failure.code), code)
    ok("home region", f"{region}" + (" (auto)" if cfg.hub.region == "auto" else " (matches)"))

    stream = cfg.hub.progress_update_stream
    for operation in CALL_OPERATIONS:
        failure = hub.dry_run(operation, _probe_params(operation, stream))
        if failure.code == "DryRunOperation":
            ok("permission", f"mgh:{operation}")
        elif failure.outcome is Outcome.BLOCKED:
            return fail(
                "permission",
                f"mgh:{operation} is not allowed ({failure.code}): grant "
                f"IAM action mgh:{operation}",
                4,
            )
        else:
            return fail("permission", f"mgh:{operation} probe failed: {failure}", 1)
    try:
        hub.discovered_resources(stream, PROBE_TASK)
        ok("permission", "mgh:ListDiscoveredResources")
    except HubError as err:
        if err.failure.outcome is Outcome.BLOCKED:
            return fail(
                "permission",
                "mgh:ListDiscoveredResources is not allowed: grant IAM "
                "action mgh:ListDiscoveredResources",
                4,
            )
        ok("permission", "mgh:ListDiscoveredResources")
    say("all checks passed; nothing was changed at the Hub")
    return 0
