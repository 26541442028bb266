"""Secrets never leak: API keys, cookies and NATS credentials are in no log, event, trace,
error message, ``aiimg trace`` output or JetStream store file — even when the upstream
echoes them back in its error bodies.

Real processes: a nats-server that requires a user and password, ``aiimg serve`` (router,
``openai_compat`` with two keys, ``jimeng`` with an apikey and a cookie) and the ``aiimg
draw`` / ``aiimg trace`` commands. Both upstreams answer every call with an error body that
repeats the key, the apikey and the cookie they were sent. Afterwards every byte those
processes wrote — and every file in the server's store directory — is scanned.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from aiimg.messages import AttemptFailed, JobFailed
from aiimg.services.config import load_config
from aiimg.services.infra.bus import connect
from aiimg.services.infra.embedded import EmbeddedServer

from ..fakes.server import FakeUpstream, Reply, Request, json_reply
from .procs import ROOT, ServeProcess, raw_job_messages, write_toml

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEY_1 = "sk-test-echo-key-one-0001"
KEY_2 = "sk-test-echo-key-two-0002"
JIMENG_APIKEY = "jm-test-apikey-77777"
COOKIE = "sessionid=test-cookie-S3CR3T-998877"
NATS_USER = "aiimg-test"
NATS_PASSWORD = "pTestNatsPassw0rdXyZ"
SECRETS = (KEY_1, KEY_2, JIMENG_APIKEY, COOKIE, "test-cookie-S3CR3T-998877", NATS_PASSWORD)


def echoing_upstream() -> FakeUpstream:
    upstream = FakeUpstream()

    def images(req: Request) -> Reply:
        key = req.headers.get("authorization", "")[7:]
        if key == KEY_1:  # the real OpenAI 401 shape, with the key in full (worst case)
            return json_reply(
                {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                           "code": "invalid_api_key"}},
                401,
            )  # fmt: skip
        if key == KEY_2:  # a gateway that puts the key in a 500 HTML page and a header
            return Reply(
                500,
                f"<html><body>upstream failed for Authorization: Bearer {key}</body></html>".encode(),
                {"content-type": "text/html", "x-debug-key": key},
            )
        return json_reply({"error": {"message": f"unknown key {key}"}}, 400)

    def jimeng(req: Request) -> Reply:
        q = {k: v[0] for k, v in req.query.items()}
        said = f"cookie {q.get('Cookie')} with apikey {q.get('apikey')} is not valid here"
        if len(upstream.calls("GET", r"/api/jimeng")) % 2:
            return json_reply({"code": 500, "msg": said, "data": None})  # a business error on HTTP 200
        return Reply(403, said.encode(), {"content-type": "text/plain"})

    upstream.route("POST", r"/v1/images/generations", images)
    upstream.route("GET", r"/api/jimeng", jimeng)
    return upstream


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiimg.services.app.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
    )


def _leaks(text: str | bytes, where: str) -> list[str]:
    data = text.encode(errors="replace") if isinstance(text, str) else text
    return [f"{where}: {s[:12]}…" for s in SECRETS if s.encode() in data]


async def test_no_secret_in_logs_events_traces_errors_or_store_files(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats", extra_args=["--user", NATS_USER, "--pass", NATS_PASSWORD])
    url = server.start()
    serve: ServeProcess | None = None
    try:
        with echoing_upstream() as upstream:
            config_path = write_toml(
                tmp_path / "aiimg.toml",
                {
                    "data_dir": str(tmp_path / "data"),
                    "nats": {
                        "url": url,
                        "user": NATS_USER,
                        "password": NATS_PASSWORD,
                        "prefix": "s" + uuid.uuid4().hex[:8],
                    },
                    "draw": {
                        "provider": "openai_compat",
                        "fallback_1": "jimeng",
                        "openai_compat": {
                            "base_url": upstream.url,
                            "api_keys": [KEY_1, KEY_2],
                            "model": "gpt-image-1",
                            "max_retries": 0,
                            "timeout": 10.0,
                        },
                        "jimeng": {
                            "api_url": f"{upstream.url}/api/jimeng",
                            "apikey": JIMENG_APIKEY,
                            "cookie_list": [f"conv-1:{COOKIE}"],
                            "max_retries": 0,
                            "timeout": 10.0,
                        },
                    },
                    "log": {"format": "json", "level": "debug"},
                },
            )
            serve = ServeProcess(config_path, "router,openai_compat,jimeng")
            await serve.wait_for("stack_ready")
            outputs: dict[str, str] = {}
            job_ids = []
            for n in range(3):
                draw = await anyio.to_thread.run_sync(functools.partial(_cli, config_path, "-v", "draw", f"echo {n}"))
                assert draw.returncode == 1, draw.stderr  # every provider failed
                outputs[f"aiimg draw #{n}"] = draw.stdout + draw.stderr
                job_ids.append(re.search(r"job (\S+) queued", draw.stderr).group(1))  # type: ignore[union-attr]
            trace = await anyio.to_thread.run_sync(functools.partial(_cli, config_path, "trace", job_ids[0]))
            assert trace.returncode == 0, trace.stderr
            outputs["aiimg trace"] = trace.stdout + trace.stderr

            config = load_config(config_path)
            bus = await connect(config)
            try:
                raw_events: list[bytes] = []
                histories = {}
                for job_id in job_ids:
                    histories[job_id] = [e for _, e in await bus.history(job_id)]
                    raw_events += await raw_job_messages(bus, job_id)
            finally:
                await bus.close()
            serve.stop()
            echoed = [r for r in upstream.requests]
    finally:
        if serve is not None:
            serve.stop()
        server.stop()  # flushes the JetStream store to disk

    # The scenario happened: both keys, the apikey and the cookie reached the upstream, which echoed them.
    assert {r.headers.get("authorization") for r in echoed if r.method == "POST"} == {
        f"Bearer {KEY_1}",
        f"Bearer {KEY_2}",
    }
    assert any(r.query.get("Cookie") == [COOKIE] for r in echoed)
    for job_id, events in histories.items():
        end = events[-1]
        assert isinstance(end, JobFailed), job_id
        reasons = [(e.provider, e.reason) for e in events if isinstance(e, AttemptFailed)]
        assert reasons == [("openai_compat", "upstream_error"), ("jimeng", "auth")], reasons
    assert "key #1" in outputs["aiimg draw #0"] or "key #2" in outputs["aiimg draw #0"]

    leaks: list[str] = []
    leaks += _leaks("".join(serve.raw), "aiimg serve log")
    for where, text in outputs.items():
        leaks += _leaks(text, where)
    for i, data in enumerate(raw_events):
        leaks += _leaks(data, f"event #{i}")
    scanned = 0
    for path in (tmp_path / "nats").rglob("*"):
        if path.is_file():
            scanned += 1
            leaks += _leaks(path.read_bytes(), str(path.relative_to(tmp_path)))
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            leaks += _leaks(path.read_bytes(), str(path.relative_to(tmp_path)))
    print(f"\nsecret scan: {len(serve.raw)} log lines, {len(outputs)} command outputs, {len(raw_events)} events, "
          f"{scanned} store files, leaks={len(leaks)}")  # fmt: skip
    assert scanned > 0 and raw_events and serve.raw
    assert leaks == []
    # The scanner itself finds a secret where there is one.
    assert _leaks(f"xx{KEY_2}yy".encode(), "probe")
