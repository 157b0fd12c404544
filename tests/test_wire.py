"""The load generator's HTTP exchanges (loadtest/wire.py) against a real socket server on
127.0.0.1 that answers as told: keep-alive, a connection closed under the client, chunked
answers, errors, silence."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from deploybench.loadtest.wire import Connections

ANSWER = b'{"predictions": [[1.0, 2.0]]}'


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        server.accepted += 1
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(rest) < length:
                rest += self.request.recv(65536)
            server.bodies.append(rest[:length])
            buffer = rest[length:]
            if server.mode == "silent":
                threading.Event().wait(2)
                return
            if server.mode == "chunked":
                half = len(ANSWER) // 2
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                        half, ANSWER[:half], len(ANSWER) - half, ANSWER[half:]))
            elif server.mode == "error":
                body = b'{"error": "instances: expected 64 values per row, got 3"}'
                self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n"
                                     % len(body) + body)
            else:
                close = server.mode == "close-header"
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + (b"Connection: close\r\n" if close else b"")
                    + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
                if close or server.mode == "drop-idle":
                    return  # "drop-idle": closed with no word, as a server's idle timeout does


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.accepted, self.bodies = mode, 0, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serve() -> Iterator:
    started: list[Server] = []

    def start(mode: str) -> Server:
        server = Server(mode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def prepared(connections: Connections, body: bytes = b'{"instances": [[1]]}') -> bytes:
    return connections.request("/v1/models/m:predict", body, {"Content-Type": "application/json"})


def test_keep_alive_reuses_one_connection_and_sends_the_prepared_bytes(serve) -> None:
    server = serve("keep-alive")
    connections = Connections(server.url, timeout=5)
    request = prepared(connections)
    answers = [connections.exchange(request) for _ in range(3)]
    assert [(a.status, a.body, a.error) for a in answers] == [(200, ANSWER, "")] * 3
    assert all(a.seconds > 0 for a in answers)
    assert server.accepted == 1
    assert server.bodies == [b'{"instances": [[1]]}'] * 3
    assert request.startswith(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:")
    connections.close()


def test_a_connection_the_server_dropped_is_reopened_once(serve) -> None:
    server = serve("drop-idle")
    connections = Connections(server.url, timeout=5)
    request = prepared(connections)
    first = connections.exchange(request)
    second = connections.exchange(request)  # the idle socket is closed under the client
    assert (first.status, second.status, second.body) == (200, 200, ANSWER)
    assert server.accepted == 2


def test_connection_close_is_honoured(serve) -> None:
    server = serve("close-header")
    connections = Connections(server.url, timeout=5)
    assert connections.exchange(prepared(connections)).status == 200
    assert connections.idle == []


def test_chunked_answers_are_decoded(serve) -> None:
    server = serve("chunked")
    connections = Connections(server.url, timeout=5)
    assert connections.exchange(prepared(connections)).body == ANSWER


def test_an_error_answer_keeps_its_status_and_body(serve) -> None:
    server = serve("error")
    connections = Connections(server.url, timeout=5)
    answer = connections.exchange(prepared(connections))
    assert answer.status == 400 and b"expected 64 values" in answer.body


def test_no_server_and_a_silent_server_are_failures_not_exceptions(serve) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = Connections(f"http://127.0.0.1:{port}", timeout=2)
    answer = refused.exchange(prepared(refused))
    assert answer.status == 0 and "cannot connect" in answer.error
    silent = serve("silent")
    slow = Connections(silent.url, timeout=0.3)
    answer = slow.exchange(prepared(slow))
    assert answer.status == 0 and "timed out" in answer.error
    assert 0.3 <= answer.seconds < 2


def test_an_address_that_is_not_http_is_named() -> None:
    with pytest.raises(ValueError, match="ftp://x"):
        Connections("ftp://x", timeout=1)
