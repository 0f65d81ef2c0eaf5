# MicroPython benchmark: the firmware's own CPU work in one wake, without any radio wait.
# Run from a device image folder with the stand-ins of the board's C/frozen modules first on
# the path:  MICROPYPATH=<mpsim>:.frozen:lib micropython <repo>/tools/bench/wake_cpu.py [runs]
# Prints one JSON line (microseconds):
#   import_us: importing what a wake imports (firmware, aioble, jbd: .mpy files in the image;
#              bluetooth, machine, network, umqtt are C or frozen on the board: preloaded)
#   work_us:   median per wake of the computing the firmware does (config, RTC state,
#              reassembly and decoding of both replies, reading and status JSON)
#   import_bytes, work_bytes: heap allocated by the imports and by one wake's work (GC off)
# The radio phases' event-loop and IRQ handling are not in it: they are small beside these.
import gc
import sys
import time

import bluetooth  # noqa: F401  (C modules on the board: not timed)
import machine  # noqa: F401
import network  # noqa: F401
import umqtt.simple  # noqa: F401

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 51

_OURS = ("aioble", "jbd", "firmware")


def import_all():
    import aioble  # noqa: F401
    import jbd  # noqa: F401
    from firmware import ble, clock, cycle, deliver, messages, rtcstate, wifi  # noqa: F401


def forget():
    # As the wake's _unload does: a module is loaded again once sys.modules drops it.
    for name in list(sys.modules):
        if name.split(".")[0] in _OURS:
            del sys.modules[name]


def allocated(fn):
    """Heap bytes `fn` allocates, with the GC off so nothing is reclaimed meanwhile."""
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    fn()
    n = gc.mem_alloc() - a0
    gc.enable()
    return n


def median_us(fn, runs, before=None):
    times = []
    for _ in range(runs):
        if before:
            before()
        t0 = time.ticks_us()
        fn()
        times.append(time.ticks_diff(time.ticks_us(), t0))
    times.sort()
    return times[len(times) // 2]


def reload():
    forget()
    gc.collect()


import_bytes = allocated(import_all)
# Loading again is the same work as the first time (read the .mpy, build the module), so
# the median of many loads in one process is steadier than one load per process.
import_us = median_us(import_all, RUNS // 2 + 1, reload)
from firmware import clock, cycle, messages, rtcstate  # noqa: E402
import jbd  # noqa: E402

from vbms import DEFAULT_BATTERY, basic_info_data, cells_data, chunks, response_frame  # noqa: E402

REPLIES = chunks(response_frame(3, basic_info_data(DEFAULT_BATTERY)), 20) + chunks(
    response_frame(4, cells_data(DEFAULT_BATTERY)), 20
)


class _Wake:
    # What messages.status() reads from the wake.
    outcome = "ok"
    heap_free = 40000
    interval_min = 5
    stretched = None
    seq = 1234
    cause = 4
    ms = {"config": 1, "ble": 300, "wifi": 200}
    errors = []

    def elapsed(self):
        return 600


def one_wake():
    cfg = cycle.load_config()  # validates once, then reads state/config.cache
    mem, _ = rtcstate.decode(b"")
    mem["seq"] = 1234
    asm = jbd.FrameAssembler()
    frames = []
    for c in REPLIES:
        frames.extend(asm.feed(c))
    basic = jbd.decode(frames[0])
    cells = jbd.decode(frames[1])["cells_mv"]
    result = {"state": "ok", "basic": basic, "cells": cells, "address": "a4:c1:38:30:c2:8e", "frame_errors": 0,
              "name": "JBD", "handles": [16, 13, 18, 0]}
    new, per_bms = messages.readings(cfg, [result], 1234, clock.unix_time(), {})
    messages.status(_Wake(), 1700000000, per_bms, 0, 80, None)
    rtcstate.encode(mem)
    return new


cycle.load_config()  # the first call validates and writes the cache: not a warm wake
work_bytes = allocated(one_wake)
work_us = median_us(one_wake, RUNS)
print('{"import_us": %d, "work_us": %d, "runs": %d, "import_bytes": %d, "work_bytes": %d}'
      % (import_us, work_us, RUNS, import_bytes, work_bytes))
