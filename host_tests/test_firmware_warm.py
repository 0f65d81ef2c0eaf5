"""The warm-wake optimisations (issue 12) and the faults each must survive: cached GATT
handles (and stale ones), a short connection interval (and a dongle that refuses it), the
cached Wi-Fi channel (and an AP that moved), a reused DHCP lease, one write per MQTT packet,
one summary line per reading. Firmware on the unix port, a real broker, the esp32-typical
latency profile at simharness.TIME_SCALE."""

from __future__ import annotations

from simharness import WIFI, battery, config_for, device, run_gateway, scenario


def kinds(run, wake: int) -> list[str]:
    return [e["kind"] for e in run.events(wake, "discover")]


def test_warm_wake_uses_cached_handles_and_a_15ms_interval(tmp_path, broker):
    bat = battery([3301, 3305, 3299, 3302])
    run = run_gateway(tmp_path, broker, scenario(device(battery=bat)), config_for(broker, [{"name": "Cabin 580ah"}]),
                      wakes=3)
    assert len(run.readings) == 3 and all(s["state"] == "ok" for s in run.statuses)
    # Cold: one pass each for the service, its characteristics and the CCCD.
    assert kinds(run, 0) == ["services", "characteristics", "descriptors"]
    for wake in (1, 2):
        assert kinds(run, wake) == []  # warm: no discovery at all
        [sub] = run.events(wake, "subscribe")
        assert sub["notify"] is True
    for wake in range(3):
        [conn] = [e for e in run.events(wake, "connect") if e["ok"]]
        assert conn["interval_ms"] == 15
    assert run.readings[2]["cells"] == bat["cells_mv"]


def test_stale_cached_handles_fall_back_to_discovery_in_the_same_wake(tmp_path, broker):
    def swap_module_firmware(index, scen):
        if index == 0:  # the dongle's GATT table moves (e.g. a firmware update), same MAC
            scen["devices"][0]["handles_shift"] = 3

    run = run_gateway(tmp_path, broker, scenario(device()), config_for(broker, [{"name": "Cabin 580ah"}]),
                      wakes=3, between=swap_module_firmware)
    assert [s["state"] for s in run.statuses] == ["ok", "ok", "ok"]
    assert len(run.readings) == 3
    assert "cached GATT handles" in run.wakes[1].stdout
    assert kinds(run, 1) == ["services", "characteristics", "descriptors"]
    assert kinds(run, 2) == []  # the new handles were cached


def test_dongle_refusing_the_short_interval_still_reads(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device(refuse_short_interval=True)),
                      config_for(broker, [{"name": "Cabin 580ah"}]), wakes=2)
    assert [s["state"] for s in run.statuses] == ["ok", "ok"]
    for wake in range(2):
        [conn] = [e for e in run.events(wake, "connect") if e["ok"]]
        assert conn["interval_ms"] == 40


def test_wifi_channel_cached_without_a_scan_and_relearnt_when_the_ap_moves(tmp_path, broker):
    def move_ap(index, scen):
        if index == 1:
            scen["wifi"]["channel"] = 11

    run = run_gateway(tmp_path, broker, scenario(device()), config_for(broker, [{"name": "Cabin 580ah"}]),
                      wakes=4, between=move_ap)
    assert [s["state"] for s in run.statuses] == ["ok"] * 4
    assert all(run.events(w, "wifi_scan") == [] for w in range(4))  # never a blocking wlan.scan()
    hints = [[e["hint"] for e in run.events(w, "wifi_connect") if e["ok"]][-1] for w in range(4)]
    probes = [[e["probe_ms"] for e in run.events(w, "wifi_connect") if e["ok"]][-1] for w in range(4)]
    assert hints == [None, WIFI["channel"], WIFI["channel"], 11]
    assert probes[0] > 0 and probes[1] == 0 and probes[2] > 0 and probes[3] == 0


def test_dhcp_lease_reused_for_45_minutes_then_renewed(tmp_path, broker):
    cfg = config_for(broker, [{"name": "Cabin 580ah"}], interval_min=15)
    run = run_gateway(tmp_path, broker, scenario(device()), cfg, wakes=4)
    assert [s["state"] for s in run.statuses] == ["ok"] * 4
    static = [[e["static"] for e in run.events(w, "wifi_connect") if e["ok"]][-1] for w in range(4)]
    # DHCP, the lease twice (16 and 32 minutes old, a minute awake counted per wake), then
    # DHCP again rather than use it 48 minutes on (the limit is 45).
    assert static == [False, True, True, False]


def test_each_mqtt_packet_goes_out_in_one_write_without_a_nagle_stall(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device()), config_for(broker, [{"name": "Cabin 580ah"}]), wakes=2)
    for wake in range(2):
        replies = [e for e in run.events(wake, "tcp") if e["op"] == "reply"]
        assert len(replies) >= 3  # CONNACK, then a PUBACK per publish
        assert all(e["stall_ms"] == 0 for e in replies)
        assert all(e["writes"] == 1 for e in replies[1:])  # every PUBLISH in one piece
        out = run.wakes[wake].stdout
        assert "gateway: reading %d (" % (wake + 1) in out and '"volts"' not in out


def test_config_validated_once_then_read_from_its_cache_until_it_changes(tmp_path, broker):
    import json

    from jbdgw.image import build_image

    cfg = config_for(broker, [{"name": "Cabin 580ah"}])
    image = build_image(tmp_path / "image", cfg)
    cache = image / "state" / "config.cache"

    def edit(index, scen):
        if index == 0:  # the first wake validated config.json and kept the result
            kept = json.loads(cache.read_text())
            assert kept["config"]["interval_min"] == 5 and len(kept["sha256"]) == 64
        if index == 1:  # the user edits config.json: validated again, the new value applies
            doc = json.loads((image / "config.json").read_text())
            doc["interval_min"] = 10
            (image / "config.json").write_text(json.dumps(doc))
        if index == 2:  # a cache torn by a power cut: validated again, no error
            cache.write_text('{"sha256": "')

    run = run_gateway(tmp_path, broker, scenario(device()), cfg, wakes=4, image=image, between=edit)
    assert [s["state"] for s in run.statuses] == ["ok"] * 4
    assert [w.sleep_ms for w in run.wakes] == [300000, 300000, 600000, 600000]
    assert json.loads(cache.read_text())["config"]["interval_min"] == 10


ONE_WRITE = r"""
import json
from firmware.mqtt import OnePacketWrites

class TlsLike:
    # What MicroPython's SSLSocket offers (extmod/modtls_mbedtls.c): no settimeout().
    def __init__(self):
        self.writes = []
        self.blocking = []
    def write(self, b):
        self.writes.append(bytes(b))
        return len(b)
    def read(self, n):
        return b"\x40\x02\x00\x01"[:n]
    def setblocking(self, flag):
        self.blocking.append(flag)
    def close(self):
        self.writes.append(b"closed")

raw = TlsLike()
s = OnePacketWrites(raw)  # must not need settimeout()
s.write(b"\x32\x0b", 2)
s.write(b"\x00\x01")
s.write(bytearray(b"t!!"), 1)
s.write(b"\x00\x01")
s.write(b"{}")
before = len(raw.writes)
s.read(1)
s.setblocking(True)   # umqtt's wait_msg(): would drop the timeout; not passed on
s.setblocking(False)  # passed on
s.write(b"\xe0\x00")
s.close()
print(json.dumps({"before": before, "writes": [w.hex() for w in raw.writes], "blocking": raw.blocking}))
"""


def test_one_write_per_packet_and_a_tls_socket_without_settimeout(tmp_path):
    import json

    from conftest import run_script

    script = tmp_path / "one_write.py"
    script.write_text(ONE_WRITE)
    out = json.loads(run_script("micropython", script, mpsim=True).stdout.splitlines()[-1])
    assert out["before"] == 0  # nothing sent until the reply is read
    assert out["writes"] == ["320b00017400017b7d", "e000", "636c6f736564"]
    assert out["blocking"] == [False]


def test_names_match_ignoring_case_and_spaces_and_a_missing_name_lists_what_was_heard(tmp_path, broker):
    devices = [device(), device(name="SP04S034-L4S", address="a4:c1:38:00:00:02", rssi=-71)]
    cfg = config_for(broker, [{"name": "  cabin 580AH "}, {"name": "Garage"}])
    run = run_gateway(tmp_path, broker, scenario(*devices), cfg)
    [status] = run.statuses
    ok, missing = status["bms"]
    assert ok["state"] == "ok" and len(run.readings) == 1
    assert missing["state"] == "bms_not_found" and "'SP04S034-L4S' a4:c1:38:00:00:02 -71 dBm" in missing["error"]
    assert missing["heard"] == [{"name": "SP04S034-L4S", "address": "a4:c1:38:00:00:02", "rssi": -71}]


def test_interval_stretches_while_no_bms_can_be_read_and_the_first_reading_restores_it(tmp_path, broker):
    def phone_lets_go(index, scen):
        if index == 2:
            scen["devices"][0]["busy"] = False

    cfg = config_for(broker, [{"address": "a4:c1:38:30:c2:8e"}], backoff_max_min=8)
    run = run_gateway(tmp_path, broker, scenario(device(busy=True)), cfg, wakes=4, between=phone_lets_go)
    minutes = [w.sleep_ms // 60000 for w in run.wakes]
    # Two failed wakes at 5 min, the third stretches (doubled, capped at 8); a reading restores 5.
    assert minutes == [5, 5, 8, 5]
    assert [s["interval_min"] for s in run.statuses] == minutes
    assert run.statuses[2]["interval_why"] == "no BMS read in 3 wakes in a row"
    assert run.statuses[3]["interval_why"] is None and run.statuses[3]["state"] == "ok"
    assert len(run.readings) == 1


STRETCH = r"""
import json
from firmware import cycle

class Wake:
    interval_min = stretched = None
    cfg = {"interval_min": 5, "backoff_max_min": 60}
    mem = {"dry": 0}

w = Wake()
out = []
for ok in [False] * 9 + [True, False]:
    out.append([cycle.next_interval(w, [{"state": "ok" if ok else "bms_busy"}]), w.stretched])
    w.stretched = None
w.cfg = {"interval_min": 0, "backoff_max_min": 60}  # one and done: never stretched
out.append([cycle.next_interval(w, [{"state": "bms_busy"}]), w.stretched])
print(json.dumps(out))
"""


def test_stretched_interval_doubles_up_to_the_maximum(tmp_path):
    import json

    from conftest import run_script

    script = tmp_path / "stretch.py"
    script.write_text(STRETCH)
    out = json.loads(run_script("micropython", script, mpsim=True, env={"JBDGW_SIM_DIR": str(tmp_path)}).stdout.splitlines()[-1])
    assert [m for m, _ in out] == [5, 5, 10, 20, 40, 60, 60, 60, 60, 5, 5, 0]
    assert out[2][1] == "no BMS read in 3 wakes in a row" and out[9][1] is None and out[11][1] is None
