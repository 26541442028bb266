"""Issue 10: no secret leaks in any form an upstream echoes it in — scanned for every form.

Real processes: a nats-server that requires a user and password, ``aiimg serve`` (the
router and seven providers, JSON logs at debug) and the ``aiimg draw`` / ``aiimg trace``
commands. One loopback upstream plays every provider and echoes what it was sent:

===================  ===================================================================
provider             what comes back
===================  ===================================================================
openai_compat        the key raw in a 401 JSON error, then in a 500 HTML page and a header
jimeng               apikey and cookie raw (HTTP 200 business error, 403 text) and URL-encoded
gemini_native        the key base64-encoded (standard and URL-safe) in a 400 error
gitee                ``Authorization: Basic base64(user:key)`` at all three byte alignments
gemini_openai        a 10 KB, 5,000-deep nested JSON body (500, then 200)
ark                  a successful PNG whose ``tEXt`` chunk holds ``Authorization: Bearer <key>``
grok                 successful images whose ``url`` carries the key (query, userinfo) — so it
                     would become ``source_url``; a URL that crashes the download code while
                     the key is a frame local (a provider bug, logged with its traceback); a
                     signed CDN URL without our secrets (kept); a clean image
===================  ===================================================================

Afterwards every log line, command output, stored event, JetStream store file, result
file and blob is scanned for every secret in every form (raw, URL-encoded, base64 at each
alignment, JSON-escaped). The scanner is first shown to find each form in what the upstream
actually sent back.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import pytest
from PIL import Image, PngImagePlugin

from aiimg.messages import AttemptFailed, AttemptSucceeded, JobCompleted, JobFailed
from aiimg.services.config import load_config
from aiimg.services.infra.blobs import BlobStore
from aiimg.services.infra.bus import connect
from aiimg.services.infra.embedded import EmbeddedServer

from ..fakes.server import FakeUpstream, Reply, Request, json_reply
from .procs import ROOT, ServeProcess, raw_job_messages, write_toml

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEY_OC_1 = "sk-echo-openai-one-0123456789"
KEY_OC_2 = "sk-echo-openai-two-0123456789"
KEY_GEMINI = "AIzaEchoGeminiKey0123456789abcdef"
KEY_GITEE = "gitee-echo-key-0123456789abcdef"
KEY_GO = "sk-echo-gemini-openai-012345678"
KEY_ARK = "ark-echo-key-0123456789abcdef01"
KEY_GROK = "xai-echo-grok-key-0123456789abcdef"
JIMENG_APIKEY = "jm-echo-apikey-0123456789"
COOKIE = "sessionid=echo/Cookie+S3CR3T~998877"
NATS_USER = "aiimg-echo"
NATS_PASSWORD = "pEchoNatsPassw0rdXyZ42"
SECRETS = {
    "openai key 1": KEY_OC_1,
    "openai key 2": KEY_OC_2,
    "gemini key": KEY_GEMINI,
    "gitee key": KEY_GITEE,
    "gemini_openai key": KEY_GO,
    "ark key": KEY_ARK,
    "grok key": KEY_GROK,
    "jimeng apikey": JIMENG_APIKEY,
    "cookie": COOKIE,
    "cookie value": "echo/Cookie+S3CR3T~998877",
    "nats password": NATS_PASSWORD,
}
SIGNATURE = "deadbeefcafe0123456789"


# ---- the scanner -------------------------------------------------------------------------------


def forms(secret: str) -> dict[str, set[bytes]]:
    """Every form to look for, by name. Built here, independently of ``services.redaction``:
    the base64 forms are the middle of the base64 of the secret after 0, 1 or 2 bytes (one
    whole 4-character group dropped at each end), which occurs in the base64 of any text
    containing the secret — standalone, in ``Basic user:key``, in a base64'd PNG."""
    raw = secret.encode()
    url = {quote(secret, safe=""), quote_plus(secret), quote(secret)}
    url |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), u) for u in url}
    b64 = set()
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            b64.add(encode(b"\0" * offset + raw).decode()[4:-4])
    out = {
        "raw": {raw},
        "url-encoded": {u.encode() for u in url} - {raw},
        "base64": {b.encode() for b in b64},
        "json-escaped": {json.dumps(secret)[1:-1].encode()} - {raw},
    }
    return {name: probes for name, probes in out.items() if probes}


FORMS = {name: forms(secret) for name, secret in SECRETS.items()}


def scan(data: str | bytes, where: str) -> list[tuple[str, str, str]]:
    """``(where, secret, form)`` for every form of every secret found in ``data``."""
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return [
        (where, name, form)
        for name, by_form in FORMS.items()
        for form, probes in by_form.items()
        if any(p in blob for p in probes)
    ]


# ---- the upstream ----------------------------------------------------------------------------------


def png_bytes(text: str = "", color: tuple[int, int, int] = (40, 140, 90)) -> bytes:
    img = Image.new("RGB", (96, 64), color)
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Comment", text)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EchoingUpstream(FakeUpstream):
    """Every provider's upstream; records each body it sends back in ``sent``."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.counts: dict[str, int] = {}
        for method, pattern, handler in (
            ("POST", r"/oc/v1/images/generations", self.openai_compat),
            ("GET", r"/api/jimeng", self.jimeng),
            ("POST", r"/gem/v1beta/models/.*", self.gemini_native),
            ("POST", r"/gitee/v1/images/generations", self.gitee),
            ("POST", r"/go/v1/images/generations", self.gemini_openai),
            ("POST", r"/ark/api/v3/images/generations", self.ark),
            ("POST", r"/grok/v1/images/generations", self.grok),
            ("GET", r"/files/.*", self.files),
        ):
            self.route(method, pattern, self._recorded(handler))

    def _recorded(self, handler: Any) -> Any:
        def run(req: Request) -> Reply:
            reply: Reply = handler(req)
            assert isinstance(reply.body, bytes)
            self.sent.append(reply.body + json.dumps(reply.headers).encode())
            return reply

        return run

    def _count(self, name: str) -> int:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name]

    @staticmethod
    def _bearer(req: Request) -> str:
        return req.headers.get("authorization", "")[7:]

    def openai_compat(self, req: Request) -> Reply:
        key = self._bearer(req)
        if key == KEY_OC_1:
            return json_reply(
                {"error": {"message": f"Incorrect API key provided: {key}.", "code": "invalid_api_key"}}, 401
            )
        return Reply(
            500,
            f"<html><body>upstream failed for Authorization: Bearer {key}</body></html>".encode(),
            {"content-type": "text/html", "x-debug-key": key},
        )

    def jimeng(self, req: Request) -> Reply:
        q = {k: v[0] for k, v in req.query.items()}
        cookie, apikey = q.get("Cookie", ""), q.get("apikey", "")
        n = self._count("jimeng") % 3
        if n == 0:
            return json_reply({"code": 500, "msg": f"cookie {cookie} with apikey {apikey} is not valid", "data": None})
        if n == 1:
            return Reply(403, f"cookie {cookie} / {apikey} refused".encode(), {"content-type": "text/plain"})
        said = f"GET /api/jimeng?Cookie={quote_plus(cookie)}&apikey={quote(apikey)}&c={quote(cookie, safe='')}"
        return json_reply({"code": 500, "msg": f"upstream rejected {said}", "data": None})

    def gemini_native(self, req: Request) -> Reply:
        key = req.headers.get("x-goog-api-key", "")
        std, safe = b64(key), base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
        message = f"x-goog-api-key {std} (urlsafe {safe}) is not enabled for this model"
        return json_reply({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": message}}, 400)

    def gitee(self, req: Request) -> Reply:
        key = self._bearer(req)
        basics = " ".join(f"Basic {b64(user + ':' + key)}" for user in ("u", "us", "use"))  # 3 alignments
        return json_reply({"error": {"message": f"proxy auth failed: {basics}"}}, 500)

    def gemini_openai(self, req: Request) -> Reply:
        status = 500 if self._count("gemini_openai") % 2 else 200
        return Reply(status, b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"})

    def ark(self, req: Request) -> Reply:
        image = png_bytes(f"request: POST /images/generations Authorization: Bearer {self._bearer(req)}")
        return json_reply({"data": [{"b64_json": base64.b64encode(image).decode()}]})

    def grok(self, req: Request) -> Reply:
        key = self._bearer(req)
        prompt = str(req.json().get("prompt", ""))
        host = self.url.split("://", 1)[1]
        if "srcurl" in prompt:
            return json_reply({"data": [{"url": f"{self.url}/files/fox.png?size=1&key={key}"}]})
        if "b64url" in prompt:
            return json_reply({"data": [{"url": f"{self.url}/files/fox.png?t={b64('grok:' + key)}"}]})
        if "userinfo" in prompt:
            return json_reply({"data": [{"url": f"http://grok:{key}@{host}/files/fox.png"}]})
        if "signed" in prompt:
            url = f"{self.url}/files/fox.png?X-Tos-Expires=60&X-Tos-Signature={SIGNATURE}"
            return json_reply({"data": [{"url": url}]})
        if "bug" in prompt:
            # Not a URL the download code can parse: a typed invalid_response (it used to raise
            # ValueError inside the provider's call(position, key), a bug logged with the key as a local).
            return json_reply({"data": [{"url": "http://[::1/broken.png"}]})
        return json_reply({"data": [{"b64_json": base64.b64encode(png_bytes(color=(1, 2, 3))).decode()}]})

    def files(self, req: Request) -> Reply:
        return Reply(200, png_bytes(color=(200, 100, 0)), {"content-type": "image/png"})


# ---- the run -------------------------------------------------------------------------------------


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiimg.services.app.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
    )


def _config(tmp_path: Path, url: str, up: str) -> Path:
    common = {"max_retries": 0, "timeout": 15.0}
    return write_toml(
        tmp_path / "aiimg.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": url, "user": NATS_USER, "password": NATS_PASSWORD, "prefix": "e" + uuid.uuid4().hex[:8]},
            "network": {"allow_private_downloads": True},
            "draw": {
                "provider": "openai_compat",
                "fallback_1": "jimeng",
                "fallback_2": "gemini_native",
                "fallback_3": "grok",
                "openai_compat": {**common, "base_url": f"{up}/oc", "api_keys": [KEY_OC_1, KEY_OC_2], "model": "m"},
                "jimeng": {
                    **common,
                    "api_url": f"{up}/api/jimeng",
                    "apikey": JIMENG_APIKEY,
                    "cookie_list": [f"conv-1:{COOKIE}"],
                },
                "gemini_native": {**common, "api_url": f"{up}/gem", "api_keys": [KEY_GEMINI]},
                "gitee": {**common, "base_url": f"{up}/gitee", "api_keys": [KEY_GITEE]},
                "gemini_openai": {**common, "base_url": f"{up}/go", "api_keys": [KEY_GO], "model": "m"},
                "ark": {**common, "base_url": f"{up}/ark/api/v3", "api_keys": [KEY_ARK]},
                "grok": {**common, "base_url": f"{up}/grok", "api_keys": [KEY_GROK], "api_mode": "images"},
            },
            "log": {"format": "json", "level": "debug"},
        },
    )


# (backend, prompt, ends with) — each job also runs the shared fallbacks jimeng → gemini_native → grok.
JOBS = (
    ("", "echo raw", "completed"),
    ("gemini_openai", "deep srcurl", "completed"),
    ("ark", "png b64url", "completed"),
    ("gitee", "basic bug", "failed"),
    ("grok", "signed", "completed"),
    # A result URL with userinfo is never fetched (the key would go to whoever it names).
    ("grok", "userinfo", "either"),
)


async def test_no_secret_in_any_form_anywhere(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats", extra_args=["--user", NATS_USER, "--pass", NATS_PASSWORD])
    url = server.start()
    serve: ServeProcess | None = None
    outputs: dict[str, str] = {}
    results: dict[str, bytes] = {}
    histories: dict[str, list[Any]] = {}
    raw_events: list[bytes] = []
    blobs: dict[str, bytes] = {}
    try:
        with EchoingUpstream() as upstream:
            config_path = _config(tmp_path, url, upstream.url)
            serve = ServeProcess(config_path, "router,openai_compat,jimeng,gemini_native,gitee,gemini_openai,ark,grok")
            await serve.wait_for("stack_ready")
            job_ids = []
            for n, (backend, prompt, _) in enumerate(JOBS):
                out = tmp_path / f"result-{n}.png"
                args = ["-v", "draw", prompt, "-o", str(out)] + (["--backend", backend] if backend else [])
                done = await anyio.to_thread.run_sync(functools.partial(_cli, config_path, *args))
                outputs[f"aiimg draw {prompt!r}"] = done.stdout + done.stderr
                job_ids.append(re.search(r"job (\S+) queued", done.stderr).group(1))  # type: ignore[union-attr]
                if out.exists():
                    results[f"result file {n}"] = out.read_bytes()
            for job_id in job_ids:
                trace = await anyio.to_thread.run_sync(functools.partial(_cli, config_path, "trace", job_id))
                assert trace.returncode == 0, trace.stderr
                outputs[f"aiimg trace {job_id}"] = trace.stdout + trace.stderr

            config = load_config(config_path)
            bus = await connect(config)
            try:
                store = BlobStore(bus)
                for job_id in job_ids:
                    histories[job_id] = [e for _, e in await bus.history(job_id)]
                    for e in histories[job_id]:
                        if isinstance(e, AttemptSucceeded):
                            blobs[e.result.name] = await store.get(e.result)
                    raw_events += await raw_job_messages(bus, job_id)
            finally:
                await bus.close()
            serve.stop()
            sent = list(upstream.sent)
            requests = list(upstream.requests)
    finally:
        if serve is not None:
            serve.stop()
        server.stop()  # flushes the JetStream store to disk

    # ---- nowhere in what aiimg wrote (the counts are printed before any assertion) ----------------
    echoed = {(secret, form) for _, secret, form in scan(b"\n".join(sent), "upstream replies")}
    leaks: list[tuple[str, str, str]] = []
    leaks += scan("".join(serve.raw), "aiimg serve log")
    for where, text in outputs.items():
        leaks += scan(text, where)
    for i, data in enumerate(raw_events):
        leaks += scan(data, f"event #{i}")
    for name, data in {**blobs, **results}.items():
        leaks += scan(data, name)
    store_files = data_files = 0
    for path in (tmp_path / "nats").rglob("*"):
        if path.is_file():
            store_files += 1
            leaks += scan(path.read_bytes(), str(path.relative_to(tmp_path)))
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            data_files += 1
            leaks += scan(path.read_bytes(), str(path.relative_to(tmp_path)))
    probes = sum(len(p) for by_form in FORMS.values() for p in by_form.values())
    bugs = [line for line in serve.lines if line.get("event") == "provider_bug"]
    print(
        f"\nsecret echo scan: {len(SECRETS)} secrets × {probes} probes; echoed by the upstream: {len(echoed)} "
        f"(secret, form) pairs in {len(sent)} replies; scanned {len(serve.raw)} log lines, {len(outputs)} "
        f"command outputs, {len(raw_events)} events, {len(blobs)} blobs, {len(results)} result files, "
        f"{store_files} store files, {data_files} data files; provider bugs logged: {len(bugs)}; leaks={len(leaks)}"
    )
    for leak in sorted(set(leaks))[:40]:
        print("LEAK", leak)

    # ---- the scenario happened --------------------------------------------------------------
    assert {r.headers.get("authorization") for r in requests if r.path.startswith("/oc/")} == {
        f"Bearer {KEY_OC_1}",
        f"Bearer {KEY_OC_2}",
    }
    by_prompt = dict(zip((p for _, p, _ in JOBS), job_ids, strict=True))
    for (_, prompt, ends), job_id in zip(JOBS, job_ids, strict=True):
        end = histories[job_id][-1]
        if ends != "either":
            assert isinstance(end, JobCompleted if ends == "completed" else JobFailed), (prompt, end)
    failures = {
        (e.provider, e.reason, e.message)
        for events in histories.values()
        for e in events
        if isinstance(e, AttemptFailed)
    }
    reasons = {(p, r) for p, r, _ in failures}
    assert {
        ("openai_compat", "upstream_error"),
        ("jimeng", "auth"),
        ("gemini_native", "bad_request"),
        ("gitee", "upstream_error"),
        ("gemini_openai", "invalid_response"),
        ("ark", "invalid_response"),
        ("grok", "invalid_response"),
    } <= reasons, reasons
    print("\n".join(sorted(f"{p}: {r}: {m}" for p, r, m in failures)))
    assert ("ark", "invalid_response", "result embeds a credential") in failures
    assert any(p == "gemini_openai" and "nested deeper" in m for p, _, m in failures), failures
    # Malformed and credential-carrying URLs are typed failures, not provider bugs (a bug's
    # traceback with the key as a frame local: test_a_provider_bug_logs_its_traceback_without_locals).
    assert bugs == [], bugs
    assert any(p == "grok" and "not a valid URL" in m for p, _, m in failures), failures
    # source_url: dropped when it carries our key (query or userinfo), kept for a signed CDN URL.
    succeeded = {job_id: [e for e in events if isinstance(e, AttemptSucceeded)] for job_id, events in histories.items()}
    dropped = ["deep srcurl", "png b64url"]
    userinfo_end = histories[by_prompt["userinfo"]][-1]
    assert isinstance(userinfo_end, JobFailed)
    assert userinfo_end.failures[0].provider == "grok"
    assert "refusing a URL with credentials" in userinfo_end.failures[0].message
    for prompt in dropped:
        (ok,) = succeeded[by_prompt[prompt]]
        assert ok.provider == "grok" and ok.source_url == "", (prompt, ok.source_url)
        assert histories[by_prompt[prompt]][-1].source_url == ""
    (signed,) = succeeded[by_prompt["signed"]]
    assert SIGNATURE in signed.source_url and histories[by_prompt["signed"]][-1].source_url == signed.source_url
    assert len(serve.events("source_url_dropped")) == len(dropped)

    # ---- the scanner finds every form where it is present: in what the upstream sent back --------
    for secret, form in [
        ("openai key 1", "raw"),
        ("openai key 2", "raw"),
        ("jimeng apikey", "raw"),
        ("cookie", "raw"),
        ("cookie", "url-encoded"),
        ("gemini key", "base64"),
        ("gitee key", "base64"),
        ("ark key", "base64"),  # the PNG's tEXt chunk, inside b64_json
        ("grok key", "raw"),
    ]:
        assert (secret, form) in echoed, (secret, form)
    assert scan(SIGNATURE, "probe") == []
    for name, by_form in FORMS.items():  # and each form of each secret, on its own
        for form, probes in by_form.items():
            for probe in probes:
                assert (name, form) in {(s, f) for _, s, f in scan(b"<" + probe + b">", "probe")}, (name, form)

    assert serve.raw and raw_events and blobs and store_files
    assert leaks == []


async def test_nats_credentials_in_the_url_are_not_printed(tmp_path: Path) -> None:
    """``nats.url = "nats://user:password@host"``: ``aiimg serve`` announces the URL it serves on,
    and a failing command prints its error; neither may repeat the password."""
    server = EmbeddedServer(tmp_path / "nats", extra_args=["--user", NATS_USER, "--pass", NATS_PASSWORD])
    url = server.start()
    with_creds = url.replace("nats://", f"nats://{NATS_USER}:{NATS_PASSWORD}@")
    wrong = url.replace("nats://", f"nats://{NATS_USER}:{NATS_PASSWORD}x@")
    serve: ServeProcess | None = None
    try:
        config = write_toml(
            tmp_path / "aiimg.toml",
            {"data_dir": str(tmp_path / "data"), "nats": {"url": with_creds, "prefix": "u" + uuid.uuid4().hex[:8]}},
        )
        serve = ServeProcess(config, "router,local")
        await serve.wait_for("stack_ready")
        for _ in range(100):
            if any("serving on" in line for line in serve.raw):
                break
            await anyio.sleep(0.05)
        bad = write_toml(tmp_path / "bad.toml", {"data_dir": str(tmp_path / "data"), "nats": {"url": wrong}})
        failed = await anyio.to_thread.run_sync(functools.partial(_cli, bad, "draw", "x"))
    finally:
        if serve is not None:
            serve.stop()
        server.stop()
    announced = [line for line in serve.raw if "serving on" in line]
    print("\n" + "".join(announced) + failed.stderr)
    assert announced and "nats://***@127.0.0.1" in announced[0]
    assert failed.returncode != 0 and "cannot connect to NATS" in failed.stderr
    text = "".join(serve.raw) + failed.stdout + failed.stderr
    assert NATS_PASSWORD not in text and quote(NATS_PASSWORD) not in text


async def test_a_provider_bug_logs_its_traceback_without_locals(nats_url: str, tmp_path: Path) -> None:
    """A provider that crashes while the key is a local variable: the ``provider_bug`` line has
    the traceback (where it happened) but no frame locals, and no form of the key."""
    from aiimg.services.app.client import Client
    from aiimg.services.app.stack import Stack, running
    from aiimg.services.infra.logging import Redactor, configure_logging

    from ..conftest import make_config
    from ..helpers import ScriptedProvider

    key = KEY_GROK

    async def buggy(ctx: Any) -> Any:
        api_key = key  # a frame local holding the key, as in every provider's call(position, key)
        raise RuntimeError("unexpected reply shape " + str(len(api_key)))

    out = io.StringIO()
    redactor = Redactor()
    redactor.register([key])
    configure_logging("info", "json", out, redactor=redactor, capture_stdlib=False)
    try:
        config = make_config(nats_url, tmp_path)
        bus = await connect(config)
        try:
            await bus.ensure_layout()
            async with running(Stack(bus, providers=[ScriptedProvider(config, "local", buggy)])):
                client = Client(bus)
                end = await client.wait(await client.submit("draw", "crash", output="64x64"), timeout=30)
        finally:
            await bus.close()
    finally:
        configure_logging("info", "console", capture_stdlib=False)
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    bugs = [line for line in lines if line.get("event") == "provider_bug"]
    assert isinstance(end, JobFailed) and bugs
    frames = [f for bug in bugs for exc in bug["exception"] for f in exc["frames"]]
    assert any(f["name"] == "buggy" for f in frames), "the traceback reaches the frame that holds the key"
    assert not any("locals" in f for f in frames)
    assert scan(out.getvalue(), "log") == []
