"""``python -m bench [--quick] [--only a,b] [--json PATH] [--profile DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ._env import Env, Sizes
from ._figures import FIGURES, Figure
from ._report import machine, table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds, for the smoke test)")
    p.add_argument("--only", default="", help=f"comma-separated figures: {','.join(FIGURES)}")
    p.add_argument("--json", default="bench/results.json", help="where to write the results (default: %(default)s)")
    p.add_argument("--profile", default="", help="directory for py-spy profiles of the actors during throughput")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    return p


async def run(args: argparse.Namespace) -> int:
    wanted = [f.strip() for f in args.only.split(",") if f.strip()] or list(FIGURES)
    unknown = [f for f in wanted if f not in FIGURES]
    if unknown:
        print(f"bench: unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    sizes = Sizes.for_run(args.quick)
    started = time.monotonic()
    info = machine()
    figures: list[Figure] = []
    tmp = Path(tempfile.mkdtemp(prefix="aiimg-bench-"))
    with Env.open(tmp, sizes) as env:
        env.profile_dir = args.profile_dir
        for key in wanted:
            t0 = time.monotonic()
            print(f"bench: {key} …", file=sys.stderr, flush=True)
            try:
                fig = await FIGURES[key](env)
            except Exception as exc:
                fig = Figure(key, key, error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
                await env.stop_actors()
            fig.data["seconds"] = round(time.monotonic() - t0, 2)
            figures.append(fig)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"bench: kept {tmp}", file=sys.stderr)
    info["loadavg_at_end"] = list(__import__("os").getloadavg())
    doc = {
        "started": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "machine": info,
        "figures": {f.key: f.as_dict() for f in figures},
    }
    out: Path = args.json_path
    await anyio.Path(out.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(out).write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    print(table(figures))
    print(
        f"\n{len(figures)} figures in {doc['seconds']} s on {info['nproc']} cores ({info['cpu_model']}); "
        f"load {info['loadavg_at_start'][0]:.2f} → {info['loadavg_at_end'][0]:.2f}; JSON: {out}"
    )
    return 1 if any(f.error for f in figures) else 0


def main() -> None:
    args = _parser().parse_args()
    args.json_path = Path(args.json).resolve()
    args.profile_dir = Path(args.profile).resolve() if args.profile else None
    sys.exit(anyio.run(run, args))


if __name__ == "__main__":
    main()
