"""Starting a real `sluice serve` for the benchmark scripts: pinned to CPUs with
`taskset`, on ports the kernel picks (read back from its log), its log drained so it
never blocks on a full pipe."""

import re
import subprocess
import threading

LISTEN = re.compile(r"(HTTP|gRPC|metrics) server listening on [^:\s]+:(\d+)")


def start(binary, repository, *extra, cpus="0", prefix=(), ort="off"):
    """Starts `binary serve` on `repository`; returns (process, {"HTTP": port, ...}) once
    the HTTP port is known (gRPC and metrics, when on, are logged before it). `prefix`:
    a command that execs the server (e.g. `chrt -f 10`), so the process is still it.
    `ort`: the server's `--ort-library` (off: every model on tract)."""
    args = [*prefix, "taskset", "-c", cpus, str(binary), "serve", "--model-repository", str(repository),
            "--http-address", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--ort-library", ort,
            "--log", "warn,sluice=info", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ports = {}
    for line in proc.stderr:
        m = LISTEN.search(line)
        if m:
            ports[m.group(1)] = int(m.group(2))
            if m.group(1) == "HTTP":
                break
    else:
        raise RuntimeError(f"{binary} exited before listening (code {proc.wait()})")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, ports
