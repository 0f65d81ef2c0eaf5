# Scanning and connecting, as micropython-lib's aioble central.py and device.py behave:
# - a connect that times out leaves its connection object on the Device, so the next
#   connect() of that Device object returns it at once, dead (micropython-lib#950);
# - the stack reports a failed attempt as a disconnect of an unknown handle, which
#   nobody hears: connect() ends only by its own timeout (asyncio.TimeoutError), and it
#   does not cancel the controller's attempt (a late success belongs to nobody;
#   gap_connect(None) is the caller's job);
# - a scan or a connect first stops the scan in progress;
# - a disconnect event wakes a task that does the bookkeeping, so is_connected() turns
#   False one scheduler turn later.
from micropython import const
import asyncio
from binascii import unhexlify

import bluetooth

from .core import ble, links, power_on, register_irq_handler, TimeBound

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)
_IRQ_PERIPHERAL_CONNECT = const(7)
_IRQ_PERIPHERAL_DISCONNECT = const(8)
_SCAN_RSP = const(4)  # the other report kinds carry advertising data
_NAMES = (0x09, 0x08)  # AD types: complete, shortened local name
_UUID_LISTS = ((2, (0x02, 0x03)), (4, (0x04, 0x05)), (16, (0x06, 0x07)))

_scanning = None  # the scan that gets the scan events
_connecting = []  # connections waiting for their connect event


def _gap_irq(event, data):
    if event == _IRQ_SCAN_RESULT and _scanning:
        # addr and payload are views the stack reuses once we return: copy them.
        _scanning._inbox.append((data[0], bytes(data[1]), data[2], data[3], bytes(data[4])))
        _scanning._wake.set()
    elif event == _IRQ_SCAN_DONE and _scanning:
        _scanning._over = True
        _scanning._wake.set()
    elif event == _IRQ_PERIPHERAL_CONNECT and _connecting:
        for conn in _connecting:
            if conn.device.addr_type == data[1] and conn.device.addr == bytes(data[2]):
                conn._handle = data[0]
                conn._wake.set()
                break
    elif event == _IRQ_PERIPHERAL_DISCONNECT and data[0] in links:
        links[data[0]]._wake.set()


def _forget():
    global _scanning
    _scanning = None
    _connecting.clear()


register_irq_handler(_gap_irq, _forget)


async def _end_scan():
    if _scanning:
        await _scanning.cancel()


class ScanResult:
    def __init__(self, device):
        self.device = device
        self.rssi = self.adv_data = self.resp_data = None
        self.connectable = False

    def _merge(self, kind, rssi, payload):
        # True if the report changes anything (a new RSSI does): the scan hands the
        # result out again only then.
        news = rssi != self.rssi
        self.rssi = rssi
        if kind == _SCAN_RSP:
            if payload and payload != self.resp_data:
                self.resp_data, news = payload, True
        elif payload != self.adv_data:
            self.adv_data, news = payload, True
            self.connectable = kind < 2  # ADV_IND or ADV_DIRECT_IND
        return news

    def _fields(self, types):
        # AD structure: a length byte (type and value), a type byte, the value.
        for blob in (self.adv_data, self.resp_data):
            at = 0
            while blob and at + 1 < len(blob):
                end = at + 1 + blob[at]
                if blob[at + 1] in types:
                    yield blob[at + 2 : end]
                at = end

    def name(self):
        for value in self._fields(_NAMES):
            return str(value, "utf-8")

    def services(self):
        for size, types in _UUID_LISTS:
            for value in self._fields(types):
                for at in range(0, len(value) - size + 1, size):
                    yield bluetooth.UUID(value[at : at + size])


class scan:
    # `async with scan(...) as s: async for result in s:` yields a ScanResult each time
    # an advertiser's data or RSSI changes, until the scan ends, is left or is stopped.
    def __init__(self, duration_ms, interval_us=None, window_us=None, active=False):
        self._args = (duration_ms, interval_us or 1280000, window_us or 11250, active)
        self._inbox, self._seen, self._over = [], {}, False
        self._wake = asyncio.ThreadSafeFlag()

    async def __aenter__(self):
        global _scanning
        power_on()
        await _end_scan()
        _scanning = self
        ble.gap_scan(*self._args)
        return self

    async def __aexit__(self, *exc):
        if _scanning is self:
            await self.cancel()

    def __aiter__(self):
        return self

    async def __anext__(self):
        global _scanning
        while _scanning is self:
            while self._inbox:
                kind, addr, report, rssi, payload = self._inbox.pop(0)
                result = self._seen.get((kind, addr)) or ScanResult(Device(kind, addr))
                self._seen[(kind, addr)] = result
                if result._merge(report, rssi, payload):
                    return result
            if self._over:
                _scanning = None
            else:
                await self._wake.wait()
        raise StopAsyncIteration

    async def cancel(self):
        global _scanning
        if not self._over:
            ble.gap_scan(None)
            while not self._over:
                await self._wake.wait()
        if _scanning is self:
            _scanning = None


class Device:
    def __init__(self, addr_type, addr):
        self.addr_type = addr_type
        self.addr = unhexlify(addr.replace(":", "")) if isinstance(addr, str) else bytes(addr)
        self._connection = None

    def addr_hex(self):
        return ":".join("%02x" % b for b in self.addr)

    async def connect(self, timeout_ms=10000, scan_duration_ms=None, min_conn_interval_us=None, max_conn_interval_us=None):
        if self._connection:  # alive, or left behind by a timed-out attempt (#950)
            return self._connection
        conn = self._connection = DeviceConnection(self)
        power_on()
        await _end_scan()
        _connecting.append(conn)
        try:
            with TimeBound(None, timeout_ms):
                ble.gap_connect(self.addr_type, self.addr, scan_duration_ms, min_conn_interval_us, max_conn_interval_us)
                await conn._wake.wait()
        finally:
            if conn in _connecting:
                _connecting.remove(conn)
        links[conn._handle] = conn
        conn._keeper = asyncio.create_task(conn._keep())
        return conn


class DeviceConnection:
    def __init__(self, device):
        self.device = device
        self._handle = self._keeper = self._discovery = None
        self._wake = asyncio.ThreadSafeFlag()  # set by the connect, then the disconnect event
        self._bounds = []  # TimeBound blocks to interrupt when the link drops
        self._listeners = {}  # value handle -> the object its GATT events go to

    async def _keep(self):
        await self._wake.wait()
        links.pop(self._handle, None)
        self._handle = self.device._connection = None
        for bound in list(self._bounds):
            bound.task.cancel()

    def is_connected(self):
        return self._handle is not None

    def timeout(self, timeout_ms):
        return TimeBound(self, timeout_ms)

    async def disconnected(self, timeout_ms=None, disconnect=False):
        if self._handle is None:
            return
        if disconnect:
            try:
                ble.gap_disconnect(self._handle)
            except OSError as e:
                print("aioble: gap_disconnect:", e)
        with TimeBound(None, timeout_ms):
            await self._keeper

    async def disconnect(self, timeout_ms=2000):
        await self.disconnected(timeout_ms, True)

    def services(self, uuid=None, timeout_ms=2000):
        from .client import ClientService, Discovery

        return Discovery(self, lambda: ble.gattc_discover_services(self._handle, uuid), lambda *f: ClientService(self, *f))

    async def service(self, uuid, timeout_ms=2000):
        from .client import first

        return await first(self.services(uuid, timeout_ms), uuid)
