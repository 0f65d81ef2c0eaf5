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
#   asyncio turn in between.
# - addr/adv_data/notify data are memoryviews of buffers that are overwritten
#   right after the handler returns (code that keeps them sees garbage).
# - calls while inactive raise OSError(ENODEV); a failed connect is reported as
#   _IRQ_PERIPHERAL_DISCONNECT (0xFFFF, 0xFF, zero address) after scan_duration_ms;
#   gap_connect(None) with nothing pending raises OSError(EALREADY); scanning
#   while a connect is pending raises OSError(EBUSY).
#
# Extra scenario keys per device (all optional): connect_ms (80), gatt_ms (10),
# drop_after_ms (link lost N ms after connecting), connect_failures (the first N
# connect attempts fail as if the device was out of range), no_reply (list of
# registers the BMS ignores), write_props (properties of the write char, default
# READ|WRITE_NO_RESPONSE = 0x06), manufacturer_hex (AD type 0xFF payload),
# advertising (false = never advertises), lose_notifications (list of 0-based
# indexes, counted over the process, of notifications lost on the air).

import asyncio
import binascii
import errno
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

_SCAN_REPEAT_MS = 400  # how often an advertiser is seen again during a scan


def _ticks():
    return time.ticks_ms()


def _diff(a, b):
    return time.ticks_diff(a, b)


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
        self.latency_ms = int(d.get("latency_ms", vbms.DEFAULT_LATENCY_MS))
        self.connect_ms = int(d.get("connect_ms", 80))
        self.gatt_ms = int(d.get("gatt_ms", 10))
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

        # GATT table (handles as on the common JBD dongle: notify value 0x11,
        # its CCCD 0x12, write value 0x15).
        self.services = [
            (0x0001, 0x0005, UUID(0x1800), [
                _Char(0x0002, 0x0003, FLAG_READ, UUID(0x2A00), []),
                _Char(0x0004, 0x0005, FLAG_READ, UUID(0x2A01), []),
            ]),
            (0x0006, 0x0009, UUID(0x1801), [
                _Char(0x0007, 0x0008, FLAG_INDICATE, UUID(0x2A05), [(0x0009, UUID(0x2902))]),
            ]),
            (0x000F, 0x0016, UUID(svc), [
                _Char(0x0010, 0x0011, FLAG_READ | FLAG_NOTIFY, UUID(ntf),
                      [(0x0012, UUID(0x2902)), (0x0013, UUID(0x2901))]),
                _Char(0x0014, 0x0015, wprops, UUID(wr), [(0x0016, UUID(0x2901))]),
            ]),
            (0x0017, 0xFFFF, UUID(_VENDOR_SVC), [
                _Char(0x0018, 0x0019, FLAG_READ | FLAG_WRITE_NO_RESPONSE, UUID(_VENDOR_CHR), []),
            ]),
        ]
        self.notify_handle = 0x0011
        self.cccd_handle = 0x0012
        self.write_handle = 0x0015
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
            0x0003: nm,
            0x0005: b"\x00\x00",
            0x0008: b"",
            0x0009: b"\x00\x00",
            0x0011: b"",
            0x0013: b"Notify",
            0x0015: b"",
            0x0016: b"Write",
            0x0019: b"",
        }
        self.link(None)
        self.adv_data, self.resp_data = self._build_adv()

    def link(self, conn_handle):
        # Every link (and the lack of one) starts unsubscribed with no GATT
        # procedure pending: a procedure of a lost link never completes.
        self.conn_handle = conn_handle
        self.disconnecting = False
        self.cccd = 0
        self.ops = []

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
    def __init__(self, peer, addr_type, addr):
        self.peer = peer
        self.addr_type = addr_type
        self.addr = addr
        self.cancelled = False


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
        start = _ticks()
        due = {}
        for i, p in enumerate(self._peers):
            due[i] = 5 + 4 * i
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
                    due[i] = now + _SCAN_REPEAT_MS
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
        pend = _Pending(peer, addr_type, addr)
        self._pending = pend
        simlog.event(
            "connect_start",
            address=simlog.mac_text(addr),
            addr_type=addr_type,
            scan_duration_ms=scan_duration_ms,
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
        start = _ticks()
        fail_this = False
        if peer is not None and peer.connect_failures > 0:
            peer.connect_failures -= 1
            fail_this = True
        # Wait until the peer is seen advertising (connect_ms after it starts
        # advertising) or the scan window ends.
        adv_since = None
        while True:
            await asyncio.sleep_ms(5)
            if pend.cancelled or gen != self._gen:
                return
            el = _diff(_ticks(), start)
            if peer is not None and not fail_this and peer.advertising():
                if adv_since is None:
                    adv_since = el
                if el - adv_since >= peer.connect_ms:
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
        self._pending = None
        h = self._next_handle
        self._next_handle += 1
        peer.link(h)
        self._conns[h] = peer
        simlog.event("connect", address=peer.address, ok=True, conn_handle=h)
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
        asyncio.create_task(self._drop(conn_handle, "local", 20, self._gen))
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

    def _op(self, peer, h, results, done):
        # results: list of (event, data); done: (event, ok_data, fail_data or None)
        op = [results, done]
        peer.ops.append(op)
        asyncio.create_task(self._run_op(peer, h, op, self._gen))

    async def _run_op(self, peer, h, op, gen):
        await asyncio.sleep_ms(peer.gatt_ms)
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
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_SERVICE_DONE, (conn_handle, 0), (conn_handle, _BLE_HS_ENOTCONN)))

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
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_CHARACTERISTIC_DONE, (conn_handle, 0), (conn_handle, _BLE_HS_ENOTCONN)))

    def gattc_discover_descriptors(self, conn_handle, start_handle, end_handle):
        p = self._peer_for(conn_handle)
        res = []
        for h, u in p.attrs:
            if start_handle < h <= end_handle:
                res.append((_IRQ_GATTC_DESCRIPTOR_RESULT, (conn_handle, h, UUID(u))))
        self._op(p, conn_handle, res,
                 (_IRQ_GATTC_DESCRIPTOR_DONE, (conn_handle, 0), (conn_handle, _BLE_HS_ENOTCONN)))

    def gattc_read(self, conn_handle, value_handle):
        p = self._peer_for(conn_handle)
        c = p.find_char(value_handle)
        if value_handle == p.cccd_handle or value_handle == 0x0009:
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
                  (conn_handle, value_handle, _BLE_HS_ENOTCONN)))

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
                out = p.bms.handle_write(data)
                if out:
                    asyncio.create_task(self._deliver(p, conn_handle, out, self._gen))
        elif value_handle == 0x0009 or value_handle == 0x0019:
            pass
        elif value_handle in p.values:
            status = _ATT_WRITE_NOT_PERMITTED
        else:
            status = _ATT_INVALID_HANDLE
        if mode == 1:
            self._op(p, conn_handle, [],
                     (_IRQ_GATTC_WRITE_DONE, (conn_handle, value_handle, status),
                      (conn_handle, value_handle, _BLE_HS_ENOTCONN)))

    async def _deliver(self, p, h, out, gen):
        await asyncio.sleep_ms(p.latency_ms)
        if gen != self._gen or self._conns.get(h) is not p:
            simlog.event("notify_lost", address=p.address, reason="disconnected", chunks=len(out))
            return
        # All chunks of the reply back-to-back, no asyncio turn in between (as
        # with the ESP32's synchronous BLE events).
        for chunk in out:
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
        self._op(p, conn_handle, [], (_IRQ_MTU_EXCHANGED, (conn_handle, mtu), None))

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
