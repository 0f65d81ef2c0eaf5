# Loads config files with firmware/config.load() and prints one JSON line each.
# Runs on MicroPython and CPython.
import json
import sys

from firmware import config

for path in sys.argv[1:]:
    try:
        out = {"ok": config.load(path)}
    except config.ConfigError as e:
        out = {"error": str(e)}
    print(json.dumps(out))
