"""Run by ``test_response_memory.py`` in a child process: fetch one URL the way an actor does and
report the peak memory it cost, so the figure is this one read and nothing else in pytest.

``python -m tests.reliability.memory_child MODE URL MAX_BLOB_BYTES WARM_URL`` prints one JSON
line: ``outcome`` (``ok <bytes>``, a failure reason, or ``MemoryError``), ``cap`` (the
response cap in force), ``peak`` (bytes of peak RSS growth during the read, from
``VmHWM`` after resetting it) and ``factor`` (peak / cap).

The child caps its own address space before the read (its size then plus 8 × cap, at
least 512 MiB more), so a broken build meeting a decompression bomb ends in
``MemoryError`` here instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import anyio


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


async def measure(mode: str, url: str, max_blob: int, warm_url: str) -> dict[str, object]:
    from aiimg.services.config import config_from_dict
    from aiimg.services.domain.errors import AiimgError
    from aiimg.services.infra.http import download_client, response_cap, send_read, upstream_client
    from aiimg.services.providers._common import download
    from aiimg.services.providers._errors import failure_for
    from aiimg.services.providers.openai_compat import OpenAICompatProvider
    from tests.fakes.attempt import attempt_context

    probe = config_from_dict({"retention": {"max_blob_bytes": max_blob}})
    cap = response_cap(probe)
    config = config_from_dict(
        {
            "retention": {"max_blob_bytes": max_blob},
            "network": {"allow_private_downloads": True, "download_max_bytes": cap, "download_timeout": 120.0},
            "draw": {
                "openai_compat": {"base_url": url.rsplit("/", 1)[0], "api_keys": ["sk-test-1"], "model": "gpt-image-1"}
            },
        }
    )
    async with upstream_client(config, 4) as http, download_client(config, 4) as downloads:
        # Every code path once with small bodies: imports, pools and first-use allocations
        # are in the baseline, not in the figure.
        for warm in (warm_url, warm_url + "-gzip"):
            await http.get(warm)
            await send_read(http, http.build_request("GET", warm))
            await download(downloads, warm, config.network)
        _reset_peak()
        base = _status_kib("VmRSS")
        room = _status_kib("VmSize") * 1024 + max(8 * cap, 512 * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (room, resource.getrlimit(resource.RLIMIT_AS)[1]))
        outcome: str
        try:
            if mode == "get":
                outcome = f"ok {len((await http.get(url)).content)}"
            elif mode == "send_read":
                outcome = f"ok {len((await send_read(http, http.build_request('GET', url))).content)}"
            elif mode == "download":
                data, _ = await download(downloads, url, config.network)
                outcome = f"ok {len(data)}"
            elif mode == "provider":  # a whole openai_compat attempt: read, parse JSON, decode b64_json
                out = await OpenAICompatProvider(config).run(
                    attempt_context(config, "openai_compat", http, downloads=downloads)
                )
                outcome = f"ok {len(out.data)}"
            else:
                raise SystemExit(f"unknown mode {mode}")
        except AiimgError as exc:  # a typed failure, raised by a provider or the transport under it
            failure = failure_for(exc)
            outcome = failure.reason if failure is not None else type(exc).__name__
        except MemoryError:
            outcome = "MemoryError"
        peak = (_status_kib("VmHWM") - base) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return {"outcome": outcome, "cap": cap, "peak": peak, "factor": round(peak / cap, 3)}


def main() -> None:
    mode, url, max_blob, warm_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    print(json.dumps(anyio.run(measure, mode, url, max_blob, warm_url)))


if __name__ == "__main__":
    main()
