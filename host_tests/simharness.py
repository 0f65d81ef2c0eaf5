"""Runs the unchanged firmware on the MicroPython unix port against virtual BMS devices and
a real MQTT broker, and collects what arrives there."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
import uuid
from dataclasses import dataclass
from pathlib import Path

import vbms
from jbdgw.broker import Subscriber
from jbdgw.image import build_image
from jbdgw.sim import WakeResult, run_wakes

#: The tests run the esp32-typical latency profile at this fraction of real time (`make bench`
#: runs it at 1): every latency keeps its proportions, the suite stays fast.
TIME_SCALE = 0.25

#: The simulated access point, and what config_for() joins.
WIFI = {"ssid": "demo", "password": "demo-pass", "bssid": "02:11:22:33:44:55", "channel": 6}


@dataclass
class SimRun:
    topic: str
    wakes: list[WakeResult]
    messages: list  # jbdgw.broker.Message, in arrival order

    def on(self, topic: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.messages if m.topic == topic]

    @property
    def readings(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.messages if not m.topic.endswith("/status")]

    @property
    def statuses(self) -> list[dict]:
        return self.on(self.topic + "/status")

    def events(self, wake: int, ev: str) -> list[dict]:
        return [e for e in self.wakes[wake].events if e["ev"] == ev]


def config_for(broker, bms, topic: str | None = None, **extra) -> dict:
    cfg = {
        "wifi": {"ssid": WIFI["ssid"], "password": WIFI["password"]},
        "mqtt": {"host": broker.host, "port": broker.port, "topic": topic or "t" + uuid.uuid4().hex[:10]},
        "bms": bms,
        "interval_min": 5,
    }
    cfg.update(extra)
    return cfg


def run_gateway(tmp_path: Path, broker, scenario: dict, config: dict, wakes: int = 1,
                heapsize: str | None = None, expect_messages: int | None = None,
                image: Path | None = None, between=None, timeout_s: float = 90, **kw) -> SimRun:
    """`between(index, scenario)` may change the world after wake `index` (0-based)."""
    from jbdgw.scenario import problems

    # Every scenario the tests use is one `jbdgw sim` accepts: keeps its list of keys whole.
    assert problems(scenario) == []
    topic = config["mqtt"]["topic"]
    image = image or build_image(tmp_path / "image", config)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))

    def on_wake(result):
        if between is not None:
            between(result.index, scenario)
            path.write_text(json.dumps(scenario))

    with Subscriber(broker.host, broker.port, [topic + "/#"]) as sub:
        kw.setdefault("time_scale", TIME_SCALE)
        results = run_wakes(image, path, wakes, tmp_path / "state", heapsize=heapsize, timeout_s=timeout_s,
                            on_wake=on_wake, **kw)
        for w in results:  # an exception in an IRQ handler is a firmware bug, whatever else happened
            assert "Unhandled exception in IRQ callback handler" not in w.stdout, w.stdout[-3000:]
        published = sum(1 for w in results for e in w.events if e["ev"] == "mqtt_publish")
        sub.wait_for(expect_messages if expect_messages is not None else published, timeout=10)
        messages = list(sub.messages)
    return SimRun(topic, results, messages)


def battery(cells, **kw) -> dict:
    """vbms.DEFAULT_BATTERY with these cells, in exact wire units (multiples of 10 mV/mA/mAh:
    the voltage too), and a sub-zero second sensor so that every end-to-end reading checks the
    sign of a temperature."""
    b = dict(vbms.DEFAULT_BATTERY, cells_mv=list(cells), voltage_mv=(sum(cells) // 10) * 10, temps_dc=[215, -32])
    b.update(kw)
    return b


def device(name="Cabin 580ah", address="a4:c1:38:30:c2:8e", bat=None, **kw) -> dict:
    d = {"name": name, "address": address, "addr_type": 0, "rssi": -60,
         "model": vbms.DEFAULT_MODEL, "battery": bat or battery([3300, 3310, 3290, 3305])}
    d.update(kw)
    return d


def scenario(*devices, **wifi) -> dict:
    """The world of one run: these devices (one default device() without any) and the access
    point WIFI, changed by `wifi` (e.g. down=True)."""
    return {"devices": list(devices) or [device()], "wifi": dict(WIFI, **wifi)}


def fixed(value: int, places: int) -> float:
    return round(value / 10**places, places)


def expected_reading(bat: dict) -> dict:
    """The old script's keys and ours, computed from the battery state (not the firmware)."""
    cells = bat["cells_mv"]
    v, i = bat["voltage_mv"], bat["current_ma"]
    exp = {
        "volts": fixed(v // 10, 2),
        "amps": fixed(i // 10 if i >= 0 else -(-i // 10), 2),
        # half away from zero, as the firmware documents (not Python's round-half-even)
        "watts": float((Decimal(v) * Decimal(i) / Decimal(10**6)).quantize(Decimal("0.01"), ROUND_HALF_UP)),
        "capacity": fixed(bat["nominal_mah"] // 10, 2),
        "remain": fixed(bat["remaining_mah"] // 10, 2),
        "percent": bat["soc_pct"],
        "soc": bat["soc_pct"],
        "cycles": bat["cycles"],
        "temps": [t / 10 for t in bat["temps_dc"]],
        "cells": cells,
        "cell_count": len(cells),
        "cell_min": min(cells),
        "cell_max": max(cells),
        "cell_delta": max(cells) - min(cells),
        "balancing": [k + 1 for k in range(len(cells)) if bat["balance_bits"] >> k & 1],
        "charge_fet": bool(bat["fet_bits"] & 1),
        "discharge_fet": bool(bat["fet_bits"] & 2),
        "production_date": bat["production_date"],
    }
    for k, t in enumerate(bat["temps_dc"]):
        exp[f"temp{k + 1}"] = t / 10
    for k, c in enumerate(cells):
        exp[f"cell{k + 1}"] = c
    return exp
