"""A local Migration Hub stand-in: AWS JSON 1.1 over HTTP, validated by botocore's own models."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.session
from botocore.model import ServiceModel, Shape

__all__ = ["Emulator", "Faults", "HubState", "ServiceError"]

MGH_PREFIX = "AWSMigrationHub"
CONFIG_PREFIX = "AWSMigrationHubMultiAccountService"
VM_FIELDS = {"VM_MANAGED_OBJECT_REFERENCE", "VM_NAME", "VM_PATH"}
CASE_FOLDED = {"MAC_ADDRESS", "FQDN"}
# The per-type formats the API reference documents for ResourceAttribute values (`\p{Cntrl}` is
# Java's class: U+0000-U+001F and U+007F). Kept here, apart from rows.py, so the stand-in checks
# the daemon instead of agreeing with it by construction.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
ATTRIBUTE_FORMATS = {
    "IPV4_ADDRESS": re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}"),
    "MAC_ADDRESS": re.compile(r"([0-9A-Fa-f]{2}[:-]){5}([0-9A-Fa-f]{2})"),
    "FQDN": re.compile(r"[^<>{}\\/?,=\x00-\x1f\x7f]{1,256}"),
}


def _ipv6(value: str) -> bool:
    """Eight groups of hex, the usual `::` abbreviation and an IPv4 tail accepted."""
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


GARBLE_KINDS = ("html", "truncated", "proxy502", "hang")
PROXY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>corporate-proxy</center></body></html>"
)


class _Garbled(Exception):
    """A request the network path mangles before it reaches the Hub."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ServiceError(Exception):
    """An error answer in the service's wire format."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.extra = code, message, status, extra


def _java_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an AWS (Java) pattern: an unescaped `.` does not match line terminators."""
    out, in_class, escaped = [], False, False
    for ch in pattern:
        if escaped:
            out.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[" and not in_class:
            in_class = True
            out.append(ch)
        elif ch == "]" and in_class:
            in_class = False
            out.append(ch)
        elif ch == "." and not in_class:
            out.append("[^\\n\\r\\x85\\u2028\\u2029]")
        else:
            out.append(ch)
    return re.compile("".join(out))


class Validator:
    """Checks a request against its botocore input shape like the service does."""

    def __init__(self) -> None:
        self._patterns: dict[str, re.Pattern[str]] = {}

    def check(self, shape: Shape, value: Any, path: str) -> None:
        kind = shape.type_name
        meta = shape.metadata
        if kind == "structure":
            if not isinstance(value, dict):
                self._fail(path, value, "Member must be a structure")
            members = shape.members  # type: ignore[attr-defined]
            for name in shape.required_members:
                if name not in value or value[name] is None:
                    self._fail(f"{path}.{name}".lstrip("."), None, "Member must not be null")
            for name, item in value.items():
                if name not in members:
                    raise ServiceError("SerializationException", f"Unknown member {name}")
                self.check(members[name], item, f"{path}.{name}".lstrip("."))
        elif kind == "list":
            if not isinstance(value, list):
                self._fail(path, value, "Member must be a list")
            self._bounds(path, value, len(value), meta, "length")
            for i, item in enumerate(value):
                self.check(shape.member, item, f"{path}.{i + 1}")  # type: ignore[attr-defined]
        elif kind == "string":
            if not isinstance(value, str):
                self._fail(path, value, "Member must be a string")
            self._bounds(path, value, len(value), meta, "length")
            if shape.enum and value not in shape.enum:  # type: ignore[attr-defined]
                enum = shape.enum  # type: ignore[attr-defined]
                self._fail(path, value, f"Member must satisfy enum value set: [{', '.join(enum)}]")
            if "pattern" in meta:
                pattern = self._patterns.setdefault(meta["pattern"], _java_pattern(meta["pattern"]))
                if not pattern.fullmatch(value):
                    self._fail(
                        path,
                        value,
                        f"Member must satisfy regular expression pattern: {meta['pattern']}",
                    )
        elif kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                self._fail(path, value, "Member must be an integer")
            self._bounds(path, value, value, meta, "value")
        elif kind == "boolean" and not isinstance(value, bool):
            self._fail(path, value, "Member must be a boolean")
        elif kind == "timestamp" and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            self._fail(path, value, "Member must be a timestamp (epoch seconds)")

    def _bounds(self, path: str, value: Any, size: int, meta: dict[str, Any], what: str) -> None:
        if "min" in meta and size < meta["min"]:
            rule = (
                "be greater than or equal to"
                if what == "value"
                else "have length greater than or equal to"
            )
            self._fail(path, value, f"Member must {rule} {meta['min']}")
        if "max" in meta and size > meta["max"]:
            rule = (
                "be less than or equal to"
                if what == "value"
                else "have length less than or equal to"
            )
            self._fail(path, value, f"Member must {rule} {meta['max']}")

    @staticmethod
    def _fail(path: str, value: Any, rule: str) -> None:
        shown = value if not isinstance(value, str) or len(value) < 80 else value[:77] + "..."
        member = path[:1].lower() + path[1:]
        raise ServiceError(
            "InvalidInputException",
            f"1 validation error detected: Value '{shown}' at '{member}' failed to satisfy "
            f"constraint: {rule}",
        )


@dataclass
class Faults:
    """What the stand-in does wrong on purpose (probabilities are per request)."""

    throttle: float = 0.0
    server_error: float = 0.0
    drop: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0  # extra latency, uniform in [0, jitter] seconds
    outage: bool = False
    retry_after: int = 1
    deny: set[str] = field(default_factory=set)  # operation names, or "*"
    invalid: set[str] = field(default_factory=set)  # operations answered InvalidInputException
    fail_operations: set[str] = field(default_factory=set)  # operations answered 503, always
    # A hostile network path, per request with probability `garble`: "html" (a proxy's 200 page),
    # "truncated" (200 with JSON cut short), "proxy502" (a proxy's HTML 502), "hang" (accepted,
    # never answered until the stand-in stops or `hang_seconds` pass). The Hub never sees it.
    garble: float = 0.0
    garble_kind: str = "html"
    garble_only: set[str] = field(default_factory=set)  # operations to garble (empty: all)
    hang_seconds: float = 60.0

    def update(self, **values: Any) -> None:
        """Change several faults at once (unknown names raise)."""
        for key, value in values.items():
            if not hasattr(self, key):
                raise ValueError(f"unknown fault {key!r}")
            if key == "garble_kind" and value not in GARBLE_KINDS:
                raise ValueError(f"garble_kind must be one of {', '.join(GARBLE_KINDS)}")
            sets = ("deny", "invalid", "fail_operations", "garble_only")
            setattr(self, key, set(value) if key in sets else value)


@dataclass
class TaskRecord:
    """One migration task as the Hub keeps it."""

    name: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)
    attributes_at: float | None = None
    artifacts: dict[str, str | None] = field(default_factory=dict)
    mapped_to: str | None = None


@dataclass
class Server:
    """A server in the simulated Application Discovery Service repository."""

    configuration_id: str
    attributes: set[tuple[str, str]]
    description: str = ""


def _norm(kind: str, value: str) -> tuple[str, str]:
    return kind, value.lower() if kind in CASE_FOLDED else value


def matchable(attributes: list[dict[str, str]]) -> set[tuple[str, str]]:
    """Attributes usable for matching: VM fields count only beside VM_MANAGER_ID."""
    has_manager = any(a["Type"] == "VM_MANAGER_ID" for a in attributes)
    usable = {
        _norm(a["Type"], a["Value"])
        for a in attributes
        if has_manager or a["Type"] not in VM_FIELDS
    }
    if not any(t in VM_FIELDS for t, _ in usable):
        usable = {(t, v) for t, v in usable if t != "VM_MANAGER_ID"}
    return usable


class HubState:
    """Everything the stand-in knows: home Region, streams, tasks, servers, faults, call log."""

    def __init__(self, home_region: str | None, map_delay: float, seed: int) -> None:
        self.home_region = home_region
        self.map_delay = map_delay
        self.streams: dict[str, dict[str, TaskRecord]] = {}
        self.servers: list[Server] = []
        self.faults = Faults()
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0  # requests being answered right now
        self.peak_in_flight = 0
        self.lock = threading.RLock()
        self.rng = random.Random(seed)

    def add_server(self, configuration_id: str, description: str = "", **attrs: str) -> None:
        """Seed the discovery repository with a server (attrs: IPV4_ADDRESS=..., FQDN=...)."""
        with self.lock:
            pairs = {_norm(k, v) for k, v in attrs.items()}
            self.servers.append(Server(configuration_id, pairs, description))

    def task(self, stream: str, task: str) -> TaskRecord:
        """A task's record (KeyError when unknown)."""
        return self.streams[stream][task]

    def op_count(self, operation: str) -> int:
        """How many requests of this operation arrived (any outcome)."""
        with self.lock:
            return sum(1 for c in self.calls if c["operation"] == operation)

    def summary(self) -> dict[str, Any]:
        """A JSON-able picture of the Hub (for `/_emulator/state`, the demo, benchmarks)."""
        with self.lock:
            streams: dict[str, Any] = {}
            for name, tasks in self.streams.items():
                streams[name] = {
                    t.name: {
                        "updates": len(t.updates),
                        "last": t.updates[-1] if t.updates else None,
                        "attributes": t.attributes,
                        "artifacts": sorted(t.artifacts),
                        "mapped_to": t.mapped_to,
                    }
                    for t in tasks.values()
                }
            ops: dict[str, int] = {}
            for c in self.calls:
                ops[c["operation"]] = ops.get(c["operation"], 0) + 1
            return {
                "home_region": self.home_region,
                "streams": streams,
                "operations": ops,
                "peak_in_flight": self.peak_in_flight,
                "faults": {
                    k: sorted(v) if isinstance(v, set) else v
                    for k, v in vars(self.faults).items()
                },
            }

    def updates(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every NotifyMigrationTaskState each task received, in arrival order, with ReceivedAt."""
        with self.lock:
            return {
                name: {t.name: list(t.updates) for t in tasks.values()}
                for name, tasks in self.streams.items()
            }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stand-in keeps its own call log."""

    def _reply(self, status: int, body: dict[str, Any], error: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error:
            self.send_header("x-amzn-ErrorType", error)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/_emulator/state":
            self._reply(200, self.server.emulator.state.summary())
        elif self.path == "/_emulator/updates":
            self._reply(200, self.server.emulator.state.updates())
        else:
            self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        emulator = self.server.emulator
        if self.path.startswith("/_emulator/"):
            self._control(self.path.removeprefix("/_emulator/"), raw)
            return
        target = self.headers.get("X-Amz-Target", "")
        authorization = self.headers.get("Authorization", "")
        region = _region_of(authorization)
        try:
            params = json.loads(raw or b"{}")
        except ValueError:
            self._reply(400, {"__type": "SerializationException", "Message": "bad JSON"})
            return
        status, body, code = emulator.handle(target, region, params, _caller_of(authorization))
        if status == 0:  # a dropped connection
            self._hang_up()
            return
        if status == -1:
            self._garbled(body["kind"])
            return
        self._reply(status, body, code)

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _garbled(self, kind: str) -> None:
        emulator = self.server.emulator
        if kind == "hang":
            emulator.stopping.wait(emulator.state.faults.hang_seconds)
            self._hang_up()
            return
        status, data, content_type = {
            "html": (200, PROXY_PAGE, "text/html"),
            "truncated": (200, b'{"HomeRegion": "us-we', "application/x-amz-json-1.1"),
            "proxy502": (502, PROXY_PAGE, "text/html"),
        }[kind]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _control(self, what: str, raw: bytes) -> None:
        emulator = self.server.emulator
        try:
            data = json.loads(raw or b"{}")
            with emulator.state.lock:
                if what == "faults":
                    emulator.state.faults.update(**data)
                elif what == "home-region":
                    emulator.state.home_region = data.get("region")
                elif what == "server":
                    emulator.state.add_server(**data)
                else:
                    self._reply(404, {"message": f"unknown control {what}"})
                    return
        except (ValueError, TypeError) as exc:
            self._reply(400, {"message": str(exc)})
            return
        self._reply(200, {"ok": True})


def _caller_of(authorization: str) -> str | None:
    """The access key id that signed the request (tells replicas apart in the call log)."""
    match = re.search(r"Credential=([^/]+)/", authorization)
    return match.group(1) if match else None


def _region_of(authorization: str) -> str | None:
    match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", authorization)
    return match.group(1) if match else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (killed, timed out) is not an error of ours."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Emulator:
    """The stand-in service: `with Emulator() as hub: ... hub.url ...`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        home_region: str | None = "us-west-2",
        map_delay: float = 2.0,
        seed: int = 1,
        clock: Any = time.time,
        tls: tuple[str, str] | None = None,
    ) -> None:
        session = botocore.session.get_session()
        self.models: dict[str, ServiceModel] = {
            MGH_PREFIX: session.get_service_model("mgh"),
            CONFIG_PREFIX: session.get_service_model("migrationhub-config"),
        }
        self.validator = Validator()
        self.state = HubState(home_region, map_delay, seed)
        self.stopping = threading.Event()
        self.clock = clock
        self._address = (host, port)
        self._tls = tls  # (certificate chain file, key file): serve HTTPS
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Emulator:
        """Bind and serve in a background thread."""
        self._server = _Server(self._address, self)
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
            # The handshake happens in the request's thread, never in the accepting one.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (hung requests are let go)."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (https with `tls`), for AWS_ENDPOINT_URL_*."""
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host!s}:{port}"

    def environment(self) -> dict[str, str]:
        """Environment variables that point an unmodified boto3 at this stand-in."""
        return {
            "AWS_ENDPOINT_URL_MIGRATION_HUB": self.url,
            "AWS_ENDPOINT_URL_MIGRATIONHUB_CONFIG": self.url,
        }

    # -- dispatch ----------------------------------------------------------------------------
    def handle(
        self, target: str, region: str | None, params: dict[str, Any], caller: str | None = None
    ) -> tuple[int, dict[str, Any], str | None]:
        """Answer one request: (HTTP status, JSON body, error code); status 0 = drop it."""
        prefix, _, operation = target.partition(".")
        state = self.state
        record = {
            "operation": operation,
            "region": region,
            "time": self.clock(),
            "stream": params.get("ProgressUpdateStream"),
            "task": params.get("MigrationTaskName"),
            "caller": caller,
        }
        with state.lock:
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            latency = state.faults.latency
            if state.faults.jitter:
                with state.lock:
                    latency += state.rng.uniform(0.0, state.faults.jitter)
            if latency:
                time.sleep(latency)
            with state.lock:
                self._faults(operation)
                if prefix not in self.models:
                    raise ServiceError("UnknownOperationException", f"unknown target {target}")
                model = self.models[prefix]
                if operation not in model.operation_names:
                    raise ServiceError(
                        "UnknownOperationException", f"unknown operation {operation}"
                    )
                op_model = model.operation_model(operation)
                if op_model.input_shape is not None:
                    self.validator.check(op_model.input_shape, params, "")
                result = self._dispatch(prefix, operation, region, params, op_model)
            record["status"] = 200
            return 200, result, None
        except _Drop:
            record["status"] = 0
            return 0, {}, None
        except _Garbled as garbled:
            record["status"] = -1
            record["error"] = garbled.kind
            return -1, {"kind": garbled.kind}, None
        except ServiceError as err:
            record["status"] = err.status
            record["error"] = err.code
            return err.status, {"__type": err.code, "Message": err.message, **err.extra}, err.code
        finally:
            with state.lock:
                state.in_flight -= 1
                record["done"] = self.clock()
                state.calls.append(record)

    def _faults(self, operation: str) -> None:
        faults, rng = self.state.faults, self.state.rng
        garbled = not faults.garble_only or operation in faults.garble_only
        if faults.garble and garbled and rng.random() < faults.garble:
            raise _Garbled(faults.garble_kind)
        if faults.outage or operation in faults.fail_operations:
            raise ServiceError("ServiceUnavailableException", "service unavailable", 503)
        if faults.drop and rng.random() < faults.drop:
            raise _Drop()
        if faults.throttle and rng.random() < faults.throttle:
            raise ServiceError(
                "ThrottlingException", "Rate exceeded", 400, RetryAfterSeconds=faults.retry_after
            )
        if faults.server_error and rng.random() < faults.server_error:
            if rng.random() < 0.5:
                raise ServiceError("InternalServerError", "internal error", 500)
            raise ServiceError("ServiceUnavailableException", "service unavailable", 503)

    def _dispatch(
        self, prefix: str, operation: str, region: str | None, params: dict[str, Any], op_model: Any
    ) -> dict[str, Any]:
        state = self.state
        if prefix == CONFIG_PREFIX:
            if operation == "GetHomeRegion":
                return {"HomeRegion": state.home_region} if state.home_region else {}
            if operation == "CreateHomeRegionControl":
                state.home_region = params["HomeRegion"]
                return {}
            if operation == "DescribeHomeRegionControls":
                controls = []
                if state.home_region:
                    controls.append({"HomeRegion": state.home_region, "ControlId": "hrc-1"})
                return {"HomeRegionControls": controls}
            raise ServiceError("InvalidInputException", f"{operation} is not simulated")
        errors = {e.name for e in op_model.error_shapes}
        if state.home_region is None:
            if "HomeRegionNotSetException" in errors:
                raise ServiceError("HomeRegionNotSetException", "The home region is not set.")
            raise ServiceError("InvalidInputException", "The home region is not set.")
        if region != state.home_region:
            raise ServiceError(
                "InvalidInputException",
                f"Migration Hub calls must be made in your home Region ({state.home_region});"
                f" this call was made in {region}.",
            )
        deny = state.faults.deny
        dry_run = bool(params.get("DryRun"))
        if "*" in deny or operation in deny:
            if dry_run:
                raise ServiceError(
                    "UnauthorizedOperation", f"not authorized to perform mgh:{operation}", 403
                )
            raise ServiceError(
                "AccessDeniedException",
                f"User is not authorized to perform: mgh:{operation}",
                403,
            )
        if dry_run:
            raise ServiceError("DryRunOperation", "Request would have succeeded.", 412)
        if operation in state.faults.invalid:
            raise ServiceError("InvalidInputException", f"{operation}: input refused (injected)")
        handler = getattr(self, "_op_" + operation, None)
        if handler is None:
            raise ServiceError("InvalidInputException", f"{operation} is not simulated")
        result: dict[str, Any] = handler(params)
        return result

    # -- operations ------------------------------------------------------------------------
    def _stream(self, name: str) -> dict[str, TaskRecord]:
        try:
            return self.state.streams[name]
        except KeyError:
            raise ServiceError("ResourceNotFoundException", f"stream {name} not found") from None

    def _task(self, params: dict[str, Any]) -> TaskRecord:
        tasks = self._stream(params["ProgressUpdateStream"])
        try:
            return tasks[params["MigrationTaskName"]]
        except KeyError:
            raise ServiceError(
                "ResourceNotFoundException",
                f"migration task {params['MigrationTaskName']} not found",
            ) from None

    def _op_CreateProgressUpdateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        self.state.streams.setdefault(p["ProgressUpdateStreamName"], {})
        return {}

    def _op_DeleteProgressUpdateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        self._stream(p["ProgressUpdateStreamName"])
        del self.state.streams[p["ProgressUpdateStreamName"]]
        return {}

    def _op_ListProgressUpdateStreams(self, p: dict[str, Any]) -> dict[str, Any]:
        names = sorted(self.state.streams)
        return {"ProgressUpdateStreamSummaryList": [{"ProgressUpdateStreamName": n} for n in names]}

    def _op_ImportMigrationTask(self, p: dict[str, Any]) -> dict[str, Any]:
        tasks = self._stream(p["ProgressUpdateStream"])
        tasks.setdefault(p["MigrationTaskName"], TaskRecord(p["MigrationTaskName"]))
        return {}

    def _op_NotifyMigrationTaskState(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        task.updates.append(
            {
                "Task": p["Task"],
                "UpdateDateTime": p["UpdateDateTime"],
                "NextUpdateSeconds": p["NextUpdateSeconds"],
                "ReceivedAt": self.clock(),
            }
        )
        return {}

    def _op_PutResourceAttributes(self, p: dict[str, Any]) -> dict[str, Any]:
        for item in p["ResourceAttributeList"]:
            kind, value = item["Type"], item["Value"]
            fmt = ATTRIBUTE_FORMATS.get(kind)
            bad = (fmt is not None and not fmt.fullmatch(value)) or (
                kind == "IPV6_ADDRESS" and not _ipv6(value)
            )
            if bad:
                raise ServiceError(
                    "InvalidInputException", f"Invalid value {value!r} for attribute type {kind}"
                )
        task = self._task(p)
        task.attributes = list(p["ResourceAttributeList"])
        task.attributes_at = self.clock()
        task.mapped_to = None
        return {}

    def _op_AssociateCreatedArtifact(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        artifact = p["CreatedArtifact"]
        task.artifacts[artifact["Name"]] = artifact.get("Description")
        return {}

    def _op_DisassociateCreatedArtifact(self, p: dict[str, Any]) -> dict[str, Any]:
        self._task(p).artifacts.pop(p["CreatedArtifactName"], None)
        return {}

    def _op_ListCreatedArtifacts(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        items = [
            {"Name": name, **({"Description": d} if d is not None else {})}
            for name, d in task.artifacts.items()
        ]
        start = int(p.get("NextToken") or 0)
        size = p.get("MaxResults", 10)
        page = items[start : start + size]
        result: dict[str, Any] = {"CreatedArtifactList": page}
        if start + size < len(items):
            result["NextToken"] = str(start + size)
        return result

    def _op_DescribeMigrationTask(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        described: dict[str, Any] = {
            "ProgressUpdateStream": p["ProgressUpdateStream"],
            "MigrationTaskName": task.name,
            "ResourceAttributeList": task.attributes,
        }
        if task.updates:
            described["Task"] = task.updates[-1]["Task"]
            described["UpdateDateTime"] = task.updates[-1]["UpdateDateTime"]
        return {"MigrationTask": described}

    def _op_ListMigrationTasks(self, p: dict[str, Any]) -> dict[str, Any]:
        summaries = []
        for stream, tasks in self.state.streams.items():
            for task in tasks.values():
                summary: dict[str, Any] = {
                    "ProgressUpdateStream": stream,
                    "MigrationTaskName": task.name,
                }
                if task.updates:
                    last = task.updates[-1]
                    summary["Status"] = last["Task"]["Status"]
                    if "ProgressPercent" in last["Task"]:
                        summary["ProgressPercent"] = last["Task"]["ProgressPercent"]
                summaries.append(summary)
        return {"MigrationTaskSummaryList": summaries}

    def _op_ListDiscoveredResources(self, p: dict[str, Any]) -> dict[str, Any]:
        task = self._task(p)
        state = self.state
        if (
            task.mapped_to is None
            and task.attributes_at is not None
            and self.clock() >= task.attributes_at + state.map_delay
        ):
            usable = matchable(task.attributes)
            if usable:
                for server in state.servers:
                    if server.attributes & usable:
                        task.mapped_to = server.configuration_id
                        break
                else:
                    new_id = f"d-server-{len(state.servers) + 1:012x}"
                    state.servers.append(Server(new_id, usable, "added by Migration Hub"))
                    task.mapped_to = new_id
        resources = []
        if task.mapped_to is not None:
            resources.append({"ConfigurationId": task.mapped_to})
        return {"DiscoveredResourceList": resources}


class _Drop(Exception):
    """Close the connection without answering."""
