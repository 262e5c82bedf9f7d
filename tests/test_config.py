"""Configuration: one clear message naming key, value and rule; defaults; documented keys."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from reporter import config
from reporter.config import ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent
BASE = {"hub": {"progress_update_stream": "Tool"}}


def with_(section: str, **values: object) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = {k: dict(v) for k, v in BASE.items()}
    data.setdefault(section, {}).update(values)
    return data


def test_defaults():
    """Only the stream is required; the contract's defaults apply."""
    cfg = parse(BASE)
    assert cfg.outbox.path == Path("/var/lib/mgh-reporter/outbox.db")
    assert cfg.outbox.retention_days == 7
    assert cfg.hub.region == "auto" and cfg.hub.next_update_seconds == 3600
    assert cfg.publish.interval_seconds == 2.0
    assert cfg.mapping.check_after_seconds == 60 and cfg.mapping.unmapped_after_seconds == 900
    assert cfg.log.level == "info" and cfg.log.format == "json"
    assert cfg.metrics.listen is None


@pytest.mark.parametrize(("data", "needle"), [
    ({}, "[hub] progress_update_stream is required"),
    ({"hub": {"progress_update_stream": "a/b"}}, "progress_update_stream = 'a/b'"),
    (with_("hub", region="mars"), "[hub] region = 'mars'"),
    (with_("hub", next_update_seconds=-5), "[hub] next_update_seconds = -5: must be >= 0"),
    (with_("hub", next_update_seconds=1.5), "must be an integer"),
    (with_("publish", interval_seconds=0), "[publish] interval_seconds = 0: must be > 0"),
    (with_("publish", interval_seconds="2"), "must be an integer or a number"),
    (with_("publish", concurrency=True), "must be an integer"),
    (with_("publish", concurrency=16, max_concurrency=8), "max_concurrency = 8"),
    (with_("publish", stop_timeout_seconds=30), "(0, 9]"),
    (with_("log", format="xml"), "[log] format = 'xml': must be one of 'json', 'console'"),
    (with_("log", level="loud"), "[log] level = 'loud'"),
    (with_("metrics", listen="9464"), 'must be "HOST:PORT"'),
    (with_("metrics", listen="0.0.0.0:9464"), "allow_non_loopback"),
    (with_("outbox", retention_days=-1), "[outbox] retention_days = -1"),
    (with_("outbox", colour="blue"), "unknown key [outbox] colour"),
    ({**BASE, "extras": {}}, "unknown section [extras]"),
    (with_("aws", max_attempts=0), "[aws] max_attempts = 0"),
])
def test_errors_name_key_value_and_rule(data: dict[str, dict[str, object]], needle: str):
    """Every bad value is reported with its section, key, value and rule."""
    with pytest.raises(ConfigError) as err:
        parse(data, where="c.toml")
    assert needle in str(err.value)
    assert str(err.value).startswith("c.toml: ")


def test_non_loopback_allowed_when_explicit():
    """An operator can expose metrics on purpose."""
    cfg = parse(with_("metrics", listen="0.0.0.0:9464", allow_non_loopback=True))
    assert cfg.metrics.address == ("0.0.0.0", 9464)


def test_relative_outbox_path_is_relative_to_file(tmp_path: Path):
    """A relative outbox path is resolved next to the config file."""
    (tmp_path / "c.toml").write_text('[hub]\nprogress_update_stream="T"\n[outbox]\npath="o.db"\n')
    assert config.load(tmp_path / "c.toml").outbox.path == tmp_path / "o.db"


def test_missing_and_invalid_files(tmp_path: Path):
    """A missing file and broken TOML are clear errors."""
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[hub\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(tmp_path / "bad.toml")


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch):
    """--config, then $MGH_REPORTER_CONFIG, then /etc/mgh-reporter/config.toml."""
    monkeypatch.delenv("MGH_REPORTER_CONFIG", raising=False)
    assert config.config_path(None) == Path("/etc/mgh-reporter/config.toml")
    monkeypatch.setenv("MGH_REPORTER_CONFIG", "/x.toml")
    assert config.config_path(None) == Path("/x.toml")
    assert config.config_path("/y.toml") == Path("/y.toml")


def test_example_config_is_valid_and_documents_every_key():
    """config.example.toml parses, and every accepted key appears in it with a comment."""
    text = (ROOT / "config.example.toml").read_text()
    parse(tomllib.loads(text))
    for section, key in config.documented_keys():
        assert f"[{section}]" in text
        assert re.search(rf"^#? ?{key} = ", text, re.M), f"[{section}] {key} not documented"


RAW_PASSWORDS = ["Zq/x9KvJ", "Zq@x9KvJ", "Zq#x9KvJ", "Zq?x9KvJ", "Z/q@x#9?KvJ"]


def _pieces(secret: str) -> set[str]:
    """Every 3-character run of the secret: no part of it may be shown."""
    return {secret[i:i + 3] for i in range(len(secret) - 2)}


@pytest.mark.parametrize("password", RAW_PASSWORDS)
@pytest.mark.parametrize("section,key,url", [
    ("outbox", "url", "postgresql://reporter:{}@db.example:5432/migrations"),
    ("aws", "proxy", "http://proxyuser:{}@proxy.example:3128"),
])
def test_a_url_whose_password_is_not_percent_encoded_is_refused_unseen(
        section: str, key: str, url: str, password: str):
    """A raw / @ # ? in the user:password part: refused when the config is read, naming the
    key and asking to percent-encode, echoing no part of the value (a parser would read the
    rest of the password as host, port or database, and print it)."""
    data: dict[str, dict[str, object]] = {"hub": {"progress_update_stream": "S"},
                                          section: {key: url.format(password)}}
    with pytest.raises(ConfigError) as caught:
        parse(data)
    message = str(caught.value)
    assert f"[{section}] {key}" in message and "percent-encode" in message
    assert not {p for p in _pieces(password) if p in message}, message
    assert "proxy.example" not in message and "db.example" not in message


@pytest.mark.parametrize("encoded,decoded", [
    ("p%25w%3Ad%20x%C3%A9q", "p%w:d xéq"),  # % : space and non-ASCII, percent-encoded
    ("s%2Fl%40a%23s%3Fh", "s/l@a#s?h"),  # the refused characters, encoded as asked
])
def test_a_percent_encoded_password_is_accepted_and_never_shown(encoded: str, decoded: str):
    """Encoded as asked, the URL is accepted; what is shown of it (`where`, the live state's
    `outbox`) is scheme, user, host, port and database only."""
    cfg = parse({"hub": {"progress_update_stream": "S"},
                 "outbox": {"url": f"postgresql://rep:{encoded}@db.example:6432/migrations"
                                   f"?password={encoded}&sslmode=require"},
                 "aws": {"proxy": f"http://u:{encoded}@proxy.example:3128"}})
    assert cfg.outbox.where == "postgresql://rep@db.example:6432/migrations"
    assert encoded not in cfg.outbox.where and decoded not in cfg.outbox.where
    assert config.redact_url(cfg.aws.proxy or "") == "http://u@proxy.example:3128"
