# Simulated ESP32 `machine` for the MicroPython unix port.
#
# Extends the built-in unix `machine` module (PinBase, Signal, idle, mem8/16/32,
# soft_reset, time_pulse_us) with the ESP32 calls the gateway uses. State lives
# in $JBDGW_SIM_DIR, written by the host driver (tools/jbdgw/sim.py):
#   reset_cause     int as text, read at import (default PWRON_RESET)
#   wake_reason     optional int as text (default TIMER_WAKE after deep sleep)
#   rtc.bin         RTC memory, loaded at import, rewritten on every write
#   deepsleep.json  written by deepsleep()/reset(): {"ms": sleep time or null
#                   [, "reset": true], "awake_ms": ticks_ms() since simrun.py started
#                   boot.py (real ms: the latency profile's waits at its time_scale)};
#                   the process then exits
#   wdt             written by WDT()/feed(): the timeout in ms; the driver
#                   watches its mtime and kills the wake when it is not fed
# Without JBDGW_SIM_DIR nothing is read or written.
# No Pin: no firmware path reads or drives a pin yet; a safe-mode pin would be
# the reason to simulate one (its level from the scenario).

import sys

_path = sys.path
sys.path = ()
try:
    from machine import *  # noqa: F401,F403  (the built-in module)
finally:
    sys.path = _path
    del _path

import json
import time

import simlog

# Reset causes and wake reasons, ESP32 values (ports/esp32/modmachine.c).
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6

_RTC_MEM_MAX = 2048
_DEFAULT_MAC = b"\x24\x0a\xc4\x5a\x10\x01"


# -- simulation helpers (not ESP32 API) --


def _read_text(name):
    p = simlog.sim_path(name)
    if p is None:
        return None
    try:
        with open(p) as f:
            return f.read()
    except OSError:
        return None


def _write_text(name, text):
    p = simlog.sim_path(name)
    if p is None:
        return
    with open(p, "w") as f:
        f.write(text)


def _base_mac():
    """6 bytes: the chip's base MAC (scenario "mac"/"unique_id" as hex or aa:bb:..);
    network.py derives the Wi-Fi MACs from it, as the ESP32 does."""
    sc = simlog.scenario()
    v = sc.get("mac") or sc.get("unique_id")
    if v:
        return simlog.mac_bytes(v)
    return _DEFAULT_MAC


def _flush():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (AttributeError, OSError):
            pass


# -- reset cause / wake reason --


def _int_file(name, default):
    t = _read_text(name)
    if t is None:
        return default
    try:
        return int(t.strip())
    except ValueError:
        return default


_reset_cause = _int_file("reset_cause", PWRON_RESET)
_wake_reason = _int_file(
    "wake_reason", TIMER_WAKE if _reset_cause == DEEPSLEEP_RESET else 0
)


def reset_cause():
    return _reset_cause


def wake_reason():
    return _wake_reason


def wake_pins():
    return ()


# -- sleep and reset: these end the process (a real deep sleep never returns) --

#: Set when deepsleep()/reset() ran; simrun.py reports firmware that caught
#: the SystemExit and carried on.
_ended = False
#: time.ticks_ms() when simrun.py started boot.py (None when not run by simrun.py). The
#: board's boot_to_main_ms is not waited for here: the bench adds it from the profile.
_boot_ticks = None


def _awake_ms():
    if _boot_ticks is None:
        return None
    return time.ticks_diff(time.ticks_ms(), _boot_ticks)


def _end(record, ev, **fields):
    global _ended
    _ended = True
    awake = _awake_ms()
    record["awake_ms"] = awake
    _write_text("deepsleep.json", json.dumps(record))
    simlog.event(ev, awake_ms=awake, **fields)
    _flush()
    sys.exit(0)


def deepsleep(time_ms=None):
    if time_ms is not None:
        time_ms = int(time_ms)
    _end({"ms": time_ms}, "deepsleep", sleep_ms=time_ms)


def lightsleep(time_ms=None):
    # Light sleep returns, with RAM intact; wake sources other than the timer
    # are not simulated, so lightsleep() without a time returns at once.
    simlog.event("lightsleep", sleep_ms=time_ms)
    if time_ms:
        time.sleep_ms(int(time_ms))


def sleep(time_ms=None):
    # Deprecated alias of lightsleep() on the real ports.
    lightsleep(time_ms)


def reset():
    _end({"ms": None, "reset": True}, "reset")


# -- RTC --


def _load_rtc():
    p = simlog.sim_path("rtc.bin")
    if p is None:
        return b""
    try:
        with open(p, "rb") as f:
            return f.read(_RTC_MEM_MAX)
    except OSError:
        return b""


_rtc_mem = _load_rtc()
_rtc_offset_s = 0  # RTC.datetime(tuple) sets an offset to the host clock


class RTC:
    def __init__(self, id=0):
        pass

    def init(self, datetime):
        self.datetime(datetime)

    def memory(self, *data):
        global _rtc_mem
        if not data:
            return bytes(_rtc_mem)
        buf = bytes(data[0])
        if len(buf) > _RTC_MEM_MAX:
            raise ValueError("buffer too long")
        _rtc_mem = buf
        p = simlog.sim_path("rtc.bin")
        if p is not None:
            with open(p, "wb") as f:
                f.write(buf)
        return None

    def datetime(self, *dt):
        global _rtc_offset_s
        if dt:
            y, mo, d, _wd, h, mi, s = dt[0][:7]
            _rtc_offset_s = time.mktime((y, mo, d, h, mi, s, 0, 0)) - int(time.time())
            return None
        t = time.gmtime(int(time.time()) + _rtc_offset_s)
        # (year, month, day, weekday, hours, minutes, seconds, subseconds)
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)


# -- watchdog --


class WDT:
    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        self._timeout = int(timeout)
        simlog.event("wdt", timeout_ms=self._timeout)
        self.feed()

    def feed(self):
        # The driver compares the file's mtime with the timeout.
        _write_text("wdt", str(self._timeout))


# -- misc --

_freq = 160000000
_irq_state = 1


def unique_id():
    return _base_mac()


def freq(*hz):
    global _freq
    if hz:
        _freq = int(hz[0])
        return None
    return _freq


def disable_irq():
    global _irq_state
    s = _irq_state
    _irq_state = 0
    return s


def enable_irq(state=1):
    global _irq_state
    _irq_state = state
