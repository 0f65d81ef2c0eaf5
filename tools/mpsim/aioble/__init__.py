# Stand-in for micropython-lib's aioble, written for this project's simulator on the
# MicroPython unix port: the central role and the GATT client only, with aioble's
# public API. It runs on tools/mpsim/bluetooth.py (the simulated radio) the way aioble
# runs on the ESP32's bluetooth module. core.py: event routing and power; central.py:
# scan and connect; client.py: discovery, writes, notifications.
from micropython import const

from . import core
from .core import DeviceDisconnectedError, GattError, config, stop
from .central import Device, scan

# As upstream, client.py is first imported by a connection's first discovery, so its
# event handler comes after any that the application registered before then.

ADDR_PUBLIC = const(0)
ADDR_RANDOM = const(1)
