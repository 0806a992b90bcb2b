"""A local HTTP server (127.0.0.1, free port, own thread) with scripted misbehaviour, and archive builders.

Routes: `server.add(path, body, mode)` with mode
  ok        serve the body, honouring `Range: bytes=N-` with a 206
  cut       like ok, but a request without Range gets only the first half, then the connection closes
  no-range  always 200 with the whole body (a server that ignores Range)
  stall     send the headers, then no body until the test ends
  stall-headers  accept the request and send nothing
Unknown paths answer 404. Every request is logged as (path, Range header or None).
"""

from __future__ import annotations

import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: LocalServer = self.server.state  # type: ignore[attr-defined]
        ranged = self.headers.get("Range")
        state.requests.append((self.path, ranged))
        if self.path not in state.routes:
            self.send_error(404)
            return
        body, mode = state.routes[self.path]
        if mode == "stall-headers":
            state.release.wait(30)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1]) if ranged and mode != "no-range" else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "stall":
            self.wfile.flush()
            state.release.wait(30)
            return
        payload = body[start:]
        if mode == "cut" and not ranged:
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class LocalServer:
    """Routes, the request log and the URL helper of one running server."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self  # type: ignore[attr-defined]

    def add(self, path: str, body: bytes, mode: str = "ok") -> str:
        self.routes[path] = (body, mode)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    local = LocalServer()
    thread = threading.Thread(target=local.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield local
    local.release.set()
    local.httpd.shutdown()
    local.httpd.server_close()


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def make_zip():
    """Build a zip archive in memory: make_zip({"dir/name": b"content"}) -> bytes."""
    return _zip_bytes
