# Simulation stand-in for micropython-lib's aioble (central + GATT client parts),
# for running the unchanged firmware on the MicroPython unix port. It sits on the
# simulated `bluetooth` module (tools/mpsim/bluetooth.py). Peripheral, server,
# security and L2CAP parts are not simulated (their names are absent, as when
# those aioble packages are not installed).

from micropython import const

from .device import Device, DeviceDisconnectedError
from .core import log_info, log_warn, log_error, GattError, config, stop
from .central import scan

ADDR_PUBLIC = const(0)
ADDR_RANDOM = const(1)
