# Simulation stand-in for aioble.central (scan, ScanResult, connect).
# Same behaviour as micropython-lib's aioble-central 0.3.0:
# - `scan` is an async context manager and an async iterator; the same
#   ScanResult is yielded again whenever its RSSI or payload changes;
# - a connect attempt that fails at the controller is only reported as a
#   disconnect of an unknown handle, which is ignored, so connect() fails only
#   when its timeout_ms expires (asyncio.TimeoutError);
# - a timed-out connect does not cancel the controller's attempt (no
#   gap_connect(None)); a late success is ignored ("ghost" link).

from micropython import const

import asyncio
import struct

import bluetooth

from .core import ensure_active, ble, log_info, log_error, log_warn, register_irq_handler
from .device import Device, DeviceConnection, DeviceTimeout

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)
_IRQ_PERIPHERAL_CONNECT = const(7)
_IRQ_PERIPHERAL_DISCONNECT = const(8)

_ADV_IND = const(0)
_ADV_DIRECT_IND = const(1)
_ADV_SCAN_IND = const(2)
_ADV_NONCONN_IND = const(3)
_SCAN_RSP = const(4)

_ADV_TYPE_FLAGS = const(0x01)
_ADV_TYPE_NAME = const(0x09)
_ADV_TYPE_SHORT_NAME = const(0x08)
_ADV_TYPE_UUID16_INCOMPLETE = const(0x2)
_ADV_TYPE_UUID16_COMPLETE = const(0x3)
_ADV_TYPE_UUID32_INCOMPLETE = const(0x4)
_ADV_TYPE_UUID32_COMPLETE = const(0x5)
_ADV_TYPE_UUID128_INCOMPLETE = const(0x6)
_ADV_TYPE_UUID128_COMPLETE = const(0x7)
_ADV_TYPE_APPEARANCE = const(0x19)
_ADV_TYPE_MANUFACTURER = const(0xFF)

# The scan that IRQs are delivered to.
_active_scanner = None

# Devices waiting for their connect IRQ.
_connecting = set()


def _central_irq(event, data):
    if event == _IRQ_SCAN_RESULT:
        addr_type, addr, adv_type, rssi, adv_data = data
        sc = _active_scanner
        if not sc:
            return
        # Copy: addr and adv_data are only valid during this call.
        sc._queue.append((addr_type, bytes(addr), adv_type, rssi, bytes(adv_data)))
        sc._event.set()
    elif event == _IRQ_SCAN_DONE:
        sc = _active_scanner
        if not sc:
            return
        sc._done = True
        sc._event.set()
    elif event == _IRQ_PERIPHERAL_CONNECT:
        conn_handle, addr_type, addr = data
        for d in _connecting:
            if d.addr_type == addr_type and d.addr == bytes(addr):
                conn = d._connection
                conn._conn_handle = conn_handle
                conn._event.set()
                break
    elif event == _IRQ_PERIPHERAL_DISCONNECT:
        conn_handle, _, _ = data
        conn = DeviceConnection._connected.get(conn_handle, None)
        if conn:
            conn._event.set()


def _central_shutdown():
    global _active_scanner, _connecting
    _active_scanner = None
    _connecting = set()


register_irq_handler(_central_irq, _central_shutdown)


async def _cancel_pending():
    if _active_scanner:
        await _active_scanner.cancel()


async def _connect(connection, timeout_ms, scan_duration_ms, min_conn_interval_us, max_conn_interval_us):
    device = connection.device
    if device in _connecting:
        # Another connect() on an equal Device is in progress.
        return

    ensure_active()
    await _cancel_pending()

    _connecting.add(device)
    connection._event = connection._event or asyncio.ThreadSafeFlag()
    try:
        with DeviceTimeout(None, timeout_ms):
            ble.gap_connect(
                device.addr_type,
                device.addr,
                scan_duration_ms,
                min_conn_interval_us,
                max_conn_interval_us,
            )
            await connection._event.wait()
            assert connection._conn_handle is not None
            DeviceConnection._connected[connection._conn_handle] = connection
    finally:
        _connecting.remove(device)


class ScanResult:
    def __init__(self, device):
        self.device = device
        self.adv_data = None
        self.resp_data = None
        self.rssi = None
        self.connectable = False

    def _update(self, adv_type, rssi, adv_data):
        """Merge one scan IRQ; True if anything visible changed."""
        changed = rssi != self.rssi
        self.rssi = rssi
        if adv_type == _ADV_IND or adv_type == _ADV_NONCONN_IND:
            if adv_data != self.adv_data:
                self.adv_data = adv_data
                self.connectable = adv_type == _ADV_IND
                changed = True
        elif adv_type == _ADV_SCAN_IND:
            if adv_data != self.adv_data and self.resp_data:
                changed = True
            self.adv_data = adv_data
        elif adv_type == _SCAN_RSP and adv_data:
            if adv_data != self.resp_data:
                self.resp_data = adv_data
                changed = True
        return changed

    def __str__(self):
        return "Scan result: {} {}".format(self.device, self.rssi)

    def _decode_field(self, *adv_type):
        # AD structures: <len = N+1> <type> <N bytes>, in adv data then scan response.
        for payload in (self.adv_data, self.resp_data):
            if not payload:
                continue
            i = 0
            while i + 1 < len(payload):
                n = payload[i]
                if payload[i + 1] in adv_type:
                    yield payload[i + 2 : i + n + 1]
                i += 1 + n

    def name(self):
        for n in self._decode_field(_ADV_TYPE_NAME, _ADV_TYPE_SHORT_NAME):
            return str(n, "utf-8") if n else ""
        return None

    def services(self):
        for size, types in (
            (2, (_ADV_TYPE_UUID16_INCOMPLETE, _ADV_TYPE_UUID16_COMPLETE)),
            (4, (_ADV_TYPE_UUID32_INCOMPLETE, _ADV_TYPE_UUID32_COMPLETE)),
            (16, (_ADV_TYPE_UUID128_INCOMPLETE, _ADV_TYPE_UUID128_COMPLETE)),
        ):
            for field in self._decode_field(*types):
                for i in range(0, len(field), size):
                    yield bluetooth.UUID(field[i : i + size])

    def manufacturer(self, filter=None):
        for field in self._decode_field(_ADV_TYPE_MANUFACTURER):
            if len(field) < 2:
                continue
            company = struct.unpack("<H", field[0:2])[0]
            if filter is None or company == filter:
                yield (company, field[2:])


class scan:
    """async with aioble.scan(duration_ms, interval_us=None, window_us=None,
    active=False) as scanner: async for result in scanner: ..."""

    def __init__(self, duration_ms, interval_us=None, window_us=None, active=False):
        self._queue = []
        self._event = asyncio.ThreadSafeFlag()
        self._done = False
        self._results = set()
        self._duration_ms = duration_ms
        self._interval_us = interval_us or 1280000
        self._window_us = window_us or 11250
        self._active = active

    async def __aenter__(self):
        global _active_scanner
        ensure_active()
        await _cancel_pending()
        _active_scanner = self
        ble.gap_scan(self._duration_ms, self._interval_us, self._window_us, self._active)
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb):
        # Leaving early (break/exception) stops the scan.
        if _active_scanner == self:
            await self.cancel()

    def __aiter__(self):
        assert _active_scanner == self
        return self

    async def __anext__(self):
        global _active_scanner
        if _active_scanner != self:
            # Cancelled, e.g. by a connect.
            raise StopAsyncIteration
        while True:
            while self._queue:
                addr_type, addr, adv_type, rssi, adv_data = self._queue.pop()
                result = None
                for r in self._results:
                    if r.device.addr_type == addr_type and r.device.addr == addr:
                        result = r
                        break
                if result is None:
                    result = ScanResult(Device(addr_type, addr))
                    self._results.add(result)
                if result._update(adv_type, rssi, adv_data):
                    return result
            if self._done:
                _active_scanner = None
                raise StopAsyncIteration
            await self._event.wait()

    async def cancel(self):
        global _active_scanner
        if self._done:
            return
        ble.gap_scan(None)
        while not self._done:
            await self._event.wait()
        _active_scanner = None
