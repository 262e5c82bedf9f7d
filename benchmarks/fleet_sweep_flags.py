import sys
import reporter.hub.pacing as pc
for k, v in eval(sys.argv[2]).items(): setattr(pc, k, v)
sys.argv = sys.argv[:2]
exec(open('/tmp/sweep.py').read())
