# Simulation stand-in for aioble.device (Device, DeviceConnection,
# DeviceTimeout, DeviceDisconnectedError). Same semantics as micropython-lib's
# aioble, including its known bugs that the firmware must work around:
# - a DeviceConnection is attached to the Device before connecting and is not
#   detached when connect() times out, so a second connect() on the same Device
#   returns that dead connection at once (micropython-lib#950);
# - disconnect()/disconnected() wait for the disconnect IRQ under a timeout.

from micropython import const

import asyncio
import binascii

from .core import ble, register_irq_handler, log_error

_IRQ_MTU_EXCHANGED = const(21)


class DeviceDisconnectedError(Exception):
    pass


def _device_irq(event, data):
    if event == _IRQ_MTU_EXCHANGED:
        conn_handle, mtu = data
        conn = DeviceConnection._connected.get(conn_handle, None)
        if conn:
            conn.mtu = mtu
            if conn._mtu_event:
                conn._mtu_event.set()


register_irq_handler(_device_irq, None)


class DeviceTimeout:
    """`with DeviceTimeout(connection, ms):` -- cancels the current task after
    `ms` (-> asyncio.TimeoutError) or when `connection` drops
    (-> DeviceDisconnectedError). Either argument may be None."""

    def __init__(self, connection, timeout_ms):
        self._connection = connection
        self._timeout_ms = timeout_ms
        self._timer = None
        self._expired = False
        self._task = asyncio.current_task()
        if connection:
            connection._timeouts.append(self)

    async def _watch(self):
        try:
            await asyncio.sleep_ms(self._timeout_ms)
        except asyncio.CancelledError:
            return
        self._expired = True
        self._timer = None
        self._task.cancel()

    def __enter__(self):
        if self._timeout_ms:
            self._timer = asyncio.create_task(self._watch())

    def __exit__(self, exc_type, exc_val, exc_tb):
        if self._connection:
            self._connection._timeouts.remove(self)
        try:
            if exc_type == asyncio.CancelledError:
                if self._timeout_ms and self._expired:
                    raise asyncio.TimeoutError
                if self._connection and self._connection._conn_handle is None:
                    raise DeviceDisconnectedError
                # Cancelled by someone else: let it propagate.
                return
        finally:
            if self._timer:
                self._timer.cancel()


class Device:
    def __init__(self, addr_type, addr):
        self.addr_type = addr_type
        if len(addr) == 6:
            self.addr = addr
        else:
            self.addr = binascii.unhexlify(addr.replace(":", ""))
        self._connection = None

    def __eq__(self, rhs):
        return self.addr_type == rhs.addr_type and self.addr == rhs.addr

    def __hash__(self):
        return hash((self.addr_type, self.addr))

    def __str__(self):
        return "Device({}, {}{})".format(
            "ADDR_PUBLIC" if self.addr_type == 0 else "ADDR_RANDOM",
            self.addr_hex(),
            ", CONNECTED" if self._connection else "",
        )

    def addr_hex(self):
        return binascii.hexlify(self.addr, ":").decode()

    async def connect(
        self,
        timeout_ms=10000,
        scan_duration_ms=None,
        min_conn_interval_us=None,
        max_conn_interval_us=None,
    ):
        # micropython-lib#950: a connection object left behind by an earlier,
        # timed-out attempt is returned as if connected.
        if self._connection:
            return self._connection

        from .central import _connect

        conn = DeviceConnection(self)  # attaches itself to self._connection
        await _connect(conn, timeout_ms, scan_duration_ms, min_conn_interval_us, max_conn_interval_us)
        conn._run_task()
        return conn


class DeviceConnection:
    # conn_handle -> DeviceConnection, for IRQ routing.
    _connected = {}

    def __init__(self, device):
        self.device = device
        device._connection = self

        self.encrypted = False
        self.authenticated = False
        self.bonded = False
        self.key_size = False
        self.mtu = None

        self._conn_handle = None
        # Set by the connect IRQ, later by the disconnect IRQ.
        self._event = asyncio.ThreadSafeFlag()
        self._mtu_event = None
        # Active discovery (services/characteristics/descriptors) on this link.
        self._discover = None
        # value_handle -> characteristic, for notify/read/write IRQ routing.
        self._characteristics = {}
        self._task = None
        self._timeouts = []
        self._pair_event = None
        self._l2cap_channel = None

    async def device_task(self):
        assert self._conn_handle is not None
        await self._event.wait()  # disconnect IRQ
        del DeviceConnection._connected[self._conn_handle]
        self._conn_handle = None
        self.device._connection = None
        for t in self._timeouts:
            t._task.cancel()

    def _run_task(self):
        self._task = asyncio.create_task(self.device_task())

    async def disconnect(self, timeout_ms=2000):
        await self.disconnected(timeout_ms, disconnect=True)

    async def disconnected(self, timeout_ms=None, disconnect=False):
        if not self.is_connected():
            return
        assert self._task
        if disconnect:
            try:
                ble.gap_disconnect(self._conn_handle)
            except OSError as e:
                log_error("Disconnect", e)
        with DeviceTimeout(None, timeout_ms):
            await self._task

    async def service(self, uuid, timeout_ms=2000):
        found = None
        # The discovery must run to completion.
        async for s in self.services(uuid, timeout_ms):
            if found is None and s.uuid == uuid:
                found = s
        return found

    def services(self, uuid=None, timeout_ms=2000):
        from .client import ClientDiscover, ClientService

        return ClientDiscover(self, ClientService, self, timeout_ms, uuid)

    async def pair(self, *args, **kwargs):
        raise NotImplementedError("pairing is not simulated")

    def is_connected(self):
        return self._conn_handle is not None

    def timeout(self, timeout_ms):
        return DeviceTimeout(self, timeout_ms)

    async def exchange_mtu(self, mtu=None, timeout_ms=1000):
        if not self.is_connected():
            raise ValueError("Not connected")
        if mtu:
            ble.config(mtu=mtu)
        if not self._mtu_event:
            self._mtu_event = asyncio.ThreadSafeFlag()
        ble.gattc_exchange_mtu(self._conn_handle)
        with self.timeout(timeout_ms):
            await self._mtu_event.wait()
        return self.mtu

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb):
        await self.disconnect()
