"""boto3 clients for Migration Hub (home Region resolved) and one call per request."""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

import boto3
import botocore.session
import structlog
from botocore.config import Config as BotoConfig
from botocore.loaders import JSONFileLoader, Loader

from reporter.config import AwsConfig
from reporter.hub.errors import (
    HOME_REGION_NOT_SET,
    Failure,
    FenceLost,
    GarbledResponse,
    HubError,
    Outcome,
    classify,
)
from reporter.hub.limiter import AdaptiveLimiter, RateLimiter
from reporter.hub.pacing import Pacer
from reporter.hub_requests import Request, json_depth
from reporter.sdkfiles import NOTHING, ignored_files
from reporter.secrets import remember

__all__ = [
    "CALL_OPERATIONS", "OPTIONAL_OPERATIONS", "READ_OPERATIONS", "VERIFY_READS", "Hub",
    "HubError", "HubTask", "Observer"]

# Every write the daemon makes (for `check` probes and the IAM policy).
CALL_OPERATIONS = (
    "CreateProgressUpdateStream",
    "ImportMigrationTask",
    "NotifyMigrationTaskState",
    "PutResourceAttributes",
    "AssociateCreatedArtifact",
)
# Writes only some kinds of row need, and those kinds (`check` warns when they are not allowed).
OPTIONAL_OPERATIONS = {
    "AssociateDiscoveredResource": "discovered_resource",
    "DisassociateDiscoveredResource": "discovered_resource_removed",
    "DisassociateCreatedArtifact": "created_artifact_removed",
    "NotifyApplicationState": "application_state",
    "AssociateSourceResource": "source_resource",
    "DisassociateSourceResource": "source_resource_removed",
}
# Reads: auto-mapping checks, `verify` and the repair rounds (mgh:Describe*, mgh:List*);
# the update history and the application states are `verify`'s alone (VERIFY_READS).
READ_OPERATIONS = (
    "ListDiscoveredResources",
    "DescribeMigrationTask",
    "ListCreatedArtifacts",
    "ListProgressUpdateStreams",
    "ListMigrationTaskUpdates",
    "ListSourceResources",
    "ListApplicationStates",
)
VERIFY_READS = frozenset({"ListMigrationTaskUpdates", "ListSourceResources",
                          "ListApplicationStates"})
FALLBACK_REGION = "us-west-2"
# The proxy variables botocore reads (through urllib's getproxies), upper and lower case.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy")

Observer = Callable[[str, str, float], None]  # (operation, outcome, seconds)
# A Hub reply is at most a page of 100 summaries (a few hundred KB); anything past these bounds
# is not the Hub's, and a list read that would go on past them is ended as an error.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BODY_DEPTH = 16
MAX_PAGES = 1000  # pages of one list read
MAX_ITEMS = 100_000  # items of one list read


class HubTask(NamedTuple):
    """A task's current state as DescribeMigrationTask shows it (read before a repair sends a
    state again, so a newer update by someone else is never overwritten)."""

    status: str | None
    percent: int | None
    update_time: float | None  # epoch seconds; None: the Hub has no state for the task


def _check_body(response_dict: dict[str, Any], **_: Any) -> None:
    """botocore `before-parse` hook: a 2xx answer must be a JSON object of a sane size and
    depth, else it did not come from the Hub (a proxy's page, a truncated body, a hostile
    reply) and must not count as delivered, nor reach the recursive parser."""
    status = int(response_dict.get("status_code") or 0)
    if not 200 <= status < 300:
        return
    body = bytes(response_dict.get("body") or b"")
    parsed: Any = None
    # fewer opening brackets than the bound cannot nest past it: most replies ("{}", a page
    # of a few summaries) are settled by two C-speed counts, not a scan of every character
    if len(body) <= MAX_BODY_BYTES and (
            body.count(b"[") + body.count(b"{") <= MAX_BODY_DEPTH
            or json_depth(body.decode("utf-8", "replace")) <= MAX_BODY_DEPTH):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    if not isinstance(parsed, dict):
        headers = response_dict.get("headers") or {}
        raise GarbledResponse(status, str(headers.get("content-type", "")), body)


class PlainJSONFileLoader(JSONFileLoader):
    """botocore's model loader, parsing into plain dicts (ordered since Python 3.7) rather than
    OrderedDicts: the SDK's endpoint table, parsed while a client is built, takes 4 MB instead
    of 7 MB, a peak that counts in a 64 MiB sidecar."""

    def load_file(self, file_path: str) -> Any:
        for ext, opener in ((".json", open), (".json.gz", gzip.open)):
            try:
                with opener(file_path + ext, "rb") as fp:
                    return json.loads(fp.read().decode("utf-8"))
            except FileNotFoundError:
                continue
        return None


_warned: set[str] = set()


def _warn_once(key: str, event: str, **fields: Any) -> None:
    """One warning per process for each ignored file (clients are made more than once)."""
    if key not in _warned:
        _warned.add(key)
        structlog.get_logger("reporter.hub").warning(event, **fields)


@functools.cache
def _snake(operation: str) -> str:
    """A Hub operation's boto3 method name (NotifyMigrationTaskState: notify_migration_...)."""
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


def sdk_session() -> boto3.session.Session:
    """An SDK session as boto3 makes one (the credential chain, config files and endpoint
    variables as usual), except that a config or credentials file another user could write is
    never read, and the service models load as plain JSON."""
    core = botocore.session.Session()
    for ignored in ignored_files():  # a file a tool user could plant is never read
        core.set_config_variable(ignored.variable, NOTHING)
        _warn_once(ignored.path, "sdk_file_ignored", path=ignored.path,
                   reason=ignored.reason,
                   hint="a file another user could write is never read as the SDK's"
                   " configuration (its credential_process would run as us): keep"
                   " AWS files in a directory only root or this user can write, or"
                   " name one with AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE")
    paths = (core.get_config_variable("data_path") or "").split(os.pathsep)
    loader = Loader(
        extra_search_paths=[os.path.expanduser(p) for p in paths if p],
        file_loader=PlainJSONFileLoader(),
    )
    core.register_component("data_loader", loader)
    return boto3.session.Session(botocore_session=core)


def _clear_loader_caches(*clients: Any) -> None:
    """Empty the model caches of the clients' loaders and free the cycles a session leaves."""
    for client in clients:
        cache = getattr(getattr(client, "_loader", None), "_cache", None)
        if isinstance(cache, dict):
            cache.clear()
    gc.collect()  # the session's objects form cycles: free them now, for the pass to reuse


def _boto_config(aws: AwsConfig) -> BotoConfig:
    """botocore's settings from `[aws]`: its retries (ours by default), timeouts, proxy."""
    retries: Any = {"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts}
    return BotoConfig(
        retries=retries,
        connect_timeout=aws.connect_timeout_seconds,
        read_timeout=aws.read_timeout_seconds,
        max_pool_connections=64,
        user_agent_extra="mgh-reporter",
        # [aws] proxy for both schemes; unset, botocore reads HTTPS_PROXY and friends.
        proxies={"http": aws.proxy, "https": aws.proxy} if aws.proxy else None,
    )


class Hub:
    """Migration Hub in the home Region; thread-safe (boto3 clients are, sessions are not)."""

    def __init__(
        self,
        aws: AwsConfig,
        region: str = "auto",
        observer: Observer | None = None,
        limiter: AdaptiveLimiter | None = None,
        rate: RateLimiter | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._configured_region = region
        self._boto_config = _boto_config(aws)
        for name in PROXY_VARIABLES:  # a proxy's user:password never reaches a log line
            if os.environ.get(name):
                remember(os.environ[name])
        self._observer = observer
        self._limiter = limiter
        self._rate = rate
        self.pacer = pacer  # the adaptive send rate (Migration Hub Config is not paced)
        self._fence = threading.local()
        self._lock = threading.Lock()
        self._mgh: Any = None
        self._home_client: Any = None
        self._session: boto3.session.Session | None = None
        self.region: str | None = None

    def set_rate(self, rate: RateLimiter | None) -> None:
        """Replace the hard rate cap (config reload)."""
        self._rate = rate

    # -- regions ---------------------------------------------------------------------------
    def _config_client(self) -> Any:
        with self._lock:
            if self._home_client is None:
                region = self._configured_region
                if region == "auto":
                    region = self._sdk().region_name or FALLBACK_REGION
                self._home_client = self._make_client("migrationhub-config", region)
            return self._home_client

    def _sdk(self) -> boto3.session.Session:
        """The SDK session the clients are made by; it lives only until the Hub client
        exists."""
        if self._session is None:
            self._session = sdk_session()
        return self._session

    def _make_client(self, service: str, region: str) -> Any:
        client = self._sdk().client(service, region_name=region, config=self._boto_config)
        client.meta.events.register("before-parse", _check_body)
        return client

    def _let_go_of_models(self) -> None:
        """Once both clients exist, let the session go (its endpoint resolver holds the SDK's
        whole endpoint table) and empty the loader cache the clients share (every model and
        table parsed while building them: ~7 MB of JSON). The clients keep what they use; the
        loader serves only paginators and waiters, which we never use."""
        self._session = None
        _clear_loader_caches(self._home_client, self._mgh)

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
                self._let_go_of_models()
        return home

    def _client(self) -> Any:
        if self._mgh is None:
            self.resolve_region()
        return self._mgh

    # -- calls -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def fenced(self, check: Callable[[], bool]) -> Iterator[None]:
        """Calls made by this thread inside the block first pass `check`, right before the
        request goes out (after any wait for the rate cap or a concurrency slot); when it says
        no, the call is not made and `FenceLost` is raised."""
        self._fence.check = check
        try:
            yield
        finally:
            self._fence.check = None

    def _call(self, client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._rate is not None:
            self._rate.acquire()
        ticket = self._limiter.acquire() if self._limiter is not None else 0
        pacer = self.pacer if client is not self._home_client else None
        sent_at = pacer.wait() if pacer is not None else 0.0
        started = time.monotonic()
        throttled, retry_after, answered = False, None, True
        outcome = "ok"
        try:
            check = getattr(self._fence, "check", None)
            if check is not None and not check():
                outcome, answered = "fenced", False
                raise FenceLost(operation)
            result: dict[str, Any] = getattr(client, _snake(operation))(**params)
            return result
        except FenceLost:
            raise
        except Exception as exc:
            failure = classify(exc)
            throttled, retry_after = failure.throttled, failure.retry_after
            outcome = "throttled" if throttled else failure.outcome.value
            if failure.code == "DryRunOperation":
                outcome = "dry_run"
            raise HubError(failure, operation) from None
        finally:
            if pacer is not None and answered:
                pacer.record(sent_at, throttled, retry_after)
            elif pacer is not None:
                pacer.cancel()
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

    def described(self, stream: str, task: str) -> HubTask | None:
        """The task's current state (DescribeMigrationTask); None: the Hub has no such task or
        stream."""
        try:
            found = self.call("DescribeMigrationTask", {
                "ProgressUpdateStream": stream, "MigrationTaskName": task}).get("MigrationTask")
        except HubError as err:
            if err.failure.code == "ResourceNotFoundException":
                return None
            raise
        state = (found or {}).get("Task") or {}
        when = (found or {}).get("UpdateDateTime")
        return HubTask(state.get("Status"), state.get("ProgressPercent"),
                       when.timestamp() if isinstance(when, datetime) else None)

    def discovered_resources(self, stream: str, task: str) -> list[str]:
        """ConfigurationIds the task is mapped to (ListDiscoveredResources)."""
        result = self.call(
            "ListDiscoveredResources",
            {"ProgressUpdateStream": stream, "MigrationTaskName": task, "MaxResults": 10},
        )
        return [str(r["ConfigurationId"]) for r in result.get("DiscoveredResourceList", [])]

    def pages(
        self, operation: str, params: dict[str, Any], key: str, size: int
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list read (`key` of each page), following NextToken page by page
        with MaxResults `size`."""
        token: str | None = None
        seen: set[str] = set()
        pages = items = 0
        while True:
            page = self.call(operation, {**params, "MaxResults": size,
                                         **({"NextToken": token} if token else {})})
            found = page.get(key) or []
            pages, items = pages + 1, items + len(found)
            if pages > MAX_PAGES or items > MAX_ITEMS:
                raise HubError(Failure(Outcome.REJECTED, "EndlessPages",
                                       f"{operation} went on past {MAX_PAGES} pages or"
                                       f" {MAX_ITEMS} items: read ended"), operation)
            yield from found
            token = page.get("NextToken")
            if not token:
                return
            digest = hashlib.sha256(str(token).encode()).hexdigest()  # a token may be large
            if digest in seen:
                raise HubError(Failure(Outcome.REJECTED, "RepeatedNextToken",
                                       f"{operation} returned a NextToken it had returned"
                                       " before: read ended (it would never finish)"),
                               operation)
            seen.add(digest)

    def dry_run(self, operation: str, params: dict[str, Any]) -> Failure:
        """Probe permission for one write: the DryRunOperation/UnauthorizedOperation failure."""
        try:
            self.call(operation, {**params, "DryRun": True})
        except HubError as err:
            return err.failure
        return Failure(Outcome.TRANSIENT, "NoDryRun", "the call succeeded without DryRun semantics")

    def credential_source(self) -> str | None:
        """Where the SDK found credentials (`env`, `shared-credentials-file`, ...), or None."""
        creds = self._sdk().get_credentials()
        return None if creds is None else str(getattr(creds, "method", "unknown"))
