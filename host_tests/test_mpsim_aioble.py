"""Tests for the simulation stand-ins in tools/mpsim: the virtual JBD BMS (vbms.py)
and the `aioble` stand-in running on the simulated `bluetooth` module.

The BLE tests run small scripts on the MicroPython unix port with
MICROPYPATH=tools/mpsim:.frozen, a temporary scenario file and state directory, and
check the one JSON line the script prints (starting with RESULT) and the events the
simulated radio logged.

Each BLE test pins down a behaviour of micropython-lib's aioble that the firmware has
to live with. Fidelity check: set REAL_AIOBLE_DIR to a directory holding the real
`aioble` package (core, device, central, client) and the same tests run the real
library on the simulated radio instead of the stand-in; they are expected to pass,
except for what is marked as the stand-in's own (GattError.status).
"""

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import micropython_bin

ROOT = Path(__file__).resolve().parents[1]
MPSIM = ROOT / "tools" / "mpsim"
sys.path.insert(0, str(MPSIM))

import vbms  # noqa: E402

REAL_AIOBLE = os.environ.get("REAL_AIOBLE_DIR")


def _micropython():
    return micropython_bin()


ADDR = "a4:c1:38:30:c2:8e"
BATTERY = dict(vbms.DEFAULT_BATTERY, cells_mv=[3300, 3310, 3290, 3300])
FRAME03 = vbms.response_frame(3, vbms.basic_info_data(BATTERY))  # 34 bytes: chunks of 20 and 14


def device(**kw):
    d = {
        "name": "Cabin 580ah",
        "address": ADDR,
        "addr_type": 0,
        "rssi": -62,
        "uuids": "ff00",
        "name_in": "adv",
        "latency_ms": 20,
        "mtu_chunk": 20,
        "busy": False,
        "model": "JBD-SP04S034-L4S-200A-B-U",
        "battery": dict(BATTERY),
    }
    d.update(kw)
    return d


# Helpers shared by the MicroPython scripts. They use aioble's public API only.
PRELUDE = textwrap.dedent(
    """
    import asyncio, json, time
    import aioble, bluetooth

    REQ03 = b"\\xdd\\xa5\\x03\\x00\\xff\\xfd\\x77"
    REQ04 = b"\\xdd\\xa5\\x04\\x00\\xff\\xfc\\x77"

    def result(**kw):
        print("RESULT " + json.dumps(kw))

    def ms_since(t0):
        return time.ticks_diff(time.ticks_ms(), t0)

    class Tap:
        # Every notification, copied, through aioble's public IRQ hook.
        def __init__(self):
            self.got = []
            aioble.core.register_irq_handler(self.irq, None)

        def irq(self, event, data):
            if event == 18:  # _IRQ_GATTC_NOTIFY
                self.got.append(bytes(data[2]))

        def take(self):
            out, self.got = b"".join(self.got), []
            return out

    def record_calls(name):
        # Wraps the radio's method `name` to keep the arguments of every call.
        ble, calls = aioble.core.ble, []
        real = getattr(ble, name)
        def recording(*args):
            calls.append(list(args))
            return real(*args)
        setattr(ble, name, recording)
        return calls

    async def open_bms(addr, svc_uuid=0xFF00, ntf_uuid=0xFF01, wr_uuid=0xFF02):
        conn = await aioble.Device(aioble.ADDR_PUBLIC, addr).connect(timeout_ms=3000, scan_duration_ms=2500)
        svc = await conn.service(bluetooth.UUID(svc_uuid))
        ntf = wr = None
        async for c in svc.characteristics():  # one pass finds both
            if c.uuid == bluetooth.UUID(ntf_uuid):
                ntf = c
            elif c.uuid == bluetooth.UUID(wr_uuid):
                wr = c
        return conn, ntf, wr

    async def naive_read(char, timeout_ms):
        # What notified() alone delivers until nothing more comes.
        buf = b""
        try:
            while True:
                buf += await char.notified(timeout_ms)
        except asyncio.TimeoutError:
            pass
        return buf
    """
)


def run_mp(tmp_path, body, devices, timeout=30):
    scen = tmp_path / "scenario.json"
    scen.write_text(json.dumps({"devices": devices, "wifi": {"ignored": True}}))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    script = tmp_path / "script.py"
    script.write_text(PRELUDE + "\n" + textwrap.dedent(body) + "\nasyncio.run(main())\n")
    env = dict(os.environ)
    env["MICROPYPATH"] = str(MPSIM) + ":.frozen"
    if REAL_AIOBLE:
        env["MICROPYPATH"] = REAL_AIOBLE + ":" + env["MICROPYPATH"]
    env["JBDGW_SIM_SCENARIO"] = str(scen)
    env["JBDGW_SIM_DIR"] = str(state)
    proc = subprocess.run(
        [_micropython(), str(script)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(l[7:]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert results, proc.stdout + proc.stderr
    ev_file = state / "events.jsonl"
    events = []
    if ev_file.exists():
        events = [json.loads(l) for l in ev_file.read_text().splitlines() if l.strip()]
    return results[-1], events


# ---------------------------------------------------------------------------
# vbms encoder (CPython)
# ---------------------------------------------------------------------------


def _frame_ok(frame):
    assert frame[0] == 0xDD and frame[-1] == 0x77
    n = frame[3]
    assert len(frame) == n + 7
    chk = (frame[-3] << 8) | frame[-2]
    assert chk == (0x10000 - sum(frame[2:-3])) & 0xFFFF
    return frame[4:-3]


def _decode_basic(data):
    # Independent minimal decoder (jbd-protocol.md section 3).
    volt, cur = struct.unpack(">Hh", data[0:4])
    cells, ntc = data[21], data[22]
    temps = [struct.unpack(">H", data[23 + 2 * i : 25 + 2 * i])[0] - 2731 for i in range(ntc)]
    date = struct.unpack(">H", data[10:12])[0]
    return {
        "voltage_mv": volt * 10,
        "current_ma": cur * 10,
        "remaining_mah": struct.unpack(">H", data[4:6])[0] * 10,
        "cells": cells,
        "temps_dc": temps,
        "date": (2000 + (date >> 9), (date >> 5) & 0x0F, date & 0x1F),
        "soc": data[19],
        "fet": data[20],
        "extra": len(data) - 23 - 2 * ntc,
    }


def test_encoder_known_frames():
    assert vbms.checksum(b"\x03\x00") == 0xFFFD
    assert vbms.request_frame(3) == bytes.fromhex("dda50300fffd77")
    assert vbms.request_frame(4) == bytes.fromhex("dda50400fffc77")
    # V4 example: "0123456789" model reply
    assert vbms.response_frame(5, b"0123456789").hex() == "dd05000a30313233343536373839fde977"
    # zero-length reply checksum truncates to 0000; error status
    assert vbms.response_frame(0xE1, b"") == bytes.fromhex("dde10000000077")
    assert vbms.response_frame(0x24, b"", 0x81) == bytes.fromhex("dd248100ff7f77")
    assert vbms.encode_date("2023-05-16") == ((23 << 9) | (5 << 5) | 16)
    assert vbms.chunks(b"x" * 45, 20) == [b"x" * 20, b"x" * 20, b"x" * 5]


def test_encoder_basic_info_round_trip():
    frame = vbms.response_frame(3, vbms.basic_info_data(BATTERY))
    data = _frame_ok(frame)
    d = _decode_basic(data)
    assert d["voltage_mv"] == 13200  # sum of cells
    assert d["current_ma"] == -1250
    assert d["remaining_mah"] == 65710
    assert d["cells"] == 4
    assert d["temps_dc"] == [215, 220]
    assert d["date"] == (2023, 5, 16)
    assert (d["soc"], d["fet"], d["extra"]) == (66, 3, 0)
    assert len(frame) == 34

    bat = dict(BATTERY, voltage_mv=13370, extension={"humidity": 5, "full_charge_mah": 99990})
    data = _frame_ok(vbms.response_frame(3, vbms.basic_info_data(bat)))
    d = _decode_basic(data)
    assert d["voltage_mv"] == 13370 and d["extra"] == 9
    ext = data[23 + 4 :]
    assert ext[0] == 5
    assert struct.unpack(">HHHH", ext[1:9]) == (0, 9999, 6571, 0)

    cells = _frame_ok(vbms.response_frame(4, vbms.cells_data(BATTERY)))
    assert list(struct.unpack(">4H", cells)) == BATTERY["cells_mv"]


def test_virtual_bms_requests():
    bms = vbms.VirtualBMS(device())
    # partial writes are buffered
    assert bms.handle_write(bytes.fromhex("dda503")) == []
    out = bms.handle_write(bytes.fromhex("00fffd77"))
    assert [len(c) for c in out] == [20, 14]
    assert b"".join(out) == vbms.response_frame(3, vbms.basic_info_data(BATTERY))
    # several requests in one write, garbage, bad checksum, unknown register
    out = bms.handle_write(
        bytes.fromhex("00ff" "dda50400fffc77" "dda50300fffe77" "dda50900fff777" "dda50500fffb77")
    )
    joined = b"".join(out)
    frames = []
    while joined:
        n = joined[3] + 7
        frames.append(joined[:n])
        joined = joined[n:]
    assert [f[1] for f in frames] == [4, 9, 5]
    assert frames[1] == bytes.fromhex("dd098000ff8077")
    assert frames[2][4:-3] == b"JBD-SP04S034-L4S-200A-B-U"
    assert bms.bad_frames == 1
    # clone without a model string
    clone = vbms.VirtualBMS(device(model=None))
    assert b"".join(clone.handle_write(vbms.request_frame(5))) == bytes.fromhex("dd058000ff8077")
    # captured-frame replay: list = exact split, string = mtu_chunk split
    cap = vbms.response_frame(5, b"JBD-SP04S034-L4S-200A-B-U").hex()
    rep = vbms.VirtualBMS(device(replies={"5": [cap[:40], cap[40:]], "0x04": "dd04000400010002fff977"}))
    assert [c.hex() for c in rep.handle_write(vbms.request_frame(5))] == [cap[:40], cap[40:]]
    assert rep.handle_write(vbms.request_frame(4)) == [bytes.fromhex("dd04000400010002fff977")]


def test_vbms_runs_on_micropython(tmp_path):
    script = tmp_path / "v.py"
    script.write_text(
        "import vbms, binascii\n"
        "b = %r\n"
        "print(binascii.hexlify(vbms.response_frame(3, vbms.basic_info_data(b))).decode())\n"
        "m = vbms.VirtualBMS({'battery': b})\n"
        "print(binascii.hexlify(b''.join(m.handle_write(vbms.request_frame(4)))).decode())\n" % (BATTERY,)
    )
    env = dict(os.environ, MICROPYPATH=str(MPSIM) + ":.frozen")
    out = subprocess.run([_micropython(), str(script)], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == vbms.response_frame(3, vbms.basic_info_data(BATTERY)).hex()
    assert lines[1] == vbms.response_frame(4, vbms.cells_data(BATTERY)).hex()


# ---------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------


def test_scan_by_name(tmp_path):
    devices = [
        device(),
        device(name="RspOnly", address="a4:c1:38:00:00:02", name_in="scan_rsp", uuids="fff0"),
        device(name="PhoneHasIt", address="a4:c1:38:00:00:03", busy=True),
    ]
    body = """
    async def scan(active):
        found = {}
        t0 = time.ticks_ms()
        async with aioble.scan(400, interval_us=30000, window_us=30000, active=active) as scanner:
            async for r in scanner:
                found[r.device.addr_hex()] = [r.name(), r.rssi, r.connectable,
                                              [repr(u) for u in r.services()], r.device.addr_type]
        return found, ms_since(t0)

    async def main():
        passive, t_p = await scan(False)
        active, t_a = await scan(True)
        # Leaving the loop early stops the scan at once.
        t0 = time.ticks_ms()
        async with aioble.scan(5000, active=True) as scanner:
            async for r in scanner:
                if r.name() == "RspOnly":
                    break
        result(passive=passive, active=active, t_p=t_p, t_a=t_a, t_break=ms_since(t0))
    """
    res, events = run_mp(tmp_path, body, devices)
    p, a = res["passive"], res["active"]
    assert p[ADDR][0] == "Cabin 580ah" and a[ADDR][0] == "Cabin 580ah"
    assert p[ADDR][2] is True and p[ADDR][3] == ["UUID(0xff00)"] and p[ADDR][4] == 0
    # name only in the scan response: invisible to a passive scan
    assert p["a4:c1:38:00:00:02"][0] is None
    assert a["a4:c1:38:00:00:02"][0] == "RspOnly"
    assert a["a4:c1:38:00:00:02"][3] == ["UUID(0xfff0)"]
    # a device held by a phone does not advertise
    assert "a4:c1:38:00:00:03" not in p and "a4:c1:38:00:00:03" not in a
    # iteration ends with the scan duration (real time)
    assert 380 <= res["t_p"] < 1500 and 380 <= res["t_a"] < 1500
    assert res["t_break"] < 1000
    scans = [e for e in events if e["ev"] == "scan"]
    assert [(e["active"], e["duration_ms"]) for e in scans] == [(False, 400), (True, 400), (True, 5000)]
    done = [e["cancelled"] for e in events if e["ev"] == "scan_done"]
    assert done == [False, False, True]


# ---------------------------------------------------------------------------
# Connect, discover, notifications
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["ff00", "fff0"])
def test_connect_discover_and_the_one_deep_notify_queue(tmp_path, variant):
    svc, ntf, wr = (0xFF00, 0xFF01, 0xFF02) if variant == "ff00" else (0xFFF0, 0xFFF1, 0xFFF2)
    body = """
    async def main():
        passes = record_calls("gattc_discover_characteristics")
        tap = Tap()

        conn, ntf, wr = await open_bms(%r, %d, %d, %d)
        out = {"connected": conn.is_connected(), "ntf": repr(ntf.uuid), "wr": repr(wr.uuid),
               "props": [ntf.properties, wr.properties], "char_passes": len(passes)}
        out["absent_service"] = await conn.service(bluetooth.UUID(0x180A)) is None
        await ntf.subscribe()

        # A reply's notifications come back to back: notified() keeps only the last.
        await wr.write(REQ03)
        out["naive"] = (await naive_read(ntf, 300)).hex()
        out["tap"] = tap.take().hex()
        # The same when the reader is already waiting as the burst arrives.
        waiting = asyncio.create_task(ntf.notified(1000))
        await asyncio.sleep_ms(0)
        await wr.write(REQ03)
        out["waiting"] = (await waiting).hex()
        try:
            await ntf.notified(200)
            out["after"] = "more"
        except asyncio.TimeoutError:
            out["after"] = "timeout"
        out["tap2"] = tap.take().hex()

        await conn.disconnect()
        out["after_disconnect"] = conn.is_connected()
        aioble.stop()
        result(**out)
    """ % (ADDR, svc, ntf, wr)
    res, events = run_mp(tmp_path, body, [device(uuids=variant)])
    assert res["connected"] is True
    assert res["ntf"] == "UUID(0x%04x)" % ntf and res["wr"] == "UUID(0x%04x)" % wr
    assert res["props"] == [0x12, 0x06]
    assert res["char_passes"] == 1
    assert res["absent_service"] is True
    # micropython-lib#934: of the 20 + 14 byte burst only the 14 bytes survive ...
    assert bytes.fromhex(res["naive"]) == FRAME03[20:]
    assert bytes.fromhex(res["waiting"]) == FRAME03[20:] and res["after"] == "timeout"
    # ... while a registered IRQ handler sees every byte.
    assert bytes.fromhex(res["tap"]) == FRAME03 and bytes.fromhex(res["tap2"]) == FRAME03
    assert res["after_disconnect"] is False

    kinds = [e["ev"] for e in events]
    for k in ("ble_start", "connect_start", "connect", "subscribe", "write", "notify", "disconnect", "ble_stop"):
        assert k in kinds, k
    sub = [e for e in events if e["ev"] == "subscribe"][0]
    assert sub["handle"] == 0x12 and sub["notify"] is True and sub["indicate"] is False
    writes = [e for e in events if e["ev"] == "write"]
    assert writes[0]["hex"] == "dda50300fffd77" and writes[0]["response"] is False
    assert [e["len"] for e in events if e["ev"] == "notify"][:2] == [20, 14]


def test_write_before_subscribe_gets_nothing(tmp_path):
    body = """
    async def main():
        tap = Tap()
        conn, ntf, wr = await open_bms(%r)
        await wr.write(REQ03)
        try:
            await ntf.notified(timeout_ms=200)
            lost = False
        except asyncio.TimeoutError:
            lost = True
        before = len(tap.take())
        await ntf.subscribe()
        await wr.write(REQ03)
        await asyncio.sleep_ms(200)
        await conn.disconnect()
        result(lost=lost, before=before, after=tap.take().hex())
    """ % (ADDR,)
    res, events = run_mp(tmp_path, body, [device()])
    assert res["lost"] is True and res["before"] == 0
    assert bytes.fromhex(res["after"]) == FRAME03
    assert any(e["ev"] == "notify_lost" and e["reason"] == "not_subscribed" for e in events)


def test_irq_payloads_are_transient_views(tmp_path):
    body = """
    kept = []
    def spy(event, data):
        if event == 18:
            kept.append((data[2], bytes(data[2])))
    aioble.core.register_irq_handler(spy, None)

    async def main():
        conn, ntf, wr = await open_bms(%r)
        await ntf.subscribe()
        await wr.write(REQ03)
        last = await ntf.notified(1000)  # aioble's own copy survives
        await conn.disconnect()
        result(n=len(kept), view_changed=[bytes(v) != c for v, c in kept],
               copies=b"".join(c for v, c in kept).hex(), last=last.hex())
    """ % (ADDR,)
    res, _ = run_mp(tmp_path, body, [device()])
    assert res["n"] == 2 and all(res["view_changed"])
    assert bytes.fromhex(res["copies"]) == FRAME03
    assert bytes.fromhex(res["last"]) == FRAME03[20:]


def test_irq_handlers_run_in_order_until_one_answers(tmp_path):
    # aioble's GATT client registers its own handler at the first discovery, after these:
    # a handler that answers (returns non-None) hides the event from it too.
    body = """
    seen = []
    def first(event, data):
        if event == 18:
            seen.append("first")
    def answers(event, data):
        if event == 18:
            seen.append("answers")
            return True
    def never(event, data):
        if event == 18:
            seen.append("never")
    stops = []
    aioble.core.register_irq_handler(first, lambda: stops.append(1))
    aioble.core.register_irq_handler(answers, None)
    aioble.core.register_irq_handler(never, None)

    async def main():
        conn, ntf, wr = await open_bms(%r)
        await ntf.subscribe()
        await wr.write(REQ04)  # the cells reply (15 bytes) is one notification
        try:
            await ntf.notified(300)
            got = "notified"
        except asyncio.TimeoutError:
            got = "timeout"
        await conn.disconnect()
        aioble.stop()
        result(seen=seen, got=got, stops=len(stops))
    """ % (ADDR,)
    res, _ = run_mp(tmp_path, body, [device()])
    assert res == {"seen": ["first", "answers"], "got": "timeout", "stops": 1}


def test_discovery_ignores_its_timeout_and_runs_one_at_a_time(tmp_path):
    body = """
    async def main():
        out = {}
        conn = await aioble.Device(0, %r).connect(timeout_ms=3000)
        t0 = time.ticks_ms()
        svc = await conn.service(bluetooth.UUID(0xFF00), timeout_ms=50)
        out["slow_service"] = [svc is not None, ms_since(t0)]
        # A second discovery while one is unfinished ...
        pending = svc.characteristics()
        one = await pending.__anext__()
        try:
            await conn.service(bluetooth.UUID(0xFF00))
            out["second"] = "ok"
        except ValueError:
            out["second"] = "ValueError"
        # ... works again once the first has run to its end.
        async for c in pending:
            pass
        out["after_end"] = await conn.service(bluetooth.UUID(0xFF00)) is not None
        # A discovery cut off by asyncio.wait_for_ms never ends: the link is stuck.
        try:
            await asyncio.wait_for_ms(conn.service(bluetooth.UUID(0xFFF0)), 100)
            out["cut"] = "ok"
        except asyncio.TimeoutError:
            out["cut"] = "timeout"
        try:
            await conn.service(bluetooth.UUID(0xFF00))
            out["stuck"] = "ok"
        except ValueError:
            out["stuck"] = "ValueError"
        await conn.disconnect()
        result(**out)
    """ % (ADDR,)
    res, _ = run_mp(tmp_path, body, [device(gatt_ms=300)])
    found, ms = res["slow_service"]
    assert found is True and ms >= 280  # timeout_ms=50 made no difference
    assert res["second"] == "ValueError" and res["after_end"] is True
    assert res["cut"] == "timeout" and res["stuck"] == "ValueError"


def test_timeout_block_and_link_drop(tmp_path):
    body = """
    async def main():
        out = {}
        conn, ntf, wr = await open_bms(%r)
        t0 = time.ticks_ms()
        try:
            with conn.timeout(150):
                await ntf.notified()
        except asyncio.TimeoutError:
            out["timeout"] = ms_since(t0)
        try:
            await ntf.notified(timeout_ms=100)
        except asyncio.TimeoutError:
            out["notified_timeout"] = True
        # The BMS drops the link while we wait: DeviceDisconnectedError, not a timeout.
        try:
            with conn.timeout(5000):
                await asyncio.sleep_ms(5000)
        except aioble.DeviceDisconnectedError:
            out["dropped"] = [ms_since(t0), conn.is_connected()]
        # A link that went down properly leaves its Device free for a real connect.
        conn2 = await conn.device.connect(timeout_ms=3000)
        out["reconnect"] = [conn2 is not conn, conn2.is_connected()]
        svc = await conn2.service(bluetooth.UUID(0xFF00))
        ntf2 = await svc.characteristic(bluetooth.UUID(0xFF01))
        try:
            await ntf2.notified()
        except aioble.DeviceDisconnectedError:
            out["notified_dropped"] = conn2.is_connected()
        await conn2.disconnect()  # already down: returns at once
        result(**out)
    """ % (ADDR,)
    res, events = run_mp(tmp_path, body, [device(drop_after_ms=700)])
    assert 140 <= res["timeout"] < 400
    assert res["notified_timeout"] is True
    ms, connected = res["dropped"]
    assert 500 <= ms < 1500 and connected is False
    assert res["reconnect"] == [True, True]
    assert res["notified_dropped"] is False
    assert [e["reason"] for e in events if e["ev"] == "disconnect"] == ["remote", "remote"]


def test_write_modes_and_gatt_error(tmp_path):
    body = """
    async def main():
        out = {}
        conn, ntf, wr = await open_bms(%r)
        await ntf.subscribe()
        await wr.write(REQ03)  # WRITE only: with response, returns after the write is done
        out["reply"] = len(await ntf.notified(1000))
        await wr.write(REQ04, response=False)
        desc = await ntf.descriptor(bluetooth.UUID(0x2901))
        try:
            await desc.write(b"x")
        except aioble.GattError as e:
            out["gatt"] = [e._status, getattr(e, "status", None)]
        for name, call in (("write_notify", lambda: ntf.write(b"x")), ("notified_write", lambda: wr.notified(10))):
            try:
                await call()
            except ValueError:
                out[name] = "ValueError"
        await conn.disconnect()
        result(**out)
    """ % (ADDR,)
    res, events = run_mp(tmp_path, body, [device(write_props=0x0A)])  # READ | WRITE
    assert res["reply"] == 14
    assert res["gatt"][0] == 3  # ATT "write not permitted"
    if not REAL_AIOBLE:
        assert res["gatt"][1] == 3  # the stand-in's public name for it
    assert res["write_notify"] == "ValueError" and res["notified_write"] == "ValueError"
    writes = [e for e in events if e["ev"] == "write"]
    assert [(w["hex"], w["response"]) for w in writes] == [("dda50300fffd77", True), ("dda50400fffc77", False)]


# ---------------------------------------------------------------------------
# Connecting: timeouts, #950, ghosts, stop
# ---------------------------------------------------------------------------


def test_connect_passes_the_connection_interval(tmp_path):
    body = """
    async def main():
        calls = record_calls("gap_connect")
        conn = await aioble.Device(0, %r).connect(timeout_ms=3000, scan_duration_ms=2500,
                                                  min_conn_interval_us=7500, max_conn_interval_us=15000)
        await conn.disconnect()
        conn = await aioble.Device(0, %r).connect()
        await conn.disconnect()
        result(calls=[c[2:] for c in calls])
    """ % (ADDR, ADDR)
    res, _ = run_mp(tmp_path, body, [device()])
    assert res["calls"] == [[2500, 7500, 15000], [None, None, None]]


def test_connect_timeout_and_stale_connection_950(tmp_path):
    devices = [device(), device(name="Busy", address="a4:c1:38:00:00:09", busy=True)]
    body = """
    async def attempt(dev, timeout_ms):
        t0 = time.ticks_ms()
        try:
            c = await dev.connect(timeout_ms=timeout_ms, scan_duration_ms=timeout_ms - 100)
            return ["ok", ms_since(t0), c.is_connected()]
        except asyncio.TimeoutError:
            return ["timeout", ms_since(t0), None]

    async def main():
        out = {}
        busy = aioble.Device(aioble.ADDR_PUBLIC, "a4c138000009")
        out["busy"] = await attempt(busy, 600)
        # micropython-lib#950: same Device object -> the dead connection at once
        out["retry_same"] = await attempt(busy, 600)
        # fresh Device per attempt -> a real attempt again
        out["retry_fresh"] = await attempt(aioble.Device(0, "a4:c1:38:00:00:09"), 600)
        out["unknown"] = await attempt(aioble.Device(0, "11:22:33:44:55:66"), 400)
        # nothing pending any more: cancelling raises OSError
        try:
            aioble.core.ble.gap_connect(None)
            out["cancel"] = "no error"
        except OSError as e:
            out["cancel"] = "OSError"
        # wrong address type is not found either
        out["wrong_type"] = await attempt(aioble.Device(aioble.ADDR_RANDOM, %r), 400)
        out["good"] = await attempt(aioble.Device(0, %r), 3000)
        result(**out)
    """ % (ADDR, ADDR)
    res, events = run_mp(tmp_path, body, devices)
    kind, ms, _ = res["busy"]
    assert kind == "timeout" and 550 <= ms < 1200
    kind, ms, connected = res["retry_same"]
    assert kind == "ok" and ms < 100 and connected is False
    assert res["retry_fresh"][0] == "timeout" and res["retry_fresh"][1] >= 550
    assert res["unknown"][0] == "timeout" and 350 <= res["unknown"][1] < 1000
    assert res["cancel"] == "OSError"
    assert res["wrong_type"][0] == "timeout"
    assert res["good"][0] == "ok" and res["good"][2] is True and res["good"][1] < 1000
    fails = [e for e in events if e["ev"] == "connect" and not e["ok"]]
    assert any(e["reason"] == "busy" for e in fails)
    assert any(e["reason"] == "not_found" for e in fails)


def test_stop_and_reactivate(tmp_path):
    body = """
    async def main():
        out = {}
        conn, ntf, wr = await open_bms(%r)
        aioble.stop()
        out["active_after_stop"] = aioble.core.ble.active()
        try:
            aioble.core.ble.gap_scan(100)
            out["raw_scan"] = "ok"
        except OSError as e:
            out["raw_scan"] = e.args[0]
        # aioble operations switch BLE on again
        names = []
        async with aioble.scan(300, 30000, 30000) as s:
            async for r in s:
                names.append(r.name())
        out["names"] = names[:1]
        out["active"] = aioble.core.ble.active()
        result(**out)
    """ % (ADDR,)
    res, events = run_mp(tmp_path, body, [device()])
    assert res["active_after_stop"] is False
    assert res["raw_scan"] == errno.ENODEV
    assert res["names"] == ["Cabin 580ah"] and res["active"] is True
    assert any(e["ev"] == "disconnect" and e["reason"] == "ble_stop" for e in events)


def test_ghost_connect_and_cancel(tmp_path):
    body = """
    async def main():
        out = {}
        try:
            await aioble.Device(0, %r).connect(timeout_ms=40, scan_duration_ms=2000)
            out["first"] = "ok"
        except asyncio.TimeoutError:
            out["first"] = "timeout"
        # The controller is still trying: a new connect is refused ...
        try:
            await aioble.Device(0, %r).connect(timeout_ms=500)
            out["second"] = "ok"
        except OSError as e:
            out["second"] = "OSError %%d" %% e.args[0]
        # ... until the attempt is cancelled (the documented workaround).
        try:
            aioble.core.ble.gap_connect(None)
            out["cancel"] = "ok"
        except OSError:
            out["cancel"] = "OSError"
        await asyncio.sleep_ms(20)
        conn = await aioble.Device(0, %r).connect(timeout_ms=2000)
        out["third"] = conn.is_connected()
        await conn.disconnect()
        result(**out)
    """ % (ADDR, ADDR, ADDR)
    res, events = run_mp(tmp_path, body, [device(connect_ms=150)])
    assert res["first"] == "timeout"
    assert res["second"] == "OSError %d" % errno.EALREADY
    assert res["cancel"] == "ok" and res["third"] is True
    assert any(e["ev"] == "connect" and e.get("reason") == "cancelled" for e in events)
