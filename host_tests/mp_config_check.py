# Validates each config in a JSON list with firmware/config.py and prints one JSON line per
# config: {"ok": normalized} or {"error": message}. Runs on MicroPython and CPython.
import json
import sys

from firmware import config

with open(sys.argv[1]) as f:
    cases = json.load(f)
for doc in cases:
    try:
        out = {"ok": config.validate(doc)}
    except config.ConfigError as e:
        out = {"error": str(e)}
    print(json.dumps(out))
