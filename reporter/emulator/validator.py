"""The emulator's request validation: every input checked against botocore's own model of
the operation (types, lengths, patterns, enums, required members) and the documented formats of
resource attribute values, answering as the service does."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from botocore.model import Shape

__all__ = [
    "ATTRIBUTE_FORMATS",
    "CONFIG_PREFIX",
    "MGH_PREFIX",
    "ServiceError",
    "Validator",
    "ipv6",
]

MGH_PREFIX = "AWSMigrationHub"
CONFIG_PREFIX = "AWSMigrationHubMultiAccountService"
VM_FIELDS = {"VM_MANAGED_OBJECT_REFERENCE", "VM_NAME", "VM_PATH"}
CASE_FOLDED = {"MAC_ADDRESS", "FQDN"}
# The per-type formats the API reference documents for ResourceAttribute values (`\p{Cntrl}` is
# Java's class: U+0000-U+001F and U+007F). Kept here, apart from rows.py, so the emulator checks
# the daemon instead of agreeing with it by construction.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
ATTRIBUTE_FORMATS = {
    "IPV4_ADDRESS": re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}"),
    "MAC_ADDRESS": re.compile(r"([0-9A-Fa-f]{2}[:-]){5}([0-9A-Fa-f]{2})"),
    "FQDN": re.compile(r"[^<>{}\\/?,=\x00-\x1f\x7f]{1,256}"),
}


def ipv6(value: str) -> bool:
    """Eight groups of hex, the usual `::` abbreviation and an IPv4 tail accepted."""
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


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
