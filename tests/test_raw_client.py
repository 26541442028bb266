"""A job submitted and followed with nothing but nats-py and hand-written JSON.

This is the interoperability promise: the service is usable from any NATS client in
any language. The test deliberately uses none of the project's helpers on the client side.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import nats
import pytest

from aiimg.services.app.stack import Stack, running
from aiimg.services.infra.bus import Bus
from aiimg.services.providers.local import LocalProvider

pytestmark = pytest.mark.anyio


async def test_raw_nats_client_submits_and_receives_result(bus: Bus, nats_url: str) -> None:
    prefix = bus.config.nats.prefix
    async with running(Stack(bus, providers=[LocalProvider(bus.config)])):
        nc = await nats.connect(nats_url)
        try:
            job_id = "raw-" + uuid.uuid4().hex[:12]
            done = await nc.subscribe(f"{prefix}.job.{job_id}.done.local")  # done.<the client that asked>
            request = {
                "type": "job.requested.v1",
                "job_id": job_id,
                "op": "draw",
                "prompt": "hello from a plain NATS client",
                "output": "320x200",
            }
            # A plain core-NATS publish under a client name: the job stream captures the subject.
            await nc.publish(f"{prefix}.job.{job_id}.requested.local", json.dumps(request).encode())
            msg = await done.next_msg(timeout=30)
            event = json.loads(msg.data)
            assert event["type"] == "job.completed.v1"
            assert event["job_id"] == job_id
            result = event["result"]
            assert (result["width"], result["height"], result["mime"]) == (320, 200, "image/png")

            # The bytes, read with nats-py's own object store API.
            js = nc.jetstream()
            store = await js.object_store(result["bucket"])
            obj = await store.get(result["name"])
            assert obj.data is not None
            assert hashlib.sha256(obj.data).hexdigest() == result["sha256"]
            assert obj.data[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            await nc.close()
