"""The Wi-Fi and TCP/MQTT part of the latency model, in real time: tools/mpsim/network.py
(channel probe, association, DHCP or static IP, full scan) and tools/mpsim/simtcp.py under
umqtt/simple.py (TCP connect, one round trip per answer, Nagle + delayed ACK for a packet
written in pieces).

Each test writes a small latency profile in the driver's flat format ({key: value,
"time_scale": s}) and runs a script on the unix port with the stand-ins. Exact checks are on
the simulated milliseconds the stand-ins log; real elapsed time is checked only against
generous bounds (a sleep never ends early: lower bounds are safe, upper bounds are loose).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import simharness
from conftest import run_script
from jbdgw.sim import run_wakes
from test_mpsim_umqtt import ONE_WRITE

WIFI_PROFILE = {"wifi_probe_ms": 300, "wifi_assoc_ms": 100, "dhcp_ms": 400, "static_ip_ms": 0,
                "wifi_scan_active_channels": 11, "wifi_scan_active_dwell_ms": 20,
                "wifi_scan_passive_channels": 2, "wifi_scan_passive_dwell_ms": 60}
FULL_SCAN_MS = 11 * 20 + 2 * 60


def run_sim_script(tmp_path: Path, body: str, profile: dict, scenario: dict | None = None):
    """Run `body` with the stand-ins, `profile` and `scenario`; (last JSON line, events)."""
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    (tmp_path / "scenario.json").write_text(json.dumps(scenario or {}))
    script = tmp_path / "t.py"
    script.write_text(textwrap.dedent(body))
    env = {"JBDGW_SIM_DIR": str(tmp_path), "JBDGW_SIM_PROFILE": str(tmp_path / "profile.json"),
           "JBDGW_SIM_SCENARIO": str(tmp_path / "scenario.json")}
    proc = run_script("micropython", script, mpsim=True, env=env, cwd=tmp_path)
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    return json.loads(proc.stdout.strip().splitlines()[-1]), events


def of(events, ev):
    return [e for e in events if e["ev"] == ev]


WIFI_MAIN = """
    import json, network, time

    BSSID = b"\\x02\\x11\\x22\\x33\\x44\\x55"
    w = network.WLAN(network.STA_IF)
    w.active(True)
    out = {}

    def timed(f):
        t0 = time.ticks_ms()
        r = f()
        return r, time.ticks_diff(time.ticks_ms(), t0)

    def joined():
        while not w.isconnected():
            time.sleep_ms(1)

    found, out["scan"] = timed(w.scan)
    out["found"] = [[ap[0], ap[2]] for ap in found]

    # cold: no channel hint, DHCP
    w.connect("demo", "demo-pass")
    _, out["cold"] = timed(joined)
    channel = w.config("channel")  # learnt without a scan
    w.disconnect()

    # warm: the learnt channel as the hint, static IP
    w.ipconfig(addr4="192.168.1.50/24", gw4="192.168.1.1")
    w.connect("demo", "demo-pass", bssid=BSSID)
    w.disconnect()
    w.config(channel=channel)
    w.connect()
    _, out["warm"] = timed(joined)
    out["channel"] = channel
    print(json.dumps(out))
"""


def test_wifi_cold_warm_and_scan_take_the_profiles_time(tmp_path):
    profile = dict(WIFI_PROFILE, time_scale=0.5)
    out, events = run_sim_script(tmp_path, WIFI_MAIN, profile, {"wifi": simharness.WIFI})
    assert out["found"] == [["demo", 6]] and out["channel"] == 6
    assert [e["scan_ms"] for e in of(events, "wifi_scan")] == [FULL_SCAN_MS]
    connects = of(events, "wifi_connect")
    assert [(e["hint"], e["probe_ms"], e["static"], e["connect_ms"]) for e in connects] == [
        (None, 300, False, 300 + 100 + 400),  # probe + association + DHCP
        (6, 0, True, 100),  # association only
    ]
    # Real time at half speed: 170, 400 and 50 ms.
    assert FULL_SCAN_MS / 2 - 5 <= out["scan"] < 5 * FULL_SCAN_MS
    assert 800 / 2 - 5 <= out["cold"] < 5 * 800
    assert 100 / 2 - 5 <= out["warm"] < out["cold"] / 2


def test_ap_moved_to_another_channel_costs_a_probe_then_is_learnt(tmp_path):
    """A wake caches the channel in RTC memory; the AP moves from 6 to 11 between wakes: the
    stale hint costs a wasted dwell plus the probe, the join still succeeds and the next wake
    is fast again."""
    main = """
        import machine, network, time
        rtc = machine.RTC()
        hint = int(rtc.memory() or b"0")
        w = network.WLAN(network.STA_IF)
        w.active(True)
        w.connect("demo", "demo-pass")
        if hint:
            w.disconnect()
            w.config(channel=hint)
            w.connect()
        while not w.isconnected():
            time.sleep_ms(1)
        rtc.memory(str(w.config("channel")).encode())
        machine.deepsleep(1000)
    """
    image = tmp_path / "image"
    image.mkdir()
    (image / "main.py").write_text(textwrap.dedent(main))
    scenario = {"wifi": dict(simharness.WIFI, **WIFI_PROFILE)}
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))

    def move(result):
        if result.index == 1:
            scenario["wifi"]["channel"] = 11
            path.write_text(json.dumps(scenario))

    results = run_wakes(image, path, 4, tmp_path / "state", timeout_s=20, on_wake=move, time_scale=0.1)
    assert [r.ok for r in results] == [True] * 4
    timing = [[(e["hint"], e["probe_ms"], e["connect_ms"]) for e in r.events if e["ev"] == "wifi_connect"]
              for r in results]
    assert timing == [
        [(None, 300, 800)],  # cold: probe + association + DHCP
        [(6, 0, 500)],  # warm
        [(6, 20 + 300, 820)],  # the AP is on 11 now: a dwell on 6 in vain, then the probe
        [(11, 0, 500)],  # the new channel was learnt
    ]


MQTT_MAIN = """
    import json, time
    from umqtt.simple import MQTTClient

    c = MQTTClient(b"latency-test", {host!r}, {port})
    t0 = time.ticks_ms()
    c.connect()
    out = {{"connect": time.ticks_diff(time.ticks_ms(), t0)}}
    sock = c.sock

    def publishes(mode):
        ms = []
        for i in range(3):
            t0 = time.ticks_ms()
            c.publish(b"lat/" + mode.encode(), b"x" * 20, False, 1)
            ms.append(time.ticks_diff(time.ticks_ms(), t0))
        out[mode] = min(ms)

    publishes("pieces")
    c.sock = OneWrite(sock)
    publishes("one_write")
    c.sock = sock
    sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    publishes("nodelay")
    c.disconnect()
    print(json.dumps(out))
"""


def test_publish_in_pieces_waits_for_the_delayed_ack(tmp_path, broker):
    profile = {"lan_rtt_ms": 10, "delayed_ack_ms": 40, "tcp_connect_rtts": 1, "mqtt_disconnect_rtts": 0,
               "time_scale": 1}
    body = ONE_WRITE + textwrap.dedent(MQTT_MAIN.format(host=broker.host, port=broker.port))
    out, events = run_sim_script(tmp_path, body, profile)
    replies = [(e["writes"], e["stall_ms"], e["wait_ms"]) for e in of(events, "tcp") if e["op"] == "reply"]
    # CONNECT in 4 pieces (no stall: the broker quick-ACKs until it has answered), then 3
    # PUBLISHes in 5 pieces, 3 in one write, 3 in 5 pieces with TCP_NODELAY.
    assert replies == [(4, 0, 10)] + [(5, 40, 50)] * 3 + [(1, 0, 10)] * 3 + [(5, 0, 10)] * 3
    assert [e["wait_ms"] for e in of(events, "tcp") if e["op"] == "connect"] == [10]
    assert out["connect"] >= 20  # TCP + CONNECT/CONNACK
    assert out["pieces"] >= 50
    assert 10 <= out["one_write"] < out["pieces"] and 10 <= out["nodelay"] < out["pieces"]
