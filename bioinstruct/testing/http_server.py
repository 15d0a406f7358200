"""HTTP plumbing for the local test servers: framing, connections and a background thread.

A :class:`BackgroundServer` subclass implements :meth:`~BackgroundServer.handle`, a function
of (method, target, headers, body) returning a :class:`Reply`; everything below it (keep-alive,
chunked bodies, dropped connections, a quick clean shutdown) lives here. Stdlib only:
:class:`http.server.ThreadingHTTPServer`, one thread per client connection, HTTP/1.1.
"""

from __future__ import annotations

import abc
import email.message
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop: bool = False  # close the connection instead of answering

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, json.dumps(obj).encode(), dict(headers or {}))


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename or None, raw bytes)."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("multipart/form-data without a boundary")
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), so splitting on
    # CRLF + "--boundary" leaves every part's bytes exactly as sent, binary included.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a blank line after its headers")
        part = email.message_from_bytes(head.lstrip(b" \t").removeprefix(b"\r\n"))
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename(), data)
    return fields


def _read_chunked(rfile) -> bytes:
    out = []
    while True:
        size = int(rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(out)
        out.append(rfile.read(size))
        rfile.readline()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client pools connections
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm
    # holds the body until the client's delayed ACK (~40 ms per request on Linux).
    disable_nagle_algorithm = True
    timeout = 300  # close a keep-alive connection idle this long
    server: "_HTTPServer"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.track(self.connection, False)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass  # the client went away (e.g. it timed out on a slow answer): nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    do_PUT = do_PATCH = do_DELETE  # only to answer them with the API's JSON 404, not http.server's HTML 501

    def _serve(self) -> None:
        # Read the whole body first, whatever the answer: bytes left unread would be parsed
        # as the next request on this keep-alive connection.
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.send_error(400, "Bad Content-Length or chunk size")  # also closes: the framing is lost
            return
        headers = {k: v for k, v in self.headers.items()}
        reply = self.server.app.handle(self.command, self.path, headers, body)
        if reply.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs when dozens of async clients connect at once,
    # and a dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], app: "BackgroundServer") -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error while serving %s", client_address)


class BackgroundServer(abc.ABC):
    """An HTTP server on a background thread; use as a context manager.

    ``stopping`` is set when the server stops: anything that waits (a slow answer, a
    worker thread) should wait on it, so that stopping is quick.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self.stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        """The answer to one request (``target``: the path with its query string)."""

    def start(self) -> "BackgroundServer":
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _HTTPServer(self._address, self)
        # A short poll interval keeps stop() quick: shutdown() waits for the loop's next poll.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self.stopping.set()  # wakes slow answers and worker threads
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()  # idle keep-alive connections would hold their threads
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]
