"""The simulation driver (jbdgw.sim), the MicroPython stand-ins (tools/mpsim) and the local broker.

Each test runs a small fake device image (its own boot.py/main.py) through
`run_wakes`, i.e. in real `micropython` processes with the stand-ins on the path.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
from pathlib import Path

import simharness
from jbdgw.broker import Subscriber, free_port
from jbdgw.image import build_image
from jbdgw.sim import DEEPSLEEP_RESET, PWRON_RESET, WDT_RESET, run_wakes

#: The access point with the profile's Wi-Fi figures overridden by small ones, stated: the
#: tests time them (a full scan: 11 x 5 + 2 x 15 = 85 ms).
WIFI = dict(simharness.WIFI, wifi_probe_ms=40, wifi_assoc_ms=20, dhcp_ms=30, static_ip_ms=0,
            wifi_scan_active_channels=11, wifi_scan_active_dwell_ms=5,
            wifi_scan_passive_channels=2, wifi_scan_passive_dwell_ms=15)


def make_image(tmp_path: Path, main: str, boot: str | None = None) -> Path:
    image = tmp_path / "image"
    image.mkdir(exist_ok=True)
    (image / "main.py").write_text(textwrap.dedent(main))
    if boot is not None:
        (image / "boot.py").write_text(textwrap.dedent(boot))
    return image


def run(tmp_path: Path, main: str, wakes: int = 1, scenario: dict | None = None, **kw):
    image = make_image(tmp_path, main, kw.pop("boot", None))
    return run_wakes(image, scenario or {}, wakes, tmp_path / "state", timeout_s=kw.pop("timeout_s", 20), **kw)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# -- wakes, deep sleep, RTC memory, reset cause --


def test_rtc_memory_survives_wakes_and_reset_cause(tmp_path):
    boot = """
        import machine
        BOOTED = machine.reset_cause()
    """
    main = """
        import machine
        rtc = machine.RTC()
        m = rtc.memory()
        n = int(m) if m else 0
        print("cause", BOOTED, machine.reset_cause(), "wake", machine.wake_reason(), "n", n)
        rtc.memory(str(n + 1).encode())
        machine.deepsleep(300000)
        print("not reached")
    """
    seen = []
    results = run(tmp_path, main, wakes=3, boot=boot, on_wake=seen.append)
    assert seen == results
    assert [r.index for r in results] == [0, 1, 2]
    for r in results:
        assert r.returncode == 0, r.stderr
        assert r.slept and not r.reset and not r.timed_out
        assert r.sleep_ms == 300000
        assert "not reached" not in r.stdout
        assert [e["ev"] for e in r.events if e["ev"] == "deepsleep"] == ["deepsleep"]
    lines = [r.stdout.strip() for r in results]
    assert lines == [
        "cause 1 1 wake 0 n 0",
        "cause 4 4 wake 4 n 1",
        "cause 4 4 wake 4 n 2",
    ]
    assert [r.reset_cause for r in results] == [PWRON_RESET, DEEPSLEEP_RESET, DEEPSLEEP_RESET]
    # A new power-on clears RTC memory.
    again = run(tmp_path, main, wakes=1)
    assert again[0].stdout.strip() == "cause 1 1 wake 0 n 0"


def test_rtc_memory_limit_and_prepared_memory(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "rtc.bin").write_bytes(b"\xff\x00garbage")
    main = """
        import machine
        rtc = machine.RTC()
        print(repr(rtc.memory()))
        try:
            rtc.memory(bytes(2049))
        except ValueError:
            print("too long")
        rtc.memory(bytes(2048))
        machine.deepsleep(10)
    """
    image = make_image(tmp_path, main)
    [r] = run_wakes(image, {}, 1, state, first_reset_cause=DEEPSLEEP_RESET)
    assert r.stdout.splitlines() == ["b'\\xff\\x00garbage'", "too long"]
    assert (state / "rtc.bin").stat().st_size == 2048


def test_deepsleep_without_time_stops_the_loop(tmp_path):
    results = run(tmp_path, "import machine\nmachine.deepsleep()\n", wakes=3)
    assert len(results) == 1
    assert results[0].slept and results[0].sleep_ms is None and results[0].returncode == 0


def test_deepsleep_records_the_awake_time_from_boot_py(tmp_path):
    boot = "import time\ntime.sleep_ms(30)\n"
    main = "import machine, time\ntime.sleep_ms(50)\nmachine.deepsleep(1000)\n"
    [r] = run(tmp_path, main, boot=boot)
    [ev] = [e for e in r.events if e["ev"] == "deepsleep"]
    record = json.loads((tmp_path / "state" / "deepsleep.json").read_text())
    assert record["ms"] == 1000 and record["awake_ms"] == ev["awake_ms"]
    assert 80 <= ev["awake_ms"] < 5000  # boot.py's 30 ms and main.py's 50 ms, real time


def test_machine_reset_continues_with_hard_reset(tmp_path):
    main = """
        import machine
        print(machine.reset_cause())
        if machine.reset_cause() == machine.PWRON_RESET:
            machine.reset()
        machine.deepsleep()
    """
    results = run(tmp_path, main, wakes=3)
    assert [r.stdout.strip() for r in results] == ["1", "2"]
    assert results[0].reset and not results[0].slept


def test_crash_stops_the_loop(tmp_path):
    results = run(tmp_path, "x = 1\nprint('before')\nx / 0\n", wakes=3)
    assert len(results) == 1
    r = results[0]
    assert r.returncode != 0 and not r.slept and r.crashed
    assert "ZeroDivisionError" in r.stderr and 'File "main.py", line 3' in r.stderr
    assert r.stdout.strip() == "before"


def test_return_to_repl_stops_the_loop(tmp_path):
    results = run(tmp_path, "print('safe mode')\n", wakes=3)
    assert len(results) == 1
    assert results[0].returncode == 0 and not results[0].slept and not results[0].crashed


def test_swallowed_deepsleep_is_reported(tmp_path):
    main = """
        import machine
        try:
            machine.deepsleep(1000)
        except BaseException:
            pass
        print("still awake")
    """
    [r] = run(tmp_path, main, wakes=2)
    assert r.returncode == 1 and "SystemExit was caught" in r.stderr


def test_hanging_wake_is_killed_at_timeout(tmp_path):
    results = run(tmp_path, "while True:\n    pass\n", wakes=3, timeout_s=1.0)
    assert len(results) == 1
    r = results[0]
    assert r.timed_out and r.crashed and not r.slept
    assert r.duration_s < 5


def test_watchdog_not_fed_resets_the_board(tmp_path):
    main = """
        import machine, time
        if machine.reset_cause() == machine.WDT_RESET:
            print("after wdt")
            machine.deepsleep()
        wdt = machine.WDT(timeout=300)
        for _ in range(3):
            time.sleep_ms(100)
            wdt.feed()
        print("stuck")
        while True:
            time.sleep_ms(10)
    """
    results = run(tmp_path, main, wakes=3, timeout_s=10)
    assert len(results) == 2
    assert results[0].wdt_reset and not results[0].timed_out and not results[0].crashed
    assert results[1].reset_cause == WDT_RESET
    assert results[1].stdout.strip() == "after wdt" and results[1].slept


# -- network stand-in --

NET_MAIN = """
    import json, network, time

    wlan = network.WLAN(network.STA_IF)
    assert wlan is network.WLAN()
    out = {"idle": wlan.status()}
    try:
        wlan.connect("demo", "demo-pass")
    except OSError as e:
        out["inactive"] = str(e)
    wlan.active(True)
    BSSID = b"\\x02\\x11\\x22\\x33\\x44\\x55"

    def wait():
        t0 = time.ticks_ms()
        while wlan.status() == network.STAT_CONNECTING:
            time.sleep_ms(2)
        return time.ticks_diff(time.ticks_ms(), t0)

    def attempt(*args, **kw):
        wlan.connect(*args, **kw)
        first = wlan.status()
        ms = wait()
        res = [first, wlan.status(), wlan.isconnected(), ms]
        wlan.disconnect()
        return res

    def hinted(channel):
        # The board's way to a channel hint: connect() with arguments replaces the station
        # config (and drops the channel), connect() alone keeps it.
        wlan.connect("demo", "demo-pass", bssid=BSSID)
        wlan.disconnect()
        wlan.config(channel=channel)
        wlan.connect()
        wait()
        return wlan.isconnected()

    out["wrong_password"] = attempt("demo", "nope")
    out["wrong_ssid"] = attempt("other", "demo-pass")
    out["stale_bssid"] = attempt("demo", "demo-pass", bssid=b"\\x02\\x11\\x22\\x33\\x44\\x66")
    out["ok"] = attempt("demo", "demo-pass")
    wlan.config(channel=6)
    out["dropped_hint"] = attempt("demo", "demo-pass", bssid=BSSID)
    wlan.ipconfig(addr4="192.168.1.50/24", gw4="192.168.1.1")
    out["moved"] = hinted(11)
    wlan.disconnect()
    out["hinted"] = hinted(6)
    out["addr4"] = wlan.ipconfig("addr4")
    out["dhcp4"] = wlan.ipconfig("dhcp4")
    out["channel"] = wlan.config("channel")
    out["ssid"] = wlan.config("ssid")
    try:
        wlan.config("bssid")
    except ValueError as e:
        out["bssid"] = str(e)
    out["rssi"] = wlan.status("rssi")
    out["mac"] = len(wlan.config("mac"))
    out["after_disconnect"] = (wlan.disconnect(), wlan.status())[1]
    t0 = time.ticks_ms()
    out["scan"] = [[ap[0], ap[2]] for ap in wlan.scan()]
    out["scan_ms"] = time.ticks_diff(time.ticks_ms(), t0)
    wlan.active(False)
    print(json.dumps(out))
"""


def test_network_connect_outcomes(tmp_path):
    [r] = run(tmp_path, NET_MAIN, scenario={"wifi": WIFI})
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["idle"] == 1000
    assert out["inactive"] == "Wifi Not Started"
    # [status right after connect, final status, isconnected, ms]
    assert out["wrong_password"][:3] == [1001, 202, False]
    assert out["wrong_ssid"][:3] == [1001, 201, False]
    assert out["stale_bssid"][:3] == [1001, 201, False]
    assert out["ok"][:3] == [1001, 1010, True]
    assert out["ok"][3] >= 85  # probe 40 + association 20 + DHCP 30
    assert out["dropped_hint"][:3] == [1001, 1010, True]
    assert out["moved"] is True and out["hinted"] is True
    assert out["addr4"] == ["192.168.1.50", "255.255.255.0"]
    assert out["dhcp4"] is False
    assert out["channel"] == 6 and out["ssid"] == "demo" and out["rssi"] == -62
    assert out["bssid"] == "unknown config param"  # not readable on the ESP32 port
    assert out["mac"] == 6
    assert out["after_disconnect"] == 1000
    assert out["scan"] == [["demo", 6]] and out["scan_ms"] >= 80  # 11 x 5 + 2 x 15
    connects = [e for e in r.events if e["ev"] == "wifi_connect"]
    assert [e["ok"] for e in connects] == [False, False, False, True, True, True, True]
    # [hint, probe_ms, connect_ms] (simulated): none, a wasted dwell on the wrong channel, or
    # straight to association; a wrong password after association, no AP after a full scan.
    timing = [[e["hint"], e["probe_ms"], e["connect_ms"]] for e in connects]
    assert timing == [[None, 40, 60], [None, None, 85], [None, None, 85], [None, 40, 90],
                      [None, 40, 90], [11, 45, 65], [6, 0, 20]]
    assert [e["static"] for e in connects][-3:] == [False, True, True]
    assert connects[-1]["bssid"] == "02:11:22:33:44:55"
    assert [e["scan_ms"] for e in r.events if e["ev"] == "wifi_scan"] == [85]


def test_network_down_and_no_scenario(tmp_path):
    main = """
        import network, time
        w = network.WLAN()
        w.active(True)
        w.connect("anything", "whatever")
        while w.status() == network.STAT_CONNECTING:
            time.sleep_ms(2)
        print(w.status())
    """
    # Without a "wifi" object the profile's figures apply (1.6 s simulated), here at 1/20.
    [r] = run(tmp_path, main, scenario={}, time_scale=0.05)
    assert r.stdout.strip() == "1010"
    [r] = run(tmp_path, main, scenario={"wifi": dict(WIFI, ssid="anything", password="whatever", down=True)})
    assert r.stdout.strip() == "201"


# -- umqtt.simple stand-in against a real broker --


MQTT_MAIN = """
    import json, network, time, machine
    from umqtt.simple import MQTTClient, MQTTException

    HOST, PORT, MODE = {host!r}, {port}, {mode!r}
    out = {{}}
    c = MQTTClient("gw-test", HOST, PORT, keepalive=30)
    try:
        c.connect()
    except OSError as e:
        out["before_wifi"] = e.errno if hasattr(e, "errno") else e.args[0]
    w = network.WLAN()
    w.active(True)
    w.connect("demo", "demo-pass")
    while not w.isconnected():
        time.sleep_ms(2)
    if MODE == "publish":
        c.set_last_will(b"t/status", b"offline", retain=True)
        out["session"] = c.connect()
        c.publish(b"t", b'{{"v": 1}}')
        c.publish(b"t/status", b"online", retain=True)
        c.publish("t/str", "text", qos=1)
        try:
            c.publish(b"t/q2", b"x", qos=2)
        except AssertionError:
            out["qos2"] = "AssertionError"
        c.disconnect()
    elif MODE == "will":
        c = MQTTClient(b"gw-will", HOST, PORT, keepalive=30)
        c.set_last_will(b"t/will", b"gone", retain=False)
        c.connect()
        c.sock.close()  # the TCP link dies without DISCONNECT
    elif MODE == "closed":
        c = MQTTClient("gw", HOST, PORT)
        try:
            c.connect(timeout=2)
        except OSError as e:
            out["closed"] = e.errno
    elif MODE == "refused":
        c = MQTTClient("gw", HOST, PORT, user="u", password="p")
        try:
            c.connect()
        except MQTTException as e:
            out["refused"] = e.args[0]
    print(json.dumps(out))
    machine.deepsleep()
"""


def mqtt_run(tmp_path, host, port, mode):
    main = MQTT_MAIN.format(host=host, port=port, mode=mode)
    [r] = run(tmp_path, main, scenario={"wifi": WIFI})
    assert r.returncode == 0, r.stderr
    return r, last_json(r.stdout)


def test_umqtt_publishes_through_a_real_broker(tmp_path, broker):
    with Subscriber(broker.host, broker.port, ["t/#"]) as sub:
        r, out = mqtt_run(tmp_path, broker.host, broker.port, "publish")
        msgs = sub.wait_for(3, timeout=5)
    assert out["before_wifi"] == 113  # EHOSTUNREACH: no IP yet
    assert out["session"] == 0
    assert out["qos2"] == "AssertionError"
    got = {(m.topic, m.payload) for m in msgs}
    assert {("t", b'{"v": 1}'), ("t/status", b"online"), ("t/str", b"text")} <= got
    assert not any(m.retain for m in msgs)  # live deliveries carry retain=0
    # A later subscriber gets the retained status, not the last will (clean DISCONNECT).
    with Subscriber(broker.host, broker.port, ["t/status"]) as late:
        [m] = late.wait_for(1, timeout=5)
    assert (m.topic, m.payload, m.retain) == ("t/status", b"online", True)
    evs = [e["ev"] for e in r.events]
    assert evs.count("mqtt_connect") == 2 and evs.count("mqtt_disconnect") == 1
    first, second = [e for e in r.events if e["ev"] == "mqtt_connect"]
    assert first["ok"] is False and second["ok"] is True and second["client_id"] == "gw-test"
    pubs = [e for e in r.events if e["ev"] == "mqtt_publish"]
    assert pubs[1] == dict(pubs[1], topic="t/status", len=6, retain=True, qos=0)


def test_umqtt_last_will_fires_when_the_link_dies(tmp_path, broker):
    with Subscriber(broker.host, broker.port, ["t/will"]) as sub:
        mqtt_run(tmp_path, broker.host, broker.port, "will")
        msgs = sub.wait_for(1, timeout=10)
    assert [(m.topic, m.payload) for m in msgs] == [("t/will", b"gone")]


def test_umqtt_closed_port_raises_oserror(tmp_path):
    _, out = mqtt_run(tmp_path, "127.0.0.1", free_port(), "closed")
    assert out["closed"] == 111  # ECONNREFUSED


def test_umqtt_refused_connack_raises_mqttexception(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    port = srv.getsockname()[1]
    received = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            buf = conn.recv(1024)
            while len(buf) < 2 or len(buf) < 2 + buf[1]:  # the whole CONNECT (under 128 bytes)
                more = conn.recv(1024)
                if not more:
                    break
                buf += more
            received.append(buf)
            conn.sendall(b"\x20\x02\x00\x05")  # CONNACK: not authorised

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        _, out = mqtt_run(tmp_path, "127.0.0.1", port, "refused")
    finally:
        t.join(5)
        srv.close()
    assert out["refused"] == 5
    pkt = received[0]
    assert pkt[0] == 0x10 and pkt[2:9] == b"\x00\x04MQTT\x04" and pkt[9] == 0xC2


# -- image --


def test_build_image(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("boot.py", "main.py", "firmware/cycle.py", "lib/jbd/proto.py", "lib/aioble/core.py",
                "lib/umqtt/simple.py", "firmware/notes.txt"):
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("# " + rel)
    dest = build_image(tmp_path / "img", {"interval_min": 5}, repo=repo, compile=False)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["boot.py", "config.json", "firmware/cycle.py", "lib/jbd/proto.py", "main.py"]
    assert json.loads((dest / "config.json").read_text()) == {"interval_min": 5}
    # The default ships bytecode, as on the board; boot.py and main.py stay source.
    dest = build_image(tmp_path / "img2", {"interval_min": 5}, repo=repo)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["boot.py", "config.json", "firmware/cycle.mpy", "lib/jbd/proto.mpy", "main.py"]


# -- CLI --


def test_sim_cli_bad_arguments(tmp_path, capsys):
    from jbdgw.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["sim", "--scenario", str(tmp_path / "missing.json"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err
    good = tmp_path / "cfg.json"
    good.write_text('{"mqtt": {"topic": "solar"}}')
    assert main(["sim", "--scenario", str(tmp_path / "missing.json"), "--config", str(good)]) == 2
    assert "scenario file not found" in capsys.readouterr().err
    scen = tmp_path / "scen.json"
    scen.write_text("{}")
    assert main(["sim", "--scenario", str(scen), "--config", str(good), "--profile", "esp32-fastest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown profile 'esp32-fastest'" in err and "esp32-typical" in err


def test_heapsize_is_what_the_firmware_gets(tmp_path):
    main = "import gc\ngc.collect()\nprint(gc.mem_free())\nimport machine\nmachine.deepsleep()\n"
    [r] = run(tmp_path, main, heapsize="96K")
    assert r.returncode == 0, r.stderr
    # About 96 KiB: the stand-ins' measured cost is added, give or take GC fragmentation.
    assert 90_000 < int(r.stdout) <= 100_000


def test_sim_cli_reports_each_wake_and_fails_a_wake_without_a_reading(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    scen = json.loads((REPO / "tools" / "scenarios" / "demo.json").read_text())
    scen["wifi"]["down"] = True
    path = tmp_path / "wifi-down.json"
    path.write_text(json.dumps(scen))
    jbdgw = os.path.join(os.path.dirname(sys.executable), "jbdgw")
    base = [jbdgw, "sim", "--scenario", str(path), "--config", "tools/scenarios/demo-config.json", "--wakes", "1",
            "--profile", "zero-radio"]
    out = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "wake 1: deep sleep 300000 ms, exit 0" in out.stdout and "0 reading(s), no status published" in out.stdout
    assert out.stderr.count("\n") == 1 and "published no reading" in out.stderr and "--allow-faults" in out.stderr
    allowed = subprocess.run(base + ["--allow-faults"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_sim_cli_names_an_unknown_scenario_key(tmp_path, capsys):
    from conftest import REPO
    from jbdgw.cli import main
    from jbdgw.scenario import problems

    for path in sorted((REPO / "tools" / "scenarios").glob("*.json")):
        if path.name != "demo-config.json":
            assert problems(json.loads(path.read_text())) == [], path
    scen = json.loads((REPO / "tools" / "scenarios" / "demo.json").read_text())
    scen["devices"][0]["latncy_ms"] = 5
    scen["wifi"]["chanel"] = 3
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps(scen))
    cfg = REPO / "tools" / "scenarios" / "demo-config.json"
    assert main(["sim", "--scenario", str(bad), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "wifi.chanel: unknown key; did you mean 'channel'?" in err and "(and 1 more)" in err
    scen["wifi"].pop("chanel")
    bad.write_text(json.dumps(scen))
    assert main(["sim", "--scenario", str(bad), "--config", str(cfg)]) == 2
    assert "devices[0].latncy_ms: unknown key; did you mean 'latency_ms'?" in capsys.readouterr().err
