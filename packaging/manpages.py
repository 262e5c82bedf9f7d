"""Writes the manual pages (`mgh-reporter.1` and one page per command, such as
`mgh-reporter-drain.1`) from the command line's own help texts with click-man, gzipped as the
packages install them.

    python packaging/manpages.py --out DIR [--version V] [--date YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_pages"]


def write_pages(out: Path, version: str, date: str) -> list[Path]:
    """Write every page into `out` as NAME.1.gz (reproducible: no time in the gzip header)."""
    from click_man.core import write_man_pages  # type: ignore[import-untyped]

    from reporter.cli import cli

    _whole_names(cli)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    write_man_pages("mgh-reporter", cli, version=version, target_dir=str(raw), date=date)
    pages = []
    for page in sorted(raw.glob("*.1")):
        target = out / f"{page.name}.gz"
        with target.open("wb") as sink, gzip.GzipFile(
            filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=9
        ) as packed:
            packed.write(page.read_bytes())
        page.unlink()
        pages.append(target)
    raw.rmdir()
    return pages


def _whole_names(command: Any) -> None:
    """Each page's NAME line gets the command's first sentence whole (click cuts it at 45
    characters)."""
    for sub in getattr(command, "commands", {}).values():
        sub.short_help = sub.short_help or sub.get_short_help_str(limit=10_000)
        _whole_names(sub)


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for NAME.1.gz")
    parser.add_argument("--version", default=None, help="(default: the installed version)")
    parser.add_argument("--date", default="", help="the pages' date (default: none)")
    args = parser.parse_args(argv)
    from reporter import __version__

    pages = write_pages(args.out, args.version or __version__, args.date)
    print(f"{len(pages)} pages in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
