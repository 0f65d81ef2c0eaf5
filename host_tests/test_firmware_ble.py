"""The firmware's BLE layer on its own: it uses aioble's public API only, and its
notification tap keeps every byte of a burst (run on the MicroPython unix port)."""

from __future__ import annotations

import ast
import json

from conftest import REPO, run_script

FIRMWARE = REPO / "firmware"


def private_uses(path) -> list[str]:
    """`x._name` where x is not `self`: a reach into another module's or object's insides."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


def test_firmware_touches_no_private_name_of_another_module():
    files = sorted(FIRMWARE.glob("*.py")) + [REPO / "main.py", REPO / "boot.py"]
    assert [u for f in files for u in private_uses(f)] == []


def test_private_use_is_detected(tmp_path):
    # The rule above catches what the firmware once did (aioble's private notify queue).
    path = tmp_path / "probe.py"
    path.write_text("q = notify._notify_queue\nself._ok = 1\n")
    assert private_uses(path) == ["probe.py:1 ._notify_queue"]


TAP_SCRIPT = r"""
import json
from firmware import ble
import jbd

tap = ble.NotifyTap()
MAC = b"\xa4\xc1\x38\x30\xc2\x8e"
FF01 = ble.bluetooth.UUID(0xFF01)
out = {}

def irq(event, data):
    tap.irq(event, data)

tap.arm(MAC)
tap.look_for(FF01, ble.bluetooth.UUID(0xFF02))
irq(7, (5, 0, memoryview(b"\x11\x22\x33\x44\x55\x66")))  # someone else's connection
out["other_conn"] = tap.conn
irq(7, (1, 0, memoryview(MAC)))
irq(11, (2, 18, 40, 0x10, FF01))  # the same UUID on another connection
irq(11, (1, 15, 13, 0x06, ble.bluetooth.UUID(0xFF02)))
irq(11, (1, 20, 16, 0x1A, FF01))
irq(13, (1, 14, ble.bluetooth.UUID(0x2902)))  # before the notify characteristic: not its CCCD
irq(13, (1, 17, ble.bluetooth.UUID(0x2901)))
irq(13, (1, 18, ble.bluetooth.UUID(0x2902)))
out["conn"], out["handle"], out["handles"] = tap.conn, tap.handle, tap.handles()
frame = bytes.fromhex(FRAME)
chunks = [frame[i:i + 20] for i in range(0, len(frame), 20)]
buf = bytearray(20)
for c in chunks:  # back to back, each payload a view of one reused buffer (as the port does)
    buf[:len(c)] = c
    irq(18, (1, 16, memoryview(buf)[:len(c)]))
irq(18, (1, 99, memoryview(b"\xdd\x03")))  # another characteristic
irq(18, (2, 16, memoryview(b"\xdd\x03")))  # another connection
asm = jbd.FrameAssembler()
frames = tap.drain(asm)
out["frames"] = [bytes(f).hex() for f in frames]
out["chunks"] = len(chunks)
out["errors"] = asm.errors
# Wrap-around: fill the ring past its end several times, frame by frame.
got = 0
for i in range(40):
    for c in chunks:
        irq(18, (1, 16, memoryview(c)))
    got += len(tap.drain(asm))
out["wrapped"] = got
out["wrote"] = tap.wrote
# A reader that never drains: the ring fills, the excess is counted, nothing is overwritten.
for i in range(20):
    for c in chunks:
        irq(18, (1, 16, memoryview(c)))
out["overflow"] = tap.overflow > 0
out["after_overflow"] = len(tap.drain(asm))
print(json.dumps(out))
"""


def test_notify_tap_keeps_every_chunk_of_a_burst(tmp_path):
    import vbms

    battery = {**vbms.DEFAULT_BATTERY, "cells_mv": [3300 + i for i in range(24)]}
    frame = vbms.response_frame(4, vbms.cells_data(battery))
    assert len(frame) > 40  # at least three notifications of 20 bytes
    script = tmp_path / "tap.py"
    script.write_text(f"FRAME = {frame.hex()!r}\n" + TAP_SCRIPT)
    proc = run_script("micropython", script, mpsim=True, env={"JBDGW_SIM_DIR": str(tmp_path)})
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["other_conn"] is None
    assert (out["conn"], out["handle"]) == (1, 16)
    # notify 16, write 13 (write without response: mode 0), CCCD 18: what RTC memory keeps
    assert out["handles"] == [16, 13, 18, 0]
    assert out["chunks"] >= 3
    assert out["frames"] == [frame.hex()] and out["errors"] == 0
    assert out["wrapped"] == 40 and out["wrote"] > 512 * 3
    assert out["overflow"] is True
    # What fitted is whole frames (the ring never overwrote unread bytes).
    assert out["after_overflow"] == 512 // len(frame)
