# Simulation event log shared by the MicroPython stand-ins (bluetooth/aioble,
# network, machine, umqtt). event("scan", active=True) appends one JSON object
# per line to $JBDGW_SIM_DIR/events.jsonl; no-op when JBDGW_SIM_DIR is unset.
# Every line carries "ev" and "ms" (monotonic milliseconds of this process).
# Runs on MicroPython and CPython.

import json
import os
import time

_FILE = "events.jsonl"


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


def path():
    d = _getenv("JBDGW_SIM_DIR")
    if not d:
        return None
    return d.rstrip("/") + "/" + _FILE


def event(ev, **fields):
    p = path()
    if not p:
        return
    rec = {"ev": ev, "ms": _ms()}
    for k in fields:
        rec[k] = fields[k]
    line = json.dumps(rec)
    with open(p, "a") as f:
        f.write(line + "\n")
