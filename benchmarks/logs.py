"""How many lines a throttled drain writes to stderr: 3,000 tasks, 30% of calls throttled.

    python benchmarks/logs.py [--tasks 3000] [--throttle 0.3]

Starts an emulated Hub in this process (loopback), an outbox in a temporary directory, and
`mgh-reporter drain` as a real process with the default config (info level, JSON); prints the
drain's exit code and time, the throttled calls the emulator answered and the stderr lines,
by event.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reporter.emulator import Emulator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--throttle", type=float, default=0.3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    config = work / "c.toml"
    config.write_text(f'[outbox]\npath = "{work}/o.db"\n[hub]\nprogress_update_stream = "S"\n')
    with Emulator() as hub:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
               "AWS_SECRET_ACCESS_KEY": "x" * 40, "AWS_REGION": "us-west-2",
               **hub.environment()}
        base = [sys.executable, "-m", "reporter", "--config", str(config)]
        subprocess.run([*base, "init"], env=env, check=True, capture_output=True)
        conn = sqlite3.connect(work / "o.db")
        with conn:
            conn.executemany(
                "INSERT INTO outbox (kind, migration_task_name, status, progress_percent)"
                " VALUES ('task_state', ?, 'IN_PROGRESS', 5)",
                [(f"t{i}",) for i in range(args.tasks)],
            )
        conn.close()
        hub.state.faults.update(throttle=args.throttle, retry_after=0)
        started = time.monotonic()
        done = subprocess.run([*base, "drain"], env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        throttled = sum(1 for c in hub.state.calls if c.get("error") == "ThrottlingException")
    lines = done.stderr.splitlines()
    events = collections.Counter(
        json.loads(line).get("event", "?") if line.startswith("{") else "(not JSON)"
        for line in lines
    )
    print(f"exit {done.returncode} in {seconds:.1f} s; {throttled} throttled calls; "
          f"{len(lines)} stderr lines: {dict(events)}")
    print(f"stdout: {done.stdout.strip()}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
