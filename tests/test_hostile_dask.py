"""Hostile cases against `connect`: something that is not a Dask scheduler, and plain TCP to another machine."""

from __future__ import annotations

import socket
import threading

import pytest

distributed = pytest.importorskip("distributed")

from ntkit.gram.distributed import InsecureConnectionWarning, connect, plain_remote  # noqa: E402


@pytest.fixture
def ssh_like_listener():
    """A server on 127.0.0.1 that greets every connection with an SSH banner, as sshd does, and then waits."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    held = []

    def serve():
        while not stop.is_set():
            try:
                peer, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            peer.sendall(b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n")
            held.append(peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for peer in held:
        peer.close()
    server.close()


def test_a_server_that_is_not_a_dask_scheduler_is_named_as_such(ssh_like_listener):
    with pytest.raises(ConnectionError, match="something answered at .* but not a Dask scheduler"):
        connect(ssh_like_listener, timeout=5)


def test_plain_tcp_beyond_this_machine_is_flagged():
    assert plain_remote("tcp://10.0.0.5:8786") and plain_remote("10.0.0.5:8786")
    assert plain_remote("tcp://scheduler.example.org:8786")
    for local in ("tcp://127.0.0.1:8786", "tcp://127.3.2.1:1", "tcp://localhost:8786", "tcp://[::1]:8786",
                  "tls://10.0.0.5:8786", "inproc://abc", "ucx://10.0.0.5:13337"):
        assert not plain_remote(local), local


def test_connect_warns_before_using_plain_tcp_to_another_machine(monkeypatch):
    async def refuse(address, **kwargs):  # no packet leaves this machine: the probe fails at once
        raise OSError("connection refused (not attempted in this test)")

    monkeypatch.setattr(distributed.comm, "connect", refuse)
    with pytest.warns(InsecureConnectionWarning, match="TLS"), pytest.raises(ConnectionError):
        connect("tcp://10.0.0.5:8786", timeout=1)
