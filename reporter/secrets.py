"""Secrets that must never leave the process: the passwords in configured database URLs (their
user-info part, `password=` and `sslpassword=`, raw and percent-decoded), remembered once the
config is read, and the scrubbing every message, log line and `where` string goes through."""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote, urlsplit

__all__ = ["raw_in_userinfo", "redact_url", "remember", "scrub", "url_secrets"]

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


def raw_in_userinfo(url: str) -> bool:
    """True when the user:password part (everything between `://` and the last `@`) holds a
    raw `/`, `@`, `#` or `?`: a parser would end the part there and read the rest of the
    password as host, port or database, and libpq would then print it."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    at = rest.rfind("@")
    return at >= 0 and any(c in rest[:at] for c in "/@#?")


def redact_url(url: str) -> str:
    """What may be shown of a URL: its scheme, user, host, port and database (or path), and
    nothing else (no password, no query: a query may hold `password=`). A URL that does not
    parse cleanly shows only its scheme."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return "(a URL that does not parse)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{scheme}://(not shown: it does not parse)"
    if raw_in_userinfo(url):
        return f"{scheme}://(not shown: its user:password part is not percent-encoded)"
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    shown = f"{scheme}://{user}{host}{f':{port}' if port else ''}{parts.path}"
    return scrub(shown)
