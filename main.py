# Device entry point: one wake cycle, then deep sleep (see firmware/cycle.py).
import os

try:
    os.stat("safe")
    # Safe mode: stay at the REPL for mpremote, no watchdog. Delete 'safe' to resume.
    print("gateway: safe mode (file 'safe' present): not running; delete it to resume")
except OSError:
    try:
        import firmware.cycle
    except Exception as e:  # a broken or half-copied deploy must still sleep, not drain the battery
        import sys
        import machine

        sys.print_exception(e)
        machine.deepsleep(900000)
    firmware.cycle.main()
