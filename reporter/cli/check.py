"""`check`: prove config, outbox, credentials, home Region and permissions, step by step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reporter import config as config_mod
from reporter.hub.client import (
    CALL_OPERATIONS,
    OPTIONAL_OPERATIONS,
    READ_OPERATIONS,
    VERIFY_READS,
    Hub,
)
from reporter.hub.errors import HubError, Outcome
from reporter.stores import Engine
from reporter.stores.contract import OutboxStore, StoreError

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
    if operation == "AssociateDiscoveredResource":
        return {**base, "DiscoveredResource": {"ConfigurationId": "d-server-mghreportercheck"}}
    if operation == "DisassociateDiscoveredResource":
        return {**base, "ConfigurationId": "d-server-mghreportercheck"}
    if operation == "DisassociateCreatedArtifact":
        return {**base, "CreatedArtifactName":
                "arn:aws:ec2:us-east-1:123456789012:instance/i-0mghreportercheck"}
    if operation == "NotifyApplicationState":
        import datetime

        return {"ApplicationId": "d-application-mghreportercheck", "Status": "NOT_STARTED",
                "UpdateDateTime": datetime.datetime.now(datetime.UTC)}
    if operation == "AssociateSourceResource":
        return {**base, "SourceResource": {"Name": "mgh-reporter-check"}}
    if operation == "DisassociateSourceResource":
        return {**base, "SourceResourceName": "mgh-reporter-check"}
    if operation in ("ListProgressUpdateStreams", "ListApplicationStates"):
        return {"MaxResults": 1}
    if operation in ("ListCreatedArtifacts", "ListDiscoveredResources",
                     "ListMigrationTaskUpdates", "ListSourceResources"):
        return {**base, "MaxResults": 1}
    if operation == "AssociateCreatedArtifact":
        return {
            **base,
            "CreatedArtifact": {
                "Name": "arn:aws:ec2:us-east-1:123456789012:instance/i-0mghreportercheck"
            },
        }
    return base


def _database_privileges(
    engine: Engine, store: OutboxStore, ok: Callable[[str, str], None],
    fail: Callable[[str, str, int], int]
) -> int:
    """PostgreSQL: the daemon's role holds what it needs on every table; some role (a tool's)
    may INSERT into the outbox. Nothing to probe for an SQLite file."""
    try:
        found = engine.privileges(store)
    except StoreError as exc:
        return fail("privileges", str(exc), 1)
    if found is None:
        return 0
    inserters = found.pop("inserters")
    lacking = {table: privs for table, privs in found.items() if privs}
    if lacking:
        detail = "; ".join(f"{', '.join(p)} on {t}" for t, p in sorted(lacking.items()))
        return fail("privileges", f"this role lacks {detail} (see the README's GRANTs)", 1)
    ok("privileges", "the daemon's role can use the outbox and its own schema")
    if not inserters:
        return fail("privileges", "no role may INSERT into the outbox (GRANT INSERT to tools)", 1)
    ok("privileges", f"roles that may INSERT into the outbox: {', '.join(inserters)}")
    return 0


def run_checks(path: Path, say: Callable[[str], None]) -> int:
    """Run every step in order; stop at the first failure. Returns the exit code."""

    def ok(step: str, detail: str) -> None:
        say(f"[ ok ] {step:<12} {detail}")

    def fail(step: str, detail: str, code: int) -> int:
        say(f"[FAIL] {step:<12} {detail}")
        return code

    def warn(step: str, detail: str) -> None:
        say(f"[warn] {step:<12} {detail}")

    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        return fail("config", str(exc), 1)
    ok("config", str(path))

    try:
        store = Engine.of(cfg.outbox).open()
    except StoreError as exc:
        return fail("outbox", str(exc), 1)
    try:
        ok("outbox", f"{cfg.outbox.where} is initialised and writable")
        code = _database_privileges(Engine.of(cfg.outbox), store, ok, fail)
        if code:
            return code
    finally:
        store.close()

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
    for operation, kind in OPTIONAL_OPERATIONS.items():
        failure = hub.dry_run(operation, _probe_params(operation, stream))
        if failure.code == "DryRunOperation":
            ok("permission", f"mgh:{operation}")
        elif failure.outcome is Outcome.HELD:  # allowed, but the Hub cannot reach ADS
            warn("permission", f"mgh:{operation}: {failure.message} (rows of kind {kind})")
        else:
            warn("permission", f"mgh:{operation} is not allowed ({failure.code}): needed only"
                 f" for rows of kind {kind}")
    needed = cfg.verify.every_seconds > 0  # the repair rounds read; else only `verify` does
    for operation in READ_OPERATIONS:
        try:
            hub.call(operation, _probe_params(operation, stream))
        except HubError as err:
            if err.failure.outcome is Outcome.BLOCKED:
                if operation == "ListDiscoveredResources" or (
                        needed and operation not in VERIFY_READS):
                    return fail("permission", f"mgh:{operation} is not allowed: grant IAM"
                                f" action mgh:{operation}", 4)
                warn("permission", f"mgh:{operation} is not allowed: `verify` needs it")
                continue
        ok("permission", f"mgh:{operation}")
    say("all checks passed; nothing was changed at the Hub")
    return 0
