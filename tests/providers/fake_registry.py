"""A loopback stand-in for a private image registry: enough of the registry v2 API to demand Basic
auth (``GET /v2/`` answers 401 with a ``WWW-Authenticate: Basic`` challenge) and record the
credentials a client sends, then report every image as unknown (404)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class BasicAuthRegistry:
    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.authorized_paths: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def _answer(self) -> None:
                authorization = self.headers.get("Authorization")
                if not authorization:
                    self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
                    return
                registry.authorizations.append(authorization)
                registry.authorized_paths.append(self.path)
                if self.path.rstrip("/") == "/v2":
                    self._send(200, {})
                else:
                    self._send(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})

            def _send(self, status: int, body: dict[str, object]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="ctrlplane-test"')
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-registry", daemon=True)

    def __enter__(self) -> BasicAuthRegistry:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
