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
import uuid
from datetime import datetime, timezone
from pathlib import Path

from jbdgw import REPO
from jbdgw.cli import UsageError, require_simulator
from jbdgw.sim import find_micropython

DECODE_TARGET_BYTES = 2048


def bench_decode(runs: int) -> dict:
    env = {**os.environ, "MICROPYPATH": f"{REPO / 'lib'}:{REPO / 'tools' / 'mpsim'}"}
    out = subprocess.run(
        [find_micropython(), str(REPO / "tools" / "bench" / "decode_pair.py"), str(runs)],
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


def _bench_scenario(cells: int) -> dict:
    demo = json.loads((REPO / "tools" / "scenarios" / "demo.json").read_text())
    dev = demo["devices"][0]
    bat = dev["battery"]
    bat["cells_mv"] = [3340 + (k * 7) % 11 for k in range(cells)]
    bat.pop("voltage_mv", None)
    return demo


def _wakes(broker, scenario: dict, wakes: int, heapsize: str | None, work: Path) -> tuple[list, list]:
    """Run `wakes` wakes through the broker; returns (wake results, status payloads)."""
    from jbdgw.broker import Subscriber
    from jbdgw.image import build_image
    from jbdgw.sim import run_wakes

    cfg = json.loads((REPO / "tools" / "scenarios" / "demo-config.json").read_text())
    # A topic per run: a retained status from an earlier run must not be counted.
    cfg["mqtt"].update(host=broker.host, port=broker.port, topic="bench-" + uuid.uuid4().hex[:12])
    image = build_image(work / "image", cfg)
    with Subscriber(broker.host, broker.port, [cfg["mqtt"]["topic"] + "/status"]) as sub:
        results = run_wakes(image, scenario, wakes, work / "state", heapsize=heapsize, timeout_s=90)
        sub.wait_for(sum(1 for r in results if r.slept), timeout=10)
        statuses = [json.loads(m.payload) for m in sub.messages]
    return results, statuses


def _completes(broker, scenario: dict, heap_k: int, work: Path) -> bool:
    results, statuses = _wakes(broker, scenario, 2, f"{heap_k}K", work / f"h{heap_k}")
    return (
        len(results) == 2
        and all(r.slept and r.sleep_ms == 300000 for r in results)
        and len(statuses) == 2
        and all(s["state"] == "ok" for s in statuses)
    )


def smallest_heap_k(broker, scenario: dict, work: Path, lo: int = 32, hi: int = 256) -> int | None:
    """Bisect (4 KiB steps) for the smallest firmware heap at which two wakes succeed."""
    if not _completes(broker, scenario, hi, work):
        return None
    while hi - lo > 4:
        mid = (lo + hi) // 2 // 4 * 4
        if _completes(broker, scenario, mid, work):
            hi = mid
        else:
            lo = mid
    return hi


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def bench_wake(wakes: int) -> dict:
    import tempfile

    from jbdgw.broker import start_broker

    out: dict = {"wakes": wakes, "per_cells": {}}
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="jbdgw-bench-") as tmp:
        out["broker"] = broker.kind
        for cells in (4, 16):
            work = Path(tmp) / f"c{cells}"
            scen = _bench_scenario(cells)
            results, statuses = _wakes(broker, scen, wakes, None, work / "run")
            warm = statuses[1:]  # wake 1 is a cold boot: scan, no cached BSSID
            phases = {k: median([s["ms"][k] for s in warm]) for k in ("config", "ble", "wifi")}
            phases["mqtt"] = median([s["prev_mqtt_ms"] for s in warm])
            published = [
                sum(e["len"] for e in r.events if e["ev"] == "mqtt_publish") for r in results[1:]
            ]
            out["per_cells"][cells] = {
                "cold": {**statuses[0]["ms"], "awake": statuses[0]["awake_ms"]},
                "warm": {**phases, "awake": median([s["awake_ms"] for s in warm])},
                "bytes_published": median(published),
                "heap_free_at_status_96k": None,
                "smallest_heap_k": smallest_heap_k(broker, scen, work / "heap"),
            }
            r96, s96 = _wakes(broker, scen, 1, "96K", work / "h96")
            if s96:
                out["per_cells"][cells]["heap_free_at_status_96k"] = s96[0]["heap_free"]
    return out


def wake_section(w: dict) -> list[str]:
    lines = [
        "## One wake in simulation (firmware on the MicroPython unix port)",
        "",
        f"`jbdgw sim` machinery, demo scenario, {w['wakes']} wakes per row through a real "
        f"{w['broker']} broker; medians of the warm wakes (2..{w['wakes']}: cached MAC and "
        "BSSID). Phase times come from the firmware's own `ticks_ms` figures in its status "
        "message (MQTT from `prev_mqtt_ms` of the following wake). The simulated radio's "
        "latencies are set in the scenario (BMS reply 20 ms, connect 80 ms, GATT steps 10 ms, "
        "Wi-Fi join 40 ms, a quarter of that with a cached BSSID + channel), so these figures "
        "show the firmware's own overhead and the number of round trips, not ESP32 air time.",
        "",
        "| cells | config ms | BLE ms | Wi-Fi ms | MQTT ms | awake until MQTT, warm | same, cold boot (scan, no BSSID) | bytes published per wake |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cells, d in w["per_cells"].items():
        wm = d["warm"]
        lines.append(
            f"| {cells} | {wm['config']:g} | {wm['ble']:g} | {wm['wifi']:g} | {wm['mqtt']:g} | "
            f"{wm['awake']:g} | {d['cold']['awake']} | {d['bytes_published']:g} |"
        )
    lines += [
        "",
        "Heap: the smallest `--heapsize` at which two consecutive wakes (cold, then warm) both "
        "publish with state ok, found by bisection in 4 KiB steps. The stand-ins for modules "
        "that are C code or frozen on the ESP32 (`machine`, `network`, `bluetooth`, "
        "`umqtt.simple`) and the virtual BMS are measured and added on top, so the figure is the "
        "firmware's own need including aioble. The unix port is 64-bit, so objects are about "
        "twice their ESP32 size.",
        "",
        "| cells | smallest heap that completes a wake | heap free at the status message with 96K |",
        "| ---: | ---: | ---: |",
    ]
    for cells, d in w["per_cells"].items():
        small = f"{d['smallest_heap_k']} KiB" if d["smallest_heap_k"] else "over 256 KiB"
        lines.append(f"| {cells} | {small} | {d['heap_free_at_status_96k']} bytes |")
    lines.append("")
    return lines


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    p.add_argument("--runs", type=int, default=1001, help="repetitions per figure")
    p.add_argument("--wakes", type=int, default=21, help="simulated wakes per wake figure")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    if args.wakes < 3:
        raise UsageError("--wakes must be at least 3 (one cold wake, then warm ones)")
    require_simulator("firmware/config.py", "lib", "tools/mpsim/simrun.py", "tools/bench/decode_pair.py",
                      "tools/scenarios/demo.json", "tools/scenarios/demo-config.json")
    sections = decode_section(bench_decode(args.runs)) + wake_section(bench_wake(args.wakes))
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
