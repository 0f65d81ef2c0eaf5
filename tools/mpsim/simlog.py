# Simulation plumbing shared by the MicroPython stand-ins (bluetooth/aioble,
# network, machine, umqtt), so that each thing is read or written one way:
# - event("scan", active=True) appends one JSON object per line to
#   $JBDGW_SIM_DIR/events.jsonl (no-op when JBDGW_SIM_DIR is unset); every
#   line carries "ev" and "ms" (monotonic milliseconds of this process);
# - sim_path(name): a file in that state directory (None without one);
# - scenario(): the scenario file $JBDGW_SIM_SCENARIO as a dict, read once per
#   process (a wake is one process, and the driver rewrites the file between
#   wakes only);
# - mac_bytes()/mac_text(): MAC addresses between scenario text and bytes.
# Runs on MicroPython and CPython (host tests import it).

import binascii
import json
import os
import time

_EVENTS = "events.jsonl"


def _getenv(name):
    try:
        return os.getenv(name)
    except AttributeError:
        return None


def _ms():
    try:
        return time.ticks_ms()
    except AttributeError:
        return int(time.monotonic() * 1000)


def sim_path(name):
    d = _getenv("JBDGW_SIM_DIR")
    if not d:
        return None
    return d.rstrip("/") + "/" + name


def event(ev, **fields):
    p = sim_path(_EVENTS)
    if not p:
        return
    rec = {"ev": ev, "ms": _ms()}
    for k in fields:
        rec[k] = fields[k]
    line = json.dumps(rec)
    with open(p, "a") as f:
        f.write(line + "\n")


_loaded = {}


def _json_file(var):
    # Each file the driver names is read once per process (a wake is one process, and the
    # driver rewrites the files between wakes only); {} when the variable is unset.
    if var not in _loaded:
        doc = {}
        p = _getenv(var)
        if p:
            with open(p) as f:
                doc = json.load(f)
        _loaded[var] = doc
    return _loaded[var]


def scenario():
    """The scenario JSON as a dict ({} without JBDGW_SIM_SCENARIO)."""
    return _json_file("JBDGW_SIM_SCENARIO")


def mac_bytes(text):
    """Address text (aa:bb:cc:dd:ee:ff, with "-", or bare hex) -> 6 bytes. A
    malformed address in a scenario raises instead of quietly simulating another."""
    t = str(text).replace(":", "").replace("-", "")
    try:
        b = binascii.unhexlify(t)
    except ValueError:
        b = b""
    if len(b) != 6:
        raise ValueError("bad MAC address in scenario: %s" % text)
    return b


def mac_text(b):
    """6 bytes -> "aa:bb:cc:dd:ee:ff" (lower case, as the events show it)."""
    return ":".join(["%02x" % x for x in b])


# The latency profile (tools/jbdgw/profiles/*.json, resolved by the driver into a flat
# {key: value} file named by $JBDGW_SIM_PROFILE, with "time_scale" added): the stand-ins
# take every radio, link and BMS latency from it. Without one (a stand-in's own unit
# tests), every latency is 0 and other figures come from `default`.
def profile():
    return _json_file("JBDGW_SIM_PROFILE")


def figure(key, default=0):
    """A profile figure as given (a count, a rate, or ms not to be scaled)."""
    return profile().get(key, default)


def delay_ms(ms):
    """Simulated milliseconds -> the milliseconds to really wait (profile's time_scale,
    below 1 in tests to run faster); whole ms, as asyncio.sleep_ms needs."""
    return int(ms * profile().get("time_scale", 1) + 0.5)
