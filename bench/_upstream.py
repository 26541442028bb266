"""A fast fake OpenAI Images upstream for the benchmarks, in its own process.

``POST [/policy|/dead][/lat/<ms>]/v1/images/generations`` answers like the real API:
``200 {"created", "data": [{"b64_json"}]}`` after ``<ms>`` milliseconds, or (with
``/policy``) the real ``400 image_generation_user_error`` moderation body, which a
provider maps to ``content_policy`` (not retried: the router escalates at once), or (with
``/dead``) the real ``401 invalid_api_key`` body of a revoked key (``auth``).
The path prefix lets one upstream process play several upstreams (one per provider
block's ``base_url``).

The whole reply is encoded once at start, and the server is plain asyncio streams
with keep-alive, so one process serves thousands of requests a second and a
thousand slow requests at once (the test suite's threaded ``FakeUpstream`` cannot).

Each request's arrival and each reply's completion are logged with ``time.monotonic()``
(one clock for every process on the machine) together with the request's prompt, and
served on ``GET /_log`` so the orchestrator can measure failover gaps across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

_OK_HEAD = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {n}\r\n\r\n"
_DEAD = {
    "error": {
        "message": "Incorrect API key provided: sk-bench***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}

_POLICY = {
    "error": {
        "message": "Your request was rejected by the safety system. If you believe this is an error, "
        "contact us at help.openai.com and include the request ID req_bench.",
        "type": "image_generation_user_error",
        "param": None,
        "code": "moderation_blocked",
    }
}


def _reply(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class Upstream:
    def __init__(self, image: bytes) -> None:
        body = b'{"created": 1700000000, "data": [{"b64_json": "' + base64.b64encode(image) + b'"}]}'
        self.ok = _OK_HEAD.format(n=len(body)).encode() + body
        self.policy = _reply("400 Bad Request", json.dumps(_POLICY).encode())
        self.dead = _reply("401 Unauthorized", json.dumps(_DEAD).encode())
        self.log: list[tuple[str, float, float, str, str]] = []
        """(event, monotonic time, wall time, path, prompt): ``recv`` when a request is read, ``sent`` after its reply."""
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                received, received_wall = time.monotonic(), time.time()
                line, _, rest = head.partition(b"\r\n")
                method, path, _ = line.decode("latin-1").split(" ", 2)
                length = 0
                for header in rest.split(b"\r\n"):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                if method == "GET" and path == "/_log":
                    payload = json.dumps({"log": self.log, "requests": self.requests}).encode()
                    writer.write(_reply("200 OK", payload))
                    await writer.drain()
                    continue
                if method == "POST" and path == "/_reset":
                    self.log.clear()
                    self.requests = 0
                    writer.write(_reply("200 OK", b"{}"))
                    await writer.drain()
                    continue
                self.requests += 1
                prompt = _prompt(body)
                self.log.append(("recv", received, received_wall, path, prompt))
                answer, latency = _route(path)
                if latency < 0:
                    writer.write(_reply("404 Not Found", b'{"error": {"message": "no such route"}}'))
                    await writer.drain()
                    continue
                if latency:
                    await asyncio.sleep(latency)
                writer.write({"policy": self.policy, "dead": self.dead}.get(answer, self.ok))
                await writer.drain()
                self.log.append(("sent", time.monotonic(), time.time(), path, prompt))
        finally:
            writer.close()


def _route(path: str) -> tuple[str, float]:
    """(``ok``, ``policy`` (the moderation error) or ``dead`` (a revoked key), latency in seconds);
    latency -1 for an unknown path."""
    if not path.endswith("/v1/images/generations"):
        return "ok", -1.0
    parts = path.split("/")[1:-3]
    answer = "policy" if "policy" in parts else "dead" if "dead" in parts else "ok"
    latency = 0.0
    if "lat" in parts:
        i = parts.index("lat")
        latency = float(parts[i + 1]) / 1000 if i + 1 < len(parts) else 0.0
    return answer, latency


def _prompt(body: bytes) -> str:
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return ""
    return str(doc.get("prompt", "")) if isinstance(doc, dict) else ""


async def main(image: bytes) -> None:
    upstream = Upstream(image)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, backlog=4096, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    async with server:
        # Ends when the orchestrator closes our stdin (or dies).
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    asyncio.run(main(Path(p.parse_args().image).read_bytes()))
