# The gateway application: one wake cycle per boot (see firmware/cycle.py).
VERSION = "0.1.0"
