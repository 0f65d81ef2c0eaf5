import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "host_tests" / "frames"
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "tools"))
sys.path.append(str(REPO / "tools" / "mpsim"))  # for vbms, the virtual BMS's frame encoder


def micropython_bin() -> str:
    """The unix-port binary from the project's venv (or PATH)."""
    from jbdgw.sim import find_micropython

    try:
        return find_micropython()
    except FileNotFoundError as e:
        pytest.fail(f"{e}: run `make setup`")


def mpy_cross_bin() -> str:
    from jbdgw.image import find_mpy_cross

    try:
        return find_mpy_cross()
    except FileNotFoundError as e:
        pytest.fail(str(e))


def corpus():
    """(file name, index, frame dict) for every frame in host_tests/frames."""
    out = []
    for path in sorted(FRAMES.glob("*.json")):
        for i, fr in enumerate(json.loads(path.read_text())["frames"]):
            out.append((path.name, i, fr))
    return out
