# Decodes the whole captured-frame corpus and prints one JSON line per frame.
# Runs unchanged on CPython and on the MicroPython unix port; the parity test compares
# both outputs value for value. Usage: <python> corpus_dump.py FRAMES_DIR
import json
import os
import sys

import jbd


def unhex(s):
    return bytes.fromhex(s)


def outcome(frame):
    try:
        r = jbd.decode(frame)
    except jbd.FrameError as e:
        return {"error": type(e).__name__, "message": str(e)}
    if "data" in r:
        r["data"] = r["data"].hex()
    return r


def reassemble(chunks):
    a = jbd.FrameAssembler()
    frames = []
    for c in chunks:
        for f in a.feed(c):
            frames.append(f.hex())
    return {"frames": frames, "errors": a.errors, "pending": a.pending.hex()}


def main(folder):
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(folder + "/" + name) as f:
            doc = json.load(f)
        for i, fr in enumerate(doc["frames"]):
            raw = unhex(fr["hex"])
            chunks = [unhex(c) for c in fr.get("notifications", [])] or [raw]
            line = {
                "file": name,
                "index": i,
                "decoded": outcome(raw),
                "assembled": reassemble(chunks),
            }
            print(json.dumps(line))


main(sys.argv[1])
