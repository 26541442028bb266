"""A real HTTP server on 127.0.0.1 for fake upstreams (stdlib, one thread per request).

Handlers are plain functions ``(Request) -> Reply``; each fake upstream module registers
routes that implement its upstream's wire format (status codes, error bodies, async
task state machines, URLs it serves). Every request is recorded for assertions.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ("FakeUpstream", "Reply", "Request", "json_reply")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, list[tuple[str, bytes, str]]]:
        """Multipart form fields: name → [(filename, bytes, content-type)]; filename '' for plain fields."""
        ctype = self.headers.get("content-type", "")
        msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + self.body)
        out: dict[str, list[tuple[str, bytes, str]]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition") or ""
            filename = part.get_filename() or ""
            payload = part.get_payload(decode=True) or b""
            out.setdefault(str(name), []).append((filename, payload, part.get_content_type()))
        return out


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterator[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (a slow upstream)."""


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None, delay: float = 0.0) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"content-type": "application/json", **(headers or {})}, delay)


Handler = Callable[[Request], Reply]


class FakeUpstream:
    """Routes ``(METHOD, path-regex)`` to handlers. Use as a context manager; ``url`` is its root."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listens on ``host:port`` (any free port by default); ``host`` must be a loopback address."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"a fake upstream listens on loopback only, not {host}")
        self.host = host
        self.port = port
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Add (or, for the same method and pattern, replace) a route. Pattern must match the whole path."""
        self.routes = [r for r in self.routes if not (r[0] == method and r[1].pattern == pattern)]
        self.routes.append((method, re.compile(pattern), handler))

    def start(self) -> str:
        upstream = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                upstream.requests.append(req)
                for method, pattern, handler in upstream.routes:
                    if method == self.command and pattern.fullmatch(parts.path):
                        try:
                            reply = handler(req)
                        except Exception as exc:  # a bug in a fake must not hang the client
                            reply = json_reply({"error": {"message": f"fake upstream crashed: {exc!r}"}}, 599)
                        break
                else:
                    reply = json_reply({"error": {"message": f"no route {self.command} {parts.path}"}}, 404)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    if isinstance(reply.body, bytes):
                        self.send_header("content-length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                    else:
                        self.send_header("connection", "close")
                        self.end_headers()
                        for chunk in reply.body:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._server = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for one poll, and every test stops a server.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        self.port = int(self._server.server_address[1])
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def calls(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        return [r for r in self.requests if r.method == method and rx.fullmatch(r.path)]
