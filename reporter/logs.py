"""Structured event logging: JSON lines (default) or console, with secrets redacted."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from reporter import secrets

__all__ = ["configure", "redact"]

SECRET_KEYS = re.compile(r"secret|password|token|credential|authorization|session", re.I)
SECRET_VALUES = [
    re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    re.compile(r"(?i)(aws_secret_access_key|secret_access_key|x-amz-security-token)\s*[=:]\s*\S+"),
    re.compile(r"Credential=[^,\s]+"),
    re.compile(r"Signature=[0-9a-f]+"),
]


def _scrub(value: str) -> str:
    for pattern in SECRET_VALUES:
        value = pattern.sub("[REDACTED]", value)
    return secrets.scrub(value)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop values of secret-looking keys, scrub key ids and signatures."""
    for key, value in list(event.items()):
        if SECRET_KEYS.search(key) and key != "event":
            event[key] = "[REDACTED]"
        elif isinstance(value, str):
            event[key] = _scrub(value)
    return event


class _Stderr:
    """Whatever `sys.stderr` is at the time of each write (a progress bar redirects it to print
    log lines above itself)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


STDERR: Any = _Stderr()


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Set up structlog for the process: one event per line, fields not prose. Records of other
    libraries (APScheduler, botocore) go through the same renderer, warnings and above only, so
    with `json` every line is one JSON object whoever wrote it."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or STDERR),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))


def flush() -> None:
    """Flush what was logged (before an exit that skips Python's own clean-up)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
