"""Host-tool impact: two writer processes' INSERT rate with and without the daemon draining.

Run: python benchmarks/host_impact.py [seconds]   (talks only to a stand-in on 127.0.0.1)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reporter.emulator import Emulator


def writer(path: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    n = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO outbox(kind, migration_task_name, status, progress_percent)"
                         " VALUES ('task_state', ?, 'IN_PROGRESS', ?)", (f"t{n % 500}", n % 101))
            conn.execute("COMMIT")
            n += 1
        except sqlite3.Error:
            errors += 1
    out.put((n, errors))


def measure(path: Path, seconds: float) -> tuple[float, int]:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=writer, args=(str(path), seconds, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results) / seconds, sum(r[1] for r in results)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    with tempfile.TemporaryDirectory() as tmp, Emulator() as hub:
        cfg = Path(tmp) / "c.toml"
        db = Path(tmp) / "o.db"
        cfg.write_text(f'[hub]\nprogress_update_stream = "Bench"\n[outbox]\npath = "{db}"\n'
                       '[publish]\ninterval_seconds = 0.5\n[log]\nlevel = "warning"\n')
        env = {**os.environ, **hub.environment(), "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
        subprocess.run([sys.executable, "-m", "reporter", "--config", str(cfg), "init"],
                       check=True, env=env, capture_output=True)
        alone, errors_alone = measure(db, seconds)
        daemon = subprocess.Popen([sys.executable, "-m", "reporter", "--config", str(cfg), "run"],
                                  env=env, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        beside, errors_beside = measure(db, seconds)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
        calls = hub.state.op_count("NotifyMigrationTaskState")
    print(f"writers alone:        {alone:8.0f} inserts/s ({errors_alone} errors)")
    print(f"writers beside daemon:{beside:8.0f} inserts/s ({errors_beside} errors)")
    print(f"ratio: {beside / alone:.2f} (target >= 0.70); daemon made {calls} Notify calls")


if __name__ == "__main__":
    main()
