"""The wake figures of `make bench`: the firmware in the simulation under a latency profile
(warm and cold wakes), its own CPU time on the unix port scaled to an ESP32, the lower
bounds of the same profile, and the energy per day those times give."""

from __future__ import annotations

import json
import statistics
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from jbdgw import REPO
from jbdgw.model import Profile, cold_bound, old_script_wake, warm_bound

PHASE_KEYS = ("ble", "wifi", "mqtt")


@dataclass
class WakeFigures:
    """Medians over wakes of one kind (warm or cold), in simulated milliseconds."""

    kind: str
    wakes: int
    ble: float
    wifi: float
    mqtt: float
    sim_awake: float  #: boot.py start to deep sleep in the simulation (radio waits + host CPU)
    samples: list[float] = field(default_factory=list)


def _config(broker) -> dict:
    cfg = json.loads((REPO / "tools" / "scenarios" / "demo-config.json").read_text())
    # A topic per run: a retained status from an earlier run must not be counted.
    cfg["mqtt"].update(host=broker.host, port=broker.port, topic="bench-" + uuid.uuid4().hex[:12])
    return cfg


def run_series(broker, scenario: dict, wakes: int, work: Path, profile: str, *,
               heapsize: str | None = None) -> tuple[list, list[dict]]:
    """`wakes` wakes from a cold boot; returns (wake results, status payloads in order)."""
    from jbdgw.broker import Subscriber
    from jbdgw.image import build_image
    from jbdgw.sim import run_wakes

    cfg = _config(broker)
    image = build_image(work / "image", cfg)
    with Subscriber(broker.host, broker.port, [cfg["mqtt"]["topic"] + "/status"]) as sub:
        results = run_wakes(image, scenario, wakes, work / "state", heapsize=heapsize, timeout_s=120,
                            profile=profile)
        sub.wait_for(sum(1 for r in results if r.slept), timeout=15)
        statuses = [json.loads(m.payload) for m in sub.messages]
    return results, statuses


def _sim_awake_ms(result, status: dict, next_status: dict | None) -> float:
    """Boot.py start to deep sleep as the simulation recorded it, else the firmware's own
    awake time plus its MQTT session (from the next wake's status)."""
    rec = [e for e in result.events if e.get("ev") == "deepsleep" and "awake_ms" in e]
    if rec:
        return float(rec[-1]["awake_ms"])
    mqtt = next_status.get("prev_mqtt_ms") if next_status else None
    return float(status["awake_ms"]) + float(mqtt or 0)


def figures(kind: str, results: list, statuses: list[dict], pick: range) -> WakeFigures:
    """Medians of the wakes in `pick` (indexes); MQTT time comes from the next status."""
    ble, wifi, mqtt, awake = [], [], [], []
    for i in pick:
        s, nxt = statuses[i], statuses[i + 1] if i + 1 < len(statuses) else None
        if s["state"] != "ok" or nxt is None:
            continue
        ble.append(s["ms"]["ble"])
        wifi.append(s["ms"]["wifi"])
        mqtt.append(nxt["prev_mqtt_ms"])
        awake.append(_sim_awake_ms(results[i], s, nxt))
    if not awake:
        raise RuntimeError(f"no {kind} wake completed with state ok: {[s['state'] for s in statuses]}")
    med = statistics.median
    return WakeFigures(kind, len(awake), med(ble), med(wifi), med(mqtt), med(awake), awake)


def measure_cpu_ms(work: Path, processes: int = 11) -> dict:
    """The firmware's own CPU time per wake on the unix port (tools/bench/wake_cpu.py, in a
    device image, radio waits excluded): importing what a wake imports (median over fresh
    processes) plus the computing of one wake (median of many)."""
    import os
    import subprocess

    from jbdgw.image import build_image
    from jbdgw.sim import _compiled_standins, find_micropython

    cfg = json.loads((REPO / "tools" / "scenarios" / "demo-config.json").read_text())
    image = build_image(work / "image", cfg)
    standins = _compiled_standins(work / "mpsim")
    env = {**os.environ, "MICROPYPATH": f"{standins}:.frozen:{image / 'lib'}:{image}"}
    imports, works = [], []
    for _ in range(processes):
        out = subprocess.run([find_micropython(), str(REPO / "tools" / "bench" / "wake_cpu.py")], cwd=image,
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode:
            raise RuntimeError(f"wake_cpu.py failed: {out.stdout[-400:]}{out.stderr[-400:]}")
        d = json.loads(out.stdout.strip().splitlines()[-1])
        imports.append(d["import_us"] / 1000)
        works.append(d["work_us"] / 1000)
        alloc = (d["import_bytes"], d["work_bytes"])  # the same in every process
    imp, wk = statistics.median(imports), statistics.median(works)
    return {"processes": processes, "import_ms": round(imp, 3), "work_ms": round(wk, 3),
            "firmware_ms": round(imp + wk, 3), "import_bytes": alloc[0], "work_bytes": alloc[1]}


def air_wake(p: Profile, f: WakeFigures) -> dict[str, float]:
    """A board's wake with its CPU work at host speed: boot (profile) + the simulated wake."""
    rest = f.sim_awake - f.ble - f.wifi - f.mqtt  # config, messages, imports, sleep call
    return {"boot": p["boot_to_main_ms"], "cpu": max(rest, 0.0), "ble": f.ble, "wifi": f.wifi, "mqtt": f.mqtt}


def board_wake(p: Profile, f: WakeFigures, cpu_unix_ms: float) -> dict[str, float]:
    """air_wake with the firmware's CPU work (measured on the unix port, already once in the
    simulated wake) scaled to the ESP32 (cpu_scale_unix_to_esp32)."""
    out = air_wake(p, f)
    out["cpu"] += cpu_unix_ms * (p["cpu_scale_unix_to_esp32"] - 1)
    return out


def bench_wakes(p: Profile, scenario: dict, warm: int, cold: int, progress=print) -> dict:
    from jbdgw.broker import start_broker

    out: dict = {"profile": p.name}
    with start_broker() as broker, tempfile.TemporaryDirectory(prefix="jbdgw-bench-") as tmp:
        work = Path(tmp)
        out["broker"] = broker.kind
        progress(f"bench: {warm} warm wakes under {p.name} ...")
        results, statuses = run_series(broker, scenario, warm + 2, work / "warm", p.name)
        w = figures("warm", results, statuses, range(1, warm + 1))
        cold_runs = []
        for k in range(cold):
            progress(f"bench: cold wake {k + 1}/{cold} ...")
            r, s = run_series(broker, scenario, 2, work / f"cold{k}", p.name)
            cold_runs.append(figures("cold", r, s, range(0, 1)))
        c = WakeFigures("cold", len(cold_runs), *(statistics.median(getattr(x, a) for x in cold_runs)
                                                  for a in ("ble", "wifi", "mqtt", "sim_awake")))
        progress("bench: the firmware's own CPU time ...")
        cpu = measure_cpu_ms(work / "cpu")
    out.update(warm=w, cold=c, cpu=cpu)
    out["warm_air"], out["cold_air"] = air_wake(p, w), air_wake(p, c)
    out["warm_board"] = board_wake(p, w, cpu["firmware_ms"])
    out["cold_board"] = board_wake(p, c, cpu["firmware_ms"])
    out["warm_bound"] = warm_bound(p)
    out["cold_bound"] = cold_bound(p)
    out["old"] = old_script_wake(p)
    return out
