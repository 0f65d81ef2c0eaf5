"""`jbdgw bench`: measure the figures the issues set targets for; write docs/benchmarks.md.

Figures are medians of many runs measured side by side in one invocation; nothing here is
asserted by the test suite (machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from jbdgw import REPO
from jbdgw.cli import UsageError

DECODE_TARGET_BYTES = 2048


def micropython() -> str:
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    raise UsageError("micropython not found next to this Python; run `make setup`")


def bench_decode(runs: int) -> dict:
    env = {**os.environ, "MICROPYPATH": str(REPO / "lib")}
    out = subprocess.run(
        [micropython(), str(REPO / "tools" / "bench" / "decode_pair.py"), str(runs)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    if out.returncode:
        raise UsageError(f"decode benchmark failed: {out.stdout[-500:]}{out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_section(d: dict) -> list[str]:
    ad = d["assemble_and_decode"]
    do = d["decode_only"]
    verdict = "meets" if ad["alloc_bytes"] < DECODE_TARGET_BYTES else "MISSES"
    return [
        "## Decoding a 0x03 + 0x04 pair (16 cells, 2 NTCs) on the MicroPython unix port",
        "",
        f"Frames of {d['frame_bytes'][0]} + {d['frame_bytes'][1]} bytes, fed as "
        f"{d['notifications']} 20-byte notifications; median of {d['runs']} runs; heap bytes "
        "from `gc.mem_alloc()` deltas with the GC disabled (`tools/bench/decode_pair.py`).",
        "",
        "| path | µs per pair | heap bytes per pair | worst run |",
        "| --- | ---: | ---: | ---: |",
        f"| `FrameAssembler.feed` + `jbd.decode` | {ad['us']} | {ad['alloc_bytes']} | {ad['alloc_max']} |",
        f"| `jbd.decode` of whole frames | {do['us']} | {do['alloc_bytes']} | {do['alloc_max']} |",
        "",
        f"Target: under {DECODE_TARGET_BYTES} bytes allocated per pair: {verdict} "
        f"({ad['alloc_bytes']} bytes). The unix port is 64-bit; object sizes on the 32-bit "
        "ESP32 are about half.",
        "",
    ]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    p.add_argument("--runs", type=int, default=1001, help="repetitions per figure")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    sections = decode_section(bench_decode(args.runs))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`jbdgw bench`) on {stamp}, {platform.machine()}, "
        f"Python {platform.python_version()}. Re-run it to refresh every figure.",
        "",
    ]
    text = "\n".join(head + sections)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0
