# Event hub of the aioble stand-in: the bluetooth.BLE() object, the handler chain every
# event goes through, power, and the errors and time bound shared by central.py and
# client.py. Behaviour as micropython-lib's aioble core.py and device.py.
import asyncio

import bluetooth

ble = bluetooth.BLE()
links = {}  # connection handle -> DeviceConnection, for routing GATT events
_chain = []
_on_stop = []


class GattError(Exception):
    # A non-zero GATT status, as .status (upstream's code reads ._status).
    def __init__(self, status):
        super().__init__(status)
        self.status = self._status = status


class DeviceDisconnectedError(Exception):
    pass


def register_irq_handler(irq, shutdown):
    # Each event goes to the handlers in the order they were added until one returns
    # something other than None (ours never do); stop() calls the shutdown ones.
    if irq:
        _chain.append(irq)
    if shutdown:
        _on_stop.append(shutdown)


def _route(event, data):
    for handler in _chain:
        answer = handler(event, data)
        if answer is not None:
            return answer


ble.irq(_route)


def power_on():
    if not ble.active():
        ble.active(True)


def config(*args, **kw):
    power_on()
    return ble.config(*args, **kw)


def stop():
    # As upstream, open connections are not told: they keep claiming their handle.
    ble.active(False)
    for handler in _on_stop:
        handler()


class TimeBound:
    # `with conn.timeout(ms):` cancels the block's task after ms (the block raises
    # asyncio.TimeoutError) or when `link` drops (DeviceDisconnectedError). No limit for
    # ms None or 0; no link watch for link None. Other cancellations pass through.
    def __init__(self, link, ms):
        self.link, self.ms, self.alarm, self.rang = link, ms, None, False

    async def _ring(self):
        await asyncio.sleep_ms(self.ms)
        self.rang = True
        self.task.cancel()

    def __enter__(self):
        self.task = asyncio.current_task()
        if self.link:
            self.link._bounds.append(self)
        if self.ms:
            self.alarm = asyncio.create_task(self._ring())

    def __exit__(self, kind, value, tb):
        if self.link:
            self.link._bounds.remove(self)
        if self.alarm and not self.rang:
            self.alarm.cancel()
        if kind is asyncio.CancelledError:
            if self.rang:
                raise asyncio.TimeoutError
            if self.link and not self.link.is_connected():
                raise DeviceDisconnectedError
