"""The emulator: a local Migration Hub (and Migration Hub Config) service speaking AWS JSON 1.1
over HTTP or HTTPS, its requests validated by botocore's own models, with faults a test can
inject (throttling, outages, dropped and garbled answers, denied operations)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.session
from botocore.model import ServiceModel

from reporter.emulator.operations import Operations
from reporter.emulator.state import HubState
from reporter.emulator.validator import CONFIG_PREFIX, MGH_PREFIX, ServiceError, Validator

__all__ = ["Emulator"]

PROXY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>corporate-proxy</center></body></html>"
)


class _Garbled(Exception):
    """A request the network path mangles before it reaches the Hub."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator keeps its own call log."""

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
        elif self.path == "/_emulator/calls":
            state = self.server.emulator.state
            with state.lock:
                calls = [{k: c.get(k) for k in ("operation", "time", "stream", "error")}
                         for c in state.calls]
            self._reply(200, {"calls": calls})
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
            "deep": (200, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
                     "application/x-amz-json-1.1"),
            "huge": (200, b'{"HomeRegion": "' + b"a" * (8 << 20) + b'"}',
                     "application/x-amz-json-1.1"),
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
                elif what == "application":
                    emulator.state.add_application(data["application"])
                elif what == "delete-stream":
                    emulator.state.delete_stream(data["stream"])
                elif what == "lose-task":
                    emulator.state.lose_task(data["stream"], data["task"])
                elif what == "change-task":
                    emulator.state.change_task(**data)
                else:
                    self._reply(404, {"message": f"unknown control {what}"})
                    return
        except (ValueError, TypeError, KeyError) as exc:
            self._reply(400, {"message": str(exc)})
            return
        self._reply(200, {"ok": True})


def _hostile_pages(result: dict[str, Any], kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """A list reply that never ends (the `pages` fault): "repeat" hands back the token it was
    given (or "0"), "endless" always a new one, past the last item too."""
    if not kind or not any(isinstance(v, list) for v in result.values()):
        return result
    given = str(params.get("NextToken") or "0")  # the first page each time, whatever it says
    if kind == "repeat":
        return {**result, "NextToken": given}
    return {**result, "NextToken": f"{given}x"}


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
    """The emulator service: `with Emulator() as hub: ... hub.url ...`."""

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
        self.operations = Operations(self.state, clock)
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
        """Environment variables that point an unmodified boto3 at this emulator."""
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
                if prefix == "AWSMigrationHub":
                    self._account_bucket()
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
                pages = state.faults.pages
                asked = {k: v for k, v in params.items() if k != "NextToken"} if pages else params
                result = self._dispatch(prefix, operation, region, asked, op_model)
                result = _hostile_pages(result, pages, params)
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

    def _account_bucket(self) -> None:
        """The account's rate (`account_rate`): one token per call, refilled continuously,
        at most a second's worth banked; none left is a throttle, whoever calls."""
        faults, state = self.state.faults, self.state
        if faults.account_rate <= 0:
            return
        now = self.clock()
        rate = faults.account_rate
        state.bucket = min(rate, state.bucket + (now - state.bucket_at) * rate)
        state.bucket_at = now
        if state.bucket < 1.0:
            raise ServiceError(
                "ThrottlingException", "Rate exceeded", 400, RetryAfterSeconds=faults.retry_after
            )
        state.bucket -= 1.0

    def _faults(self, operation: str) -> None:
        faults, rng = self.state.faults, self.state.rng
        garbled = not faults.garble_only or operation in faults.garble_only
        if faults.garble and garbled and rng.random() < faults.garble:
            raise _Garbled(faults.garble_kind)
        if faults.outage or operation in faults.fail_operations:
            raise ServiceError("ServiceUnavailableException", "service unavailable", 503)
        if faults.drop and rng.random() < faults.drop:
            raise _Drop()
        if faults.throttle_next.get(operation, 0) > 0:
            faults.throttle_next[operation] -= 1
            if not faults.throttle_next[operation]:
                del faults.throttle_next[operation]
            raise ServiceError(
                "ThrottlingException", "Rate exceeded", 400, RetryAfterSeconds=faults.retry_after
            )
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
        self.operations.before(operation, params)
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
        handler = getattr(self.operations, "_op_" + operation, None)
        if handler is None:
            raise ServiceError("InvalidInputException", f"{operation} is not simulated")
        result: dict[str, Any] = handler(params)
        return result


class _Drop(Exception):
    """Close the connection without answering."""
