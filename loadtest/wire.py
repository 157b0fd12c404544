"""HTTP/1.1 keep-alive exchanges whose clock covers the wire and little else.

A general HTTP client (locust's FastHttpSession) builds the URL, headers and request inside the
timed call and wraps the answer in objects: on this machine about 0.17 ms of Python per request
against a trivial local endpoint, where sending precomputed bytes and parsing the answer with
geventhttpclient's C parser (llhttp) takes about 0.07 ms. So the load generator builds every
request's bytes once, before any clock starts, and times only: take a connection, send, read
the complete answer. Everything else (checking the answer, recording it, locust's statistics)
happens after the clock stops.

Plain HTTP and HTTPS; a connection the server closed between requests is reopened once (inside
the timed call: the caller waits for it too).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent.socket
from geventhttpclient.response import HTTPConnectionClosed, HTTPSocketResponse

RESPONSE_BLOCK_BYTES = 64 * 1024  # a whole answer of a small model in one recv


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (see error)
    body: bytes
    seconds: float  # from taking a connection to the answer's last byte
    error: str = ""


class Connections:
    """Keep-alive connections to one server (scheme://host:port[/prefix]), used one request at
    a time each; as many are opened as requests are in flight."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server address: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.timeout = timeout
        self.idle: list[socket.socket] = []

    def request(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """A POST's complete bytes, built once per request body."""
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self.authority}",
                 f"Content-Length: {len(body)}", "Accept-Encoding: identity",
                 *(f"{key}: {value}" for key, value in headers.items()), "", ""]
        return "\r\n".join(lines).encode("latin-1") + body

    def exchange(self, request: bytes) -> Answer:
        """Send one prepared request and read its whole answer; never raises for the server's
        or the network's failures (they come back as status 0 and an error)."""
        start = time.perf_counter()
        reused = bool(self.idle)
        try:
            sock = self.idle.pop() if reused else self._connect()
        except OSError as error:
            return Answer(0, b"", time.perf_counter() - start, f"cannot connect: {error}")
        try:
            try:
                status, body, keep = self._send(sock, request)
            except (HTTPConnectionClosed, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                sock.close()  # the server closed an idle connection: open one, once
                sock = self._connect()
                status, body, keep = self._send(sock, request)
        except (OSError, ValueError) as error:  # timeouts, resets, unparsable answers
            sock.close()
            return Answer(0, b"", time.perf_counter() - start,
                          f"{type(error).__name__}: {error}".rstrip(": "))
        seconds = time.perf_counter() - start
        if keep:
            self.idle.append(sock)
        else:
            sock.close()
        return Answer(status, body, seconds)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def _connect(self) -> socket.socket:
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _send(self, sock: socket.socket, request: bytes) -> tuple[int, bytes, bool]:
        sock.sendall(request)
        response = HTTPSocketResponse(sock, block_size=RESPONSE_BLOCK_BYTES, method="POST")
        body = response.read()
        return response.status_code, body, not response.should_close()
