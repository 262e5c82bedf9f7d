import heapq, random, sys
sys.path.insert(0, '/work/main')
from reporter.hub.pacing import RateController, PacingPolicy

def sim(hosts=30, rate=20.0, tasks=10, conc=8, rtt=0.02, seed=1, policy=None, random_throttle=0.0, ctrl=True, startup=0.0):
    rng = random.Random(seed)
    # account bucket
    tokens = rate; stamp = 0.0
    def bucket(now):
        nonlocal tokens, stamp
        tokens = min(rate, tokens + (now - stamp) * rate); stamp = now
        if tokens >= 1: tokens -= 1; return True
        return False
    # host state: queue of calls: first stream(1) then tasks imports, then states
    class H: pass
    hs = []
    for i in range(hosts):
        h = H(); h.phase = 'stream'; h.todo_imports = tasks; h.todo_states = tasks; h.inflight = 0
        h.c = RateController(0.0, policy, random.Random(seed*100+i)); h.done = None; h.backoff = {}  # retry times
        h.retry = []  # list of (time, kind)
        hs.append(h)
    ev = []  # (time, seq, kind, host, call)
    seq = 0
    def push(t, kind, h, call=None):
        nonlocal seq; seq += 1; heapq.heappush(ev, (t, seq, kind, h, call))
    for i, h in enumerate(hs): push(rng.uniform(0, startup), 'wake', i)
    accepted = throttled = 0
    first = None; last = 0.0
    while ev:
        t, _, kind, i, call = heapq.heappop(ev)
        h = hs[i]
        if kind == 'done':
            h.inflight -= 1
            ok = call[1]
            if ctrl: h.c.record(t, call[2], not ok, 1.0)
            if ok:
                if call[0] == 'stream': h.phase = 'tasks'
                elif call[0] == 'import': h.todo_states_ready = getattr(h, 'todo_states_ready', 0) + 1
                elif call[0] == 'state': 
                    h.finished = getattr(h, 'finished', 0) + 1
                    if h.finished == tasks: h.done = t; last = max(last, t)
            else:
                # per-call backoff: retry after uniform(0,1)*... at least retry_after 1
                h.retry.append((t + max(1.0, rng.uniform(0, 1)), call[0]))
            push(t, 'wake', i)
            continue
        # wake: try to send as many as possible
        while h.inflight < conc:
            # pick next call
            c = None
            h.retry.sort()
            if h.retry and h.retry[0][0] <= t:
                c = h.retry.pop(0)[1]
            elif h.phase == 'stream' and not getattr(h, 'stream_sent', False):
                c = 'stream'; h.stream_sent = True
            elif h.phase == 'tasks' and h.todo_imports > 0:
                c = 'import'; h.todo_imports -= 1
            elif getattr(h, 'todo_states_ready', 0) > 0:
                c = 'state'; h.todo_states_ready -= 1
            if c is None:
                if h.retry: push(h.retry[0][0], 'wake', i)
                break
            if ctrl:
                d = h.c.ready_in(t)
                if d > 0:
                    # put back
                    if c == 'import': h.todo_imports += 1
                    elif c == 'state': h.todo_states_ready += 1
                    elif c == 'stream': h.stream_sent = False
                    else: h.retry.append((t, c))
                    push(t + d, 'wake', i); break
                h.c.take(t)
            ok = bucket(t + rtt/2)
            if ok and random_throttle and rng.random() < random_throttle: ok = False
            if first is None: first = t
            accepted += ok; throttled += (not ok)
            h.inflight += 1
            push(t + rtt * rng.uniform(0.8, 1.5), 'done', i, (c, ok, t))
    needed = hosts * (1 + 2 * tasks)
    ideal = needed / rate
    dones = sorted(h.done - first for h in hs)
    med = dones[len(dones)//2]
    return dict(accepted=accepted, throttled=throttled, share=round(throttled/(accepted+throttled),3), time=round(last-first,1), ideal=ideal, ratio=round((last-first)/ideal,2), spread=round(dones[-1]/med,2))

if __name__ == '__main__':
    print('no ctrl', sim(ctrl=False))
    for s in range(3):
        print('ctrl', sim(seed=s))
    for s in range(2):
        print('ctrl 40 hosts', sim(hosts=40, seed=s))
