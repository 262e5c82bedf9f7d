"""One run of the faults scenario (60 tasks x 5 rows, 30% throttle + 10% 5xx) on the installed
code, printed as its Hub call trace in 5 s bins (calls / throttled / other errors):
`python benchmarks/faults_trace.py`. How a change to pacing is compared with main."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import emulator_process, insert_states, make_outbox, run_measured


def main() -> int:
    with emulator_process() as hub:
        hub.faults(throttle=0.3, server_error=0.1, retry_after=1)
        box = make_outbox(hub)
        for r in range(5):
            insert_states(box.db, [(f"f{t}", "IN_PROGRESS", 10 * r, f"row {r}")
                                   for t in range(60)])
        ran = run_measured(box.cmd("drain", "--timeout", "90"), hub.env)
        calls = hub._request("calls")["calls"]
    print("drain exit", ran.code, "wall", round(ran.wall, 1), "s")
    t0 = min(c["time"] for c in calls)
    bins: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for c in calls:
        b = bins[int((c["time"] - t0) // 5) * 5]
        b[0] += 1
        b[1] += c["error"] == "ThrottlingException"
        b[2] += bool(c["error"]) and c["error"] != "ThrottlingException"
    print("; ".join(f"{at} s: {n}/{t}T/{e}E" for at, (n, t, e) in sorted(bins.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
