"""The one-file app's guard, run before shiv's bootstrap: shiv extracts the app into a cache
directory and imports from it (its `.pth` files run as code), reusing an extraction it finds
there without checking who made it, under a name anyone can predict. So the cache must be a
directory nobody but us (or root) can write, reached through directories nobody else can
write into: made private (0700) when missing; refused, naming it and saying what to do,
otherwise. Self-contained (the standard library only): it runs before anything is imported
from the archive. build.py puts this file, then shiv's own __main__, into the .pyz."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import zipfile


def _problem(root: str) -> str | None:
    """Why `root` may not be used as the cache (None: it may)."""
    me = os.geteuid()
    trusted = (0, me)
    path = os.path.abspath(root)
    parents = []
    parent = os.path.dirname(path)
    while True:
        parents.append(parent)
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    for directory in reversed(parents):  # from / down: nobody else may swap a component
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            break
        if st.st_uid not in trusted:
            return f"{directory} belongs to uid {st.st_uid}"
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{directory} is writable by its group or others"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory (a symbolic link or a file)"
    if st.st_uid not in trusted:
        return f"{path} belongs to uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"{path} is writable by its group or others"
    for entry in os.scandir(path):  # an extraction someone else made is never imported from
        owner = entry.stat(follow_symlinks=False).st_uid
        if owner not in trusted:
            return f"{entry.path} belongs to uid {owner}"
    return None


def guard() -> None:
    """Check (or make, privately) the cache shiv will extract into; exit 1 naming it if it is
    not safe."""
    with zipfile.ZipFile(sys.argv[0]) as archive:
        env = json.loads(archive.read("environment.json").decode())
    root = os.path.expanduser(os.environ.get("SHIV_ROOT") or env.get("root") or "~/.shiv")
    problem = _problem(root)
    if problem is None and not os.path.lexists(root):
        parent = os.path.dirname(os.path.abspath(root))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
        problem = _problem(root)  # made by someone else in between: judged again
    if problem is not None:
        sys.stderr.write(
            f"mgh-reporter: refusing to run from the cache {root}: {problem}. Code found there"
            " would run as you. Set SHIV_ROOT to a directory only you can write (it is made"
            " 0700 if missing).\n")
        sys.exit(1)


guard()
