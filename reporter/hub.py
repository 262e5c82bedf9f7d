"""boto3 clients for Migration Hub (home Region resolved) and one call per request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from reporter.config import AwsConfig
from reporter.errors import (
    HOME_REGION_NOT_SET,
    Failure,
    GarbledResponse,
    HubError,
    Outcome,
    classify,
)
from reporter.limiter import AdaptiveLimiter, RateLimiter
from reporter.rows import Request

__all__ = ["CALL_OPERATIONS", "Hub", "HubError", "Observer"]

# Every write the daemon makes (for `check` probes and the IAM policy).
CALL_OPERATIONS = (
    "CreateProgressUpdateStream",
    "ImportMigrationTask",
    "NotifyMigrationTaskState",
    "PutResourceAttributes",
    "AssociateCreatedArtifact",
)
FALLBACK_REGION = "us-west-2"

Observer = Callable[[str, str, float], None]  # (operation, outcome, seconds)


def _check_body(response_dict: dict[str, Any], **_: Any) -> None:
    """botocore `before-parse` hook: a 2xx answer must be a JSON object, else it did not come
    from the Hub (a proxy's page, a truncated body) and must not count as delivered."""
    status = int(response_dict.get("status_code") or 0)
    if not 200 <= status < 300:
        return
    body = response_dict.get("body") or b""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        headers = response_dict.get("headers") or {}
        raise GarbledResponse(status, str(headers.get("content-type", "")), bytes(body))


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


class Hub:
    """Migration Hub in the home Region; thread-safe (boto3 clients are, sessions are not)."""

    def __init__(
        self,
        aws: AwsConfig,
        region: str = "auto",
        observer: Observer | None = None,
        limiter: AdaptiveLimiter | None = None,
        rate: RateLimiter | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self._configured_region = region
        self._session = session or boto3.session.Session()
        retries: Any = {"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts}
        self._boto_config = BotoConfig(
            retries=retries,
            connect_timeout=aws.connect_timeout_seconds,
            read_timeout=aws.read_timeout_seconds,
            max_pool_connections=64,
            user_agent_extra="mgh-reporter",
        )
        self._observer = observer
        self._limiter = limiter
        self._rate = rate
        self._lock = threading.Lock()
        self._mgh: Any = None
        self.region: str | None = None

    def set_rate(self, rate: RateLimiter | None) -> None:
        """Replace the hard rate cap (config reload)."""
        self._rate = rate

    # -- regions ---------------------------------------------------------------------------
    def _config_client(self) -> Any:
        region = self._configured_region
        if region == "auto":
            region = self._session.region_name or FALLBACK_REGION
        return self._make_client("migrationhub-config", region)

    def _make_client(self, service: str, region: str) -> Any:
        client = self._session.client(service, region_name=region, config=self._boto_config)
        client.meta.events.register("before-parse", _check_body)
        return client

    def home_region(self) -> str | None:
        """The account's home Region from GetHomeRegion (None when it is not set)."""
        result = self._call(self._config_client(), "GetHomeRegion", {})
        home = result.get("HomeRegion")
        return str(home) if home else None

    def resolve_region(self) -> str:
        """Decide where writes go; raise HubError(BLOCKED) if only a person can fix it."""
        home = self.home_region()
        if home is None:
            raise HubError(
                Failure(Outcome.BLOCKED, "HomeRegionNotSet", HOME_REGION_NOT_SET),
                "GetHomeRegion",
            )
        if self._configured_region not in ("auto", home):
            raise HubError(
                Failure(
                    Outcome.BLOCKED,
                    "NotHomeRegion",
                    f"[hub] region is {self._configured_region} but the account's Migration Hub "
                    f'home Region is {home}: set region = "{home}" or "auto"',
                ),
                "GetHomeRegion",
            )
        with self._lock:
            if self.region != home or self._mgh is None:
                self._mgh = self._make_client("mgh", home)
                self.region = home
        return home

    def _client(self) -> Any:
        if self._mgh is None:
            self.resolve_region()
        return self._mgh

    # -- calls -----------------------------------------------------------------------------
    def _call(self, client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._rate is not None:
            self._rate.acquire()
        ticket = self._limiter.acquire() if self._limiter is not None else 0
        started = time.monotonic()
        throttled = False
        outcome = "ok"
        try:
            result: dict[str, Any] = getattr(client, _snake(operation))(**params)
            return result
        except Exception as exc:
            failure = classify(exc)
            throttled = failure.throttled
            outcome = "throttled" if throttled else failure.outcome.value
            if failure.code == "DryRunOperation":
                outcome = "dry_run"
            raise HubError(failure, operation) from None
        finally:
            if self._limiter is not None:
                self._limiter.release(throttled, ticket)
            if self._observer is not None:
                self._observer(operation, outcome, time.monotonic() - started)

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One Migration Hub call in the home Region, errors classified.

        An InvalidInputException is only a rejection if we are still in the home Region;
        otherwise it is the home-Region rule and delivery is blocked.
        """
        try:
            return self._call(self._client(), operation, params)
        except HubError as err:
            if err.failure.code == "InvalidInputException":
                home = self.home_region()
                if home != self.region:
                    with self._lock:
                        self._mgh = None
                    where = f"is {home}" if home else "is not set"
                    raise HubError(
                        Failure(
                            Outcome.BLOCKED,
                            "NotHomeRegion",
                            f"calls to {self.region} are refused: the account's Migration Hub "
                            f"home Region {where} ({err.failure.message})",
                        ),
                        operation,
                    ) from None
            raise

    def create_stream(self, stream: str) -> None:
        """CreateProgressUpdateStream (idempotent at the Hub)."""
        self.call("CreateProgressUpdateStream", {"ProgressUpdateStreamName": stream})

    def import_task(self, stream: str, task: str) -> None:
        """ImportMigrationTask (idempotent at the Hub)."""
        self.call(
            "ImportMigrationTask", {"ProgressUpdateStream": stream, "MigrationTaskName": task}
        )

    def send(self, request: Request) -> None:
        """The call a validated row becomes."""
        self.call(request.operation, request.params())

    def discovered_resources(self, stream: str, task: str) -> list[str]:
        """ConfigurationIds the task is mapped to (ListDiscoveredResources)."""
        result = self.call(
            "ListDiscoveredResources",
            {"ProgressUpdateStream": stream, "MigrationTaskName": task, "MaxResults": 10},
        )
        return [str(r["ConfigurationId"]) for r in result.get("DiscoveredResourceList", [])]

    def dry_run(self, operation: str, params: dict[str, Any]) -> Failure:
        """Probe permission for one write: the DryRunOperation/UnauthorizedOperation failure."""
        try:
            self.call(operation, {**params, "DryRun": True})
        except HubError as err:
            return err.failure
        return Failure(Outcome.TRANSIENT, "NoDryRun", "the call succeeded without DryRun semantics")

    def credential_source(self) -> str | None:
        """Where the SDK found credentials (`env`, `shared-credentials-file`, ...), or None."""
        creds = self._session.get_credentials()
        return None if creds is None else str(getattr(creds, "method", "unknown"))
