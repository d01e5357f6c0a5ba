"""A local stand-in for the Hugging Face Hub: the requests ``huggingface_hub.hf_hub_download`` makes, over HTTP on
127.0.0.1, with failures to order.

``hf_hub_download`` sends ``HEAD {endpoint}/{repo}/resolve/{revision}/{file}`` and reads ``X-Repo-Commit``, the ETag
(``X-Linked-Etag`` or ``ETag``) and the size (``X-Linked-Size`` or ``Content-Length``), then ``GET``s the same URL,
with ``Range: bytes=N-`` when it resumes after a broken connection (stunet's own transfer, stunet.weights.hub, makes
the same requests). A missing file is a 404 with ``X-Error-Code: EntryNotFound`` (and the commit), a missing repository
one with ``RepoNotFound``.

Every loop here is bounded in count and time (:data:`MAX_SECONDS`), and the server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MAX_SECONDS = 20.0  # the longest a dripping or silent answer lasts, whoever is (not) reading it
PIECE = 64 << 10


class FakeHub:
    """``files[(repo, filename)] = bytes``; ``url`` for HF_ENDPOINT. Failure switches:

    - ``drop_after``: a full GET sends this many bytes, then the connection is cut (once per GET without a Range);
    - ``refuse_ranges``: a GET with a Range is answered 500 (the transfer cannot resume);
    - ``down``: every request is answered 503;
    - ``overflow``: a full GET sends the file and then filler up to this many bytes in all, without a Content-Length
      (the body ends when the connection closes), or declaring them all with ``overflow_declared`` (the HEAD still
      declares the file's size);
    - ``drip``: a full GET declares the file's size and sends one byte every ``drip`` seconds;
    - ``stall``: a full GET declares the file's size and sends nothing.

    A dripping or silent answer ends when the client goes away, when the server is closed or after
    :data:`MAX_SECONDS`. ``requests`` lists (method, path, Range header) of every request served; ``sent`` the body
    bytes each GET got out before it ended or the client went away.
    """

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.drop_after: int | None = None
        self.refuse_ranges = False
        self.down = False
        self.overflow: int | None = None
        self.overflow_declared = False
        self.drip: float | None = None
        self.stall = False
        self.requests: list[tuple[str, str, str | None]] = []
        self.sent: list[int] = []
        self.stop = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, filename: str, data: bytes) -> str:
        """Serve ``data`` as ``repo``/``filename``; returns its SHA-256."""
        self.files[(repo, filename)] = data
        return hashlib.sha256(data).hexdigest()

    def downloads(self, filename: str) -> int:
        return sum(1 for method, path, _ in self.requests if method == "GET" and path.endswith("/" + filename))

    def wait_sent(self, count: int = 1) -> list[int]:
        """``sent`` once ``count`` misbehaving answers have ended (at most :data:`MAX_SECONDS` + 5 s)."""
        end = time.monotonic() + MAX_SECONDS + 5
        while len(self.sent) < count and time.monotonic() < end:
            time.sleep(0.02)
        return self.sent

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    # -- the endpoint ------------------------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler, body: bool):
        range_header = handler.headers.get("Range")
        self.requests.append((handler.command, handler.path, range_header))
        if self.down:
            return self._error(handler, 503, None)
        parts = unquote(handler.path.split("?")[0]).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "RepoNotFound")
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        if not any(r == repo for r, _ in self.files):
            return self._error(handler, 404, "RepoNotFound")
        if (repo, filename) not in self.files:
            return self._error(handler, 404, "EntryNotFound")
        data = self.files[(repo, filename)]
        start = 0
        if body and range_header:
            if self.refuse_ranges:
                return self._error(handler, 500, None)
            start = int(range_header.split("=")[1].split("-")[0])
        misbehave = body and not start and (self.overflow is not None or self.drip is not None or self.stall)
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Accept-Ranges", "bytes")
        if misbehave and self.overflow is not None:
            if self.overflow_declared:
                handler.send_header("Content-Length", str(self.overflow))
        else:
            handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if not body:
            return
        if misbehave:
            return self._misbehave(handler, data)
        if self.drop_after is not None and not start and len(data) > self.drop_after:
            handler.wfile.write(data[:self.drop_after])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.wfile.write(data[start:])

    def _misbehave(self, handler: BaseHTTPRequestHandler, data: bytes):
        """Overflow, drip or stall, bounded; ``sent`` records how far it got before the client went away."""
        sent, end = 0, time.monotonic() + MAX_SECONDS
        try:
            if self.overflow is not None:
                filler = bytes(PIECE)
                while sent < self.overflow and time.monotonic() < end and not self.stop.is_set():
                    piece = (data[sent:sent + PIECE] if sent < len(data) else filler)[:self.overflow - sent]
                    handler.wfile.write(piece)
                    sent += len(piece)
            elif self.drip is not None:
                while sent < len(data) and time.monotonic() < end and not self.stop.wait(self.drip):
                    handler.wfile.write(data[sent:sent + 1])
                    handler.wfile.flush()
                    sent += 1
            else:  # stall: headers, then silence until the client gives up (its read fails on the closed socket)
                handler.wfile.flush()
                while time.monotonic() < end and not self.stop.wait(0.05):
                    if _closed_by_peer(handler.connection):
                        break
        except OSError:  # the client went away: what it stopped is what this records
            pass
        finally:
            self.sent.append(sent)
            handler.close_connection = True

    @staticmethod
    def _error(handler, status: int, code: str | None):
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
            handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


def _closed_by_peer(connection: socket.socket) -> bool:
    """Whether the client closed its end (a silent server learns it only by looking)."""
    connection.setblocking(False)
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        connection.setblocking(True)
