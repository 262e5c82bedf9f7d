#!/bin/sh
# mgh-reporter's health from the shell, for container HEALTHCHECKs and Kubernetes exec probes:
# healthy (exit 0) while the daemon's live state file says "ok" and was rewritten recently. It
# starts no Python (a second interpreter would not fit beside the daemon in a 64 MiB sidecar)
# and reads nothing from the outbox. The daemon rewrites the file at least every 10 s.
#   MGH_REPORTER_LIVE           the live state file ([outbox] live_state_path, or the default
#                               next to the outbox: <outbox>.live.json)
#   MGH_REPORTER_STALE_SECONDS  how old it may be (default 30)
live="${MGH_REPORTER_LIVE:-/var/lib/mgh-reporter/outbox.db.live.json}"
stale="${MGH_REPORTER_STALE_SECONDS:-30}"
if [ ! -f "$live" ]; then
  echo "unhealthy: no live state at $live (the daemon is not running, or not yet started)"
  exit 1
fi
age=$(( $(date +%s) - $(stat -c %Y "$live") ))
if [ "$age" -gt "$stale" ]; then
  echo "unhealthy: live state last written ${age} s ago (the daemon is hung or stopped)"
  exit 1
fi
if ! grep -q '"health": "ok"' "$live"; then
  echo "unhealthy: $(grep -E '^ *"(health|cause)"' "$live" | tr -d '\n' | tr -s ' ')"
  exit 1
fi
echo "healthy"
