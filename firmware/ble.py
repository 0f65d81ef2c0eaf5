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
_WRITE_MS = const(1000)
# The dongle asks for 15 ms itself; requesting it at connect saves a parameter update and
# runs every GATT exchange at 15 ms instead of NimBLE's 30-50 ms default.
_CONN_INTERVAL_US = const(15000)
_FLAG_WRITE_NO_RESPONSE = const(0x04)
_FLAG_NOTIFY = const(0x10)
_CCCD_UUID = const(0x2902)
_HEARD_MAX = const(5)  # other advertised names a bms_not_found status lists

# The events of the `bluetooth` module that the tap listens to.
_IRQ_PERIPHERAL_CONNECT = const(7)
_IRQ_GATTC_CHARACTERISTIC_RESULT = const(11)
_IRQ_GATTC_DESCRIPTOR_RESULT = const(13)
_IRQ_GATTC_WRITE_DONE = const(17)
_IRQ_GATTC_NOTIFY = const(18)
_LEARN = (_IRQ_GATTC_CHARACTERISTIC_RESULT, _IRQ_GATTC_DESCRIPTOR_RESULT, _IRQ_GATTC_WRITE_DONE)
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
    """Keeps every notification of one connection and characteristic, in arrival order,
    and learns the GATT handles that a later wake can use without discovery.

    aioble's ClientCharacteristic.notified() queues one notification and keeps only the
    last of a burst (its queue is a one-deep deque, micropython-lib#934), while a JBD reply
    arrives as 2-4 notifications delivered back to back. So the tap sees the raw events
    through aioble's public hook, core.register_irq_handler: it learns our connection's
    handle from the connect event (by address), the notify and write characteristics'
    value handles from discovery (by UUID) and the notify CCCD from descriptor discovery,
    and copies each matching notification into a preallocated ring (IRQ data is only valid
    during the call). Only the IRQ advances `wrote` and only the reader advances `read`,
    so neither overwrites the other's bytes.
    """

    def __init__(self):
        self.ring = memoryview(bytearray(_RING_BYTES))
        self.flag = asyncio.ThreadSafeFlag()
        self.written = asyncio.ThreadSafeFlag()
        self.arm(None)

    def arm(self, addr):
        self.addr = addr  # 6 bytes, as in the connect event
        self.conn = None
        self.notify_uuid = self.write_uuid = None
        self.handle = None  # notify value handle
        self.notify_end = 0
        self.write_handle = None
        self.write_props = 0
        self.cccd = None
        self.wait_write = None  # the handle whose write-done we wait for
        self.write_status = None
        self.wrote = 0
        self.read = 0
        self.overflow = 0

    def look_for(self, notify_uuid, write_uuid):
        self.notify_uuid, self.write_uuid = notify_uuid, write_uuid
        self.handle = self.write_handle = self.cccd = None

    def irq(self, event, data):
        if event == _IRQ_GATTC_NOTIFY:
            if data[0] == self.conn and data[1] == self.handle:
                self._put(data[2])
        elif event == _IRQ_PERIPHERAL_CONNECT:
            if self.addr is not None and bytes(data[2]) == self.addr:
                self.conn = data[0]
        elif event not in _LEARN or data[0] != self.conn:
            pass
        elif event == _IRQ_GATTC_WRITE_DONE:
            if data[1] == self.wait_write:
                self.write_status = data[2]
                self.written.set()
        elif event == _IRQ_GATTC_CHARACTERISTIC_RESULT:
            if data[4] == self.notify_uuid:
                self.handle, self.notify_end = data[2], data[1]
            if data[4] == self.write_uuid:
                self.write_handle, self.write_props = data[2], data[3]
        elif event == _IRQ_GATTC_DESCRIPTOR_RESULT:
            h = data[1]
            if self.cccd is None and self.handle is not None and self.handle < h <= self.notify_end:
                if data[2] == bluetooth.UUID(_CCCD_UUID):
                    self.cccd = h
        # None: aioble's own handlers see every event as well.

    def handles(self):
        """[notify, write, cccd, write mode] as kept in RTC memory."""
        mode = 0 if self.write_props & _FLAG_WRITE_NO_RESPONSE else 1
        return [self.handle, self.write_handle, self.cccd, mode]

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


def same_name(a, b):
    # Names as the user types them and as modules advertise them differ in case and in
    # stray spaces ("xiaoxiang BMS " vs "Xiaoxiang BMS").
    return a.strip().lower() == b.strip().lower()


async def scan_names(names):
    """Active scan until every name is seen or the time is up. Returns ({configured name:
    (addr_type, mac)}, [[name, mac, rssi], ...] of up to 5 other names heard)."""
    found = {}
    heard = []
    async with aioble.scan(_SCAN_MS, interval_us=30000, window_us=30000, active=True) as scanner:
        async for result in scanner:
            n = result.name()
            if not n:
                continue
            matched = False
            for want in names:
                if same_name(n, want):
                    matched = True
                    if want not in found:
                        found[want] = (result.device.addr_type, result.device.addr_hex())
            if not matched:
                mac = result.device.addr_hex()
                if len(heard) < _HEARD_MAX and not [h for h in heard if h[1] == mac]:
                    heard.append([n, mac, result.rssi])
            if len(found) == len(names):
                break
    return found, heard


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
            conn = await device.connect(
                timeout_ms=_CONNECT_MS,
                scan_duration_ms=_CONNECT_SCAN_MS,
                min_conn_interval_us=_CONN_INTERVAL_US,
                max_conn_interval_us=_CONN_INTERVAL_US,
            )
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
    """Finds the JBD service's characteristics and subscribes (the tap learns the handles)."""
    for s, n, w in _uuid_sets(entry):
        service = await asyncio.wait_for_ms(conn.service(bluetooth.UUID(s)), _DISCOVER_MS)
        if service is None:
            continue
        _tap.look_for(bluetooth.UUID(n), bluetooth.UUID(w))
        notify, write = await asyncio.wait_for_ms(_characteristics(service, _tap.notify_uuid, _tap.write_uuid), _DISCOVER_MS)
        if notify is not None and write is not None:
            if not notify.properties & _FLAG_NOTIFY or _tap.handle is None:
                what = "0x%04X" % n if isinstance(n, int) else n
                raise BmsError("bms_no_service", "characteristic %s of %s cannot notify" % (what, conn.device.addr_hex()))
            # Subscribe before writing: the reply comes only once the CCCD is set.
            await asyncio.wait_for_ms(notify.subscribe(notify=True), _DISCOVER_MS)
            return
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


class StaleHandles(Exception):
    pass


async def _write(conn, handle, data, mode):
    """A GATT write by handle (known from discovery or a cached one); with mode 1 (with
    response) returns the ATT status, else 0. Raises asyncio.TimeoutError."""
    _tap.wait_write = handle if mode else None
    _tap.write_status = None
    aioble.core.ble.gattc_write(_tap.conn, handle, data, mode)
    if not mode:
        return 0
    while _tap.write_status is None:
        with conn.timeout(_WRITE_MS):
            await _tap.written.wait()
    return _tap.write_status


async def _subscribe_cached(conn, handles):
    # Warm wakes skip discovery: one CCCD write to the handle a previous wake found.
    _tap.handle, _tap.write_handle, _tap.cccd = handles[0], handles[1], handles[2]
    _tap.write_props = 0 if handles[3] else _FLAG_WRITE_NO_RESPONSE
    try:
        status = await _write(conn, handles[2], b"\x01\x00", 1)
    except asyncio.TimeoutError:
        status = -1
    if status:
        raise StaleHandles("CCCD write to cached handle %d: status %d" % (handles[2], status))


async def _request(conn, asm, register, reply_ms, tries):
    req = jbd.read_request(register)
    mode = _tap.handles()[3]
    errors0 = asm.errors
    bad = None
    for _ in range(tries):
        try:
            status = await _write(conn, _tap.write_handle, req, mode)
        except asyncio.TimeoutError:
            status = "timeout"
        if status:  # write-with-response modules
            bad = "write failed: %s" % (status,)
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


async def _session(addr_type, addr, entry, want_name, cached):
    _tap.arm(mac_bytes(addr))
    conn = await _connect(addr_type, addr)
    try:
        asm = jbd.FrameAssembler()
        basic = None
        if cached:
            try:
                await _subscribe_cached(conn, cached)
                # A wrong write handle shows only as silence: after every try, discover.
                basic = await _request(conn, asm, jbd.REG_BASIC, _REPLY_MS, _REQUEST_TRIES)
            except (StaleHandles, BmsError) as e:
                print("ble: cached GATT handles of %s failed (%s): discovering" % (addr, e))
        if basic is None:
            await _discover(conn, entry)
            basic = await _request(conn, asm, jbd.REG_BASIC, _REPLY_MS, _REQUEST_TRIES)
        cells = await _request(conn, asm, jbd.REG_CELLS, _REPLY_MS, _REQUEST_TRIES)
        name = None
        if want_name:
            # Optional and time-boxed: clones answer 0x05 with an error status.
            try:
                name = (await _request(conn, asm, jbd.REG_NAME, _NAME_MS, 1))["name"]
            except (BmsError, jbd.FrameError):
                name = ""
        return {"basic": basic, "cells": cells["cells_mv"], "name": name, "frame_errors": asm.errors, "handles": _tap.handles()}
    except jbd.StatusError as e:
        raise BmsError("bms_error", str(e))
    except (aioble.DeviceDisconnectedError, OSError, asyncio.TimeoutError) as e:
        # aioble does not tie discovery to disconnects: a dropped link looks like a timeout.
        if not conn.is_connected():
            raise BmsError("bms_disconnected", "%s dropped the connection mid-read" % addr)
        if isinstance(e, asyncio.TimeoutError):
            raise BmsError("bms_timeout", "%s: GATT discovery or subscribe timed out" % addr)
        raise BmsError("bms_error", "%s: BLE error %r" % (addr, e))
    finally:
        _tap.arm(None)
        try:
            await conn.disconnect(timeout_ms=_DISCONNECT_MS)
        except Exception as e:  # never let cleanup mask the read's own outcome
            print("ble: disconnect:", repr(e))


async def _read_one(job, found, heard, left):
    entry, where, want_name, cached = job
    scanned = where is None
    if scanned:
        where = found.get(entry["name"])
        if where is None:
            others = "; ".join(["%r %s %s dBm" % (h[0], h[1], h[2]) for h in heard]) or "none"
            raise BmsError(
                "bms_not_found",
                "no BLE device advertised the name %r within %d s (names heard: %s): check the name (as the Xiaoxiang app shows it), range, and that no phone is connected"
                % (entry["name"], _SCAN_MS // 1000, others),
            )
    try:
        r = await asyncio.wait_for_ms(_session(where[0], where[1], entry, want_name, cached), left)
    except asyncio.TimeoutError:
        raise BmsError("bms_timeout", "%s: the BLE phase's time ran out mid-read" % where[1])
    r["addr_type"], r["address"], r["scanned"] = where[0], where[1], scanned
    return r


async def read_all(jobs, budget_ms):
    """Reads each job (entry, (addr_type, mac) or None to scan by name, want_name, GATT
    handles cached for that MAC or None) in turn, within budget_ms in all; returns one
    result per job, in order: the read with "state" "ok" and the "handles" it used, or
    {"state", "error"}, either with the address when one was known or found."""
    deadline = time.ticks_add(time.ticks_ms(), budget_ms)
    results = []
    try:
        need = [job[0]["name"] for job in jobs if job[1] is None]
        found, heard = await scan_names(need) if need else ({}, [])
        for job in jobs:
            left = time.ticks_diff(deadline, time.ticks_ms())
            try:
                if left <= 0:
                    raise BmsError("bms_timeout", "the BLE phase's %d s were used up before this BMS" % (budget_ms // 1000))
                r = await _read_one(job, found, heard, left)
                r["state"] = "ok"
            except BmsError as ex:
                r = {"state": ex.state, "error": str(ex)}
                if ex.state == "bms_not_found":
                    r["heard"] = heard
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
