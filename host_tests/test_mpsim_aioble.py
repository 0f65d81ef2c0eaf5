"""Tests for the simulation stand-ins in tools/mpsim: the virtual JBD BMS
(vbms.py), the simulated `bluetooth` module and the `aioble` stand-in.

The BLE tests run small scripts on the MicroPython unix port
(.venv/bin/micropython) with MICROPYPATH=tools/mpsim:.frozen, a temporary
scenario file and a temporary state directory, and check what the scripts
print (one JSON line starting with RESULT) and the events they logged.

Fidelity check: set REAL_AIOBLE_DIR to a directory holding micropython-lib's
real `aioble` package (core/device/central/client) and the BLE tests run the
real library on top of the simulated `bluetooth` module instead of the
stand-in; they are expected to pass unchanged.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPSIM = ROOT / "tools" / "mpsim"
sys.path.insert(0, str(MPSIM))

import vbms  # noqa: E402


def _micropython():
    cand = ROOT / ".venv" / "bin" / "micropython"
    if cand.exists():
        return str(cand)
    found = shutil.which("micropython")
    if found:
        return found
    pytest.skip("micropython (unix port) not available")


ADDR = "a4:c1:38:30:c2:8e"
BATTERY = dict(vbms.DEFAULT_BATTERY, cells_mv=[3300, 3310, 3290, 3300])


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


# Helpers shared by the MicroPython scripts.
PRELUDE = textwrap.dedent(
    """
    import asyncio, json, time
    import aioble, bluetooth
    from collections import deque

    REQ03 = b"\\xdd\\xa5\\x03\\x00\\xff\\xfd\\x77"

    def result(**kw):
        print("RESULT " + json.dumps(kw))

    def ms_since(t0):
        return time.ticks_diff(time.ticks_ms(), t0)

    async def open_bms(addr, svc_uuid=0xFF00, ntf_uuid=0xFF01, wr_uuid=0xFF02):
        conn = await aioble.Device(aioble.ADDR_PUBLIC, addr).connect(timeout_ms=3000, scan_duration_ms=2500)
        svc = await conn.service(bluetooth.UUID(svc_uuid))
        ntf = await svc.characteristic(bluetooth.UUID(ntf_uuid))
        wr = await svc.characteristic(bluetooth.UUID(wr_uuid))
        return conn, ntf, wr

    async def drain_read(char, want, timeout_ms):
        # Robust reader for a deeper _notify_queue: wake on the flag, then
        # empty the queue directly (never rely on notified() alone).
        q = char._notify_queue
        buf = b""
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while len(buf) < want:
            while q:
                buf += q.popleft()
            if len(buf) >= want:
                break
            rem = time.ticks_diff(deadline, time.ticks_ms())
            if rem <= 0:
                break
            try:
                await asyncio.wait_for_ms(char._notify_event.wait(), rem)
            except asyncio.TimeoutError:
                break
        return buf

    async def naive_read(char, timeout_ms):
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
    if os.environ.get("REAL_AIOBLE_DIR"):
        env["MICROPYPATH"] = os.environ["REAL_AIOBLE_DIR"] + ":" + env["MICROPYPATH"]
    env["JBDGW_SIM_SCENARIO"] = str(scen)
    env["JBDGW_SIM_DIR"] = str(state)
    proc = subprocess.run(
        [_micropython(), str(script)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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
        result(passive=passive, active=active, t_p=t_p, t_a=t_a)
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
    scans = [e for e in events if e["ev"] == "scan"]
    assert [(e["active"], e["duration_ms"]) for e in scans] == [(False, 400), (True, 400)]
    assert [e["ev"] for e in events].count("scan_done") == 2


# ---------------------------------------------------------------------------
# Connect, discover, notifications
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["ff00", "fff0"])
def test_connect_discover_and_notify_queue(tmp_path, variant):
    svc, ntf, wr = (0xFF00, 0xFF01, 0xFF02) if variant == "ff00" else (0xFFF0, 0xFFF1, 0xFFF2)
    body = """
    async def main():
        conn, ntf, wr = await open_bms(%r, %d, %d, %d)
        out = {"connected": conn.is_connected(), "ntf": repr(ntf.uuid), "wr": repr(wr.uuid),
               "props": [ntf.properties, wr.properties]}
        other = await conn.service(bluetooth.UUID(0x180A))
        out["absent_service"] = other is None
        await ntf.subscribe()

        # Default one-deep queue: the burst overwrites the first chunk.
        await wr.write(REQ03)
        out["default"] = (await naive_read(ntf, 300)).hex()

        # Workaround: a deeper queue keeps every chunk ...
        ntf._notify_queue = deque((), 8)
        await wr.write(REQ03)
        out["deep_drain"] = (await drain_read(ntf, 34, 1000)).hex()
        # ... but notified() alone stalls on the last queued chunk when the
        # reader was already waiting (same as the real aioble).
        await wr.write(REQ03)
        out["deep_naive"] = (await naive_read(ntf, 300)).hex()
        out["left_in_queue"] = len(ntf._notify_queue)
        ntf._notify_queue = deque((), 8)
        # notified() followed by draining the queue also works.
        await wr.write(b"\\xdd\\xa5\\x04\\x00\\xff\\xfc\\x77")
        first = await ntf.notified(1000)
        while ntf._notify_queue:
            first += ntf._notify_queue.popleft()
        out["cells"] = first.hex()
        out["mtu"] = await conn.exchange_mtu()
        await conn.disconnect()
        out["after_disconnect"] = conn.is_connected()
        aioble.stop()
        result(**out)
    """ % (ADDR, svc, ntf, wr)
    res, events = run_mp(tmp_path, body, [device(uuids=variant)])
    frame = vbms.response_frame(3, vbms.basic_info_data(BATTERY))
    assert res["connected"] is True
    assert res["ntf"] == "UUID(0x%04x)" % ntf and res["wr"] == "UUID(0x%04x)" % wr
    assert res["props"] == [0x12, 0x06]
    assert res["absent_service"] is True
    default = bytes.fromhex(res["default"])
    assert len(default) < len(frame)
    assert default == frame[20:]  # only the last chunk survives
    assert bytes.fromhex(res["deep_drain"]) == frame
    assert bytes.fromhex(res["deep_naive"]) == frame[:20] and res["left_in_queue"] == 1
    assert bytes.fromhex(res["cells"]) == vbms.response_frame(4, vbms.cells_data(BATTERY))
    assert res["mtu"] == 23
    assert res["after_disconnect"] is False

    kinds = [e["ev"] for e in events]
    for k in ("ble_start", "connect_start", "connect", "subscribe", "write", "notify", "mtu", "disconnect", "ble_stop"):
        assert k in kinds, k
    conn_ev = [e for e in events if e["ev"] == "connect"][0]
    assert conn_ev["address"] == ADDR and conn_ev["ok"] is True
    writes = [e for e in events if e["ev"] == "write"]
    assert writes[0]["hex"] == "dda50300fffd77" and writes[0]["address"] == ADDR
    assert [e["len"] for e in events if e["ev"] == "notify"][:2] == [20, 14]


def test_write_before_subscribe_gets_nothing(tmp_path):
    body = """
    async def main():
        conn, ntf, wr = await open_bms(%r)
        await wr.write(REQ03)
        try:
            await ntf.notified(timeout_ms=200)
            lost = False
        except asyncio.TimeoutError:
            lost = True
        await ntf.subscribe()
        ntf._notify_queue = deque((), 8)
        await wr.write(REQ03)
        got = await drain_read(ntf, 34, 1000)
        await conn.disconnect()
        result(lost=lost, after=len(got))
    """ % (ADDR,)
    res, events = run_mp(tmp_path, body, [device()])
    assert res == {"lost": True, "after": 34}
    assert any(e["ev"] == "notify_lost" and e["reason"] == "not_subscribed" for e in events)


def test_irq_payloads_are_transient_views(tmp_path):
    body = """
    import aioble.core
    kept = []
    def spy(event, data):
        if event == 18:
            kept.append((data[2], bytes(data[2])))
    aioble.core.register_irq_handler(spy, None)

    async def main():
        conn, ntf, wr = await open_bms(%r)
        await ntf.subscribe()
        await wr.write(REQ03)
        await asyncio.sleep_ms(200)
        await conn.disconnect()
        result(n=len(kept), view_changed=[bytes(v) != c for v, c in kept],
               copies=b"".join(c for v, c in kept).hex())
    """ % (ADDR,)
    res, _ = run_mp(tmp_path, body, [device()])
    assert res["n"] == 2 and all(res["view_changed"])
    assert bytes.fromhex(res["copies"]) == vbms.response_frame(3, vbms.basic_info_data(BATTERY))


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
        # aioble operations re-activate BLE (ensure_active)
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
    assert res["raw_scan"] == 19  # ENODEV
    assert res["names"] == ["Cabin 580ah"] and res["active"] is True
    assert any(e["ev"] == "ble_stop" for e in events)


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
    import errno

    res, events = run_mp(tmp_path, body, [device(connect_ms=150)])
    assert res["first"] == "timeout"
    assert res["second"] == "OSError %d" % errno.EALREADY
    assert res["cancel"] == "ok" and res["third"] is True
    assert any(e["ev"] == "connect" and e.get("reason") == "cancelled" for e in events)
