"""Which of the SDK's default shared files (`~/.aws/config`, `~/.aws/credentials`) may be read:
only one that nobody but root or us could have written, through directories nobody else can
write into. A file a tool user could plant (a home in the shared outbox directory, `sudo -E`
with a user's HOME) is never read as configuration: its `credential_process` would run as us.
The SDK's own variables (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE) are honoured as set."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

__all__ = ["DEFAULT_FILES", "Ignored", "ignored_files", "writable_by_others"]

# (botocore's config variable, the environment variable that names it, the default path)
DEFAULT_FILES = (
    ("config_file", "AWS_CONFIG_FILE", "~/.aws/config"),
    ("credentials_file", "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
)
NOTHING = os.devnull  # what the SDK reads instead: an empty file


class Ignored(NamedTuple):
    """A default shared file the SDK must not read, and why."""

    variable: str  # botocore's config variable (config_file, credentials_file)
    path: str
    reason: str


def writable_by_others(path: Path) -> str | None:
    """Why someone other than root or us could have written `path` (or could still put a file
    there), or None. Every existing component from `/` down, and of the path the symlinks lead
    to, must be owned by root or us; a directory may be writable by group or others only when
    it is sticky (like /tmp) and what it holds next is ours."""
    me = os.geteuid()
    for chain in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        parts = [chain, *chain.parents][::-1]  # from / down
        for i, part in enumerate(parts):
            try:
                st = os.lstat(part)
            except FileNotFoundError:
                break  # nothing below exists; the directory above was judged
            except OSError as exc:
                return f"{part}: {exc.strerror}"
            if st.st_uid not in (0, me):
                return f"{part} belongs to uid {st.st_uid}"
            open_to_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if stat.S_ISDIR(st.st_mode) and open_to_others and i + 1 < len(parts):
                sticky = st.st_mode & stat.S_ISVTX
                if not sticky:
                    return f"{part} is writable by its group or others (mode" \
                           f" {stat.S_IMODE(st.st_mode):o})"
            elif not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode) \
                    and open_to_others:
                return f"{part} is writable by its group or others"
    return None


def ignored_files() -> list[Ignored]:
    """The default shared files the SDK must not read here (an explicit variable is never
    second-guessed)."""
    found = []
    for variable, env, default in DEFAULT_FILES:
        if os.environ.get(env):
            continue
        path = os.path.expanduser(default)
        reason = writable_by_others(Path(path))
        if reason is not None:
            found.append(Ignored(variable, path, reason))
    return found
