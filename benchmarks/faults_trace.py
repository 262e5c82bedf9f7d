"""One run of the faults scenario (60 tasks x 5 rows, 30% throttle + 10% 5xx) on the installed code, with its Hub call trace in 5 s bins: `python benchmarks/faults_trace.py`."""
import sys, json, time, collections, urllib.request
sys.path.insert(0, "benchmarks")
from run import emulator_process, make_outbox, insert_states, run_measured
with emulator_process() as hub:
    hub.faults(throttle=0.3, server_error=0.1, retry_after=1)
    box = make_outbox(hub)
    for r in range(5):
        insert_states(box.db, [(f"f{t}", "IN_PROGRESS", 10 * r, f"row {r}") for t in range(60)])
    ran = run_measured(box.cmd("drain", "--timeout", "90"), hub.env)
    print("code", ran.code, "wall", round(ran.wall, 1))
    calls = hub._request("calls")["calls"]
t0 = min(c["time"] for c in calls)
bins = collections.defaultdict(lambda: [0, 0, 0])
for c in calls:
    b = int((c["time"] - t0) // 5) * 5
    bins[b][0] += 1
    bins[b][1] += c["error"] == "ThrottlingException"
    bins[b][2] += bool(c["error"]) and c["error"] != "ThrottlingException"
print("; ".join(f"{b}:{v[0]}/{v[1]}T/{v[2]}E" for b, v in sorted(bins.items())))
