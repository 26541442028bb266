#!/usr/bin/env python3
"""A 3-node NATS JetStream cluster on 127.0.0.1, from the shipped ``deploy/nats/cluster.conf``.

Usage::

    python deploy/cluster.py [--dir DIR]      # start three nodes, print URLs and passwords, Ctrl-C stops
    bash deploy/cluster.sh [--dir DIR]        # the same

The fault-injection tests (``tests/reliability/``) import :class:`LoopbackCluster` to run
the very configuration that ``docker-compose.yml`` ships — ``cluster.conf`` plus the
generated ``auth.conf`` — with only the addresses changed through the environment
variables that file documents. Each node keeps its ports for its whole life, so a node
that is killed and restarted comes back where its peers and clients look for it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nats" / "cluster.conf"

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy"))
from permissions import inbox_prefix, password_var, roles, user_name  # noqa: E402

from aiimg.services.infra.embedded import find_nats_server  # noqa: E402

__all__ = ("LoopbackCluster", "Node")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    http_port: int
    store: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LoopbackCluster:
    """Three nats-server processes with routes between them, all on 127.0.0.1."""

    def __init__(self, root: Path, *, size: int = 3, passwords: dict[str, str] | None = None) -> None:
        if size != 3:
            raise ValueError("cluster.conf names exactly three routes")
        self.root = Path(root)
        self.binary = find_nats_server()
        # Letters and digits starting with a letter: nats-server parses an environment value as a
        # config token, so a password that looks like a number or a date would not be a string.
        self.passwords = passwords or {r: "p" + secrets.token_hex(16) for r in [*roles(), "sys"]}
        self.nodes = [
            Node(
                name=f"n{i + 1}",
                client_port=_free_port(),
                cluster_port=_free_port(),
                http_port=_free_port(),
                store=self.root / f"n{i + 1}",
            )
            for i in range(size)
        ]

    # ---- what clients need ----------------------------------------------------------

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (the form ``nats.url`` takes)."""
        return ",".join(n.url for n in self.nodes)

    def credentials(self, role: str) -> dict[str, str]:
        """The ``[nats]`` settings of ``role``: user, password and its own inbox prefix."""
        return {"user": user_name(role), "password": self.passwords[role], "inbox_prefix": inbox_prefix(role)}

    # ---- lifecycle --------------------------------------------------------------------

    def env(self, node: Node) -> dict[str, str]:
        routes = {f"NATS_ROUTE_{i + 1}": f"nats://127.0.0.1:{n.cluster_port}" for i, n in enumerate(self.nodes)}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NATS_SERVER_NAME": node.name,
            "NATS_LISTEN": f"127.0.0.1:{node.client_port}",
            "NATS_HTTP": f"127.0.0.1:{node.http_port}",
            "NATS_CLUSTER_LISTEN": f"127.0.0.1:{node.cluster_port}",
            "NATS_STORE_DIR": str(node.store / "jetstream"),
            "NATS_SYS_PASSWORD": self.passwords["sys"],
            **routes,
        }
        env.update({password_var(r): self.passwords[r] for r in roles()})
        return env

    def start(self, timeout: float = 30.0) -> str:
        for node in self.nodes:
            self._spawn(node)
        self.wait_healthy(timeout)
        return self.url

    def _spawn(self, node: Node) -> None:
        node.store.mkdir(parents=True, exist_ok=True)
        log = node.store / "nats-server.log"
        with (node.store / "stderr.log").open("ab") as err:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(CONF), "-l", str(log)],
                env=self.env(node),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def healthy(self, node: Node) -> bool:
        """``node`` is routed to every peer, and its JetStream is current with a meta leader."""
        if not node.running:
            return False
        try:
            if self._get(node, "/healthz") is None:
                return False
            routes = self._get(node, "/routez")
            jsz = self._get(node, "/jsz")
        except (urllib.error.URLError, OSError, ValueError):
            return False
        if routes is None or jsz is None:
            return False
        peers = {r.get("remote_name") or r.get("remote_id") for r in routes.get("routes") or []}
        meta = jsz.get("meta_cluster") or {}
        return len(peers) >= len(self.nodes) - 1 and bool(meta.get("leader"))

    def _get(self, node: Node, path: str) -> dict[str, Any] | None:
        """The JSON of a monitoring endpoint, or None unless it answered 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=2) as resp:
                if resp.status != 200:
                    return None
                doc = json.loads(resp.read())
        except urllib.error.HTTPError:
            return None
        return doc if isinstance(doc, dict) else None

    def wait_healthy(self, timeout: float = 30.0, nodes: list[Node] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(nodes or self.nodes)
        while pending:
            for node in list(pending):
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(
                        f"nats-server {node.name} exited with {node.proc.returncode}: {self.log_tail(node)}"
                    )
                if self.healthy(node):
                    pending.remove(node)
            if pending and time.monotonic() > deadline:
                names = ", ".join(n.name for n in pending)
                raise RuntimeError(f"cluster nodes not healthy within {timeout:.0f}s: {names}")
            if pending:
                time.sleep(0.1)

    def kill(self, index: int) -> None:
        """SIGKILL one node (no lame duck, no flush): the fault the tests inject."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=10)
        node.proc = None

    def restart(self, index: int, timeout: float = 30.0) -> None:
        node = self.nodes[index]
        self.kill(index)
        self._spawn(node)
        self.wait_healthy(timeout, [node])

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def log_tail(self, node: Node, lines: int = 8) -> str:
        out: list[str] = []
        for name in ("stderr.log", "nats-server.log"):
            try:
                out += (node.store / name).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out)

    def __enter__(self) -> LoopbackCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start a 3-node NATS JetStream cluster on 127.0.0.1.")
    p.add_argument("--dir", help="data directory (default: a fresh temporary one)")
    args = p.parse_args(argv)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="aiimg-cluster-"))
    cluster = LoopbackCluster(root)
    cluster.start()
    print(f"cluster up: {cluster.url}  (data in {root})")
    print("aiimg settings per role ([nats] url, user, password, inbox_prefix, replicas = 3):")
    for role in roles():
        c = cluster.credentials(role)
        print(f"  {role:<14} user={c['user']} password={c['password']} inbox_prefix={c['inbox_prefix']}")
    print("Ctrl-C stops the cluster.", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            for node in cluster.nodes:
                if not node.running:
                    print(f"node {node.name} exited: {cluster.log_tail(node)}", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
