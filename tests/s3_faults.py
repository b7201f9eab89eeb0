"""Real S3 faults for the tests: an HTTP proxy in front of the moto server that fails requests as S3 and networks do.

:class:`FaultyS3Proxy` forwards every request to moto unless it decides to fail it, in this order:

1. a planned failure (``fail(path, times, mode)``): the next ``times`` requests for one path;
2. an outage window: every request while it lasts. ``outage_after(requests, seconds)`` opens it when the proxy
   has seen that many requests in all and closes it once ``seconds`` have passed on the proxy's clock (checked by
   each request, so nothing sleeps); ``start_outage()`` / ``end_outage()`` open and close it by hand. The events
   ``outage_started`` and ``outage_ended`` are set when that happens;
3. a share of all requests (``slow_down_share``, ``reset_share``), drawn from a seeded generator.

Failure modes: ``"503"`` (S3's ``SlowDown`` XML error body), ``"unavailable"`` (503 ``ServiceUnavailable``),
``"403"`` (``AccessDenied``), ``"301"`` (``PermanentRedirect``) and ``"reset"`` (the TCP connection is closed with
RST, before any answer). ``counts`` tallies what the proxy did; ``seen[path]`` counts requests per path and
``forwarded[(method, path)]`` those passed on to the upstream.
Threads only (``http.server``); no dependency beyond the standard library.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


def s3_error(code: str, message: str) -> bytes:
    """An S3 error body as S3 writes it."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
        "<RequestId>faulty-proxy</RequestId></Error>"
    ).encode()


ANSWERS: dict[str, tuple[int, bytes]] = {
    "503": (503, s3_error("SlowDown", "Please reduce your request rate.")),
    "unavailable": (503, s3_error("ServiceUnavailable", "Service is unable to handle request.")),
    "403": (403, s3_error("AccessDenied", "Access Denied")),
    "301": (
        301,
        s3_error(
            "PermanentRedirect",
            "The bucket you are attempting to access must be addressed using the specified endpoint.",
        ),
    ),
}
MODES = (*ANSWERS, "reset")


class FaultyS3Proxy:
    """An HTTP proxy in front of an S3 endpoint (moto) that fails chosen, scheduled or random requests for real.

    Args:
        upstream: the S3 endpoint to forward to (``http://127.0.0.1:PORT``).
        slow_down_share: share of requests answered ``503 SlowDown`` (outside planned failures and outages).
        reset_share: share of requests whose connection is reset.
        seed: seed of the generator that picks those requests.
        outage_mode: how an outage answers: ``"503"``, ``"unavailable"``, ``"reset"`` or ``"mixed"`` (503
            ``ServiceUnavailable`` and resets in turn).
    """

    def __init__(
        self,
        upstream: str,
        *,
        slow_down_share: float = 0.0,
        reset_share: float = 0.0,
        seed: int = 0,
        outage_mode: str = "mixed",
    ) -> None:
        if not 0 <= slow_down_share + reset_share <= 1:
            raise ValueError("slow_down_share + reset_share must lie in [0, 1]")
        if outage_mode not in (*MODES, "mixed"):
            raise ValueError(f"unknown outage mode {outage_mode!r}")
        self.upstream = urlparse(upstream)
        self.slow_down_share = slow_down_share
        self.reset_share = reset_share
        self.outage_mode = outage_mode
        self.random = random.Random(seed)
        self.plan: dict[tuple[str | None, str], list] = {}
        self.seen: Counter[str] = Counter()
        self.forwarded: Counter[tuple[str, str]] = Counter()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.outage_started = threading.Event()
        self.outage_ended = threading.Event()
        self.outage_s: float | None = None  # measured length of the last outage (proxy clock)
        self._outage_at: int | None = None  # open an outage at this request count ...
        self._outage_length: float | None = None  # ... for this many seconds (None: until end_outage)
        self._outage_since: float | None = None  # time.monotonic() when the open outage started
        self._outage_turn = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_request(self) -> None:
                path = self.path.split("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy._decide(self.command, path)
                if mode == "reset":
                    linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                if mode is not None:
                    status, data = ANSWERS[mode]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(name, value)
                length_out = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length_out))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_request  # noqa: N815 (http.server names)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    # ------------------------------------------------------------------ what to fail

    def fail(self, path: str, times: int, mode: str, method: str | None = None) -> None:
        """Answer the next ``times`` requests for ``path`` (``/bucket/key``; ``-1``: every one; ``0``: stop) with
        ``mode``, for one HTTP method or all."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self.lock:
            self.plan[(method, path)] = [times, mode]

    def outage_after(self, requests: int, seconds: float) -> None:
        """Open an outage when the proxy has seen ``requests`` requests in all; it lasts ``seconds``."""
        with self.lock:
            self._outage_at = requests
            self._outage_length = seconds

    def start_outage(self, seconds: float | None = None) -> None:
        """Open an outage now, for ``seconds`` (None: until :meth:`end_outage`)."""
        with self.lock:
            self._open_outage(seconds)

    def end_outage(self) -> None:
        with self.lock:
            self._close_outage()

    def _open_outage(self, seconds: float | None) -> None:
        self._outage_at = None
        self._outage_length = seconds
        self._outage_since = time.monotonic()
        self.outage_ended.clear()
        self.outage_started.set()

    def _close_outage(self) -> None:
        if self._outage_since is not None:
            self.outage_s = time.monotonic() - self._outage_since
            self._outage_since = None
            self.outage_ended.set()

    def _decide(self, method: str, path: str) -> str | None:
        with self.lock:
            self.seen[path] += 1
            self.counts["requests"] += 1
            plan = self.plan.get((method, path)) or self.plan.get((None, path))
            if plan is not None and plan[0] != 0:
                plan[0] -= 1
                self.counts["planned"] += 1
                return plan[1]
            if self._outage_at is not None and self.counts["requests"] >= self._outage_at:
                self._open_outage(self._outage_length)
            if self._outage_since is not None:
                length = self._outage_length
                if length is not None and time.monotonic() - self._outage_since >= length:
                    self._close_outage()
                else:
                    self.counts["outage"] += 1
                    if self.outage_mode != "mixed":
                        return self.outage_mode
                    self._outage_turn += 1
                    return "unavailable" if self._outage_turn % 2 else "reset"
            draw = self.random.random()
            if draw < self.slow_down_share:
                self.counts["slow_down"] += 1
                return "503"
            if draw < self.slow_down_share + self.reset_share:
                self.counts["reset"] += 1
                return "reset"
            self.counts["forwarded"] += 1
            self.forwarded[(method, path)] += 1
            return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultyS3Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
