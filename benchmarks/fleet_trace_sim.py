import sim, sys, collections, reporter.hub.pacing as pc
from reporter.hub.pacing import PacingPolicy
orig = pc.RateController.record
bins = collections.defaultdict(lambda: collections.Counter())
def rec(self, now, sent_at, thr, ra=None):
    state = 'cold' if self._cold is not None else ('free' if self.rate is None else 'lim')
    if self.tolerated: state += '+tol'
    bins[int(sent_at//3)*3][(state, thr)] += 1
    orig(self, now, sent_at, thr, ra)
pc.RateController.record = rec
kw = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
print(sim.sim(policy=PacingPolicy(**kw), startup=3.0, seed=2))
for b in sorted(bins): print(b, dict(bins[b]))
