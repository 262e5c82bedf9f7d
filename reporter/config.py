"""Configuration: frozen dataclasses read from TOML and validated once, at start."""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reporter.hub_requests import REGION_RE, stream_problem
from reporter.secrets import raw_in_userinfo, redact_url, remember, scrub

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AwsConfig",
    "Config",
    "ConfigError",
    "HubConfig",
    "LogConfig",
    "MappingConfig",
    "MetricsConfig",
    "OutboxConfig",
    "PublishConfig",
    "VerifyConfig",
    "config_path",
    "fence_seconds",
    "load",
    "parse",
    "redact_url",
]

DEFAULT_CONFIG_PATH = Path("/etc/mgh-reporter/config.toml")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names key, value and rule."""


@dataclass(frozen=True)
class OutboxConfig:
    """`[outbox]`: where the outbox lives and how long delivered rows are kept."""

    path: Path = Path("/var/lib/mgh-reporter/outbox.db")
    retention_days: float = 7.0
    busy_timeout_ms: int = 5000
    batch_size: int = 500
    lease_seconds: float = 60.0
    live_state_path: Path | None = None
    wal_warning_bytes: int = 64 * 1024 * 1024
    url: str | None = None  # a PostgreSQL outbox (libpq URL) instead of the SQLite file at path
    fence_margin_seconds: float = 5.0
    unreachable_after_seconds: float = 30.0

    @property
    def postgres(self) -> bool:
        """True when the outbox is a PostgreSQL database (`url`), not an SQLite file."""
        return self.url is not None

    @property
    def where(self) -> str:
        """The outbox as messages name it (a URL without its password)."""
        return redact_url(self.url) if self.url else str(self.path)


@dataclass(frozen=True)
class HubConfig:
    """`[hub]`: the stream, the region rule and default promises."""

    progress_update_stream: str = ""
    region: str = "auto"
    next_update_seconds: int = 3600
    stale_warning_seconds: int = 300


@dataclass(frozen=True)
class PublishConfig:
    """`[publish]`: schedule, concurrency, rate and retry policy."""

    interval_seconds: float = 2.0
    concurrency: int = 8
    max_concurrency: int = 32
    max_requests_per_second: float = 0.0
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 20.0
    outage_backoff_max_seconds: float = 300.0
    max_attempts: int = 0
    max_age_seconds: float = 0.0
    blocked_recheck_seconds: float = 60.0
    stop_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class MappingConfig:
    """`[mapping]`: when to verify auto-mapping and when to call a task unmapped."""

    check_after_seconds: float = 60.0
    unmapped_after_seconds: float = 900.0
    max_check_interval_seconds: float = 600.0


@dataclass(frozen=True)
class VerifyConfig:
    """`[verify]`: the daemon's repair rounds (0: off). Every `every_seconds` it reads back the
    next few delivered tasks and repairs what the Hub lost."""

    every_seconds: float = 0.0


@dataclass(frozen=True)
class LogConfig:
    """`[log]`: level and format of the event log."""

    level: str = "info"
    format: str = "json"
    summary_seconds: float = 60.0  # a repeated failure's summary line, at most this often


@dataclass(frozen=True)
class MetricsConfig:
    """`[metrics]`: the optional Prometheus/health listener."""

    listen: str | None = None
    allow_non_loopback: bool = False

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) pair to bind, or None when no listener is wanted."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class AwsConfig:
    """`[aws]`: botocore client settings (timeouts and the SDK's own retry layer)."""

    retry_mode: str = "standard"
    max_attempts: int = 1
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 10.0
    # An HTTP(S) proxy for every AWS call (botocore's `proxies`); unset: the SDK's own
    # HTTPS_PROXY / HTTP_PROXY / NO_PROXY variables apply.
    proxy: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)


Check = Callable[[Any], str | None]


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)

    return check


def _region(v: Any) -> str | None:
    if v == "auto" or REGION_RE.fullmatch(v):
        return None
    return 'must be "auto" or a region name such as "us-west-2"'


def _listen(v: Any) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return 'must be "HOST:PORT" with a port from 1 to 65535'
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host != "localhost":
            return "host must be an IP address or localhost"
    return None


PERCENT_ENCODE = ("its user:password part holds a raw '/', '@', '#' or '?' (not shown):"
                  " percent-encode them (%2F, %40, %23, %3F)")


def _pg_url(v: Any) -> str | None:
    if not re.match(r"^postgres(ql)?://", str(v)):
        return "must be a PostgreSQL URL (postgresql://user@host:5432/dbname?sslmode=require)"
    if raw_in_userinfo(str(v)):
        return PERCENT_ENCODE
    return None


def _proxy(v: Any) -> str | None:
    rule = 'must be a proxy URL such as "http://proxy.example.com:3128" (http or https)'
    if raw_in_userinfo(str(v)):
        return PERCENT_ENCODE
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError:
        return rule
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return rule
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{rule}, with no path or query"
    if port == 0:
        return f"{rule}, with a port from 1 to 65535"
    return None


def _level(v: Any) -> str | None:
    return _one_of("debug", "info", "warning", "error")(str(v).lower())


# section -> key -> (types accepted, extra check)
_RULES: dict[str, dict[str, tuple[tuple[type, ...], Check | None]]] = {
    "outbox": {
        "path": ((str,), lambda v: None if v else "must not be empty"),
        "retention_days": ((int, float), _non_negative),
        "busy_timeout_ms": ((int,), _positive),
        "batch_size": ((int,), lambda v: None if 1 <= v <= 10000 else "must be 1..10000"),
        "lease_seconds": ((int, float), _positive),
        "live_state_path": ((str,), lambda v: None if v else "must not be empty"),
        "wal_warning_bytes": ((int,), _positive),
        "url": ((str,), _pg_url),
        "fence_margin_seconds": ((int, float), _positive),
        "unreachable_after_seconds": ((int, float), _positive),
    },
    "hub": {
        "progress_update_stream": ((str,), stream_problem),
        "region": ((str,), _region),
        "next_update_seconds": ((int,), _non_negative),
        "stale_warning_seconds": ((int,), _non_negative),
    },
    "publish": {
        "interval_seconds": ((int, float), _positive),
        "concurrency": ((int,), lambda v: None if 1 <= v <= 256 else "must be 1..256"),
        "max_concurrency": ((int,), lambda v: None if 1 <= v <= 256 else "must be 1..256"),
        "max_requests_per_second": ((int, float), _non_negative),
        "backoff_base_seconds": ((int, float), _positive),
        "backoff_max_seconds": ((int, float), _positive),
        "outage_backoff_max_seconds": ((int, float), _positive),
        "max_attempts": ((int,), _non_negative),
        "max_age_seconds": ((int, float), _non_negative),
        "blocked_recheck_seconds": ((int, float), _positive),
        "stop_timeout_seconds": (
            (int, float),
            lambda v: None if 0 < v <= 9 else "must be in (0, 9]",
        ),
    },
    "mapping": {
        "check_after_seconds": ((int, float), _non_negative),
        "unmapped_after_seconds": ((int, float), _non_negative),
        "max_check_interval_seconds": ((int, float), _positive),
    },
    "verify": {
        "every_seconds": ((int, float), _non_negative),
    },
    "log": {
        "level": ((str,), _level),
        "format": ((str,), _one_of("json", "console")),
        "summary_seconds": ((int, float), _positive),
    },
    "metrics": {
        "listen": ((str,), _listen),
        "allow_non_loopback": ((bool,), None),
    },
    "aws": {
        "retry_mode": ((str,), _one_of("standard", "adaptive", "legacy")),
        "max_attempts": ((int,), lambda v: None if 1 <= v <= 10 else "must be 1..10"),
        "connect_timeout_seconds": ((int, float), _positive),
        "read_timeout_seconds": ((int, float), _positive),
        "proxy": ((str,), _proxy),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "outbox": OutboxConfig,
    "hub": HubConfig,
    "publish": PublishConfig,
    "mapping": MappingConfig,
    "verify": VerifyConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "aws": AwsConfig,
}


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names[t] for t in types)


def _fail(where: str, section: str, key: str, value: Any, rule: str) -> ConfigError:
    if rule == PERCENT_ENCODE:  # no part of such a value can be shown safely
        return ConfigError(f"{where}: [{section}] {key}: {rule}")
    shown = redact_url(value) if isinstance(value, str) and "://" in value else value
    return ConfigError(scrub(f"{where}: [{section}] {key} = {shown!r}: {rule}"))


def parse(data: Mapping[str, Any], where: str = "config", base_dir: Path | None = None) -> Config:
    """Validate parsed TOML and build a Config; raise ConfigError on the first problem."""
    outbox = data.get("outbox")
    if isinstance(outbox, dict) and isinstance(outbox.get("url"), str):
        remember(outbox["url"])  # before any message could quote it, valid or not
    aws = data.get("aws")
    if isinstance(aws, dict) and isinstance(aws.get("proxy"), str):
        remember(aws["proxy"])  # a proxy's user:password, likewise
    sections: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _RULES:
            known = ", ".join(f"[{s}]" for s in _RULES)
            raise ConfigError(f"{where}: unknown section [{section}] (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        values: dict[str, Any] = {}
        for key, value in body.items():
            rule = _RULES[section].get(key)
            if rule is None:
                known = ", ".join(_RULES[section])
                raise ConfigError(f"{where}: unknown key [{section}] {key} (known: {known})")
            types, check = rule
            if isinstance(value, bool) and bool not in types:
                raise _fail(where, section, key, value, f"must be {_type_name(types)}")
            if not isinstance(value, types):
                raise _fail(where, section, key, value, f"must be {_type_name(types)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise _fail(where, section, key, value, "must be a finite number")
            problem = check(value) if check else None
            if problem:
                raise _fail(where, section, key, value, problem)
            if isinstance(value, int) and not isinstance(value, bool) and float in types:
                value = float(value)
            values[key] = value
        sections[section] = values

    hub = sections.get("hub", {})
    if not hub.get("progress_update_stream"):
        raise ConfigError(
            f"{where}: [hub] progress_update_stream is required "
            "(the name your migration tool shows under in Migration Hub)"
        )
    outbox = sections.setdefault("outbox", {})
    if "url" in outbox and "path" in outbox:
        raise ConfigError(
            f"{where}: [outbox] set either path (an SQLite file) or url (PostgreSQL), not both"
        )
    for key in ("path", "live_state_path"):
        if key in outbox:
            path = Path(os.path.expanduser(outbox[key]))
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            outbox[key] = path
    publish = sections.get("publish", {})
    if publish.get("max_concurrency", 32) < publish.get("concurrency", 8):
        raise _fail(
            where,
            "publish",
            "max_concurrency",
            publish.get("max_concurrency"),
            "must be >= [publish] concurrency",
        )
    metrics = sections.get("metrics", {})
    if "listen" in metrics and not metrics.get("allow_non_loopback", False):
        host = metrics["listen"].rpartition(":")[0].strip("[]")
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise _fail(
                where,
                "metrics",
                "listen",
                metrics["listen"],
                "is not a loopback address; set [metrics] allow_non_loopback = true to expose it",
            )

    built = {name: _SECTION_TYPES[name](**values) for name, values in sections.items()}
    config = Config(**built)
    if config.outbox.postgres:
        need = fence_seconds(config)
        if config.outbox.lease_seconds <= need:
            raise _fail(
                where,
                "outbox",
                "lease_seconds",
                config.outbox.lease_seconds,
                f"must exceed {need:g} with a PostgreSQL outbox: ([aws] connect_timeout_seconds"
                " + read_timeout_seconds) x max_attempts + [outbox] fence_margin_seconds, the"
                " lease a call needs left before it starts",
            )
    return config


def fence_seconds(config: Config) -> float:
    """How much of a task's lease must remain, by the database's clock, before a call for it
    starts: the longest the call can take (every SDK attempt timing out) plus a margin."""
    aws = config.aws
    worst = (aws.connect_timeout_seconds + aws.read_timeout_seconds) * aws.max_attempts
    return worst + config.outbox.fence_margin_seconds


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """`--config`, else `$MGH_REPORTER_CONFIG`, else /etc/mgh-reporter/config.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MGH_REPORTER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _group_hint(path: Path) -> str:
    """Whom to ask, when a file is readable by its group and we are not in it."""
    try:
        st = path.stat()
        group = grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        return ""
    if not st.st_mode & 0o040 or st.st_gid in os.getgroups():
        return ""
    return (f" (it is readable by group {group}: ask an administrator to add you, e.g."
            f" `usermod -a -G {group} $USER`, then log in again)")


def load(path: Path) -> Config:
    """Read and validate one TOML file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (use --config PATH or set MGH_REPORTER_CONFIG)"
        ) from None
    except PermissionError as exc:
        hint = _group_hint(path)
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, where=str(path), base_dir=path.parent)


def documented_keys() -> list[tuple[str, str]]:
    """Every (section, key) the configuration accepts, for the docs test."""
    return [(s, f.name) for s, t in _SECTION_TYPES.items() for f in fields(t)]
