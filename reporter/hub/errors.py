"""The one classification of every Hub/SDK failure: transient, repair, rejected, blocked (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore import exceptions as bx

__all__ = [
    "HOME_REGION_NOT_SET",
    "NO_HOME_REGION_CODES",
    "THROTTLE_CODES",
    "Failure",
    "FenceLost",
    "GarbledResponse",
    "HubError",
    "Outcome",
    "classify",
]


class Outcome(StrEnum):
    """What a failure means for the row and for delivery as a whole."""

    TRANSIENT = "transient"  # retry the row later (backoff, Retry-After)
    REPAIR = "repair"  # stream/task unknown at the Hub: re-create, re-import, send again
    REJECTED = "rejected"  # the Hub refuses this row: dead letter
    BLOCKED = "blocked"  # only a person can fix it: hold all delivery
    HELD = "held"  # only a person can fix it, for this kind of call alone: hold its lane


HOME_REGION_NOT_SET = (
    "the Migration Hub home Region is not set for this account (set it in the Migration Hub "
    "console, or `aws migrationhub-config create-home-region-control`)"
)
# The lookup's own (GetHomeRegion answered no Region) and a write call's: either means the
# Region we knew is not the home Region any more.
NO_HOME_REGION_CODES = frozenset({"HomeRegionNotSet", "HomeRegionNotSetException"})
THROTTLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
BLOCKED_CODES = {
    "HomeRegionNotSetException": HOME_REGION_NOT_SET,
    "AccessDeniedException": "access denied",
    "AccessDenied": "access denied",
    "UnauthorizedOperation": "not authorised",
    "UnrecognizedClientException": "the credentials are not recognised",
    "InvalidClientTokenId": "the credentials are not recognised",
    "InvalidSignatureException": "the request signature is invalid (check the secret key)",
    "SignatureDoesNotMatch": "the request signature is invalid (check the secret key)",
    "ExpiredToken": "the credentials have expired",
    "ExpiredTokenException": "the credentials have expired",
    "RequestExpired": "the request expired (is the host clock right?)",
}
SERVER_CODES = frozenset({
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailableException",
    "ServiceUnavailable",
})
TIMEOUT_CODES = frozenset({
    "RequestTimeout",
    "RequestTimeoutException",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "TimeoutError",
})
TRANSIENT_CODES = THROTTLE_CODES | SERVER_CODES | {"RequestTimeout", "RequestTimeoutException"}
REJECTED_CODES = {"InvalidInputException", "ValidationException"}
REPAIR_CODES = {"ResourceNotFoundException"}
# Migration Hub cannot reach Application Discovery Service: application states (and manual
# mappings) wait for a person; everything else keeps flowing.
HELD_CODES = {
    "PolicyErrorException": "Migration Hub cannot reach Application Discovery Service: the"
    " `migrationhub-discovery` role is missing or misconfigured (create it, as the Migration Hub"
    " console's setup does, with the AWSMigrationHubDiscoveryAccess policy); calls of this"
    " kind wait, others flow",
}


@dataclass(frozen=True)
class Failure:
    """A classified failure: outcome, the service's error code, a message, and Retry-After."""

    outcome: Outcome
    code: str
    message: str
    retry_after: float | None = None
    network: bool = False  # the call got no HTTP answer (connection, TLS, proxy, socket)
    server_error: bool = False  # an HTTP 5xx answer

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    @property
    def condition(self) -> str:
        """The kind of trouble, for logging repeated failures as one condition: throttling,
        server_errors, timeouts, network, garbled_responses or other_errors."""
        if self.throttled:
            return "throttling"
        if self.code in TIMEOUT_CODES:
            return "timeouts"
        if self.code in SERVER_CODES or self.server_error:
            return "server_errors"
        if self.network:
            return "network"
        if self.code == "GarbledResponse":
            return "garbled_responses"
        return "other_errors"

    @property
    def throttled(self) -> bool:
        """True when the service asked us to slow down."""
        return self.code in THROTTLE_CODES


class GarbledResponse(Exception):
    """A success status whose body is not the operation's JSON (a proxy's page, a cut-off
    answer): the call may not have reached the Hub, so it counts as a transient failure."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        snippet = body[:80].decode("utf-8", "replace").replace("\n", " ")
        super().__init__(
            f"HTTP {status} with a body that is not the operation's JSON"
            f" (Content-Type {content_type or 'none'}): {snippet!r}"
        )


class HubError(Exception):
    """A classified failure of one Hub call."""

    def __init__(self, failure: Failure, operation: str) -> None:
        super().__init__(f"{operation}: {failure}")
        self.failure = failure
        self.operation = operation


def _client_error(exc: bx.ClientError) -> Failure:
    response: Any = exc.response
    error = response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in BLOCKED_CODES:
        detail = BLOCKED_CODES[code]
        return Failure(Outcome.BLOCKED, code, f"{detail}: {message}" if message else detail)
    if code in HELD_CODES:
        detail = HELD_CODES[code]
        return Failure(Outcome.HELD, code, f"{detail}: {message}" if message else detail)
    if code in REPAIR_CODES:
        return Failure(Outcome.REPAIR, code, message)
    if code in REJECTED_CODES:
        return Failure(Outcome.REJECTED, code, message)
    retry_after = response.get("RetryAfterSeconds")
    if retry_after is None:
        header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
        retry_after = float(header) if header and header.isdigit() else None
    if code in TRANSIENT_CODES or status >= 500 or status == 429:
        return Failure(
            Outcome.TRANSIENT,
            code,
            message,
            float(retry_after) if retry_after is not None else None,
            server_error=status >= 500,
        )
    if status == 403:
        return Failure(Outcome.BLOCKED, code, f"access denied: {message}")
    # Unknown errors are retried with backoff: never drop a row on a guess.
    return Failure(Outcome.TRANSIENT, code, message)


def classify(exc: BaseException) -> Failure:
    """Map any exception raised by a boto3 call to one Outcome."""
    if isinstance(exc, bx.ClientError):
        return _client_error(exc)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return Failure(
            Outcome.BLOCKED,
            "NoCredentials",
            "no AWS credentials found (environment, shared files, instance or container role)",
        )
    if isinstance(exc, bx.NoRegionError):
        return Failure(Outcome.BLOCKED, "NoRegion", "no AWS region configured")
    if isinstance(exc, GarbledResponse):
        return Failure(Outcome.TRANSIENT, "GarbledResponse", str(exc))
    if isinstance(exc, bx.ParamValidationError):
        return Failure(Outcome.REJECTED, "ParamValidation", str(exc))
    if isinstance(exc, bx.BotoCoreError | OSError | TimeoutError):
        name = type(exc).__name__
        return Failure(Outcome.TRANSIENT, name, str(exc), network=True)
    raise exc


class FenceLost(Exception):
    """The fence said no: this process no longer holds the task's lease; nothing was sent."""
