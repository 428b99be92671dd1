"""Bounds on the gRPC listener (issue 21), attacked from outside with raw sockets and
grpcio through tritonclient: the connection cap (plain and TLS), silent connections
closed at the first-byte timeout, HTTP/2 limits (concurrent streams, metadata size)."""

import socket
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, GATED_WIDTH, Server, make_gated_model, wait_for_queue
from test_security import issue, pki  # noqa: F401  (the module's PKI fixture)


# grpcio shares connections between channels to the same target: each client here
# gets its own, so that it takes a connection slot of its own.
OWN = [("grpc.use_local_subchannel_pool", 1)]


def silent(port, n):
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def live(client, timeout):
    try:
        return client.is_server_live(client_timeout=timeout)
    except InferenceServerException:
        return False


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_grpc_connection_cap_and_silent_connections(tls, pki):  # noqa: F811
    cert, key = pki["server"]
    flags = ["--grpc-max-connections", "3", "--http-header-read-timeout", "0"]
    if tls:
        flags += ["--tls-cert", str(cert), "--tls-key", str(key)]
    s = Server(EXAMPLES, *flags)
    sockets = []
    try:
        def client():
            if tls:
                return grpcclient.InferenceServerClient(
                    s.grpc_url, ssl=True, root_certificates=str(pki["ca"]), channel_args=OWN)
            return grpcclient.InferenceServerClient(s.grpc_url, channel_args=OWN)

        first = client()
        assert first.is_server_live()
        # Two silent sockets take the other two slots: a new client waits in the backlog.
        sockets = silent(s.grpc_port, 2)
        blocked = client()
        assert not live(blocked, timeout=2), "a fourth connection was served past the cap"
        # The connection already open is still served, and a freed slot is taken at once.
        assert first.is_server_live()
        sockets.pop().close()
        assert live(blocked, timeout=30)
        first.close()
        blocked.close()
    finally:
        for sock in sockets:
            sock.close()
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_silent_grpc_connections_are_closed_and_cannot_lock_out(tls, pki):  # noqa: F811
    cert, key = pki["server"]
    flags = ["--grpc-max-connections", "4", "--http-header-read-timeout", "1"]
    if tls:
        flags += ["--tls-cert", str(cert), "--tls-key", str(key)]
    s = Server(EXAMPLES, *flags)
    sockets = silent(s.grpc_port, 4)
    try:
        if tls:
            c = grpcclient.InferenceServerClient(
                s.grpc_url, ssl=True, root_certificates=str(pki["ca"]))
        else:
            c = grpcclient.InferenceServerClient(s.grpc_url)
        assert live(c, timeout=30), "the silent connections held every slot"
        for sock in sockets:
            # Over plain HTTP/2 the server sends its SETTINGS first; then it closes.
            sock.settimeout(30)
            while sock.recv(65536):
                pass
        c.close()
    finally:
        for sock in sockets:
            sock.close()
        assert s.stop() == 0, s.log()


def test_large_metadata_fails_alone_and_streams_are_capped(tmp_path):
    gates = tmp_path / "gates"
    repo = tmp_path / "repo"
    gate = make_gated_model(repo, gates)
    s = Server(repo, "--test-execution-gates", str(gates),
               "--grpc-max-concurrent-streams", "3", "--grpc-max-metadata-bytes", "262144")
    try:
        c = grpcclient.InferenceServerClient(s.grpc_url)
        x = np.ones((1, GATED_WIDTH), np.float32)
        inp = grpcclient.InferInput("x", [1, GATED_WIDTH], "FP32")
        inp.set_data_from_numpy(x)
        results = []

        def infer():
            results.append(c.infer("gated", [inp]))

        # Two calls held (one in the engine, one queued), on the connection used below.
        held = [threading.Thread(target=infer) for _ in range(2)]
        for t in held:
            t.start()
        wait_for_queue(s, "gated", running=1, queued=1)
        # 100 KB of metadata (Triton's attack, which ended every call on the
        # connection) is answered, and so is a call without.
        assert c.is_server_live(headers={"x-big": "a" * 100_000})
        assert c.is_server_live()
        # A third held call fills the three streams: a new call waits for one to end.
        more = [threading.Thread(target=infer)]
        more[0].start()
        wait_for_queue(s, "gated", running=1, queued=2)
        assert not live(c, timeout=2), "a call ran past --grpc-max-concurrent-streams"
        gate.release(3)
        for t in held + more:
            t.join(30)
            assert not t.is_alive()
        assert len(results) == 3
        for r in results:
            np.testing.assert_allclose(r.as_numpy("y"), x + 1)
        assert live(c, timeout=30)
        c.close()
    finally:
        gate.open_for_good()
        gate.close()
        assert s.stop() == 0, s.log()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def h2_frames(data):
    """The (type, flags) of each whole HTTP/2 frame in `data`."""
    frames, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        frames.append((data[i + 3], data[i + 4]))
        i += 9 + length
    return frames


def test_a_connection_idle_after_the_preface_is_closed_by_keepalive_pings():
    """A client that sends the HTTP/2 preface and then nothing passes the first-byte
    timeout; it is pinged after --grpc-keepalive-time of silence and, since it does not
    answer, closed after --grpc-keepalive-timeout, so it cannot hold a connection slot
    for good. A real client, which answers pings, stays connected and is served."""
    s = Server(EXAMPLES, "--grpc-max-connections", "2", "--grpc-keepalive-time", "500",
               "--grpc-keepalive-timeout", "500")
    sock = socket.create_connection(("127.0.0.1", s.grpc_port))
    try:
        c = grpcclient.InferenceServerClient(s.grpc_url, channel_args=OWN)
        assert c.is_server_live()
        sock.sendall(PREFACE + EMPTY_SETTINGS)
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        frames = h2_frames(received)
        assert (6, 0) in frames, f"no PING before the close: {frames}"  # PING, not an ACK
        assert frames[-1][0] == 7, f"the connection did not end with GOAWAY: {frames}"
        # The pinged real client answered and keeps its connection: the slot freed by
        # the silent one lets a third client in.
        assert c.is_server_live()
        other = grpcclient.InferenceServerClient(s.grpc_url, channel_args=OWN)
        assert live(other, timeout=30)
        other.close()
        c.close()
    finally:
        sock.close()
        assert s.stop() == 0, s.log()
