# MicroPython benchmark: reassemble and decode a 0x03 + 0x04 reply pair (16 cells, 2 NTCs).
# Prints one JSON line: medians of time and heap allocation per pair.
# Run: MICROPYPATH=lib:tools/mpsim micropython tools/bench/decode_pair.py [runs]
import gc
import json
import sys
import time

import jbd
from vbms import response_frame as frame  # the virtual BMS's independent encoder

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 301


def u16(v):
    return bytes([(v >> 8) & 0xFF, v & 0xFF])


cells = [3300 + (i * 7) % 23 for i in range(16)]
basic = (
    u16(5290) + u16(0x10000 - 1234) + u16(16500) + u16(28000) + u16(42) + u16(0x2E90)
    + u16(0x0005) + u16(0) + u16(0) + bytes([0x20, 59, 3, 16, 2]) + u16(2951) + u16(2960)
)
cell_data = b"".join(u16(c) for c in cells)
F3 = frame(3, basic)
F4 = frame(4, cell_data)
CHUNKS = [F3[i : i + 20] for i in range(0, len(F3), 20)] + [
    F4[i : i + 20] for i in range(0, len(F4), 20)
]
asm = jbd.FrameAssembler()


def decode_only():
    a = jbd.decode(F3)
    b = jbd.decode(F4)
    return a, b


def assemble_and_decode():
    out = []
    for c in CHUNKS:
        for f in asm.feed(c):
            out.append(jbd.decode(f))
    return out


def measure(fn):
    times = []
    allocs = []
    for _ in range(RUNS):
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        t0 = time.ticks_us()
        r = fn()
        t1 = time.ticks_us()
        a1 = gc.mem_alloc()
        gc.enable()
        r = None
        times.append(time.ticks_diff(t1, t0))
        allocs.append(a1 - a0)
    times.sort()
    allocs.sort()
    return {"us": times[len(times) // 2], "alloc_bytes": allocs[len(allocs) // 2],
            "alloc_max": allocs[-1]}


assert len(assemble_and_decode()) == 2
print(json.dumps({
    "runs": RUNS,
    "frame_bytes": [len(F3), len(F4)],
    "notifications": len(CHUNKS),
    "decode_only": measure(decode_only),
    "assemble_and_decode": measure(assemble_and_decode),
}))
