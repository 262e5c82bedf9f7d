"""A/B: the 600-task drain (and `notify`) of this tree against another commit's, interleaved on
one machine, so its noise falls on both sides alike.

    python benchmarks/ab.py 5020a86 --runs 6

The other commit is checked out with `git worktree` and put first on PYTHONPATH of its runs;
the emulator is always this tree's, so both sides talk to the same Hub. Prints each side's
drain seconds (median, fastest, all runs) and `notify`'s per-call seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (  # benchmarks/run.py, beside this script
    emulator_process,
    insert_states,
    make_outbox,
    run_measured,
    start_spawner,
)

ROOT = Path(__file__).resolve().parent.parent
TASKS = 600


def worktree(rev: str) -> Path:
    """A checkout of `rev` (made once, kept for later runs)."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"mgh-ab-{commit}"
    if not (path / "reporter").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT,
                       check=True, capture_output=True)
    return path


def one_drain(tree: Path | None) -> float:
    """Wall seconds of one drain of TASKS tasks x 1 row at 30 ms per call, by `tree`'s code
    (None: this tree's)."""
    with emulator_process(latency=0.030) as hub:
        env = dict(hub.env)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        box = make_outbox(hub)
        if tree is not None:  # the other side makes its own outbox (its own schema)
            box.db.unlink()
            subprocess.run(box.cmd("init"), check=True, env=env, capture_output=True)
        insert_states(box.db, [(f"t{i:05d}", "IN_PROGRESS", 50, "copying") for i in range(TASKS)])
        ran = run_measured(box.cmd("drain", "--timeout", "600"), env)
        if ran.code != 0:
            raise SystemExit(f"drain exited {ran.code} ({tree or 'this tree'})")
        return ran.wall


def notify_seconds(tree: Path | None, calls: int = 20) -> float:
    """Mean wall seconds of one `mgh-reporter notify` (a new interpreter each)."""
    with emulator_process() as hub:
        env = dict(hub.env)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        box = make_outbox(hub)
        started = time.monotonic()
        for i in range(calls):
            subprocess.run(box.cmd("notify", f"t{i}", "--status", "IN_PROGRESS", "--percent",
                                   "5"), check=True, env=env, capture_output=True)
        return (time.monotonic() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the commit to compare with (e.g. 5020a86)")
    parser.add_argument("--runs", type=int, default=6, help="drains per side (default 6)")
    args = parser.parse_args()
    # Both sides run from compiled bytecode, as an installed package does (the .deb and the
    # wheel compile it): with PYTHONDONTWRITEBYTECODE set, each run would compile every module
    # again and the larger tree would pay for its size at every start.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.chdir(tempfile.gettempdir())  # `python -m` puts the working directory first on sys.path
    start_spawner()
    other = worktree(args.rev)
    sides: dict[str, list[float]] = {"this tree": [], args.rev: []}
    for _ in range(args.runs):
        sides["this tree"].append(one_drain(None))
        sides[args.rev].append(one_drain(other))
    for name, runs in sides.items():
        print(f"{name:>10}: drain of {TASKS} tasks median {statistics.median(runs):.2f} s, "
              f"fastest {min(runs):.2f} s, runs {', '.join(f'{r:.2f}' for r in runs)}")
    for name, tree in (("this tree", None), (args.rev, other)):
        print(f"{name:>10}: notify {notify_seconds(tree):.3f} s per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
