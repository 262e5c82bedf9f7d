import sim, sys, statistics
from reporter.hub.pacing import PacingPolicy
def evaluate(pol, label=""):
    fleet = [sim.sim(policy=pol, startup=st, seed=sd) for st, sd in ((0.0, 1), (3.0, 2), (8.0, 3), (3.0, 4))]
    rnd = [sim.sim(policy=pol, hosts=1, rate=10000, tasks=300, random_throttle=0.3, conc=32, seed=s)['time'] for s in range(8)]
    over = sim.sim(policy=pol, hosts=1, rate=50, tasks=300, conc=32)
    print(label, "fleet share max %.3f ratio max %.2f spread max %.2f | random times med %.1f max %.1f | over %.3f %.2f" % (
        max(f['share'] for f in fleet), max(f['ratio'] for f in fleet), max(f['spread'] for f in fleet),
        statistics.median(rnd), max(rnd), over['share'], over['ratio']), flush=True)
if __name__ == "__main__":
    evaluate(PacingPolicy(), "v2")
