"""A webhook receiver on loopback for tests, and a Standard Webhooks verifier written from the spec
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md),
independently of ``ctrlplane.webhooks.signing``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_SECONDS = 5 * 60


class VerificationError(Exception):
    pass


def verify(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The spec's verification: the timestamp within tolerance, and one ``v1`` signature equal to
    base64(HMAC-SHA256(base64decode(secret without whsec_), "{id}.{timestamp}.{body}"))."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        raise VerificationError("timestamp outside the tolerance")
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return dict(json.loads(body))
    raise VerificationError("no signature matches")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """Records every request; answers ``status`` after ``delay`` seconds (both changeable)."""

    status: int = 200
    delay: float = 0.0
    endless: bool = False
    """Answer with a body that does not end (for 10 s): only a reader with a size limit finishes."""
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


def serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                )
                status, delay, endless = receiver.status, receiver.delay, receiver.endless
            if delay:
                time.sleep(delay)
            if endless:
                self._endless(status)
                return
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass

        def _endless(self, status: int) -> None:
            try:
                self.send_response(status)
                self.send_header("Connection", "close")
                self.end_headers()
                until = time.monotonic() + 10
                while time.monotonic() < until:
                    self.wfile.write(b"x" * 8192)
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
