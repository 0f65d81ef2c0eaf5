# One simulated ESP32 boot: run boot.py then main.py from the current
# directory (the device image) in one interpreter and one __main__ namespace,
# as the ESP32 port does. Started by tools/jbdgw/sim.py as
#   micropython [-X heapsize=..] <repo>/tools/mpsim/simrun.py   (cwd = image)
# sys.path becomes ['', <stand-ins>, '.frozen', <image>/lib], like the board's
# ['', '.frozen', '/lib'] with the stand-ins ahead of the frozen modules (the
# unix port freezes asyncio; MICROPYPATH alone would drop '.frozen').
#
# Exit status: 0 after machine.deepsleep()/reset() (the stand-ins end the
# process with SystemExit) or when main.py returns to the REPL; 1 when boot.py
# or main.py raised (traceback on stderr), or when the firmware caught the
# SystemExit of deepsleep() and carried on.

import sys

_here = sys.path[0]
_rest = [p for p in sys.path[1:] if p not in (_here, "", ".frozen")]
sys.path[:] = ["", _here, ".frozen"] + _rest
del _here, _rest

# Modules that cost no Python heap on the board (C modules or frozen) are
# imported before boot.py, so that their heap use can be measured once
# (`simrun.py --calibrate` prints it) and added to the requested heap size by
# the driver: the firmware then sees about the heap it would have on the ESP32.
# aioble is not among them: on the board it lives in /lib and uses the heap.
# vbms is the virtual BMS, which is not on the board at all.
_PRELOAD = ("simlog", "machine", "network", "umqtt.simple", "bluetooth", "vbms")


def _preload():
    import gc

    gc.collect()
    before = gc.mem_free()
    for m in _PRELOAD:
        try:
            __import__(m)
        except ImportError:
            pass
    gc.collect()
    return before - gc.mem_free()


_cost = _preload()
if "--calibrate" in sys.argv:
    print(_cost)
    sys.exit(0)
del _cost

_crashed = False
_g = {"__name__": "__main__"}

# The wake's awake time counts from here (machine.deepsleep() records it as awake_ms).
if "machine" in sys.modules:
    import time

    sys.modules["machine"]._boot_ticks = time.ticks_ms()
    del time


def _ended():
    m = sys.modules.get("machine")
    return m is not None and getattr(m, "_ended", False)


for _name in ("boot.py", "main.py"):
    try:
        with open(_name) as _f:
            _src = _f.read()
    except OSError:
        continue
    _g["__file__"] = _name
    try:
        exec(compile(_src, _name, "exec"), _g)
    except SystemExit as _e:
        if _ended():
            raise
        # sys.exit() in boot.py/main.py: the board would soft-reset; the
        # simulation stops here (no deepsleep.json).
        sys.stderr.write("simrun: %s called sys.exit(); soft reset not simulated\n" % _name)
        raise
    except BaseException as _e:  # noqa: B036 - report everything, like the REPL
        sys.print_exception(_e, sys.stderr)
        _crashed = True
        if _ended():
            break
    del _src
    if _ended():
        sys.stderr.write(
            "simrun: %s continued after machine.deepsleep()/reset(): "
            "its SystemExit was caught (bare except or BaseException?)\n" % _name
        )
        sys.exit(1)

if _crashed:
    sys.exit(1)
