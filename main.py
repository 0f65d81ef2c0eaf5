# Device entry point: one wake cycle, then deep sleep (see firmware/cycle.py).
import firmware.cycle

firmware.cycle.main()
