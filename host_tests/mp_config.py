# Runs firmware/config.py on the interpreter running this script and prints one JSON line
# per input: {"ok": normalized config} or {"error": message}. Runs on MicroPython and CPython.
#   mp_config.py validate CASES.json   each config of a JSON list, through config.validate()
#   mp_config.py load PATH...          each file through config.load() (comments, unreadable)
import json
import sys

from firmware import config

mode, args = sys.argv[1], sys.argv[2:]
if mode == "validate":
    with open(args[0]) as f:
        inputs = json.load(f)
    step = config.validate
elif mode == "load":
    inputs, step = args, config.load
else:
    raise SystemExit("mode must be validate or load, not %r" % mode)
for x in inputs:
    try:
        out = {"ok": step(x)}
    except config.ConfigError as e:
        out = {"error": str(e)}
    print(json.dumps(out))
