"""`jbdgw energy`: mAh per day of the gateway at a wake interval, beside an always-on ESP32
and a Raspberry Pi 3B+ running the old script, from the sourced model in jbdgw.model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jbdgw import REPO
from jbdgw.cli import UsageError
from jbdgw.model import (
    DAYS_PER_MONTH,
    DEFAULT_PROFILE,
    Profile,
    ProfileError,
    energy,
    format_bound,
    format_sources,
    load_profile,
    old_script_wake,
    phase_of,
    scale_phases,
    warm_bound,
)

#: Where `make bench` records the measured warm wake (`warm_awake_ms_median`, `phases_ms`).
BENCH_JSON = REPO / "docs" / "bench.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "energy",
        help="mAh per day at a wake interval, beside an always-on ESP32 and a Raspberry Pi",
        description=__doc__,
    )
    # Numbers are checked in run(), so that a bad one is one line (UsageError), not usage text.
    p.add_argument("--interval", metavar="MIN", help="minutes between wakes (required, > 0)")
    p.add_argument("--awake-ms", metavar="MS",
                   help="awake time per wake, boot to deep sleep (default: docs/bench.json's measured median, else the model's warm bound)")
    p.add_argument("--battery-ah", metavar="AH", help="battery capacity, to show the share used per month")
    p.add_argument("--sleep-ua", metavar="UA", help="deep-sleep current of the board (default: the chip's, from the profile)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, metavar="NAME",
                   help=f"latency/current profile: a shipped name or a .json path (default {DEFAULT_PROFILE})")
    p.set_defaults(func=run)


def _number(text: str | None, flag: str, *, zero_ok: bool = False) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value == value or value in (float("inf"), float("-inf")) or value < 0 or (value == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        raise UsageError(f"{flag} must be a number {least}, not {text!r}")
    return value


def measured_awake(path: Path) -> tuple[float, dict[str, float] | None] | str:
    """The warm wake `make bench` measured: (median awake ms, phases or None), or why not."""
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    if not path.is_file():
        return f"{name} not found; `make bench` writes it"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        total = float(data["warm_awake_ms_median"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{name} has no usable warm_awake_ms_median ({type(exc).__name__}: {exc})"
    if not total > 0:
        return f"{name}: warm_awake_ms_median is {total}, not a positive time"
    phases = data.get("phases_ms")
    if isinstance(phases, dict):
        try:
            clean = {str(k): float(v) for k, v in phases.items() if float(v) >= 0}
        except (TypeError, ValueError):
            clean = {}
        if clean and sum(clean.values()) > 0:
            return total, clean
    return total, None


def _awake(args: argparse.Namespace, profile: Profile) -> tuple[dict[str, float], str]:
    """Phase times of one wake and a line saying where they come from."""
    bound = warm_bound(profile).phases_ms()
    awake = _number(args.awake_ms, "--awake-ms")
    if awake is not None:
        return scale_phases(bound, awake), f"{awake:.0f} ms (--awake-ms), split over phases like the model's warm bound"
    found = measured_awake(BENCH_JSON)
    if isinstance(found, str):
        total = sum(bound.values())
        return bound, f"{total:.0f} ms, the model's warm lower bound: no measured figure ({found})"
    total, phases = found
    if phases is None:
        return scale_phases(bound, total), f"{total:.0f} ms, measured (docs/bench.json warm median), split like the warm bound"
    return scale_phases(phases, total), f"{total:.0f} ms, measured (docs/bench.json warm median and its phases)"


def run(args: argparse.Namespace) -> int:
    interval = _number(args.interval, "--interval")
    if interval is None:
        raise UsageError("--interval is required: minutes between wakes, e.g. --interval 5")
    battery_ah = _number(args.battery_ah, "--battery-ah")
    sleep_ua = _number(args.sleep_ua, "--sleep-ua", zero_ok=True)
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None

    phases, origin = _awake(args, profile)
    e = energy(profile, interval, phases, sleep_ua=sleep_ua)
    sleep_note = "--sleep-ua" if sleep_ua is not None else "[4], the chip's; a dev board draws more: --sleep-ua"
    by_phase: dict[str, float] = {}
    for name, ms in phases.items():
        by_phase[phase_of(name)] = by_phase.get(phase_of(name), 0.0) + ms
    current = {"cpu": ("CPU", "cpu_only_ma", 1), "ble": ("BLE", "ble_active_ma", 2), "wifi": ("Wi-Fi/MQTT", "wifi_active_ma", 3)}
    terms = [f"{label} {by_phase[ph]:.0f} ms x {profile[key]:g} mA [{n}]"
             for ph, (label, key, n) in current.items() if by_phase.get(ph)]

    print(f"jbdgw energy: one wake every {interval:g} min, profile {profile.name}; mAh at 3.3 V equivalent by energy")
    print(f"awake per wake:  {origin}")
    print(f"charge per wake: {' + '.join(terms)} = {e.charge_mc:.1f} mC")
    print(f"asleep:          {e.sleep_ua:g} uA ({sleep_note})")
    print(f"ours:            {e.mah_per_day:.2f} mAh/day, {e.mah_per_month:.0f} mAh per {DAYS_PER_MONTH}-day month")
    notes = ["cpu_only_ma", "ble_active_ma", "wifi_active_ma", "deep_sleep_chip_ua"]
    if battery_ah is not None:
        pack_mah = e.mah_per_month * profile["supply_voltage_chip_v"] / profile["battery_nominal_v"]
        share = 100.0 * pack_mah / (battery_ah * 1000.0)
        notes.append("battery_nominal_v")
        print(f"battery:         {share:.3g} % of a {battery_ah:g} Ah, {profile['battery_nominal_v']:g} V pack per month"
              f" ({pack_mah:.0f} mAh at the pack, ideal converter) [{len(notes)}]")
    n = len(notes)
    print(f"always-on ESP32: {e.always_on_mah_per_day:.0f} mAh/day (ESPHome style, Wi-Fi connected, modem sleep)"
          f" = {e.always_on_ratio:.0f}x ours [{n + 1}]")
    print(f"Pi 3B+ + old script from cron: {e.pi_mah_per_day:.0f} mAh/day (idle all day, a {e.pi_wake_ms / 1000:.1f} s run"
          f" every {interval:g} min; 5 V mAh x 5/3.3) = {e.pi_ratio:.0f}x ours [{n + 2}-{n + 5}]")
    notes += ["always_on_esp32_ma", "rpi3bplus_idle_ma", "rpi3bplus_wake_extra_ma", "supply_voltage_pi_v", "old_scan_s"]
    if getattr(args, "verbose", False):
        print()
        print(format_bound(warm_bound(profile)))
        print(format_bound(old_script_wake(profile).typical))
    print("sources:")
    for line in format_sources(profile, notes):
        print(f"  {line}")
    return 0
