# Simulation stand-in for aioble.core (micropython-lib aioble-core 0.4.0 API).
# Written for the simulator; behaviour follows the real module: one BLE singleton,
# IRQ dispatch to registered handlers, ensure_active()/stop(), log_level.

import bluetooth

log_level = 1


def log_error(*args):
    if log_level > 0:
        print("[aioble] E:", *args)


def log_warn(*args):
    if log_level > 1:
        print("[aioble] W:", *args)


def log_info(*args):
    if log_level > 2:
        print("[aioble] I:", *args)


class GattError(Exception):
    def __init__(self, status):
        self._status = status


def ensure_active():
    # The real one also tries aioble.security.load_secrets() (not simulated).
    if not ble.active():
        ble.active(True)


def config(*args, **kwargs):
    ensure_active()
    return ble.config(*args, **kwargs)


_irq_handlers = []
_shutdown_handlers = []


def register_irq_handler(irq, shutdown):
    if irq:
        _irq_handlers.append(irq)
    if shutdown:
        _shutdown_handlers.append(shutdown)


def stop():
    ble.active(False)
    for h in _shutdown_handlers:
        h()


def ble_irq(event, data):
    log_info(event, data)
    # First handler returning something other than None wins (only matters for
    # the security events, which are not simulated).
    for h in _irq_handlers:
        r = h(event, data)
        if r is not None:
            return r


ble = bluetooth.BLE()
ble.irq(ble_irq)
