# GATT client: discovery, writes, notifications, as micropython-lib's aioble client.py:
# - one discovery at a time per connection: another started before the first was run
#   to its end raises ValueError (for good, if the first was abandoned or cancelled);
# - discovery ignores its timeout_ms (unimplemented upstream: bound it with
#   asyncio.wait_for_ms) and its done status (a lost link just ends it; service() gives
#   None); of several waiting results the newest comes out first;
# - a value handle's events reach only the object registered for it by subscribe(),
#   notified() or a write with response; the others are dropped;
# - a notify characteristic keeps ONE unread notification (upstream's _notify_queue is a
#   deque of length 1): a new one replaces it and only the step from none to one wakes
#   the reader, so of a burst delivered back to back (bluetooth.py delivers a reply's
#   notifications so, as the ESP32 port does) notified() returns the last only
#   (micropython-lib#934); a handler added with core.register_irq_handler sees each;
# - write(response=None) asks for a response only if the characteristic has WRITE but
#   not WRITE_NO_RESPONSE; a non-zero status raises GattError;
# - subscribe() finds the CCCD (0x2902) by descriptor discovery from the value handle to
#   the characteristic's end (value handle + 2 if unknown) and writes it with response.
from micropython import const
import asyncio

import bluetooth

from .core import ble, links, register_irq_handler, GattError

_IRQ_GATTC_WRITE_DONE = const(17)
_IRQ_GATTC_NOTIFY = const(18)
_FOUND = (9, 11, 13)  # service, characteristic, descriptor result; done = result + 1
_READ = const(0x02)
_WRITE_NO_RESPONSE = const(0x04)
_WRITE = const(0x08)
_NOTIFY = const(0x10)


def _gatt_irq(event, data):
    if event == _IRQ_GATTC_NOTIFY or event == _IRQ_GATTC_WRITE_DONE:
        conn = links.get(data[0])
        target = conn and conn._listeners.get(data[1])
        if target and event == _IRQ_GATTC_NOTIFY:
            target._on_notify(bytes(data[2]))  # a view the stack reuses: copy it
        elif target and target._written:
            target._status = data[2]
            target._written.set()
    elif event in _FOUND or event - 1 in _FOUND:
        conn = links.get(data[0])
        job = conn and conn._discovery
        if job and event in _FOUND:
            job._found.append(data[1:-1] + (bluetooth.UUID(data[-1]),))
        elif job:
            job._done = True
        if job:
            job._wake.set()


register_irq_handler(_gatt_irq, None)


class Discovery:
    # One discovery as an async iterator: `begin()` issues it on the first step and each
    # result's fields (less the connection handle) go to `build`.
    def __init__(self, conn, begin, build):
        self._conn, self._begin, self._build = conn, begin, build
        self._found, self._started, self._done = [], False, False
        self._wake = asyncio.ThreadSafeFlag()

    def __aiter__(self):
        return self

    async def __anext__(self):
        conn = self._conn
        if not self._started:
            if conn._discovery:
                raise ValueError("another discovery is still running on this connection")
            conn._discovery, self._started = self, True
            self._begin()
        while not self._found:
            if self._done:
                if conn._discovery is self:
                    conn._discovery = None
                raise StopAsyncIteration
            await self._wake.wait()
        return self._build(*self._found.pop())


async def first(found, uuid):
    # Runs a discovery to its end (an unfinished one blocks the next); the first match.
    hit = None
    async for item in found:
        if hit is None and item.uuid == uuid:
            hit = item
    return hit


class ClientService:
    def __init__(self, connection, first_handle, last_handle, uuid):
        self.connection, self.uuid, self._span = connection, uuid, (first_handle, last_handle)

    def characteristics(self, uuid=None, timeout_ms=2000):
        c, (start, end) = self.connection, self._span
        begin = lambda: ble.gattc_discover_characteristics(c._handle, start, end, uuid)
        return Discovery(c, begin, lambda *f: ClientCharacteristic(self, *f))

    async def characteristic(self, uuid, timeout_ms=2000):
        return await first(self.characteristics(uuid, timeout_ms), uuid)


class _Attribute:
    # Shared by characteristics and descriptors: a value handle on a link, and writes.
    _written = None

    def _listen(self):
        self.connection._listeners[self._handle] = self

    async def write(self, data, response=None, timeout_ms=1000):
        props = self.properties
        if not props & (_WRITE | _WRITE_NO_RESPONSE):
            raise ValueError("not writable")
        if response is None:
            response = props & _WRITE and not props & _WRITE_NO_RESPONSE
        if not response:
            return ble.gattc_write(self.connection._handle, self._handle, data, 0)
        self._listen()
        self._status = None
        self._written = self._written or asyncio.ThreadSafeFlag()
        ble.gattc_write(self.connection._handle, self._handle, data, 1)
        with self.connection.timeout(timeout_ms):
            await self._written.wait()
        if self._status:
            raise GattError(self._status)


class ClientCharacteristic(_Attribute):
    def __init__(self, service, last, handle, props, uuid):
        self.service, self.connection = service, service.connection
        self.uuid, self.properties, self._handle = uuid, props, handle
        self._end = last if last > handle else handle + 2
        self._unread = None
        self._arrived = asyncio.ThreadSafeFlag()

    def _on_notify(self, data):
        was_empty = self._unread is None
        self._unread = data
        if was_empty:
            self._arrived.set()

    async def notified(self, timeout_ms=None):
        if not self.properties & _NOTIFY:
            raise ValueError("cannot notify")
        self._listen()
        with self.connection.timeout(timeout_ms):
            await self._arrived.wait()
        data, self._unread = self._unread, None
        return data

    async def descriptor(self, uuid, timeout_ms=2000):
        c, start, end = self.connection, self._handle, self._end
        begin = lambda: ble.gattc_discover_descriptors(c._handle, start, end)
        return await first(Discovery(c, begin, lambda h, u: ClientDescriptor(self, h, u)), uuid)

    async def subscribe(self, notify=True, indicate=False):
        self._listen()  # notifications are kept from now on, before any notified()
        cccd = await self.descriptor(bluetooth.UUID(0x2902))
        if cccd is None:
            raise ValueError("no CCCD (0x2902) to subscribe with")
        await cccd.write(bytes(((1 if notify else 0) | (2 if indicate else 0), 0)))


class ClientDescriptor(_Attribute):
    properties = _READ | _WRITE  # upstream takes every descriptor as readable and writable

    def __init__(self, characteristic, handle, uuid):
        self.characteristic, self.connection = characteristic, characteristic.connection
        self.uuid, self._handle = uuid, handle
