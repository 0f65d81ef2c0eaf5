# BLE phase: given which BMS to read and where, scan for the names without an address,
# connect, ask for registers 0x03 and 0x04 (and 0x05 when asked to), reassemble the
# notification frames, and return what was found. It reads and writes no state of its own:
# the wake cycle decides the addresses and caches what comes back. Every await has a bound.
import asyncio
import time
from binascii import unhexlify

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
_FLAG_NOTIFY = const(0x10)

# The events of the `bluetooth` module that the notification tap listens to.
_IRQ_PERIPHERAL_CONNECT = const(7)
_IRQ_GATTC_CHARACTERISTIC_RESULT = const(11)
_IRQ_GATTC_NOTIFY = const(18)
# A reply is at most 71 bytes (32 cells); this holds several even if the reader lags.
_RING_BYTES = const(512)

# (service, notify, write): the common dongle, then the JBD-DH04SC02 variant.
UUID_SETS = ((0xFF00, 0xFF01, 0xFF02), (0xFFF0, 0xFFF1, 0xFFF2))


class BmsError(Exception):
    """A failed BMS read; .state is the status word published for it."""

    def __init__(self, state, message):
        super().__init__(message)
        self.state = state


class NotifyTap:
    """Keeps every notification of one connection and characteristic, in arrival order.

    aioble's ClientCharacteristic.notified() queues one notification and keeps only the
    last of a burst (its queue is a one-deep deque, micropython-lib#934), while a JBD reply
    arrives as 2-4 notifications delivered back to back. So the tap sees the raw events
    through aioble's public hook, core.register_irq_handler: it learns our connection's
    handle from the connect event (by address) and the notify characteristic's value
    handle from discovery (by UUID), and copies each matching payload into a preallocated
    ring (IRQ data is only valid during the call). Only the IRQ advances `wrote` and only
    the reader advances `read`, so neither overwrites the other's bytes.
    """

    def __init__(self):
        self.ring = memoryview(bytearray(_RING_BYTES))
        self.flag = asyncio.ThreadSafeFlag()
        self.arm(None, None)

    def arm(self, addr, uuid):
        self.addr = addr  # 6 bytes, as in the connect event
        self.uuid = uuid  # bluetooth.UUID of the notify characteristic
        self.conn = None
        self.handle = None
        self.wrote = 0
        self.read = 0
        self.overflow = 0

    def irq(self, event, data):
        if event == _IRQ_GATTC_NOTIFY:
            if data[0] == self.conn and data[1] == self.handle:
                self._put(data[2])
        elif event == _IRQ_PERIPHERAL_CONNECT:
            if self.addr is not None and bytes(data[2]) == self.addr:
                self.conn = data[0]
        elif event == _IRQ_GATTC_CHARACTERISTIC_RESULT:
            if data[0] == self.conn and data[4] == self.uuid:
                self.handle = data[2]
        # None: aioble's own handlers see every event as well.

    def _put(self, data):
        n = len(data)
        if n > _RING_BYTES - (self.wrote - self.read):
            self.overflow += n  # the assembler resynchronises on the next frame
            return
        at = self.wrote % _RING_BYTES
        first = min(n, _RING_BYTES - at)
        self.ring[at : at + first] = data[:first]
        if first < n:
            self.ring[0 : n - first] = data[first:]
        self.wrote += n
        self.flag.set()

    def drain(self, asm):
        """Feeds everything received so far into the assembler; returns the frames."""
        frames = []
        while self.wrote != self.read:
            at = self.read % _RING_BYTES
            n = min(self.wrote - self.read, _RING_BYTES - at)
            frames.extend(asm.feed(self.ring[at : at + n]))
            self.read += n
        return frames


_tap = NotifyTap()
aioble.core.register_irq_handler(_tap.irq, None)


def mac_bytes(mac):
    return unhexlify(mac.replace(":", ""))


async def scan_names(names):
    """Active scan until every name is seen or the time is up: {name: (addr_type, mac)}."""
    found = {}
    async with aioble.scan(_SCAN_MS, interval_us=30000, window_us=30000, active=True) as scanner:
        async for result in scanner:
            n = result.name()
            if n in names and n not in found:
                found[n] = (result.device.addr_type, result.device.addr_hex())
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


async def _characteristics(service, notify_uuid, write_uuid):
    # One discovery pass finds both (a characteristic() call per UUID would discover twice).
    notify = write = None
    async for c in service.characteristics():
        if c.uuid == notify_uuid:
            notify = c
        if c.uuid == write_uuid:
            write = c
    return notify, write


async def _discover(conn, entry):
    for s, n, w in _uuid_sets(entry):
        service = await asyncio.wait_for_ms(conn.service(bluetooth.UUID(s)), _DISCOVER_MS)
        if service is None:
            continue
        _tap.uuid = bluetooth.UUID(n)
        notify, write = await asyncio.wait_for_ms(_characteristics(service, _tap.uuid, bluetooth.UUID(w)), _DISCOVER_MS)
        if notify is not None and write is not None:
            if not notify.properties & _FLAG_NOTIFY or _tap.handle is None:
                what = "0x%04X" % n if isinstance(n, int) else n
                raise BmsError("bms_no_service", "characteristic %s of %s cannot notify" % (what, conn.device.addr_hex()))
            return notify, write
    raise BmsError(
        "bms_no_service",
        "connected, but found no JBD service (0xFF00 or 0xFFF0); set service/notify/write in the bms entry",
    )


async def _reply(conn, asm, register, left):
    """The next valid frame for `register` within `left` ms, or None."""
    deadline = time.ticks_add(time.ticks_ms(), left)
    while True:
        for frame in _tap.drain(asm):
            if frame[1] == register:  # else a late reply to an earlier request
                return frame
        left = time.ticks_diff(deadline, time.ticks_ms())
        if left <= 0:
            return None
        try:
            with conn.timeout(left):
                await _tap.flag.wait()
        except asyncio.TimeoutError:
            return None


async def _request(conn, write, asm, register, reply_ms, tries):
    req = jbd.read_request(register)
    errors0 = asm.errors
    bad = None
    for _ in range(tries):
        try:
            await write.write(req)
        except (asyncio.TimeoutError, aioble.GattError) as e:  # write-with-response modules
            bad = "write failed: %r" % (e,)
            continue
        frame = await _reply(conn, asm, register, reply_ms)
        if frame is not None:
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
    _tap.arm(mac_bytes(addr), None)
    conn = await _connect(addr_type, addr)
    try:
        notify, write = await _discover(conn, entry)
        # Subscribe before writing: the reply comes only once the CCCD is set.
        await asyncio.wait_for_ms(notify.subscribe(notify=True), _DISCOVER_MS)
        asm = jbd.FrameAssembler()
        try:
            basic = await _request(conn, write, asm, jbd.REG_BASIC, _REPLY_MS, _REQUEST_TRIES)
            cells = await _request(conn, write, asm, jbd.REG_CELLS, _REPLY_MS, _REQUEST_TRIES)
        except jbd.StatusError as e:
            raise BmsError("bms_error", str(e))
        name = None
        if want_name:
            # Optional and time-boxed: clones answer 0x05 with an error status.
            try:
                name = (await _request(conn, write, asm, jbd.REG_NAME, _NAME_MS, 1))["name"]
            except (BmsError, jbd.FrameError):
                name = ""
        return {"basic": basic, "cells": cells["cells_mv"], "name": name, "frame_errors": asm.errors}
    except (aioble.DeviceDisconnectedError, OSError, asyncio.TimeoutError) as e:
        # aioble does not tie discovery to disconnects: a dropped link looks like a timeout.
        if not conn.is_connected():
            raise BmsError("bms_disconnected", "%s dropped the connection mid-read" % addr)
        if isinstance(e, asyncio.TimeoutError):
            raise BmsError("bms_timeout", "%s: GATT discovery or subscribe timed out" % addr)
        raise BmsError("bms_error", "%s: BLE error %r" % (addr, e))
    finally:
        _tap.arm(None, None)
        try:
            await conn.disconnect(timeout_ms=_DISCONNECT_MS)
        except Exception as e:  # never let cleanup mask the read's own outcome
            print("ble: disconnect:", repr(e))


async def _read_one(job, found, left):
    entry, where, want_name = job
    scanned = where is None
    if scanned:
        where = found.get(entry["name"])
        if where is None:
            raise BmsError(
                "bms_not_found",
                "no BLE device advertised the name %r within %d s: check the name (as the Xiaoxiang app shows it), range, and that no phone is connected"
                % (entry["name"], _SCAN_MS // 1000),
            )
    try:
        r = await asyncio.wait_for_ms(_session(where[0], where[1], entry, want_name), left)
    except asyncio.TimeoutError:
        raise BmsError("bms_timeout", "%s: the BLE phase's time ran out mid-read" % where[1])
    r["addr_type"], r["address"], r["scanned"] = where[0], where[1], scanned
    return r


async def read_all(jobs, budget_ms):
    """Reads each job (entry, (addr_type, mac) or None to scan by name, want_name) in turn,
    within budget_ms in all; returns one result per job, in order: the read with "state"
    "ok", or {"state", "error"}, either with the address when one was known or found."""
    deadline = time.ticks_add(time.ticks_ms(), budget_ms)
    results = []
    try:
        need = [job[0]["name"] for job in jobs if job[1] is None]
        found = await scan_names(need) if need else {}
        for job in jobs:
            left = time.ticks_diff(deadline, time.ticks_ms())
            try:
                if left <= 0:
                    raise BmsError("bms_timeout", "the BLE phase's %d s were used up before this BMS" % (budget_ms // 1000))
                r = await _read_one(job, found, left)
                r["state"] = "ok"
            except BmsError as ex:
                r = {"state": ex.state, "error": str(ex)}
            except Exception as ex:  # one odd BMS must not cost the others their reading
                r = {"state": "bms_error", "error": repr(ex)}
            if "address" not in r:
                # A scan that found the name is worth keeping even when the read failed.
                where = job[1] or found.get(job[0]["name"])
                if where is not None:
                    r["addr_type"], r["address"], r["scanned"] = where[0], where[1], job[1] is None
            results.append(r)
    finally:
        aioble.stop()
    return results
