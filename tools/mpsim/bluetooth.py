# Simulated `bluetooth` module for the MicroPython unix port.
#
# Stands in for the ESP32's NimBLE-backed `bluetooth` module: a UUID type and a
# BLE() singleton whose GAP-central / GATT-client calls raise the same IRQ events
# (same numbers and tuple shapes) as the real port, driven by the virtual devices
# of the scenario file named in $JBDGW_SIM_SCENARIO ("devices" list, see
# the notes below).
#
# Behaviour modelled on the ESP32 port (synchronous BLE events):
# - IRQs are delivered synchronously from asyncio tasks owned by this module;
#   all notification chunks of one BMS reply are delivered back-to-back, with no
#   asyncio turn in between (unless notify_extra_intervals spaces them).
# - addr/adv_data/notify data are memoryviews of buffers that are overwritten
#   right after the handler returns (code that keeps them sees garbage).
# - calls while inactive raise OSError(ENODEV); a failed connect is reported as
#   _IRQ_PERIPHERAL_DISCONNECT (0xFFFF, 0xFF, zero address) after scan_duration_ms;
#   gap_connect(None) with nothing pending raises OSError(EALREADY); scanning
#   while a connect is pending raises OSError(EBUSY).
# - a GATT write to a handle that does not exist completes with ATT status 0x01
#   (invalid handle), to one that is not writable with 0x03, as on a board: a
#   handle cached from an earlier wake can be used without discovery.
#
# Timing: the latency profile ($JBDGW_SIM_PROFILE, simlog.figure; simulated ms are
# slept as simlog.delay_ms, i.e. scaled by its time_scale), the physics of
# tools/jbdgw/model.py:
# - advertising: each device advertises every adv_interval_ms; a scan (any
#   window: full duty assumed) first hears it U(0, interval) after starting, then
#   every interval (an active scan gets the scan response with each ADV_IND);
# - gap_connect: the next advertisement U(0, adv_interval_ms) after the call (it
#   must come within scan_duration_ms), then link set-up conn_setup_ms +
#   conn_setup_intervals x interval. The interval is the requested minimum (or
#   maximum, if only that is given) but not below the dongle's floor
#   conn_interval_min_ms, or NimBLE's conn_interval_default_ms when connect()
#   requests none; logged in "connect_start" (requested) and "connect" (interval_ms);
# - GATT requests on a link run one at a time, att_rtt_intervals x interval per ATT
#   round trip: service discovery gatt_service_rtts, characteristic discovery
#   gatt_characteristics_rtts, descriptor discovery gatt_descriptor_rtts (per pass,
#   whatever the range; each pass is logged as a "discover" event), a write with
#   response (the CCCD's too) cccd_write_rtts, a read and an MTU exchange 1;
# - a write without response costs the central nothing; the BMS gets it half an
#   interval later, its UART (bms_uart_baud, uart_frame_bits per byte) carries the
#   request and the reply, it takes bms_processing_ms per reply (requests queue on
#   the one UART), and the reply's notifications leave half an interval after that,
#   back to back or notify_extra_intervals x interval apart;
# - gap_disconnect: ble_disconnect_intervals x interval.
# Without a profile (the stand-ins' unit tests) the figures are small: a 10 ms
# interval, 1 round trip per GATT procedure, 50 ms advertising, instant UART.
# Random draws: a per-process generator, seeded from the scenario's "seed" (plus a
# wake counter kept in $JBDGW_SIM_DIR, so wakes differ but a run repeats), else
# from os.urandom.
#
# Extra scenario keys per device (all optional). Overrides of the profile's timing,
# in real (unscaled) ms: connect_ms (advertising -> connected), gatt_ms (per GATT
# procedure), latency_ms (write of a request -> its reply). Faults and variants:
# refuse_short_interval (true: the dongle rejects a short interval, the link runs at
# conn_interval_default_ms), handles_shift (N: every attribute handle N higher, a
# dongle with another GATT table: cached handles go stale), drop_after_ms (link lost
# N real ms after connecting), connect_failures (the first N connect attempts fail
# as if the device was out of range), no_reply (list of registers the BMS ignores),
# write_props (properties of the write char, default READ|WRITE_NO_RESPONSE =
# 0x06), manufacturer_hex (AD type 0xFF payload), advertising (false = never
# advertises), busy (held by a phone: not advertising), lose_notifications (list of
# 0-based indexes, counted over the process, of notifications lost on the air), mtu.

import asyncio
import binascii
import errno
import os
import random
import time

import simlog
import vbms

FLAG_BROADCAST = 0x0001
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
FLAG_AUTHENTICATED_SIGNED_WRITE = 0x0040
FLAG_AUX_WRITE = 0x0100
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_READ_AUTHORIZED = 0x0800
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000
FLAG_WRITE_AUTHORIZED = 0x4000

_IRQ_SCAN_RESULT = 5
_IRQ_SCAN_DONE = 6
_IRQ_PERIPHERAL_CONNECT = 7
_IRQ_PERIPHERAL_DISCONNECT = 8
_IRQ_GATTC_SERVICE_RESULT = 9
_IRQ_GATTC_SERVICE_DONE = 10
_IRQ_GATTC_CHARACTERISTIC_RESULT = 11
_IRQ_GATTC_CHARACTERISTIC_DONE = 12
_IRQ_GATTC_DESCRIPTOR_RESULT = 13
_IRQ_GATTC_DESCRIPTOR_DONE = 14
_IRQ_GATTC_READ_RESULT = 15
_IRQ_GATTC_READ_DONE = 16
_IRQ_GATTC_WRITE_DONE = 17
_IRQ_GATTC_NOTIFY = 18
_IRQ_MTU_EXCHANGED = 21

_ADV_IND = 0
_SCAN_RSP = 4

_CONN_HANDLE_NONE = 0xFFFF
_ATT_INVALID_HANDLE = 0x01
_ATT_READ_NOT_PERMITTED = 0x02
_ATT_WRITE_NOT_PERMITTED = 0x03
_BLE_HS_ENOTCONN = 7  # status of GATT procedures broken by link loss

_EBUSY = getattr(errno, "EBUSY", 16)  # MicroPython's errno has no EBUSY (16 on Linux and ESP32)

_MIN_REPEAT_MS = 10  # a scan hears an advertiser again at most this often (real ms)

# The figures when no profile is given (unit tests of the stand-ins): small latencies
# with the profile's structure.
_NO_PROFILE = {
    "adv_interval_ms": 50,
    "conn_setup_ms": 0,
    "conn_setup_intervals": 0,
    "att_rtt_intervals": 1,
    "conn_interval_default_ms": 10,
    "conn_interval_min_ms": 7.5,
    "ble_disconnect_intervals": 2,
    "bms_uart_baud": 0,
    "uart_frame_bits": 10,
    "bms_processing_ms": 0,
    "notify_extra_intervals": 0,
    "gatt_service_rtts": 1,
    "gatt_characteristics_rtts": 1,
    "gatt_descriptor_rtts": 1,
    "cccd_write_rtts": 1,
}


def _fig(key):
    return simlog.figure(key, _NO_PROFILE[key])


def _real(sim_ms):
    # Simulated ms -> real ms to wait (the profile's time_scale).
    return simlog.delay_ms(sim_ms)


def _ticks():
    return time.ticks_ms()


def _diff(a, b):
    return time.ticks_diff(a, b)


def _later(t, ms):
    # The later of tick t (or None) and now, plus ms.
    now = _ticks()
    if t is None or _diff(t, now) < 0:
        t = now
    return time.ticks_add(t, ms)


async def _until(t):
    await asyncio.sleep_ms(max(0, _diff(t, _ticks())))


_seeded = False


def _uniform(hi):
    """U(0, hi) from this process's generator (see the header for its seed)."""
    global _seeded
    if not _seeded:
        _seeded = True
        seed = simlog.scenario().get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        else:
            n = 0
            p = simlog.sim_path("ble_rng_count")
            if p:
                try:
                    with open(p) as f:
                        n = int(f.read())
                except (OSError, ValueError):
                    pass
                with open(p, "w") as f:
                    f.write(str(n + 1))
            seed = int(seed) * 7919 + n
        random.seed(seed)
    return random.uniform(0, hi) if hi > 0 else 0


def _uart_ms(nbytes):
    baud = _fig("bms_uart_baud")
    return nbytes * _fig("uart_frame_bits") * 1000 / baud if baud else 0


# ----------------------------------------------------------------------------
# UUID
# ----------------------------------------------------------------------------


class UUID:
    """bluetooth.UUID: from an int (16-bit), a 2/4/16-byte buffer (little-endian),
    a UUID string, or another UUID. Equality needs the same size: UUID(0xff00) !=
    UUID('0000ff00-0000-1000-8000-00805f9b34fb'), as on the real port."""

    def __init__(self, value):
        if isinstance(value, UUID):
            data = value._data
        elif isinstance(value, int):
            if value > 65535:
                raise ValueError("invalid UUID")
            data = bytes([value & 0xFF, (value >> 8) & 0xFF])
        else:
            # Anything with the buffer protocol; a str counts as its UTF-8 bytes
            # (so a 2-, 4- or 16-character str is taken as raw bytes, like the
            # real port does).
            buf = value.encode() if isinstance(value, str) else bytes(value)
            if len(buf) in (2, 4, 16):
                data = bytes(buf)
            else:
                digits = ""
                for ch in str(buf, "utf-8") if not isinstance(value, str) else value:
                    if ch == "-":
                        continue
                    if ch not in "0123456789abcdefABCDEF":
                        raise ValueError("invalid char in UUID")
                    digits += ch
                    if len(digits) > 32:
                        raise ValueError("UUID too long")
                if len(digits) < 32:
                    raise ValueError("UUID too short")
                be = binascii.unhexlify(digits)
                data = bytes(reversed(be))
        self._data = data

    def __eq__(self, other):
        if not isinstance(other, UUID):
            return False
        return self._data == other._data

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        d = self._data
        n = len(d)
        s = ""
        for i in range(n):
            if n == 16 and i in (4, 6, 8, 10):
                s += "-"
            s += "%02x" % d[n - 1 - i]
        if n <= 4:
            return "UUID(0x" + s + ")"
        return "UUID('" + s + "')"

    __str__ = __repr__


# ----------------------------------------------------------------------------
# Virtual peripherals (BLE UART dongle + JBD BMS)
# ----------------------------------------------------------------------------


_VENDOR_SVC = "00010203-0405-0607-0809-0a0b0c0d1912"
_VENDOR_CHR = "00010203-0405-0607-0809-0a0b0c0d2b12"


class _Char:
    def __init__(self, def_handle, value_handle, props, uuid, descriptors):
        self.def_handle = def_handle
        self.value_handle = value_handle
        self.props = props
        self.uuid = uuid
        self.descriptors = descriptors  # list of (handle, UUID)


def _opt_ms(d, key):
    v = d.get(key)
    return None if v is None else int(v)


class _Peer:
    def __init__(self, d):
        self.d = d
        self.name = d.get("name")
        self.addr = simlog.mac_bytes(d["address"])
        self.address = simlog.mac_text(self.addr)
        self.addr_type = int(d.get("addr_type", 0))
        self.rssi = int(d.get("rssi", -60))
        self.busy = bool(d.get("busy", False))
        self.adv_enabled = bool(d.get("advertising", True))
        self.name_in = d.get("name_in", "adv")
        self.latency_ms = _opt_ms(d, "latency_ms")
        self.connect_ms = _opt_ms(d, "connect_ms")
        self.gatt_ms = _opt_ms(d, "gatt_ms")
        self.refuse_short = bool(d.get("refuse_short_interval", False))
        self.drop_after_ms = d.get("drop_after_ms")
        self.connect_failures = int(d.get("connect_failures", 0))
        self.lose = list(d.get("lose_notifications") or [])
        self.sent = 0  # notifications put on the air so far
        self.bms = vbms.VirtualBMS(d)
        variant = str(d.get("uuids", "ff00")).lower()
        if variant == "fff0":
            svc, ntf, wr = 0xFFF0, 0xFFF1, 0xFFF2
        elif variant == "ff00":
            svc, ntf, wr = 0xFF00, 0xFF01, 0xFF02
        else:
            raise ValueError("uuids must be 'ff00' or 'fff0'")
        self.svc_uuid16 = svc
        wprops = int(d.get("write_props", FLAG_READ | FLAG_WRITE_NO_RESPONSE))
        shift = int(d.get("handles_shift", 0))
        if not 0 <= shift <= 0xFF00:
            raise ValueError("handles_shift must be 0..65280")

        def h(n):
            return n + shift

        # GATT table (handles as on the common JBD dongle: notify value 0x11,
        # its CCCD 0x12, write value 0x15; handles_shift moves them all).
        self.services = [
            (h(0x0001), h(0x0005), UUID(0x1800), [
                _Char(h(0x0002), h(0x0003), FLAG_READ, UUID(0x2A00), []),
                _Char(h(0x0004), h(0x0005), FLAG_READ, UUID(0x2A01), []),
            ]),
            (h(0x0006), h(0x0009), UUID(0x1801), [
                _Char(h(0x0007), h(0x0008), FLAG_INDICATE, UUID(0x2A05), [(h(0x0009), UUID(0x2902))]),
            ]),
            (h(0x000F), h(0x0016), UUID(svc), [
                _Char(h(0x0010), h(0x0011), FLAG_READ | FLAG_NOTIFY, UUID(ntf),
                      [(h(0x0012), UUID(0x2902)), (h(0x0013), UUID(0x2901))]),
                _Char(h(0x0014), h(0x0015), wprops, UUID(wr), [(h(0x0016), UUID(0x2901))]),
            ]),
            (h(0x0017), 0xFFFF, UUID(_VENDOR_SVC), [
                _Char(h(0x0018), h(0x0019), FLAG_READ | FLAG_WRITE_NO_RESPONSE, UUID(_VENDOR_CHR), []),
            ]),
        ]
        self.notify_handle = h(0x0011)
        self.cccd_handle = h(0x0012)
        self.write_handle = h(0x0015)
        self.changed_cccd = h(0x0009)  # Service Changed's CCCD: writable, no effect
        self.vendor_handle = h(0x0019)  # the vendor (OTA) characteristic: written to nowhere
        # Attribute list (handle -> type UUID) for descriptor discovery.
        attrs = []
        for start, end, suuid, chars in self.services:
            attrs.append((start, UUID(0x2800)))
            for c in chars:
                attrs.append((c.def_handle, UUID(0x2803)))
                attrs.append((c.value_handle, c.uuid))
                for dh, du in c.descriptors:
                    attrs.append((dh, du))
        attrs.sort(key=lambda a: a[0])
        self.attrs = attrs
        nm = (self.name or "").encode()
        self.values = {
            h(0x0003): nm,
            h(0x0005): b"\x00\x00",
            h(0x0008): b"",
            h(0x0009): b"\x00\x00",
            h(0x0011): b"",
            h(0x0013): b"Notify",
            h(0x0015): b"",
            h(0x0016): b"Write",
            h(0x0019): b"",
        }
        self.bms_free = None  # tick when the BMS's UART is free again
        self.link(None)
        self.adv_data, self.resp_data = self._build_adv()

    def link(self, conn_handle, interval_ms=None):
        # Every link (and the lack of one) starts unsubscribed with no GATT
        # procedure pending: a procedure of a lost link never completes.
        self.conn_handle = conn_handle
        self.interval_ms = interval_ms
        self.disconnecting = False
        self.cccd = 0
        self.ops = []
        self.att_free = None  # tick when the link's last queued ATT request is answered

    def is_attr(self, handle):
        for a in self.attrs:
            if a[0] == handle:
                return True
        return False

    def _build_adv(self):
        adv = b"\x02\x01\x06" + bytes([3, 0x03, self.svc_uuid16 & 0xFF, self.svc_uuid16 >> 8])
        man = self.d.get("manufacturer_hex")
        if man:
            mb = vbms.unhex(man)
            adv += bytes([len(mb) + 1, 0xFF]) + mb
        resp = b""
        if self.name:
            nm = self.name.encode()
            if self.name_in == "scan_rsp":
                t = 0x09
                if len(nm) > 29:
                    nm, t = nm[:29], 0x08
                resp = bytes([len(nm) + 1, t]) + nm
            else:
                room = 31 - len(adv) - 2
                t = 0x09
                if len(nm) > room:
                    nm, t = nm[:room], 0x08
                adv += bytes([len(nm) + 1, t]) + nm
        return adv, resp

    def advertising(self):
        return self.adv_enabled and not self.busy and self.conn_handle is None

    def find_char(self, value_handle):
        for s in self.services:
            for c in s[3]:
                if c.value_handle == value_handle:
                    return c
        return None


# ----------------------------------------------------------------------------
# The radio
# ----------------------------------------------------------------------------


class _Scan:
    def __init__(self, duration_ms, active):
        self.duration_ms = duration_ms
        self.active = active
        self.stopped = False
        self.count = 0


class _Pending:
    def __init__(self, peer, addr_type, addr, interval_ms):
        self.peer = peer
        self.addr_type = addr_type
        self.addr = addr
        self.interval_ms = interval_ms
        self.cancelled = False


def _interval_ms(peer, min_us, max_us):
    """The connection interval a link runs at: the central's request (its minimum, or
    its maximum if only that is given) but not below what the dongle accepts, or
    NimBLE's default without a request or when the dongle refuses a short one."""
    default = _fig("conn_interval_default_ms")
    req = min_us if min_us is not None else max_us
    if req is None:
        return default
    itv = max(req / 1000, _fig("conn_interval_min_ms"))
    if peer is not None and peer.refuse_short and itv < default:
        return default
    return itv


class _BLE:
    def __init__(self):
        self._active = False
        self._irq = None
        self._gen = 0
        self._peers = None
        self._scan = None
        self._pending = None
        self._conns = {}
        self._next_handle = 0
        self._char_disc_busy = False
        self._mtu = 256
        self._gap_name = b"MPY NIMBLE"
        self._mac = b"\x24\x0a\xc4\x00\x00\x02"
        self._addr_buf = bytearray(6)
        self._data_buf = bytearray(256)

    # --- plumbing ---------------------------------------------------------

    def _load(self):
        if self._peers is not None:
            return
        self._peers = [_Peer(d) for d in simlog.scenario().get("devices") or []]

    def sim_peers(self):
        """Simulation helper (not on a real board): the virtual devices."""
        self._load()
        return self._peers

    def _check(self):
        if not self._active:
            raise OSError(errno.ENODEV)

    def _call(self, event, data):
        h = self._irq
        if h is None or not self._active:
            return None
        try:
            return h(event, data)
        except Exception as e:
            print("Unhandled exception in IRQ callback handler")
            try:
                import sys

                sys.print_exception(e)
            except Exception:
                print(repr(e))
        return None

    def _mv_addr(self, addr):
        self._addr_buf[0:6] = addr
        return memoryview(self._addr_buf)

    def _call_views(self, event, data):
        # The real port hands out views of stack memory valid only during the
        # IRQ: overwrite them once the handler returns.
        self._call(event, data)
        for i in range(6):
            self._addr_buf[i] = 0xEE
        for i in range(len(self._data_buf)):
            self._data_buf[i] = 0xEE

    def _mv_data(self, data):
        n = len(data)
        if n > len(self._data_buf):
            self._data_buf = bytearray(n)
        self._data_buf[0:n] = data
        return memoryview(self._data_buf)[0:n]

    def _find_peer(self, addr_type, addr):
        self._load()
        for p in self._peers:
            if p.addr == addr and p.addr_type == addr_type:
                return p
        return None

    def _peer_for(self, conn_handle):
        self._check()
        p = self._conns.get(conn_handle)
        if p is None:
            raise OSError(errno.ENOTCONN)
        return p

    # --- basic API ----------------------------------------------------------

    def active(self, *args):
        if not args:
            return self._active
        on = bool(args[0])
        if on and not self._active:
            self._load()
            self._active = True
            self._gen += 1
            simlog.event("ble_start")
        elif not on and self._active:
            self._active = False
            self._gen += 1
            self._scan = None
            self._pending = None
            self._char_disc_busy = False
            for h in list(self._conns):
                p = self._conns.pop(h)
                p.link(None)
                simlog.event("disconnect", address=p.address, conn_handle=h, reason="ble_stop")
            simlog.event("ble_stop")
        return self._active

    def irq(self, handler):
        if handler is not None and not callable(handler):
            raise ValueError("invalid handler")  # as modbluetooth.c; None unregisters
        self._irq = handler

    def config(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError("must query or set")
        if args:
            if len(args) != 1:
                raise TypeError("must query one param")
            name = args[0]
            if name == "mac":
                self._check()
                return (0, self._mac)
            if name == "addr_mode":
                return 0
            if name == "gap_name":
                return self._gap_name
            if name == "mtu":
                return self._mtu
            raise ValueError("unknown config param")
        for k in kwargs:
            v = kwargs[k]
            if k == "mtu":
                v = int(v)
                if v < 23 or v > 517:
                    raise OSError(errno.EINVAL)
                self._mtu = v
            elif k == "gap_name":
                self._gap_name = v.encode() if isinstance(v, str) else bytes(v)
            elif k in ("addr_mode", "bond", "mitm", "io", "le_secure"):
                pass
            else:
                raise ValueError("unknown config param")
        return None

    # --- GAP: scanning ------------------------------------------------------

    def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
        self._check()
        if duration_ms is None:
            if self._scan is not None:
                # NimBLE reports the stop synchronously, inside this call.
                self._end_scan(True)
            return None
        if self._scan is not None:
            raise OSError(errno.EALREADY)
        if self._pending is not None:
            raise OSError(_EBUSY)
        duration_ms = int(duration_ms)
        sc = _Scan(duration_ms, bool(active))
        self._scan = sc
        simlog.event(
            "scan",
            active=bool(active),
            duration_ms=duration_ms,
            interval_us=interval_us,
            window_us=window_us,
        )
        asyncio.create_task(self._scan_task(sc, self._gen))
        return None

    def _end_scan(self, cancelled):
        sc, self._scan = self._scan, None
        sc.stopped = True
        simlog.event("scan_done", cancelled=cancelled, results=sc.count)
        self._call(_IRQ_SCAN_DONE, ())

    async def _scan_task(self, sc, gen):
        # Real ms since the scan started: each device's next advertisement and its
        # advertising interval (full-duty scan: every advertisement is heard).
        start = _ticks()
        adv = _fig("adv_interval_ms")
        period = max(_MIN_REPEAT_MS, _real(adv))
        due = [_real(_uniform(adv)) for p in self._peers]
        seen = {}
        while True:
            if sc.stopped or gen != self._gen:
                return
            now = _diff(_ticks(), start)
            if sc.duration_ms > 0 and now >= sc.duration_ms:
                self._end_scan(False)
                return
            nxt = None
            for i, p in enumerate(self._peers):
                if due[i] <= now:
                    if p.advertising():
                        k = seen.get(i, 0)
                        seen[i] = k + 1
                        rssi = p.rssi if k == 0 else p.rssi + (k * 3) % 5 - 2
                        sc.count += 1
                        self._report(p, _ADV_IND, rssi, p.adv_data)
                        if sc.stopped or gen != self._gen:
                            return
                        if sc.active and p.resp_data:
                            self._report(p, _SCAN_RSP, rssi, p.resp_data)
                            if sc.stopped or gen != self._gen:
                                return
                    while due[i] <= now:  # advertisements missed while busy are gone
                        due[i] += period
                if nxt is None or due[i] < nxt:
                    nxt = due[i]
            wait = 50 if nxt is None else max(1, nxt - now)
            if sc.duration_ms > 0:
                wait = min(wait, max(1, sc.duration_ms - now))
            await asyncio.sleep_ms(wait)

    def _report(self, p, adv_type, rssi, data):
        self._call_views(_IRQ_SCAN_RESULT, (p.addr_type, self._mv_addr(p.addr), adv_type, rssi, self._mv_data(data)))

    # --- GAP: connections ---------------------------------------------------

    def gap_connect(self, addr_type, addr=None, scan_duration_ms=None, min_conn_interval_us=None, max_conn_interval_us=None):
        self._check()
        if addr_type is None:
            p = self._pending
            if p is None:
                raise OSError(errno.EALREADY)
            self._pending = None
            p.cancelled = True
            simlog.event("connect", address=simlog.mac_text(p.addr), ok=False, reason="cancelled")
            asyncio.create_task(self._connect_failed_later(self._gen, 5))
            return None
        addr = bytes(addr)
        if len(addr) != 6:
            raise ValueError("invalid addr")
        if self._pending is not None:
            raise OSError(errno.EALREADY)
        for h in self._conns:
            q = self._conns[h]
            if q.addr == addr and q.addr_type == addr_type:
                raise OSError(errno.EIO)  # NimBLE BLE_HS_EDONE: already connected
        if self._scan is not None:
            self.gap_scan(None)  # NimBLE stops a running scan itself
        if scan_duration_ms is None:
            scan_duration_ms = 2000
        peer = self._find_peer(addr_type, addr)
        pend = _Pending(peer, addr_type, addr, _interval_ms(peer, min_conn_interval_us, max_conn_interval_us))
        self._pending = pend
        simlog.event(
            "connect_start",
            address=simlog.mac_text(addr),
            addr_type=addr_type,
            scan_duration_ms=scan_duration_ms,
            min_conn_interval_us=min_conn_interval_us,
            max_conn_interval_us=max_conn_interval_us,
        )
        asyncio.create_task(self._connect_task(pend, int(scan_duration_ms), self._gen))
        return None

    async def _connect_failed_later(self, gen, delay):
        await asyncio.sleep_ms(delay)
        if gen == self._gen:
            self._connect_failed()

    def _connect_failed(self):
        # NimBLE reports a failed or cancelled connect as the disconnect of no
        # connection, with a zero address.
        self._call(_IRQ_PERIPHERAL_DISCONNECT, (_CONN_HANDLE_NONE, 0xFF, memoryview(bytes(6))))

    async def _connect_task(self, pend, scan_ms, gen):
        peer = pend.peer
        itv = pend.interval_ms
        start = _ticks()
        fail_this = False
        if peer is not None and peer.connect_failures > 0:
            peer.connect_failures -= 1
            fail_this = True
        # Real ms from the peer (re)starting to advertise to hearing it, and from
        # hearing it (the CONNECT_IND) to the link's first connection event.
        if peer is not None and peer.connect_ms is not None:
            hear, setup = peer.connect_ms, 0
        else:
            hear = _real(_uniform(_fig("adv_interval_ms")))
            setup = _real(_fig("conn_setup_ms") + _fig("conn_setup_intervals") * itv)
        # Wait until the peer's advertisement is heard or the scan window ends.
        adv_since = None
        while True:
            el = _diff(_ticks(), start)
            wait = 5
            if peer is not None and not fail_this and peer.advertising():
                if adv_since is None:
                    adv_since = el
                wait = adv_since + hear - el
                if wait <= 0:
                    break
            else:
                adv_since = None
            if el >= scan_ms:
                self._pending = None
                reason = "not_found"
                if peer is not None:
                    reason = "busy" if peer.busy else ("not_advertising" if not peer.advertising() else "missed")
                simlog.event("connect", address=simlog.mac_text(pend.addr), ok=False, reason=reason)
                self._connect_failed()
                return
            await asyncio.sleep_ms(min(wait, scan_ms - el))
            if pend.cancelled or gen != self._gen:
                return
        if setup:
            await asyncio.sleep_ms(setup)
            if pend.cancelled or gen != self._gen:
                return
        self._pending = None
        h = self._next_handle
        self._next_handle += 1
        peer.link(h, itv)
        self._conns[h] = peer
        simlog.event("connect", address=peer.address, ok=True, conn_handle=h, interval_ms=itv)
        self._call_views(_IRQ_PERIPHERAL_CONNECT, (h, peer.addr_type, self._mv_addr(peer.addr)))
        if peer.drop_after_ms is not None:
            asyncio.create_task(self._drop(h, "remote", int(peer.drop_after_ms), self._gen))

    def gap_disconnect(self, conn_handle):
        self._check()
        p = self._conns.get(conn_handle)
        if p is None:
            return False
        if p.disconnecting:
            raise OSError(errno.EALREADY)
        p.disconnecting = True
        delay = _real(_fig("ble_disconnect_intervals") * p.interval_ms)
        asyncio.create_task(self._drop(conn_handle, "local", delay, self._gen))
        return True

    async def _drop(self, h, reason, delay, gen):
        await asyncio.sleep_ms(delay)
        if gen != self._gen:
            return
        p = self._conns.get(h)
        if p is None:
            return
        # NimBLE fails the outstanding GATT procedures before the GAP event.
        ops, p.ops = p.ops, []
        for op in ops:
            if op[1] is not None and op[1][2] is not None:
                self._call(op[1][0], op[1][2])
        del self._conns[h]
        p.link(None)
        simlog.event("disconnect", address=p.address, conn_handle=h, reason=reason)
        self._call_views(_IRQ_PERIPHERAL_DISCONNECT, (h, p.addr_type, self._mv_addr(p.addr)))

    # --- GATT client ----------------------------------------------------------

    def _op(self, peer, h, results, done, rtts):
        # results: list of (event, data); done: (event, ok_data, fail_data or None).
        # The link's ATT requests are answered one after the other, `rtts` round trips
        # each (or gatt_ms per procedure).
        if peer.gatt_ms is not None:
            cost = peer.gatt_ms
        else:
            cost = _real(rtts * _fig("att_rtt_intervals") * peer.interval_ms)
        peer.att_free = _later(peer.att_free, cost)
        op = [results, done]
        peer.ops.append(op)
        asyncio.create_task(self._run_op(peer, h, op, peer.att_free, self._gen))

    def _discovery(self, p, kind, start, end, uuid, key):
        rtts = _fig(key)
        simlog.event("discover", address=p.address, kind=kind, start=start, end=end,
                     uuid=None if uuid is None else repr(uuid), rtts=rtts, interval_ms=p.interval_ms)
        return rtts

    async def _run_op(self, peer, h, op, due, gen):
        await _until(due)
        if gen != self._gen or op not in peer.ops:
            return
        peer.ops.remove(op)
        for ev, data in op[0]:
            self._call(ev, data)
        if op[1] is not None:
            if op[1][0] == _IRQ_GATTC_CHARACTERISTIC_DONE:
                self._char_disc_busy = False
            self._call(op[1][0], op[1][1])

    def gattc_discover_services(self, conn_handle, uuid=None):
        p = self._peer_for(conn_handle)
        res = []
        for start, end, su, chars in p.services:
            if uuid is None or su == uuid:
                res.append((_IRQ_GATTC_SERVICE_RESULT, (conn_handle, start, end, UUID(su))))
        rtts = self._discovery(p, "services", 1, 0xFFFF, uuid, "gatt_service_rtts")
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_SERVICE_DONE, (conn_handle, 0), (conn_handle, _BLE_HS_ENOTCONN)), rtts)

    def gattc_discover_characteristics(self, conn_handle, start_handle, end_handle, uuid=None):
        p = self._peer_for(conn_handle)
        if self._char_disc_busy:
            raise OSError(_EBUSY)
        chars = []
        for s in p.services:
            for c in s[3]:
                if start_handle <= c.def_handle <= end_handle:
                    chars.append(c)
        res = []
        for i in range(len(chars)):
            c = chars[i]
            c_end = chars[i + 1].def_handle - 1 if i + 1 < len(chars) else end_handle
            if uuid is None or c.uuid == uuid:
                res.append((_IRQ_GATTC_CHARACTERISTIC_RESULT,
                            (conn_handle, c_end, c.value_handle, c.props, UUID(c.uuid))))
        self._char_disc_busy = True
        rtts = self._discovery(p, "characteristics", start_handle, end_handle, uuid, "gatt_characteristics_rtts")
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_CHARACTERISTIC_DONE, (conn_handle, 0), (conn_handle, _BLE_HS_ENOTCONN)), rtts)

    def gattc_discover_descriptors(self, conn_handle, start_handle, end_handle):
        p = self._peer_for(conn_handle)
        res = []
        for h, u in p.attrs:
            if start_handle < h <= end_handle:
                res.append((_IRQ_GATTC_DESCRIPTOR_RESULT, (conn_handle, h, UUID(u))))
        rtts = self._discovery(p, "descriptors", start_handle, end_handle, None, "gatt_descriptor_rtts")
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_DESCRIPTOR_DONE, (conn_handle, 0), (conn_handle, _BLE_HS_ENOTCONN)), rtts)

    def gattc_read(self, conn_handle, value_handle):
        p = self._peer_for(conn_handle)
        c = p.find_char(value_handle)
        if value_handle == p.cccd_handle or value_handle == p.changed_cccd:
            status, val = 0, bytes([p.cccd & 0xFF, p.cccd >> 8]) if value_handle == p.cccd_handle else b"\x00\x00"
        elif value_handle not in p.values:
            status, val = _ATT_INVALID_HANDLE, None
        elif c is not None and not (c.props & FLAG_READ):
            status, val = _ATT_READ_NOT_PERMITTED, None
        else:
            status, val = 0, p.values[value_handle]
        res = []
        if val is not None:
            res.append((_IRQ_GATTC_READ_RESULT, (conn_handle, value_handle, memoryview(bytes(val)))))
        simlog.event("read", address=p.address, handle=value_handle, status=status)
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_READ_DONE, (conn_handle, value_handle, status),
                  (conn_handle, value_handle, _BLE_HS_ENOTCONN)), 1)

    def gattc_write(self, conn_handle, value_handle, data, mode=0):
        p = self._peer_for(conn_handle)
        mode = int(mode)
        if mode not in (0, 1):
            raise OSError(errno.EINVAL)
        data = bytes(data)
        status = 0
        if value_handle == p.cccd_handle:
            v = data[0] | (data[1] << 8) if len(data) >= 2 else (data[0] if data else 0)
            p.cccd = v
            simlog.event("subscribe", address=p.address, handle=value_handle, notify=bool(v & 1), indicate=bool(v & 2))
        elif value_handle == p.write_handle:
            c = p.find_char(value_handle)
            if not (c.props & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE)):
                status = _ATT_WRITE_NOT_PERMITTED
            else:
                simlog.event("write", address=p.address, handle=value_handle,
                             hex=binascii.hexlify(data).decode(), response=bool(mode))
                seen = len(p.bms.requests)
                out = p.bms.handle_write(data)
                if out:
                    due = self._reply_due(p, len(data), out, len(p.bms.requests) - seen)
                    asyncio.create_task(self._deliver(p, conn_handle, out, due, self._gen))
        elif value_handle == p.changed_cccd or value_handle == p.vendor_handle:
            pass
        elif p.is_attr(value_handle):
            status = _ATT_WRITE_NOT_PERMITTED
        else:
            status = _ATT_INVALID_HANDLE
        if mode == 1:
            self._op(p, conn_handle, [],
                     (_IRQ_GATTC_WRITE_DONE, (conn_handle, value_handle, status),
                      (conn_handle, value_handle, _BLE_HS_ENOTCONN)), _fig("cccd_write_rtts"))

    def _reply_due(self, p, req_bytes, out, replies):
        """Tick at which the reply to a request written now leaves the dongle: half an
        interval to the BMS, its UART (queued behind an earlier request's) carrying
        request and reply, processing per reply; half an interval back."""
        if p.latency_ms is not None:
            return time.ticks_add(_ticks(), p.latency_ms)
        half = _real(p.interval_ms / 2)
        nbytes = req_bytes
        for c in out:
            nbytes += len(c)
        busy = _real(_uart_ms(nbytes) + max(1, replies) * _fig("bms_processing_ms"))
        arrive = time.ticks_add(_ticks(), half)
        start = arrive if p.bms_free is None or _diff(p.bms_free, arrive) < 0 else p.bms_free
        p.bms_free = time.ticks_add(start, busy)
        return time.ticks_add(p.bms_free, half)

    async def _deliver(self, p, h, out, due, gen):
        await _until(due)
        if gen != self._gen or self._conns.get(h) is not p:
            simlog.event("notify_lost", address=p.address, reason="disconnected", chunks=len(out))
            return
        # All chunks of the reply back-to-back, no asyncio turn in between (as
        # with the ESP32's synchronous BLE events), unless the profile spaces them.
        gap = 0
        if p.latency_ms is None:
            gap = _real(_fig("notify_extra_intervals") * p.interval_ms)
        first = True
        for chunk in out:
            if gap and not first:
                await asyncio.sleep_ms(gap)
                if gen != self._gen or self._conns.get(h) is not p:
                    simlog.event("notify_lost", address=p.address, reason="disconnected", len=len(chunk))
                    return
            first = False
            if not (p.cccd & 1):
                simlog.event("notify_lost", address=p.address, reason="not_subscribed", len=len(chunk))
                continue
            p.sent += 1
            if p.sent - 1 in p.lose:
                simlog.event("notify_lost", address=p.address, reason="air", len=len(chunk))
                continue
            simlog.event("notify", address=p.address, len=len(chunk))
            self._call_views(_IRQ_GATTC_NOTIFY, (h, p.notify_handle, self._mv_data(chunk)))
            if gen != self._gen or self._conns.get(h) is not p:
                return

    def gattc_exchange_mtu(self, conn_handle):
        p = self._peer_for(conn_handle)
        mtu = min(self._mtu, int(p.d.get("mtu", 23)))
        simlog.event("mtu", address=p.address, mtu=mtu)
        self._op(p, conn_handle, [], (_IRQ_MTU_EXCHANGED, (conn_handle, mtu), None), 1)

    # --- peripheral-role calls that a central-only firmware should not need ---

    def gap_advertise(self, *args, **kwargs):
        self._check()
        raise OSError(errno.EOPNOTSUPP)


_ble = None


def BLE():
    global _ble
    if _ble is None:
        _ble = _BLE()
    return _ble
