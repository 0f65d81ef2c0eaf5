"""The wake figures of `make bench`: the firmware in the simulation under a latency profile
(warm and cold wakes), its own CPU time on the unix port scaled to an ESP32, the lower
bounds of the same profile, and the energy per day those times give."""

from __future__ import annotations

import json
import resource
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


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _config(broker) -> dict:
    cfg = json.loads((REPO / "tools" / "scenarios" / "demo-config.json").read_text())
    # A topic per run: a retained status from an earlier run must not be counted.
    cfg["mqtt"].update(host=broker.host, port=broker.port, topic="bench-" + uuid.uuid4().hex[:12])
    return cfg


def run_series(broker, scenario: dict, wakes: int, work: Path, profile: str, *, heapsize: str | None = None,
               image: Path | None = None, cpu: list[float] | None = None) -> tuple[list, list[dict]]:
    """`wakes` wakes from a cold boot; returns (wake results, status payloads in order).
    With `cpu`, appends each wake's CPU seconds (the micropython process's rusage)."""
    from jbdgw.broker import Subscriber
    from jbdgw.image import build_image
    from jbdgw.sim import run_wakes

    cfg = _config(broker)
    image = build_image(work / "image", cfg)
    last = [0.0]

    def on_wake(_result) -> None:
        now = _cpu_s()
        if cpu is not None:
            cpu.append(now - last[0])
        last[0] = now

    with Subscriber(broker.host, broker.port, [cfg["mqtt"]["topic"] + "/status"]) as sub:
        results = run_wakes(image, scenario, wakes, work / "state", heapsize=heapsize, timeout_s=120,
                            profile=profile, on_wake=on_wake, env=None)
        sub.wait_for(sum(1 for r in results if r.slept), timeout=15)
        statuses = [json.loads(m.payload) for m in sub.messages]
    last[0] = _cpu_s()
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


def measure_cpu_ms(broker, scenario: dict, work: Path, wakes: int = 11) -> dict:
    """The firmware's own CPU time per warm wake on the unix port: the micropython process's
    CPU time under the zero-radio profile, minus that of a wake whose main.py only
    deep-sleeps (interpreter start, the stand-ins of C modules, the driver's files)."""
    cpu: list[float] = []
    results, statuses = run_series(broker, scenario, wakes + 1, work / "fw", "zero-radio", cpu=cpu)
    fw = [c for c, s in zip(cpu[1:], statuses[1:]) if s["state"] == "ok"]
    null_image = work / "null"
    null_image.mkdir(parents=True, exist_ok=True)
    (null_image / "boot.py").write_text("")
    (null_image / "main.py").write_text("import machine\nmachine.deepsleep(1000)\n")
    from jbdgw.sim import run_wakes

    base: list[float] = []
    last = [_cpu_s()]

    def on_wake(_r) -> None:
        now = _cpu_s()
        base.append(now - last[0])
        last[0] = now

    last[0] = _cpu_s()
    run_wakes(null_image, scenario, wakes + 1, work / "null-state", profile="zero-radio", on_wake=on_wake)
    fw_ms = statistics.median(fw) * 1000
    base_ms = statistics.median(base[1:]) * 1000
    return {"wakes": len(fw), "process_ms": round(fw_ms, 2), "baseline_ms": round(base_ms, 2),
            "firmware_ms": round(max(fw_ms - base_ms, 0.0), 2)}


def board_wake(p: Profile, f: WakeFigures, cpu_unix_ms: float) -> dict[str, float]:
    """A board's wake from a simulated one: boot (profile) + the simulated wake, whose CPU
    part ran at host speed and is scaled to the ESP32 (cpu_scale_unix_to_esp32)."""
    scale = p["cpu_scale_unix_to_esp32"]
    cpu_extra = cpu_unix_ms * (scale - 1)
    radio_other = f.sim_awake - f.ble - f.wifi - f.mqtt  # config, messages, imports, sleep call
    return {
        "boot": p["boot_to_main_ms"],
        "cpu": max(radio_other, 0.0) + cpu_extra,
        "ble": f.ble,
        "wifi": f.wifi,
        "mqtt": f.mqtt,
    }


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
        progress("bench: firmware CPU time under zero-radio ...")
        cpu = measure_cpu_ms(broker, scenario, work / "cpu")
    out.update(warm=w, cold=c, cpu=cpu)
    out["warm_board"] = board_wake(p, w, cpu["firmware_ms"])
    out["cold_board"] = board_wake(p, c, cpu["firmware_ms"])
    out["warm_bound"] = warm_bound(p)
    out["cold_bound"] = cold_bound(p)
    out["old"] = old_script_wake(p)
    return out
