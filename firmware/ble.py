# BLE phase: find each configured BMS, connect, ask for registers 0x03 and 0x04 (and 0x05
# now and then), and reassemble the notification frames. Every await has a bound.
import asyncio
import time
from collections import deque

import aioble
import bluetooth
import jbd
from micropython import const

_SCAN_MS = const(8000)
_CONNECT_SCAN_MS = const(4000)
# Above the connect scan window so aioble never leaves a ghost connection attempt behind.
_CONNECT_MS = const(5000)
_CONNECT_TRIES = const(2)
_DISCOVER_MS = const(4000)
_REPLY_MS = const(1500)
# V11 section 1: the first request after the BMS slept goes unanswered; ask again.
_REQUEST_TRIES = const(3)
_NAME_MS = const(1200)
_DISCONNECT_MS = const(1500)
# aioble keeps one queued notification and a reply arrives as 2-4 back-to-back ones
# (micropython-lib#934), so the characteristic gets a deeper queue; see _next_chunk.
_QUEUE_DEPTH = const(8)

# (service, notify, write): the common dongle, then the JBD-DH04SC02 variant.
UUID_SETS = ((0xFF00, 0xFF01, 0xFF02), (0xFFF0, 0xFFF1, 0xFFF2))


class BmsError(Exception):
    """A failed BMS read; .state is the status word published for it."""

    def __init__(self, state, message):
        super().__init__(message)
        self.state = state


async def scan_names(names):
    """Active scan until every name is seen or the time is up: {name: [addr_type, mac]}."""
    found = {}
    async with aioble.scan(_SCAN_MS, interval_us=30000, window_us=30000, active=True) as scanner:
        async for result in scanner:
            n = result.name()
            if n in names and n not in found:
                found[n] = [result.device.addr_type, result.device.addr_hex()]
                if len(found) == len(names):
                    break
    return found


def _cancel_connect():
    try:
        aioble.core.ble.gap_connect(None)
    except Exception:  # OSError when nothing is pending, which is the normal case
        pass


async def _connect(addr_type, addr):
    for _ in range(_CONNECT_TRIES):
        # A fresh Device per attempt: a timed-out one hands back a dead connection
        # (micropython-lib#950).
        device = aioble.Device(addr_type, addr)
        try:
            conn = await device.connect(timeout_ms=_CONNECT_MS, scan_duration_ms=_CONNECT_SCAN_MS)
            if conn.is_connected():
                return conn
        except asyncio.TimeoutError:
            _cancel_connect()
        except OSError as e:
            _cancel_connect()
            print("ble: connect to", addr, "failed:", e)
    raise BmsError(
        "bms_busy",
        "%s did not accept a connection (%d tries): a phone app may be connected to it, or it is out of range"
        % (addr, _CONNECT_TRIES),
    )


def _uuid_sets(entry):
    if entry["service"] is not None:
        return ((entry["service"], entry["notify"], entry["write"]),)
    return UUID_SETS


_FLAG_NOTIFY = const(0x10)


async def _discover(conn, entry):
    for s, n, w in _uuid_sets(entry):
        service = await asyncio.wait_for_ms(conn.service(bluetooth.UUID(s)), _DISCOVER_MS)
        if service is None:
            continue
        notify = await asyncio.wait_for_ms(service.characteristic(bluetooth.UUID(n)), _DISCOVER_MS)
        write = await asyncio.wait_for_ms(service.characteristic(bluetooth.UUID(w)), _DISCOVER_MS)
        if notify is not None and write is not None:
            if not notify.properties & _FLAG_NOTIFY or not hasattr(notify, "_notify_queue"):
                what = "0x%04X" % n if isinstance(n, int) else n
                raise BmsError("bms_no_service", "characteristic %s of %s cannot notify" % (what, conn.device.addr_hex()))
            return notify, write
    raise BmsError(
        "bms_no_service",
        "connected, but found no JBD service (0xFF00 or 0xFFF0); set service/notify/write in the bms entry",
    )


async def _next_chunk(conn, notify, left):
    # aioble's notified() sets its flag only when the queue goes from empty to one item, so
    # with a deeper queue it can wait while data is queued, or pop an empty queue after a
    # stale flag. Waiting on the flag only while the queue is empty avoids both.
    q = notify._notify_queue
    while not q:
        with conn.timeout(left):
            await notify._notify_event.wait()
    return q.popleft()


async def _request(conn, notify, write, asm, register, reply_ms, tries):
    req = jbd.read_request(register)
    errors0 = asm.errors
    bad = None
    for _ in range(tries):
        try:
            await write.write(req)
        except (asyncio.TimeoutError, aioble.GattError) as e:  # write-with-response modules
            bad = "write failed: %r" % (e,)
            continue
        deadline = time.ticks_add(time.ticks_ms(), reply_ms)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                break
            try:
                data = await _next_chunk(conn, notify, left)
            except asyncio.TimeoutError:
                break
            for frame in asm.feed(data):
                if frame[1] != register:
                    continue  # a late reply to an earlier request
                try:
                    return jbd.decode(frame)
                except jbd.StatusError:
                    raise
                except jbd.FrameError as e:
                    bad = str(e)
        if asm.errors > errors0:  # only this request's rejections count
            bad = asm.last_error
    if bad:
        raise BmsError("bad_frame", "register 0x%02X: no valid reply in %d tries (%s)" % (register, tries, bad))
    raise BmsError("bms_no_reply", "register 0x%02X: no reply in %d tries" % (register, tries))


async def _session(addr_type, addr, entry, want_name):
    conn = await _connect(addr_type, addr)
    try:
        notify, write = await _discover(conn, entry)
        notify._notify_queue = deque((), _QUEUE_DEPTH)
        # Subscribe before writing: the reply comes only once the CCCD is set.
        await asyncio.wait_for_ms(notify.subscribe(notify=True), _DISCOVER_MS)
        asm = jbd.FrameAssembler()
        try:
            basic = await _request(conn, notify, write, asm, jbd.REG_BASIC, _REPLY_MS, _REQUEST_TRIES)
            cells = await _request(conn, notify, write, asm, jbd.REG_CELLS, _REPLY_MS, _REQUEST_TRIES)
        except jbd.StatusError as e:
            raise BmsError("bms_error", str(e))
        name = None
        if want_name:
            # Optional and time-boxed: clones answer 0x05 with an error status.
            try:
                name = (await _request(conn, notify, write, asm, jbd.REG_NAME, _NAME_MS, 1))["name"]
            except (BmsError, jbd.FrameError):
                name = ""
        return {
            "basic": basic,
            "cells": cells["cells_mv"],
            "name": name,
            "frame_errors": asm.errors,
        }
    except (aioble.DeviceDisconnectedError, OSError, asyncio.TimeoutError) as e:
        # aioble does not tie discovery to disconnects: a dropped link looks like a timeout.
        if not conn.is_connected():
            raise BmsError("bms_disconnected", "%s dropped the connection mid-read" % addr)
        if isinstance(e, asyncio.TimeoutError):
            raise BmsError("bms_timeout", "%s: GATT discovery or subscribe timed out" % addr)
        raise BmsError("bms_error", "%s: BLE error %r" % (addr, e))
    finally:
        try:
            await conn.disconnect(timeout_ms=_DISCONNECT_MS)
        except Exception as e:  # never let cleanup mask the read's own outcome
            print("ble: disconnect:", repr(e))


async def read_one(entry, st, found, want_name):
    name = entry["name"]
    if entry["address"]:
        addr_type, addr = entry["addr_type"], entry["address"]
    elif name in st["macs"]:
        addr_type, addr = st["macs"][name]
    elif name in found:
        addr_type, addr = found[name]
        st["macs"][name] = [addr_type, addr]  # the name matched; the cycle forgets it if reads keep failing
    else:
        raise BmsError(
            "bms_not_found",
            "no BLE device advertised the name %r within %d s: check the name (as the Xiaoxiang app shows it), range, and that no phone is connected"
            % (name, _SCAN_MS // 1000),
        )
    # A stale cached MAC (module swapped) is not rescanned here: that would add a scan to
    # every wake while a phone holds the BMS. The cycle forgets it after repeated failures.
    result = await _session(addr_type, addr, entry, want_name)
    result["address"] = addr
    return result


async def read_all(entries, st, want_name, results):
    """Appends one result dict per entry to `results`: the read, or {"state", "error"}."""
    try:
        need = []
        for e in entries:
            if not e["address"] and e["name"] not in st["macs"]:
                need.append(e["name"])
        found = await scan_names(need) if need else {}
        for e in entries:
            try:
                r = await read_one(e, st, found, want_name(e["label"]))
                r["state"] = "ok"
            except BmsError as ex:
                r = {"state": ex.state, "error": str(ex)}
            except Exception as ex:  # one odd BMS must not cost the others their reading
                r = {"state": "bms_error", "error": repr(ex)}
            r["entry"] = e
            results.append(r)
    finally:
        aioble.stop()
