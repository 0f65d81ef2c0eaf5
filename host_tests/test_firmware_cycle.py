"""The wake cycle, end to end: firmware on MicroPython, virtual BMS, real MQTT broker."""

import json

import pytest

from jbdgw.broker import Subscriber
from jbdgw.sim import DEEPSLEEP_RESET
from simharness import battery, config_for, device, expected_reading, run_gateway, scenario


def check_reading(r: dict, bat: dict):
    exp = expected_reading(bat)
    got = {k: r[k] for k in exp}
    assert got == exp


def test_full_cycle_by_name_publishes_the_exact_battery_state(tmp_path, broker):
    bat = battery([3300, 3310, 3290, 3305], current_ma=-12340, balance_bits=0b0101, protection_bits=1 << 12)
    run = run_gateway(tmp_path, broker, scenario(device(bat=bat)), config_for(broker, {"name": "Cabin 580ah"}))
    (w,) = run.wakes
    assert w.slept and w.sleep_ms == 5 * 60000, w.describe()
    (r,) = run.readings
    check_reading(r, bat)
    assert r["topic"] == run.topic and r["bms"] == "Cabin 580ah" and r["address"] == "a4:c1:38:30:c2:8e"
    assert r["balancing"] == [1, 3] and r["protection"] == ["mosfet_software_lock"]
    assert r["name"] == "JBD-SP04S034-L4S-200A-B-U" and r["seq"] == 1
    # Old-script keys keep their meaning: volts in V, amps in A (charge positive), Ah.
    assert (r["volts"], r["amps"], r["capacity"], r["remain"]) == (13.2, -12.34, 100.0, 65.71)
    (s,) = run.statuses
    assert s["state"] == "ok" and s["seq"] == 1 and s["fw"]
    assert set(s["ms"]) == {"config", "ble", "wifi"} and s["heap_free"] > 0
    assert [e["retain"] for e in run.events(0, "mqtt_publish")] == [False, True]
    assert [e["qos"] for e in run.events(0, "mqtt_publish")] == [1, 1]
    with Subscriber(broker.host, broker.port, [run.topic + "/status"]) as late:
        late.wait_for(1, timeout=5)
        assert late.messages[0].retain and json.loads(late.messages[0].payload)["seq"] == 1
    # BLE strictly before Wi-Fi, BLE off first, and the radio off before sleeping.
    order = [e["ev"] for e in w.events]
    assert order.index("ble_stop") < order.index("wifi_active")
    assert order.index("wifi_disconnect") < order.index("deepsleep")


def test_floats_print_from_integers(tmp_path, broker):
    bat = battery([3300, 3300, 3300, 3300], current_ma=-10, voltage_mv=13200, remaining_mah=100000)
    run = run_gateway(tmp_path, broker, scenario(device(bat=bat)), config_for(broker, {"name": "Cabin 580ah"}))
    raw = run.messages[0].payload.decode()
    assert '"volts":13.20,' in raw and '"amps":-0.01,' in raw and '"remain":100.00,' in raw
    assert '"temp2":-3.2,' in raw


def test_by_mac_and_cached_mac_skips_the_scan(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device()), config_for(broker, {"name": "Cabin 580ah"}), wakes=2)
    assert len(run.events(0, "scan")) == 1
    assert run.events(1, "scan") == []  # MAC cached in RTC memory
    assert [r["seq"] for r in run.readings] == [1, 2]
    # Second wake: no 0x05 (model) request, name still reported from the cache.
    writes = [e["hex"][4:6] for e in run.events(1, "write")]
    assert writes == ["03", "04"]
    assert run.readings[1]["name"] == "JBD-SP04S034-L4S-200A-B-U"
    assert run.wakes[1].reset_cause == DEEPSLEEP_RESET


def test_configured_address_never_scans(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device()), config_for(broker, {"address": "A4:C1:38:30:C2:8E"}))
    assert run.events(0, "scan") == []
    (r,) = run.readings
    assert r["bms"] == "a4:c1:38:30:c2:8e"


@pytest.mark.parametrize("count", [4, 8, 16, 32])
def test_cell_counts_and_notification_bursts_lose_nothing(tmp_path, broker, count):
    cells = [3200 + (k * 37) % 180 for k in range(count)]
    bat = battery(cells, balance_bits=(1 << (count - 1)) | 1, temps_dc=[250, 260, 270])
    run = run_gateway(tmp_path, broker, scenario(device(bat=bat)), config_for(broker, {"name": "Cabin 580ah"}))
    (r,) = run.readings
    check_reading(r, bat)
    assert r["balancing"] == [1, count]
    notes = run.events(0, "notify")
    # Replies came as back-to-back 20-byte bursts (4 notifications for 32 cells' 0x04).
    assert max(n["len"] for n in notes) == 20
    assert run.statuses[0]["bms"][0]["frame_errors"] == 0


def test_fff0_module_variant(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device(uuids="fff0")), config_for(broker, {"name": "Cabin 580ah"}))
    assert run.statuses[0]["state"] == "ok" and len(run.readings) == 1


def test_multi_bms_topics_and_one_and_done(tmp_path, broker):
    a = battery([3300, 3301, 3302, 3303])
    b = battery([3400] * 8, current_ma=5000)
    scen = scenario(device("Cabin 580ah", "a4:c1:38:30:c2:8e", a), device("Shed", "a4:c1:38:00:00:02", b))
    cfg = config_for(broker, [{"name": "Cabin 580ah"}, {"address": "a4:c1:38:00:00:02"}], interval_min=0)
    run = run_gateway(tmp_path, broker, scen, cfg, wakes=3)
    assert len(run.wakes) == 1 and run.wakes[0].sleep_ms is None  # sleeps until reset
    cabin = run.on(run.topic + "/cabin-580ah")
    shed = run.on(run.topic + "/a4c138000002")
    assert len(cabin) == 1 and len(shed) == 1
    check_reading(cabin[0], a)
    check_reading(shed[0], b)
    assert cabin[0]["topic"] == run.topic + "/cabin-580ah"
    assert [x["state"] for x in run.statuses[0]["bms"]] == ["ok", "ok"]


def test_clone_answering_0x05_with_error_still_reads(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device(model=None)), config_for(broker, {"name": "Cabin 580ah"}))
    (r,) = run.readings
    assert "name" not in r and r["cells"] == [3300, 3310, 3290, 3305]


def test_whole_cycle_fits_a_96k_heap(tmp_path, broker):
    bat = battery([3300 + k for k in range(16)])
    run = run_gateway(tmp_path, broker, scenario(device(bat=bat)), config_for(broker, {"name": "Cabin 580ah"}),
                      wakes=2, heapsize="96K")
    assert all(w.slept and w.sleep_ms == 300000 for w in run.wakes), [w.describe() for w in run.wakes]
    assert [r["seq"] for r in run.readings] == [1, 2]
    check_reading(run.readings[1], bat)
    assert all(s["state"] == "ok" for s in run.statuses)


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
def test_demo_as_a_newcomer_runs_it(kind, tmp_path):
    """`make demo`'s command, through the fallback broker and through mosquitto."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    if kind == "mosquitto" and not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        pytest.skip("mosquitto not installed (CI installs it)")
    jbdgw = os.path.join(os.path.dirname(sys.executable), "jbdgw")
    out = subprocess.run(
        [jbdgw, "sim", "--scenario", "tools/scenarios/demo.json", "--config", "tools/scenarios/demo-config.json",
         "--wakes", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "JBDGW_BROKER": kind},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"broker: {kind} on 127.0.0.1:")
    readings = [json.loads(line.split("  ", 1)[1]) for line in lines if line.startswith("solar  ")]
    assert [r["seq"] for r in readings] == [1, 2, 3]
    assert all(r["bms"] == "Cabin 580ah" and r["cell_count"] == 4 for r in readings)
    assert "3 wake(s), 6 message(s), 0 failed" in out.stdout
