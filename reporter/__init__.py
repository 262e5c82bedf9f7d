"""mgh-reporter: a durable outbox relay from migration tools to AWS Migration Hub."""

# No newer syntax above the version check: a host's old `python3` (3.6 or 3.9 on RHEL 8/9 and
# Amazon Linux 2023) must get this sentence, not a SyntaxError from deep inside a dependency.
import sys

if sys.version_info < (3, 11):  # noqa: UP036 (this is the check that must run)
    sys.exit(
        "mgh-reporter needs Python 3.11 or newer; this is Python %d.%d (%s). Run it with "  # noqa: UP031
        "python3.11 (or newer) from your distribution."
        % (sys.version_info[0], sys.version_info[1], sys.executable)
    )

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed metadata when first asked for (importlib.metadata
    costs a shell tool's `notify` 30 ms it does not need)."""
    if name != "__version__":
        raise AttributeError(f"module 'reporter' has no attribute {name!r}")
    from importlib import metadata

    try:
        # The one place the version is written is pyproject.toml; every install carries it.
        version = metadata.version("mgh-reporter")
    except metadata.PackageNotFoundError:  # a bare source tree on sys.path
        version = "0+unknown"
    globals()["__version__"] = version
    return version
