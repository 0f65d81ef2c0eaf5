# Simulated ESP32 `esp32` module for the MicroPython unix port: wake sources
# (recorded, logged as event "wake_source"), heap info, MCU temperature and a
# minimal in-memory NVS.

try:
    from simlog import event as _event
except ImportError:

    def _event(ev, **fields):
        pass


WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True

HEAP_DATA = 4  # MALLOC_CAP_8BIT
HEAP_EXEC = 1  # MALLOC_CAP_EXEC

_wake = {}


def _pin_id(p):
    i = getattr(p, "_id", None)
    return p if i is None else i


def wake_on_ext0(pin, level):
    _wake["ext0"] = (None if pin is None else _pin_id(pin), bool(level))
    _event("wake_source", source="ext0", pin=_wake["ext0"][0], level=bool(level))


def wake_on_ext1(pins, level):
    ids = [] if pins is None else [_pin_id(p) for p in pins]
    _wake["ext1"] = (ids, bool(level))
    _event("wake_source", source="ext1", pins=ids, level=bool(level))


def wake_on_touch(wake):
    _wake["touch"] = bool(wake)


def wake_on_ulp(wake):
    _wake["ulp"] = bool(wake)


def gpio_deep_sleep_hold(enable):
    _wake["hold"] = bool(enable)


def idf_heap_info(capabilities):
    # (total, free, largest free block, minimum free seen) per IDF heap region;
    # figures in the range reported for a generic ESP32 with Wi-Fi + BLE up.
    if capabilities & HEAP_EXEC:
        return [(72812, 24000, 23552, 21000), (31128, 8192, 8180, 6000)]
    return [
        (7272, 4128, 4096, 3900),
        (16648, 12000, 11264, 9800),
        (94340, 56000, 53248, 30000),
        (15072, 15024, 15008, 15000),
        (113840, 4560, 4096, 3000),
    ]


def mcu_temperature():
    return 42


def raw_temperature():
    return 108


class NVS:
    _store = {}

    def __init__(self, namespace):
        self._ns = self._store.setdefault(namespace, {})

    def set_i32(self, key, value):
        self._ns[key] = int(value)

    def get_i32(self, key):
        v = self._ns.get(key)
        if not isinstance(v, int):
            raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND
        return v

    def set_blob(self, key, value):
        self._ns[key] = bytes(value)

    def get_blob(self, key, buffer):
        v = self._ns.get(key)
        if not isinstance(v, bytes):
            raise OSError(-4354)
        n = min(len(buffer), len(v))
        buffer[:n] = v[:n]
        return len(v)

    def erase_key(self, key):
        if key not in self._ns:
            raise OSError(-4354)
        del self._ns[key]

    def commit(self):
        pass
