"""The README's quick start, run literally: its serve command (ports from the
environment variables the flags read, so it never collides with another server),
then its curl commands and its Python snippet against that server."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest
import requests

from conftest import ROOT, wait_until

README = ROOT / "README.md"


def blocks(section, language):
    """The fenced code blocks of `language` under the `## section` heading."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    return re.findall(rf"```{language}\n(.*?)```", body, re.S)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def quick_start():
    serve = blocks("Quick start", "sh")[0].strip()
    assert serve.startswith("cargo run --release -- serve"), serve
    if shutil.which("cargo") is None:
        pytest.fail("cargo is not on PATH: the quick start needs a Rust toolchain")
    port = free_port()
    env = {**os.environ, "SLUICE_HTTP_ADDRESS": "127.0.0.1", "SLUICE_HTTP_PORT": str(port),
           "SLUICE_GRPC_PORT": str(free_port()), "SLUICE_METRICS_PORT": str(free_port())}
    proc = subprocess.Popen(serve, shell=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    base = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return proc.poll() is not None  # stop waiting: it exited

    try:
        # The build is done by then (scripts/test.sh builds first): cargo only checks.
        assert wait_until(ready, timeout=600, interval=0.2), "".join(lines)
        assert proc.poll() is None, "the quick start exited:\n" + "".join(lines)
        yield port, lines
    finally:
        # cargo runs the server as its child: signal the whole process group.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_quick_start_serves_and_compiles_nothing(quick_start):
    _, lines = quick_start
    assert not any("Compiling" in line for line in lines), "".join(lines)


def test_quick_start_curl_commands_answer_as_shown(quick_start):
    port, _ = quick_start
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = blocks("Quick start", "sh")[1]
    expected = re.findall(r"^# (\{.*?)(?:\.\.\.)?$", script, re.M)
    script = script.replace("localhost:8000", f"127.0.0.1:{port}")
    commands = [c for c in re.split(r"\n(?=curl )", script) if c.strip().startswith("curl")]
    assert len(commands) == 3, commands
    outputs = []
    for command in commands:
        command = "\n".join(line for line in command.splitlines() if not line.startswith("#"))
        run = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (command, run.stderr)
        outputs.append(run.stdout)
    assert json.loads(outputs[0]) == {"ready": True}
    assert '"name":"mixed"' in outputs[1]
    # The README shows the start of the answer; the server's must begin the same way.
    assert expected, "the README shows the expected answer"
    shown = expected[0].rstrip(". ").rstrip(",")
    assert outputs[2].startswith(shown), (outputs[2], shown)


def test_quick_start_python_snippet_runs(quick_start):
    port, _ = quick_start
    snippet = blocks("Quick start", "python")[0].replace("localhost:8000", f"127.0.0.1:{port}")
    run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "[[" in run.stdout  # a (1, 10) array of probabilities
