"""Secrets that must never leave the process: the passwords in configured database URLs (their
user-info part, `password=` and `sslpassword=`, raw and percent-decoded), remembered once the
config is read, and the scrubbing every message, log line and `where` string goes through."""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote

__all__ = ["redact_url", "remember", "scrub", "url_secrets"]

_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^@/?#]*)@")
_PARAMS = re.compile(r"[?&](?:ssl)?password=([^&#]*)", re.IGNORECASE)
_known: set[str] = set()
_lock = threading.Lock()


def url_secrets(url: str) -> set[str]:
    """The secrets a URL carries, as written and percent-decoded, found even in a URL that is
    malformed (a bad escape, a typo in the scheme)."""
    found: list[str] = []
    userinfo = _USERINFO.match(url)
    if userinfo and ":" in userinfo.group(1):
        found.append(userinfo.group(1).split(":", 1)[1])
    found.extend(m.group(1) for m in _PARAMS.finditer(url))
    decoded = [unquote(s, errors="replace") for s in found]
    return {s for s in (*found, *decoded) if s}


def remember(url: str) -> None:
    """Scrub this URL's secrets from everything said from now on."""
    with _lock:
        _known.update(url_secrets(url))


def scrub(text: str) -> str:
    """`text` with every remembered secret replaced by ***."""
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """The URL with its secrets replaced by ***, for logs and messages."""
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        url = url.replace(secret, "***")
    return url
