#!/bin/sh
# mgh-reporter's health from the shell, for container HEALTHCHECKs and Kubernetes exec probes:
# healthy (exit 0) while the daemon's live state file says "ok" and was rewritten recently. It
# starts no Python (a second interpreter would not fit beside the daemon in a 64 MiB sidecar)
# and reads nothing from the outbox. The daemon rewrites the file at least every 10 s.
#   MGH_REPORTER_LIVE           the live state file ([outbox] live_state_path); unset: the
#                               newest live-*.json in $RUNTIME_DIRECTORY (else /run/mgh-reporter),
#                               where the daemon keeps one file per outbox
#   MGH_REPORTER_STALE_SECONDS  how old it may be (default 30)
live="${MGH_REPORTER_LIVE:-}"
if [ -z "$live" ]; then
  dir="${RUNTIME_DIRECTORY:-/run/mgh-reporter}"
  live=$(ls -t "$dir"/live-*.json 2>/dev/null | head -n 1)
  [ -n "$live" ] || live="$dir/live-*.json"
fi
stale="${MGH_REPORTER_STALE_SECONDS:-30}"
if [ -L "$live" ]; then
  echo "unhealthy: $live is a symbolic link, not the daemon's live state"
  exit 1
fi
if [ ! -f "$live" ]; then
  echo "unhealthy: no live state at $live (the daemon is not running, or not yet started)"
  exit 1
fi
age=$(( $(date +%s) - $(stat -c %Y "$live") ))
if [ "$age" -gt "$stale" ]; then
  echo "unhealthy: live state last written ${age} s ago (the daemon is hung or stopped)"
  exit 1
fi
if grep -q '"health": "stopped"' "$live"; then
  echo "unhealthy: the daemon stopped (cleanly); nothing is delivering"
  exit 1
fi
if ! grep -q '"health": "ok"' "$live"; then
  echo "unhealthy: $(grep -E '^ *"(health|cause)"' "$live" | tr -d '\n' | tr -s ' ')"
  exit 1
fi
echo "healthy"
