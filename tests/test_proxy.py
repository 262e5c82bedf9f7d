"""Migration hosts that reach AWS only through a proxy: a real proxy process (proxy.py) on
loopback in front of the emulator served over TLS. HTTPS_PROXY in the environment (CONNECT
tunnels), NO_PROXY bypassing it, `[aws] proxy` with a password that never reaches a log line,
and a proxy that is down: rows wait and go once it is back."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from reporter.config import ConfigError, parse
from reporter.emulator import Emulator

from .helpers import ROOT, child_env, insert, wait_for

PROXY_USER, PROXY_PASSWORD = "relay", "s3cret-Proxy-Pw"


class Proxy:
    """proxy.py as its own process on 127.0.0.1; its access log says what went through it."""

    def __init__(self, log: Path, basic_auth: str | None = None, port: int = 0) -> None:
        self.log = log
        self.port_file = log.with_suffix(".port")
        self.port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port),
                "--port-file", str(self.port_file), "--num-workers", "1", "--num-acceptors",
                "1", "--log-file", str(log), "--log-level", "INFO"]
        if basic_auth:
            args += ["--basic-auth", basic_auth]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: self.port_file.exists() and self.port_file.read_text().strip(),
                 timeout=30)
        self.port = int(self.port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def tunnels(self) -> list[str]:
        """The CONNECT lines of its access log."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if " CONNECT " in line]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_hub(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[Emulator, Path]]:
    """The emulator over HTTPS, with a certificate for 127.0.0.1 from a CA of the test's own."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, bundle = tmp_path / "hub.pem", tmp_path / "hub.key", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(bundle))
    with Emulator(map_delay=0.3, tls=(str(chain), str(key))) as hub:
        yield hub, bundle


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    started = Proxy(tmp_path / "proxy.log")
    yield started
    started.stop()


@pytest.fixture
def run_drain(tls_hub: tuple[Emulator, Path], make_config: Callable[..., Path],
              monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`drain` as a real process, with the emulator's HTTPS endpoints and CA, and only the
    proxy variables a test gives it."""
    hub, bundle = tls_hub
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY",
                 "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def run(config: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        environment = child_env({
            "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CA_BUNDLE": str(bundle), **hub.environment(), **env})
        return subprocess.run(
            [sys.executable, "-m", "reporter", "--config", str(config), "drain", "--timeout",
             str(timeout)], capture_output=True, text=True, timeout=timeout + 60,
            env=environment, cwd=ROOT)

    return run


def _rows(config: Path, outbox: Path, tasks: list[str], cli_env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "reporter", "--config", str(config), "init"],
                   check=True, capture_output=True, env=child_env(cli_env), cwd=ROOT)
    for task in tasks:
        insert(outbox, kind="task_state", migration_task_name=task, status="IN_PROGRESS",
               progress_percent=10)


def test_https_proxy_variable_tunnels_every_call(tls_hub, proxy, run_drain, make_config,
                                                 outbox_path):
    hub, _ = tls_hub
    assert hub.url.startswith("https://")
    config = make_config()
    _rows(config, outbox_path, ["via-proxy-1", "via-proxy-2"], {})
    done = run_drain(config, HTTPS_PROXY=proxy.url)
    assert done.returncode == 0, done.stderr
    assert set(hub.state.updates()["ToolA"]) == {"via-proxy-1", "via-proxy-2"}
    port = hub.url.rsplit(":", 1)[1]
    wait_for(lambda: proxy.tunnels(), timeout=10)
    assert all(f"CONNECT 127.0.0.1:{port}" in line for line in proxy.tunnels())


def test_no_proxy_goes_direct(tls_hub, proxy, run_drain, make_config, outbox_path):
    hub, _ = tls_hub
    config = make_config()
    _rows(config, outbox_path, ["direct"], {})
    done = run_drain(config, HTTPS_PROXY=proxy.url, NO_PROXY="127.0.0.1,localhost")
    assert done.returncode == 0, done.stderr
    assert "direct" in hub.state.updates()["ToolA"]
    time.sleep(0.5)  # the access log is written as a tunnel closes: give it the time it needs
    assert proxy.tunnels() == []


def test_proxy_key_with_a_password_that_is_never_logged(tls_hub, run_drain, make_config,
                                                        outbox_path, tmp_path):
    hub, _ = tls_hub
    guarded = Proxy(tmp_path / "auth-proxy.log", basic_auth=f"{PROXY_USER}:{PROXY_PASSWORD}")
    try:
        url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{guarded.port}"
        config = make_config(aws={"proxy": url}, log={"level": "debug", "format": "json"})
        _rows(config, outbox_path, ["keyed"], {})
        done = run_drain(config)
        assert done.returncode == 0, done.stderr
        assert "keyed" in hub.state.updates()["ToolA"]
        assert guarded.tunnels()
        assert PROXY_PASSWORD not in done.stdout + done.stderr
        # A wrong password: the proxy refuses (407), nothing is lost, the secret stays unsaid.
        wrong = url.replace(PROXY_PASSWORD, "not-" + PROXY_PASSWORD)
        config = make_config(name="wrong.toml", aws={"proxy": wrong},
                             log={"level": "debug", "format": "json"})
        insert(outbox_path, kind="task_state", migration_task_name="refused", status="COMPLETED")
        refused = run_drain(config, timeout=4)
        assert refused.returncode == 3, refused.stderr
        assert "refused" not in hub.state.updates()["ToolA"]
        assert "not-" + PROXY_PASSWORD not in refused.stdout + refused.stderr
    finally:
        guarded.stop()


def test_a_proxy_that_is_down_holds_rows_until_it_is_back(tls_hub, run_drain, make_config,
                                                          outbox_path, tmp_path):
    hub, _ = tls_hub
    config = make_config()
    _rows(config, outbox_path, ["waits"], {})
    # The proxy's port is held, bound but not listening: connections are refused, and no other
    # test's listener (the suite runs in parallel) can take the port while the proxy is down.
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        down = run_drain(config, timeout=4, HTTPS_PROXY=f"http://127.0.0.1:{port}")
    finally:
        held.close()
    assert down.returncode == 3, down.stderr  # pending at the timeout, not rejected, not blocked
    assert "ToolA" not in hub.state.updates()
    again = Proxy(tmp_path / "again.log", port=port)
    try:
        done = run_drain(config, HTTPS_PROXY=again.url)
        assert done.returncode == 0, done.stderr
        assert "waits" in hub.state.updates()["ToolA"]
    finally:
        again.stop()


@pytest.mark.parametrize("value, rule", [
    ("proxy.example.com:3128", "must be a proxy URL"),
    ("socks5://127.0.0.1:1080", "must be a proxy URL"),
    ("http://", "must be a proxy URL"),
    ("http://proxy:99999", "must be a proxy URL"),
    ("http://proxy:3128/path", "with no path or query"),
    ("http://user:hunter2@proxy:0", "with a port from 1 to 65535"),
])
def test_proxy_key_is_validated(value: str, rule: str):
    with pytest.raises(ConfigError) as raised:
        parse({"hub": {"progress_update_stream": "S"}, "aws": {"proxy": value}})
    message = str(raised.value)
    assert "[aws] proxy" in message and rule in message
    assert "hunter2" not in message
    config = parse({"hub": {"progress_update_stream": "S"},
                    "aws": {"proxy": "https://proxy.example.com:3128"}})
    assert config.aws.proxy == "https://proxy.example.com:3128"
