"""Shared fixtures: start a real `sluice serve` process on free ports and stop it.

The binary is `target/release/sluice` (built by scripts/test.sh); set SLUICE_BIN to
use another. Servers bind port 0; the chosen ports are read from the log lines
"gRPC server listening on ADDR", "metrics server listening on ADDR" and
"HTTP server listening on ADDR" (always the last of them).
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
EXAMPLES = ROOT / "examples" / "models"
BROKEN = ROOT / "tests" / "data" / "broken_models"

LISTEN = re.compile(r"(HTTP|gRPC|metrics) server listening on [^:\s]+:(\d+)")


class Server:
    """A running `sluice serve` process."""

    def __init__(self, repository, *extra_args, grpc=None):
        self.repository = Path(repository)
        args = [str(BIN), "serve", "--model-repository", str(repository),
                "--http-address", "127.0.0.1", "--http-port", "0", "--log", "info"]
        if grpc is None:
            grpc = _supports_grpc()
        if grpc:
            args += ["--grpc-port", "0"]
        if "--allow-metrics" not in extra_args:
            args += ["--metrics-port", "0"]
        args += list(extra_args)
        self.lines = []
        self.ports = {}
        self._seen = threading.Event()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._seen.wait(120):
            self.proc.kill()
            raise RuntimeError("sluice did not start:\n" + "\n".join(self.lines))
        if self.proc.poll() is not None:
            raise RuntimeError("sluice exited:\n" + "\n".join(self.lines))
        self.http_port = self.ports["HTTP"]
        self.grpc_port = self.ports.get("gRPC")
        self.metrics_port = self.ports.get("metrics")
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.base = f"http://{self.http_url}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None

    def _read(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            m = LISTEN.search(line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
                if m.group(1) == "HTTP":
                    self._seen.set()
        self._seen.set()

    def log(self):
        return "\n".join(self.lines)

    def stop(self, timeout=30):
        """SIGTERM, wait for a clean exit, return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


_GRPC = None


def _supports_grpc():
    global _GRPC
    if _GRPC is None:
        out = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True).stdout
        _GRPC = "--grpc-port" in out
    return _GRPC


@pytest.fixture(scope="session")
def server():
    """One server on the example models for the whole session."""
    s = Server(EXAMPLES)
    yield s
    code = s.stop()
    assert code == 0, f"sluice exited with {code}:\n{s.log()}"


@pytest.fixture
def start_server():
    """Factory for servers with their own repository or flags; all stopped at the end."""
    started = []

    def start(repository, *extra_args):
        s = Server(repository, *extra_args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
