"""The latency and energy model of one wake, computed from a sourced profile.

A profile (``tools/jbdgw/profiles/<name>.json``, package data) holds every figure as
``{"value": ..., "unit": ..., "source": ...}``; a profile may ``"extends"`` another and
override figures. From it this module computes, as itemised steps with their arithmetic:

- ``warm_bound``: the physical lower bound of a warm wake (cached MAC, handles and channel,
  a static IP);
- ``cold_bound``: the same plus name scan, GATT discovery, Wi-Fi channel probe and DHCP;
- ``old_script_wake``: the old Raspberry Pi script's wake, typical and worst case;

and the energy they cost: ``charge_per_wake`` (mC), ``mah_per_day`` and the comparisons
with an always-on ESP32 and a Raspberry Pi 3B+ (``energy``). Every mAh figure is mAh at
3.3 V equivalent by energy (see the profile's notes). Pure functions, no I/O but reading
the profile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_PROFILE = "esp32-typical"
#: The intervals (minutes) the energy table reports.
INTERVALS_MIN = (1, 5, 15, 60)
#: Issue 12's target: at most this many mAh/day at a 5-minute interval, chip sleep current.
TARGET_MAH_PER_DAY = 12.0
TARGET_INTERVAL_MIN = 5
#: Reply sizes of a typical pack (4 cells, 2 NTCs): 0x03 = 7 + 23 + 2*2 bytes, 0x04 = 7 + 2*4.
REPLY_03_BYTES = 34
REPLY_04_BYTES = 15
DAYS_PER_MONTH = 30

_META = frozenset({"name", "notes", "extends"})
_BOARDS = "deep_sleep_boards_ua"
_FIX = 'add "{key}": {{"value": <number>, "unit": "<unit>", "source": "<URL or repo path@commit, section, and how the number follows>"}}'

#: Every figure the model reads; a profile (after ``extends``) must have all of them.
REQUIRED: tuple[str, ...] = (
    "boot_to_main_ms",
    "adv_interval_ms", "conn_setup_ms", "conn_setup_intervals", "att_rtt_intervals",
    "conn_interval_default_ms", "conn_interval_min_ms", "ble_disconnect_intervals",
    "bms_uart_baud", "uart_frame_bits", "bms_request_bytes", "bms_processing_ms",
    "ble_notify_bytes", "notify_extra_intervals",
    "gatt_service_rtts", "gatt_characteristics_rtts", "gatt_descriptor_rtts", "cccd_write_rtts",
    "wifi_probe_ms", "wifi_assoc_ms", "dhcp_ms", "static_ip_ms",
    "wifi_scan_active_dwell_ms", "wifi_scan_active_channels",
    "wifi_scan_passive_dwell_ms", "wifi_scan_passive_channels",
    "lan_rtt_ms", "tcp_connect_rtts", "mqtt_connect_rtts", "mqtt_qos1_publish_rtts",
    "mqtt_disconnect_rtts", "mqtt_publishes_per_wake", "delayed_ack_ms", "uart_baud",
    "ble_active_ma", "wifi_active_ma", "cpu_only_ma", "deep_sleep_chip_ua",
    "always_on_esp32_ma", "rpi3bplus_idle_ma", "rpi3bplus_wake_extra_ma",
    "supply_voltage_chip_v", "supply_voltage_pi_v", "battery_nominal_v",
    "esp32_pystones_per_s", "host_pystones_per_s", "cpu_scale_unix_to_esp32",
    "old_scan_s", "old_register_timeout_s", "old_registers", "old_sleep_s", "old_conn_interval_ms",
)


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line naming the key and the fix."""


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Profile:
    """A resolved profile: figures by key (``profile[key]`` is the value), board sleep currents."""

    name: str
    origin: str
    figures: Mapping[str, Figure]
    boards: Mapping[str, Figure]
    notes: tuple[str, ...]

    def __getitem__(self, key: str) -> float:
        return self.figure(key).value

    def figure(self, key: str) -> Figure:
        try:
            return self.figures[key]
        except KeyError:
            raise ProfileError(f"profile {self.name!r}: figure {key!r} is missing: {_FIX.format(key=key)}") from None

    def values(self) -> dict[str, float]:
        """The flat ``{key: value}`` of every figure (what a simulation needs)."""
        return {k: f.value for k, f in self.figures.items()}

    def as_json(self) -> dict[str, Any]:
        """The complete resolved profile in the file format (``extends`` applied), for a
        reader that cannot resolve ``extends`` itself."""
        out: dict[str, Any] = {"name": self.name, "notes": list(self.notes)}
        for key, f in self.figures.items():
            out[key] = {"value": f.value, "unit": f.unit, "source": f.source}
        out[_BOARDS] = {b: {"value": f.value, "unit": f.unit, "source": f.source} for b, f in self.boards.items()}
        return out


# --- loading -------------------------------------------------------------------------------


def profile_names() -> list[str]:
    """The profiles shipped with jbdgw."""
    folder = resources.files("jbdgw") / "profiles"
    return sorted(e.name[: -len(".json")] for e in folder.iterdir() if e.name.endswith(".json"))


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """A shipped profile by name (``esp32-typical``) or a profile file by path."""
    raw, label, origin = _read(name_or_path, seen=())
    notes = raw.get("notes", ())
    notes = (notes,) if isinstance(notes, str) else tuple(str(n) for n in notes)
    figures = _resolve(raw, label, origin, seen=(origin,))
    boards_raw = figures.pop(_BOARDS, None)
    if not isinstance(boards_raw, dict) or not boards_raw:
        raise ProfileError(f"profile {label}: figure {_BOARDS!r} is missing: add a table {{\"<board>\": {{\"value\": ..., \"unit\": \"uA\", \"source\": ...}}}}")
    boards = {b: _figure(label, f"{_BOARDS}.{b}", fig) for b, fig in boards_raw.items()}
    checked = {k: _figure(label, k, fig) for k, fig in figures.items()}
    for key in REQUIRED:
        if key not in checked:
            raise ProfileError(f"profile {label}: figure {key!r} is missing: {_FIX.format(key=key)}")
    name = raw.get("name") if isinstance(raw.get("name"), str) else label
    return Profile(name=name, origin=origin, figures=checked, boards=boards, notes=notes)


def _read(name_or_path: str | Path, seen: tuple[str, ...]) -> tuple[dict, str, str]:
    text_name = str(name_or_path)
    if isinstance(name_or_path, Path) or text_name.endswith(".json") or "/" in text_name:
        path = Path(name_or_path)
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}: give an existing .json file or one of {', '.join(profile_names())}")
        label, origin, text = str(path), str(path.resolve()), path.read_text(encoding="utf-8")
    else:
        names = profile_names()
        if text_name not in names:
            raise ProfileError(f"unknown profile {text_name!r}: use one of {', '.join(names)}, or a path to a profile .json file")
        entry = resources.files("jbdgw") / "profiles" / f"{text_name}.json"
        label, origin, text = text_name, f"jbdgw/profiles/{text_name}.json", entry.read_text(encoding="utf-8")
    if origin in seen:
        raise ProfileError(f"profile {label}: 'extends' loops back to itself: remove the cycle")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"profile {label}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {label}: must be a JSON object of figures")
    return raw, label, origin


def _resolve(raw: dict, label: str, origin: str, seen: tuple[str, ...]) -> dict[str, Any]:
    """The profile's figures with those of the profile it extends underneath."""
    base: dict[str, Any] = {}
    parent = raw.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise ProfileError(f"profile {label}: 'extends' must be a profile name or path, not {parent!r}")
        praw, plabel, porigin = _read(parent, seen)
        base = _resolve(praw, plabel, porigin, seen + (porigin,))
    own = {k: v for k, v in raw.items() if k not in _META}
    if _BOARDS in own and _BOARDS in base and isinstance(base[_BOARDS], dict) and isinstance(own[_BOARDS], dict):
        own[_BOARDS] = {**base[_BOARDS], **own[_BOARDS]}
    return {**base, **own}


def _figure(label: str, key: str, fig: Any) -> Figure:
    if not isinstance(fig, dict):
        raise ProfileError(f"profile {label}: figure {key!r} must be an object: {_FIX.format(key=key)}")
    value = fig.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"profile {label}: figure {key!r} has no numeric value: give \"value\" a number")
    source = fig.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ProfileError(f"profile {label}: figure {key!r} has no source: add a \"source\" string (URL or repo path@commit, section, and how the number follows)")
    unit = fig.get("unit")
    if not isinstance(unit, str) or not unit.strip():
        raise ProfileError(f"profile {label}: figure {key!r} has no unit: add a \"unit\" string such as \"ms\" or \"mA\"")
    return Figure(value=value, unit=unit, source=source)


# --- steps and bounds ----------------------------------------------------------------------

PHASES = ("cpu", "ble", "wifi")


@dataclass(frozen=True)
class Step:
    """One step of a wake: what, how long, the arithmetic, and whose current it draws.

    Unpacks as ``(name, ms, arithmetic)``."""

    name: str
    ms: float
    arithmetic: str
    phase: str = "cpu"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.name, self.ms, self.arithmetic))


@dataclass(frozen=True)
class Bound:
    title: str
    profile: str
    steps: tuple[Step, ...]

    @property
    def total_ms(self) -> float:
        return math.fsum(s.ms for s in self.steps)

    def phases_ms(self) -> dict[str, float]:
        """Milliseconds per phase (cpu, ble, wifi), the input of ``charge_per_wake``."""
        out = dict.fromkeys(PHASES, 0.0)
        for s in self.steps:
            out[s.phase] += s.ms
        return out


class OldScriptWake(NamedTuple):
    typical: Bound
    worst: Bound


def _n(x: float) -> str:
    """A figure as written in arithmetic: no trailing zeros."""
    return f"{x:.4f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def uart_ms(p: Profile, nbytes: float) -> float:
    """BMS UART transfer time of ``nbytes`` (0 when the profile's baud rate is 0)."""
    baud = p["bms_uart_baud"]
    return nbytes * p["uart_frame_bits"] * 1000.0 / baud if baud else 0.0


def exchange_step(p: Profile, register: int, reply_bytes: int, interval_ms: float) -> Step:
    """One request/reply: half an interval to the next event, the UART transfer of request
    and reply, the BMS's processing, half an interval to the next event, plus the profile's
    extra intervals per additional 20-byte notification."""
    req = p["bms_request_bytes"]
    uart = uart_ms(p, req + reply_bytes)
    extra_notes = max(0, math.ceil(reply_bytes / p["ble_notify_bytes"]) - 1)
    extra = extra_notes * p["notify_extra_intervals"] * interval_ms
    ms = interval_ms / 2 + uart + p["bms_processing_ms"] + interval_ms / 2 + extra
    if p["bms_uart_baud"]:
        transfer = f"({_n(req)}+{reply_bytes}) B x {_n(p['uart_frame_bits'])}/{_n(p['bms_uart_baud'])} s [{uart:.1f}]"
    else:
        transfer = "0 (UART instantaneous)"
    text = f"{_n(interval_ms)}/2 + {transfer} + {_n(p['bms_processing_ms'])} + {_n(interval_ms)}/2"
    if extra_notes:
        text += f" + {extra_notes} more notification(s) x {_n(p['notify_extra_intervals'])} x {_n(interval_ms)}"
    return Step(f"request/reply 0x{register:02x} ({reply_bytes}-byte reply)", ms, text, "ble")


def _rtt_step(p: Profile, name: str, rtt_key: str, interval_ms: float) -> Step:
    n, att = p[rtt_key], p["att_rtt_intervals"]
    return Step(name, n * att * interval_ms, f"{rtt_key} {_n(n)} x {_n(att)} x {_n(interval_ms)}", "ble")


def _ble_connect(p: Profile, interval_ms: float) -> list[Step]:
    adv, fixed, k = p["adv_interval_ms"], p["conn_setup_ms"], p["conn_setup_intervals"]
    return [
        Step("BLE: wait for an advertisement (connect)", adv / 2, f"adv_interval_ms {_n(adv)} / 2", "ble"),
        Step("BLE: link set-up", fixed + k * interval_ms, f"{_n(fixed)} + {_n(k)} x {_n(interval_ms)}", "ble"),
    ]


def _ble_read(p: Profile, interval_ms: float, reply_03: int, reply_04: int) -> list[Step]:
    d = p["ble_disconnect_intervals"]
    return [
        exchange_step(p, 0x03, reply_03, interval_ms),
        exchange_step(p, 0x04, reply_04, interval_ms),
        Step("BLE: disconnect", d * interval_ms, f"{_n(d)} x {_n(interval_ms)}", "ble"),
    ]


def _mqtt(p: Profile, publishes: int) -> list[Step]:
    rtt = p["lan_rtt_ms"]

    def rtts(name: str, key: str, count: float = 1) -> Step:
        n = p[key]
        times = f"{_n(count)} x " if count != 1 else ""
        return Step(name, count * n * rtt, f"{times}{key} {_n(n)} x lan_rtt_ms {_n(rtt)}", "wifi")

    return [
        rtts("TCP connect", "tcp_connect_rtts"),
        rtts("MQTT CONNECT/CONNACK", "mqtt_connect_rtts"),
        rtts(f"MQTT QoS 1 publish x {publishes}", "mqtt_qos1_publish_rtts", publishes),
        rtts("MQTT DISCONNECT", "mqtt_disconnect_rtts"),
    ]


def _wifi(name: str, p: Profile, key: str) -> Step:
    return Step(name, p[key], f"{key} {_n(p[key])}", "wifi")


def _boot(p: Profile, cpu_ms: float) -> list[Step]:
    steps = [Step("boot to main.py", p["boot_to_main_ms"], f"boot_to_main_ms {_n(p['boot_to_main_ms'])}", "cpu")]
    if cpu_ms:
        steps.append(Step("firmware CPU time", cpu_ms, f"{_n(cpu_ms)} (measured)", "cpu"))
    return steps


def warm_bound(p: Profile, *, reply_03_bytes: int = REPLY_03_BYTES, reply_04_bytes: int = REPLY_04_BYTES,
               publishes: int | None = None, cpu_ms: float = 0.0) -> Bound:
    """The physical lower bound of a warm wake: cached MAC and GATT handles (one CCCD write),
    both exchanges at the shortest interval the dongle accepts, the cached channel with a
    static IP, MQTT connect + QoS 1 publishes + disconnect. ``cpu_ms`` adds the firmware's
    own CPU time when it is known."""
    itv = p["conn_interval_min_ms"]
    n = int(p["mqtt_publishes_per_wake"]) if publishes is None else publishes
    steps = [
        *_boot(p, cpu_ms),
        *_ble_connect(p, itv),
        _rtt_step(p, "BLE: CCCD write (handles cached)", "cccd_write_rtts", itv),
        *_ble_read(p, itv, reply_03_bytes, reply_04_bytes),
        _wifi("Wi-Fi: association (cached channel)", p, "wifi_assoc_ms"),
        _wifi("Wi-Fi: static IP", p, "static_ip_ms"),
        *_mqtt(p, n),
    ]
    return Bound("warm wake, physical lower bound", p.name, tuple(steps))


def cold_bound(p: Profile, *, reply_03_bytes: int = REPLY_03_BYTES, reply_04_bytes: int = REPLY_04_BYTES,
               publishes: int | None = None, cpu_ms: float = 0.0) -> Bound:
    """The bound of a cold wake: the warm one plus an active name scan, full GATT discovery
    (service by UUID, one characteristics pass, the CCCD's descriptor discovery), the Wi-Fi
    channel probe, and DHCP instead of a static IP."""
    itv = p["conn_interval_min_ms"]
    adv = p["adv_interval_ms"]
    n = int(p["mqtt_publishes_per_wake"]) if publishes is None else publishes
    steps = [
        *_boot(p, cpu_ms),
        Step("BLE: name scan (active, name in ADV_IND)", adv / 2, f"adv_interval_ms {_n(adv)} / 2", "ble"),
        *_ble_connect(p, itv),
        _rtt_step(p, "BLE: discover service by UUID", "gatt_service_rtts", itv),
        _rtt_step(p, "BLE: discover characteristics (one pass)", "gatt_characteristics_rtts", itv),
        _rtt_step(p, "BLE: discover the CCCD", "gatt_descriptor_rtts", itv),
        _rtt_step(p, "BLE: CCCD write", "cccd_write_rtts", itv),
        *_ble_read(p, itv, reply_03_bytes, reply_04_bytes),
        _wifi("Wi-Fi: channel probe", p, "wifi_probe_ms"),
        _wifi("Wi-Fi: association", p, "wifi_assoc_ms"),
        _wifi("Wi-Fi: DHCP", p, "dhcp_ms"),
        *_mqtt(p, n),
    ]
    return Bound("cold wake, lower bound", p.name, tuple(steps))


def old_script_wake(p: Profile, *, reply_03_bytes: int = REPLY_03_BYTES,
                    reply_04_bytes: int = REPLY_04_BYTES) -> OldScriptWake:
    """The old Raspberry Pi script's wake (bluepy + paho from cron) in the same profile: a
    fixed-length name scan, connect and full discovery at BlueZ's default interval, each
    register read (typical: the profile's reply time; worst: the full timeout), the sleep,
    and paho's TCP + CONNECT. The Pi is always on, so there is no boot."""
    itv = p["old_conn_interval_ms"]
    scan_ms = p["old_scan_s"] * 1000
    sleep_ms = p["old_sleep_s"] * 1000
    registers = int(p["old_registers"])
    head = [
        Step("BLE: name scan (fixed length)", scan_ms, f"old_scan_s {_n(p['old_scan_s'])} x 1000", "ble"),
        *_ble_connect(p, itv),
        _rtt_step(p, "BLE: discover service by UUID", "gatt_service_rtts", itv),
        _rtt_step(p, "BLE: discover characteristics", "gatt_characteristics_rtts", itv),
        _rtt_step(p, "BLE: discover the CCCD", "gatt_descriptor_rtts", itv),
        _rtt_step(p, "BLE: CCCD write", "cccd_write_rtts", itv),
    ]
    tail = [
        Step("sleep", sleep_ms, f"old_sleep_s {_n(p['old_sleep_s'])} x 1000", "cpu"),
        *_mqtt(p, 0)[:2],
    ]
    replies = [exchange_step(p, 0x03, reply_03_bytes, itv), exchange_step(p, 0x04, reply_04_bytes, itv)][:registers]
    timeout_ms = p["old_register_timeout_s"] * 1000
    waits = [Step(f"register {i + 1}: full timeout", timeout_ms, f"old_register_timeout_s {_n(p['old_register_timeout_s'])} x 1000", "ble")
             for i in range(registers)]
    return OldScriptWake(
        typical=Bound("old Pi script wake, typical", p.name, tuple(head + replies + tail)),
        worst=Bound("old Pi script wake, worst case", p.name, tuple(head + waits + tail)),
    )


def full_scan_ms(p: Profile) -> Step:
    """A full ``wlan.scan()``: every channel at ESP-IDF's default dwell."""
    a, na = p["wifi_scan_active_dwell_ms"], p["wifi_scan_active_channels"]
    s, ns = p["wifi_scan_passive_dwell_ms"], p["wifi_scan_passive_channels"]
    return Step("Wi-Fi: full wlan.scan()", a * na + s * ns, f"{_n(na)} x {_n(a)} + {_n(ns)} x {_n(s)}", "wifi")


def publish_ms(p: Profile, *, qos: int = 1, pieces: int = 1) -> Step:
    """One PUBLISH: a round trip for QoS 1, plus the delayed-ACK stall Nagle's algorithm
    causes when the packet is written in more than one piece."""
    rtt = p["lan_rtt_ms"] * (p["mqtt_qos1_publish_rtts"] if qos else 0)
    stall = p["delayed_ack_ms"] if pieces > 1 else 0.0
    text = f"{_n(rtt)}" + (f" + delayed_ack_ms {_n(stall)} ({pieces} writes, Nagle)" if stall else "")
    return Step(f"MQTT publish QoS {qos}", rtt + stall, text, "wifi")


# --- energy --------------------------------------------------------------------------------


def phase_of(name: str) -> str:
    """The current a named phase draws: names starting with ble -> BLE, wifi/mqtt/tcp/net ->
    Wi-Fi, anything else (boot, config, cpu, ...) -> CPU only."""
    n = name.lower()
    if n.startswith("ble"):
        return "ble"
    if n.startswith(("wifi", "wi-fi", "mqtt", "tcp", "net")):
        return "wifi"
    return "cpu"


def phase_current_ma(p: Profile, phase: str) -> float:
    return {"ble": p["ble_active_ma"], "wifi": p["wifi_active_ma"]}.get(phase, p["cpu_only_ma"])


def charge_per_wake(phases_ms: Mapping[str, float], p: Profile) -> float:
    """Charge of one wake in mC: each phase's milliseconds times its current."""
    return math.fsum(ms * phase_current_ma(p, phase_of(name)) / 1000.0 for name, ms in phases_ms.items())


def mah_per_day(awake_charge_mc: float, interval_min: float, sleep_ua: float, awake_ms: float = 0.0) -> float:
    """mAh per day of a gateway that is awake for ``awake_charge_mc`` per wake and then sleeps
    ``interval_min`` at ``sleep_ua`` (the firmware sleeps the whole interval after each wake,
    so a period is interval + awake time)."""
    period_s = interval_min * 60.0 + awake_ms / 1000.0
    wakes = 86400.0 / period_s
    sleep_mc = sleep_ua / 1000.0 * interval_min * 60.0
    return wakes * (awake_charge_mc + sleep_mc) / 3600.0


def always_on_mah_per_day(p: Profile) -> float:
    """An ESPHome-style ESP32 connected all day in modem sleep (3.3 V)."""
    return p["always_on_esp32_ma"] * 24.0


def pi_mah_per_day(p: Profile, interval_min: float, wake_ms: float) -> float:
    """A Raspberry Pi 3B+ idling all day and running the old script from cron every
    ``interval_min``, in mAh at 3.3 V equivalent (5 V mAh x 5/3.3)."""
    runs = 1440.0 / interval_min
    mah_5v = p["rpi3bplus_idle_ma"] * 24.0 + runs * (wake_ms / 1000.0) * p["rpi3bplus_wake_extra_ma"] / 3600.0
    return mah_5v * p["supply_voltage_pi_v"] / p["supply_voltage_chip_v"]


def scale_phases(phases_ms: Mapping[str, float], total_ms: float) -> dict[str, float]:
    """Spread a measured total over phases in the proportions of ``phases_ms``."""
    known = math.fsum(phases_ms.values())
    if known <= 0:
        return {"cpu": total_ms}
    return {k: v * total_ms / known for k, v in phases_ms.items()}


@dataclass(frozen=True)
class Energy:
    interval_min: float
    awake_ms: float
    charge_mc: float
    sleep_ua: float
    mah_per_day: float
    always_on_mah_per_day: float
    pi_mah_per_day: float
    pi_wake_ms: float

    @property
    def mah_per_month(self) -> float:
        return self.mah_per_day * DAYS_PER_MONTH

    @property
    def always_on_ratio(self) -> float:
        """How many times our mAh/day the always-on ESP32 uses."""
        return self.always_on_mah_per_day / self.mah_per_day

    @property
    def pi_ratio(self) -> float:
        """How many times our mAh/day the Pi 3B+ with the old script uses."""
        return self.pi_mah_per_day / self.mah_per_day


def energy(p: Profile, interval_min: float, phases_ms: Mapping[str, float], *,
           sleep_ua: float | None = None, pi_wake_ms: float | None = None) -> Energy:
    """Our mAh/day from phase times, beside the always-on ESP32 and the Pi running the old
    script (its typical wake from ``old_script_wake`` unless given)."""
    sleep = p["deep_sleep_chip_ua"] if sleep_ua is None else sleep_ua
    awake = math.fsum(phases_ms.values())
    charge = charge_per_wake(phases_ms, p)
    pi_wake = old_script_wake(p).typical.total_ms if pi_wake_ms is None else pi_wake_ms
    return Energy(
        interval_min=interval_min, awake_ms=awake, charge_mc=charge, sleep_ua=sleep,
        mah_per_day=mah_per_day(charge, interval_min, sleep, awake),
        always_on_mah_per_day=always_on_mah_per_day(p),
        pi_mah_per_day=pi_mah_per_day(p, interval_min, pi_wake),
        pi_wake_ms=pi_wake,
    )


def cpu_scale(p: Profile) -> float:
    """Factor from CPU ms on the unix port of the profile's host to ms on a 240 MHz ESP32."""
    return p["cpu_scale_unix_to_esp32"]


# --- text ----------------------------------------------------------------------------------


def format_bound(bound: Bound) -> str:
    """A bound with its arithmetic, one line per step, then the total."""
    width = max([len(s.name) for s in bound.steps] + [5])
    lines = [f"{bound.title} (profile {bound.profile}): {bound.total_ms:.1f} ms"]
    for s in bound.steps:
        lines.append(f"  {s.name:<{width}}  {s.ms:8.1f} ms  = {s.arithmetic}")
    lines.append(f"  {'total':<{width}}  {bound.total_ms:8.1f} ms  = sum of the {len(bound.steps)} steps")
    return "\n".join(lines)


def format_energy_table(p: Profile, phases_ms: Mapping[str, float], *, sleep_ua: float | None = None,
                        intervals: tuple[float, ...] = INTERVALS_MIN) -> str:
    """mAh/day at each interval beside the always-on ESP32 and the Pi, as a Markdown table."""
    rows = ["| interval | ours mAh/day | always-on ESP32 mAh/day | ratio | Pi 3B+ + old script mAh/day | ratio |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for itv in intervals:
        e = energy(p, itv, phases_ms, sleep_ua=sleep_ua)
        rows.append(f"| {_n(itv)} min | {e.mah_per_day:.2f} | {e.always_on_mah_per_day:.0f} | {e.always_on_ratio:.0f}x"
                    f" | {e.pi_mah_per_day:.0f} | {e.pi_ratio:.0f}x |")
    return "\n".join(rows)


def format_sources(p: Profile, keys: tuple[str, ...] | list[str], start: int = 1) -> list[str]:
    """Numbered footnotes ``[n] key = value unit: source`` for the given figures."""
    out = []
    for i, key in enumerate(keys, start):
        f = p.figure(key)
        out.append(f"[{i}] {key} = {_n(f.value)} {f.unit}: {f.source}")
    return out
