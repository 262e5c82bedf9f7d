import sim, sys, statistics
import reporter.hub.pacing as pc
from reporter.hub.pacing import PacingPolicy
def evaluate(pol, label=""):
    fleet = [sim.sim(policy=pol, startup=st, seed=sd) for st, sd in ((0.0, 1), (3.0, 2), (8.0, 3), (3.0, 4))]
    rnd = [sim.sim(policy=pol, hosts=1, rate=10000, tasks=60, random_throttle=0.3, conc=32, seed=s)['time'] for s in range(12)]
    over = sim.sim(policy=pol, hosts=1, rate=50, tasks=300, conc=32)
    print(label, "fleet share %s ratio max %.2f spread max %.2f | random times %s | over %.3f %.2f" % (
        [f['share'] for f in fleet], max(f['ratio'] for f in fleet), max(f['spread'] for f in fleet),
        sorted(rnd), over['share'], over['ratio']), flush=True)
if __name__ == "__main__":
    import itertools
    for kw in eval(sys.argv[1]):
        evaluate(PacingPolicy(**kw), str(kw))
