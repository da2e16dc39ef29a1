"""A local HTTP server on 127.0.0.1 that plays good and bad image servers (stall, drip, endless body, 404,
HTML, redirects to file:// / ftp:// / itself) for the URL tests (tests/test_fetch.py, tests/test_bad_inputs.py).
Import the `server` fixture into a test module to use it."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    stop = threading.Event()
    extra: dict[str, tuple[str, bytes]] = {}  # more paths a test module serves: path -> (content type, body)

    def log_message(self, *args):  # quiet
        pass

    def _head(self, status=200, kind="image/png", length=None, **headers):
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        path = self.path
        if path in self.extra:
            kind, body = self.extra[path]
            self._head(kind=kind, length=len(body))
            self.wfile.write(body)
        elif path == "/ok.png":
            self._head(length=len(PNG))
            self.wfile.write(PNG)
        elif path == "/octet":
            self._head(kind="application/octet-stream", length=len(PNG))
            self.wfile.write(PNG)
        elif path == "/stall-headers":
            self.stop.wait(30)  # accepts the connection, never answers
        elif path == "/stall-body":
            self._head(length=len(PNG))
            self.wfile.write(PNG[:10])
            self.wfile.flush()
            self.stop.wait(30)
        elif path == "/drip":
            self._head()
            for byte in PNG * 100:
                if self.stop.is_set():
                    return
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up (the deadline): done
                    return
                time.sleep(0.05)
        elif path == "/endless":
            self._head()
            chunk = b"\0" * 65536
            while not self.stop.is_set():
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
        elif path == "/huge-declared":
            self._head(length=10**12)
        elif path == "/missing.png":
            self._head(status=404, kind="text/html")
            self.wfile.write(b"<h1>Not Found</h1>")
        elif path == "/page":
            self._head(kind="text/html; charset=utf-8")
            self.wfile.write(b"<html>an error page</html>")
        elif path == "/to-file":
            self._head(status=302, kind=None, Location="file:///etc/passwd")
        elif path == "/to-ftp":
            self._head(status=301, kind=None, Location="ftp://127.0.0.1/x.png")
        elif path == "/to-ok":
            self._head(status=307, kind=None, Location="/ok.png")
        elif path == "/loop":
            self._head(status=302, kind=None, Location="/loop")
        elif path == "/garbage":
            self._head(length=5)
            self.wfile.write(b"12345")
        else:
            self._head(status=500, kind="text/plain")


@pytest.fixture(scope="module")
def server():
    _Handler.stop.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.stop.set()
    httpd.shutdown()
    httpd.server_close()
