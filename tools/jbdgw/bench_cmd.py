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
    """Heap runs: latency does not change what is allocated, so no radio waits."""
    from jbdgw.bench_wake import run_series

    return run_series(broker, scenario, wakes, work, "zero-radio", heapsize=heapsize)


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


def bench_heap(cells_list=(4, 16)) -> dict:
    """The smallest heap that completes a cold and a warm wake, and the heap free at the
    status message with 96 KiB (zero-radio profile: heap does not depend on latency)."""
    import tempfile

    from jbdgw.broker import start_broker

    out: dict = {}
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="jbdgw-heap-") as tmp:
        for cells in cells_list:
            work = Path(tmp) / f"c{cells}"
            scen = _bench_scenario(cells)
            r96, s96 = _wakes(broker, scen, 2, "96K", work / "h96")
            published = [sum(e["len"] for e in r.events if e["ev"] == "mqtt_publish") for r in r96]
            out[cells] = {
                "smallest_heap_k": smallest_heap_k(broker, scen, work / "heap"),
                "heap_free_at_status_96k": s96[-1]["heap_free"] if s96 else None,
                "bytes_published": published[-1] if published else None,
            }
    return out


def _f(x: float) -> str:
    return f"{x:.0f}"


def wake_section(p, w: dict, heap: dict, command: str) -> list[str]:
    from jbdgw.model import energy, format_bound, format_energy_table, format_sources

    warm, cold = w["warm_board"], w["cold_board"]
    warm_total, cold_total = sum(warm.values()), sum(cold.values())
    wb, cb, old = w["warm_bound"], w["cold_bound"], w["old"]
    r_warm, r_cold = warm_total / wb.total_ms, cold_total / cb.total_ms
    air_warm, air_cold = w["warm_air"], w["cold_air"]
    a_warm, a_cold = sum(air_warm.values()), sum(air_cold.values())
    e5 = energy(p, 5, warm)
    e5_air = energy(p, 5, air_warm)
    cpu = w["cpu"]
    scale = p["cpu_scale_unix_to_esp32"]
    lines = [
        f"## One wake under the `{p.name}` latency profile",
        "",
        f"The simulation's stand-ins take every latency from the profile "
        f"(`tools/jbdgw/profiles/{p.name}.json`, each figure with its source, listed below), at "
        f"real time. Medians of {w['warm'].wakes} warm wakes (cached MAC, GATT handles, Wi-Fi "
        f"channel, DHCP lease) and {w['cold'].wakes} cold wakes (power-on: name scan, GATT "
        f"discovery, no Wi-Fi cache), through a real {w['broker']} broker. Phase times are the "
        "firmware's own `ticks_ms` figures from its status (MQTT: `prev_mqtt_ms` of the next "
        "wake). A board's wake adds the boot (`boot_to_main_ms`) and runs the firmware's CPU "
        "work at ESP32 speed: the firmware's own CPU time per wake, measured on the unix port "
        f"without any radio wait (**{cpu['firmware_ms']} ms**: {cpu['import_ms']} ms importing the firmware, aioble and "
        f"`jbd` as .mpy, {cpu['work_ms']} ms of computing; `tools/bench/wake_cpu.py`: medians of "
        f"repeated loads and wakes in each of {cpu['processes']} processes, then the median of "
        f"those), is scaled by cpu_scale_unix_to_esp32 = {scale:g} "
        "(pystones per second of the unix port on the profile author's x86-64 host over a "
        "240 MHz ESP32's; source below). Two rows per kind of wake: the radio and the boot with "
        "the CPU work at host speed (what the latency optimisations act on), and the board "
        "with that CPU work at ESP32 speed. The firmware's own allocations per wake (same "
        f"script, GC off): {cpu['import_bytes']} bytes for the imports (bytecode and module "
        f"objects, kept for the wake) and {cpu['work_bytes']} bytes for one wake's work (unix "
        "port, 64-bit: about half on the ESP32).",
        "",
        "| ms per wake | boot | firmware CPU + rest | BLE | Wi-Fi | MQTT | awake | bound | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, d, total, bound in (
        ("warm, radio + boot", air_warm, a_warm, wb), ("warm, board (ESP32 CPU)", warm, warm_total, wb),
        ("cold, radio + boot", air_cold, a_cold, cb), ("cold, board (ESP32 CPU)", cold, cold_total, cb),
    ):
        lines.append(
            f"| {label} | {_f(d['boot'])} | {_f(d['cpu'])} | {_f(d['ble'])} | {_f(d['wifi'])} | "
            f"{_f(d['mqtt'])} | **{_f(total)}** | {_f(bound.total_ms)} | **{total / bound.total_ms:.2f}x** |")
    lines += [
        "",
        f"Radio + boot: warm {a_warm / wb.total_ms:.2f}x its bound (target 1.15x: "
        f"{'meets' if a_warm <= 1.15 * wb.total_ms else 'MISSES'}), cold {a_cold / cb.total_ms:.2f}x "
        f"(target 1.3x: {'meets' if a_cold <= 1.3 * cb.total_ms else 'MISSES'}).",
        f"Board, with the firmware's CPU work at ESP32 speed: warm at most 1.15x of its bound ({'meets' if r_warm <= 1.15 else 'MISSES'}), "
        f"cold at most 1.3x ({'meets' if r_cold <= 1.3 else 'MISSES'}), and at least 10x shorter "
        f"than the old Raspberry Pi script's wake: typical {old.typical.total_ms:.0f} ms = "
        f"{old.typical.total_ms / warm_total:.1f}x ours ({'meets' if old.typical.total_ms >= 10 * warm_total else 'MISSES'}), "
        f"worst case {old.worst.total_ms:.0f} ms = {old.worst.total_ms / warm_total:.1f}x. "
        f"The board's boot alone is {warm['boot']:.0f} ms of our {warm_total:.0f}; the Pi is "
        "always on and has none.",
        "",
        "### The bounds, with their arithmetic",
        "",
        "```",
        format_bound(wb),
        "",
        format_bound(cb),
        "",
        format_bound(old.typical),
        "",
        format_bound(old.worst),
        "```",
        "",
        "### Energy",
        "",
        f"Charge per warm wake {e5.charge_mc:.1f} mC (phase times above x the profile's currents: "
        f"CPU {p['cpu_only_ma']:g} mA, BLE {p['ble_active_ma']:g} mA, Wi-Fi {p['wifi_active_ma']:g} mA), "
        f"asleep {p['deep_sleep_chip_ua']:g} uA (the chip). mAh at 3.3 V equivalent by energy. "
        f"At 5 minutes: **{e5.mah_per_day:.2f} mAh/day** on the board (target at most 12: "
        f"{'meets' if e5.mah_per_day <= 12 else 'MISSES'}); {e5_air.mah_per_day:.2f} mAh/day for the radio and "
        "boot alone (CPU work at host speed), the figure the CPU model's factor moves.",
        "",
        format_energy_table(p, warm),
        "",
        "With a dev board's deep-sleep current instead of the chip's:",
        "",
        "| board | sleep uA | mAh/day at 5 min |",
        "| --- | ---: | ---: |",
    ]
    for name, fig in p.boards.items():
        lines.append(f"| {name} | {fig.value:g} | {energy(p, 5, warm, sleep_ua=fig.value).mah_per_day:.2f} |")
    lines += [
        "",
        "### Heap",
        "",
        "The smallest `--heapsize` at which a cold and then a warm wake both publish with state "
        "ok (bisection in 4 KiB steps). The stand-ins for what is C code or frozen on the ESP32 "
        "(`machine`, `network`, `bluetooth`, `umqtt.simple`) and the virtual BMS are measured "
        "and added on top, so the figure is the firmware's own need, aioble included. The unix "
        "port is 64-bit: objects are about twice their ESP32 size.",
        "",
        "| cells | smallest heap | heap free after the BLE phase (status `heap_free`), 96K | bytes published per wake |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for cells, d in heap.items():
        small = f"{d['smallest_heap_k']} KiB" if d["smallest_heap_k"] else "over 256 KiB"
        lines.append(f"| {cells} | {small} | {d['heap_free_at_status_96k']} bytes | {d['bytes_published']} |")
    lines += ["", f"### The profile `{p.name}`", ""]
    lines += [f"- {line}" for line in format_sources(p, list(p.figures))]
    lines += ["", f"Reproduce: `{command}`.", ""]
    return lines


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    p.add_argument("--runs", type=int, default=1001, help="repetitions per decode figure")
    p.add_argument("--warm", type=int, default=11, help="warm wakes to take the median of (at least 11)")
    p.add_argument("--cold", type=int, default=3, help="cold wakes to take the median of (at least 3)")
    p.add_argument("--profile", default="esp32-typical", help="latency profile: a shipped name or a .json path")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jbdgw.bench_wake import bench_wakes
    from jbdgw.model import ProfileError, load_profile

    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    if args.warm < 1 or args.cold < 1:
        raise UsageError("--warm and --cold must be at least 1 (the report asks for 11 and 3)")
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    require_simulator("firmware/config.py", "lib", "tools/mpsim/simrun.py", "tools/bench/decode_pair.py",
                      "tools/scenarios/demo.json", "tools/scenarios/demo-config.json")
    command = "make bench" if (args.warm, args.cold, args.profile) == (11, 3, "esp32-typical") else (
        f"jbdgw bench --warm {args.warm} --cold {args.cold} --profile {args.profile}")
    print("bench: decoding ...")
    decode = bench_decode(args.runs)
    w = bench_wakes(profile, _bench_scenario(4), args.warm, args.cold)
    print("bench: heap ...")
    heap = bench_heap()
    sections = decode_section(decode) + wake_section(profile, w, heap, command)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {stamp}, {platform.machine()} ({os.cpu_count()} CPUs), "
        f"Python {platform.python_version()}, profile `{profile.name}`. Re-run it to refresh every figure.",
        "",
    ]
    text = "\n".join(head + sections)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    # What `jbdgw energy` uses when no --awake-ms is given.
    warm = w["warm_board"]
    (args.out.parent / "bench.json").write_text(json.dumps({
        "profile": profile.name,
        "warm_awake_ms_median": round(sum(warm.values()), 1),
        "phases_ms": {k: round(v, 1) for k, v in warm.items()},
        "cold_awake_ms_median": round(sum(w["cold_board"].values()), 1),
        "firmware_cpu_ms_unix": w["cpu"]["firmware_ms"],
        "warm_radio_boot_ms_median": round(sum(w["warm_air"].values()), 1),
    }, indent=1) + "\n")
    return 0
