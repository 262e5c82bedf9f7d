"""The deployment files, offline: the Kubernetes manifests validate (strictly) against the
newest Kubernetes schema kubernetes-validate knows, and say what the sidecar needs: a native
sidecar, a shared emptyDir with fsGroup, non-root, a 64 MiB limit and probes that start no
second Python; the container health check script reads the live state file correctly."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from reporter import live

from .helpers import ROOT

K8S = ROOT / "deploy" / "kubernetes"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.sh"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_manifests_validate_strictly_against_current_kubernetes():
    version = kubernetes_validate.latest_version()
    docs = _documents()
    assert {d["kind"] for d in docs} == {"ConfigMap", "ServiceAccount", "Pod"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def test_the_pod_is_a_memory_bounded_native_sidecar_with_cheap_probes():
    pod = next(d for d in _documents() if d["kind"] == "Pod")["spec"]
    (reporter,) = pod["initContainers"]
    assert reporter["restartPolicy"] == "Always"  # a native sidecar
    # above the 80 MiB the daemon is measured to stay under (benchmarks: hostile-memory)
    assert reporter["resources"]["limits"]["memory"] == "96Mi"
    assert reporter["resources"]["requests"]["memory"] == "64Mi"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 10001
    assert reporter["securityContext"]["runAsUser"] == 10001
    assert {v["name"] for v in pod["volumes"]} >= {"outbox", "config"}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "outbox")
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
              for c in pod["initContainers"] + pod["containers"]}
    assert mounts["mgh-reporter"]["outbox"] == mounts["tool"]["outbox"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = " ".join(reporter[probe]["exec"]["command"])
        assert "python" not in command and "mgh-reporter status" not in command


def _check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(HEALTHCHECK)], capture_output=True, text=True,
                          env={**os.environ, "MGH_REPORTER_LIVE": str(path), **(env or {})})


def _state(**changes: Any) -> live.LiveState:
    base = live.LiveState(health="ok", cause=None, heartbeat=time.time(), pid=1,
                          outbox="/var/lib/mgh-reporter/outbox.db", interval_seconds=2.0)
    return live.LiveState(**{**base.__dict__, **changes})


def test_healthcheck_script_reads_the_live_state(tmp_path: Path):
    """Healthy for a fresh "ok"; unhealthy (saying why) when blocked, when the file is old
    (the daemon stopped ticking) or missing."""
    path = tmp_path / "live.json"
    assert _check(path).returncode == 1 and "no live state" in _check(path).stdout
    live.write(path, _state())
    done = _check(path)
    assert done.returncode == 0 and done.stdout.strip() == "healthy"
    live.write(path, _state(health="blocked", cause="HomeRegionNotSet: set it"))
    done = _check(path)
    assert done.returncode == 1 and "blocked" in done.stdout and "HomeRegionNotSet" in done.stdout
    live.write(path, _state())
    old = time.time() - 120
    os.utime(path, (old, old))
    done = _check(path)
    assert done.returncode == 1 and "hung or stopped" in done.stdout
    assert _check(path, {"MGH_REPORTER_STALE_SECONDS": "300"}).returncode == 0
    assert json.loads(path.read_text())["health"] == "ok"
