"""The latency/energy model (jbdgw.model), its profiles and `jbdgw energy`: arithmetic only,
no timed assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import micropython_bin
from jbdgw import cli, energy_cmd, model
from jbdgw.model import ProfileError

PROFILES = Path(model.__file__).parent / "profiles"
PROFILE_FILES = sorted(PROFILES.glob("*.json"))
JBDGW = Path(sys.executable).parent / "jbdgw"


def raw(name: str) -> dict:
    return json.loads((PROFILES / f"{name}.json").read_text(encoding="utf-8"))


def v(data: dict, key: str) -> float:
    return data[key]["value"]


@pytest.fixture(scope="module")
def typical() -> model.Profile:
    return model.load_profile("esp32-typical")


def all_bounds(p: model.Profile) -> list[model.Bound]:
    old = model.old_script_wake(p)
    return [model.warm_bound(p), model.cold_bound(p), old.typical, old.worst]


# --- profiles ------------------------------------------------------------------------------


def test_the_shipped_profiles_are_the_files():
    assert set(model.profile_names()) == {p.stem for p in PROFILE_FILES} >= {"esp32-typical", "zero-radio"}


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_figure_in_every_file_has_a_value_unit_and_source(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    figures = {k: f for k, f in data.items() if k not in ("name", "notes", "extends", "deep_sleep_boards_ua")}
    figures.update({f"board {b}": f for b, f in data.get("deep_sleep_boards_ua", {}).items()})
    assert figures
    for key, fig in figures.items():
        assert isinstance(fig["value"], (int, float)) and not isinstance(fig["value"], bool), key
        assert isinstance(fig["unit"], str) and fig["unit"].strip(), key
        assert isinstance(fig["source"], str) and len(fig["source"].strip()) > 20, key


@pytest.mark.parametrize("name", [p.stem for p in PROFILE_FILES])
def test_every_resolved_profile_has_every_figure_the_model_reads(name):
    p = model.load_profile(name)
    assert set(model.REQUIRED) <= set(p.figures)
    assert p.boards and all(f.unit == "uA" and f.source for f in p.boards.values())
    for f in p.figures.values():
        assert f.unit and f.source


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profiles_are_readable_by_micropython_json(path):
    out = subprocess.run(
        [micropython_bin(), "-c", f"import json; d = json.load(open({str(path)!r})); print(len(d))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == len(json.loads(path.read_text(encoding="utf-8")))


def test_as_json_is_the_complete_resolved_profile(tmp_path):
    p = model.load_profile("zero-radio")
    target = tmp_path / "resolved.json"
    target.write_text(json.dumps(p.as_json()))
    again = model.load_profile(target)
    assert again.values() == p.values() and set(again.boards) == set(p.boards)
    assert "extends" not in p.as_json()


def test_zero_radio_overrides_latencies_and_inherits_the_rest(typical):
    zero = model.load_profile("zero-radio")
    assert model.warm_bound(zero).total_ms == 0
    assert model.cold_bound(zero).total_ms == 0
    for key in ("ble_active_ma", "cpu_scale_unix_to_esp32", "old_scan_s"):
        assert zero[key] == typical[key]
        assert zero.figure(key).source == typical.figure(key).source


def test_unknown_profile_name_is_one_line_naming_it():
    with pytest.raises(ProfileError) as e:
        model.load_profile("esp32-fast")
    msg = str(e.value)
    assert "'esp32-fast'" in msg and "esp32-typical" in msg and "\n" not in msg


def test_missing_profile_file_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        model.load_profile(tmp_path / "nope.json")


def test_missing_figure_names_the_key_and_the_fix(tmp_path):
    data = raw("esp32-typical")
    del data["lan_rtt_ms"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError) as e:
        model.load_profile(path)
    msg = str(e.value)
    assert "'lan_rtt_ms'" in msg and "missing" in msg and '"source"' in msg and "\n" not in msg


@pytest.mark.parametrize("broken", [{"value": 5, "unit": "ms"}, {"value": 5, "unit": "ms", "source": "  "}])
def test_figure_without_source_names_the_key(tmp_path, broken):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"extends": "esp32-typical", "dhcp_ms": broken}))
    with pytest.raises(ProfileError) as e:
        model.load_profile(path)
    msg = str(e.value)
    assert "'dhcp_ms'" in msg and "no source" in msg and "\n" not in msg


def test_board_without_source_names_the_board(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"extends": "esp32-typical", "deep_sleep_boards_ua": {"my-board": {"value": 80, "unit": "uA"}}}))
    with pytest.raises(ProfileError, match="my-board"):
        model.load_profile(path)


def test_a_profile_may_extend_and_override(tmp_path, typical):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "slow-lan", "extends": "esp32-typical",
                                "lan_rtt_ms": {"value": 50, "unit": "ms", "source": "a test override of the round trip"}}))
    p = model.load_profile(path)
    assert p.name == "slow-lan" and p["lan_rtt_ms"] == 50 and p["dhcp_ms"] == typical["dhcp_ms"]
    # 2 round trips to connect, one per QoS 1 publish
    delta = model.warm_bound(p).total_ms - model.warm_bound(typical).total_ms
    assert delta == pytest.approx((2 + typical["mqtt_publishes_per_wake"]) * (50 - typical["lan_rtt_ms"]))


def test_extends_loop_is_refused(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"extends": str(b)}))
    b.write_text(json.dumps({"extends": str(a)}))
    with pytest.raises(ProfileError, match="loops"):
        model.load_profile(a)


# --- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [p.stem for p in PROFILE_FILES])
def test_each_bound_total_is_the_sum_of_its_steps(name):
    p = model.load_profile(name)
    for bound in all_bounds(p):
        assert bound.total_ms == pytest.approx(math.fsum(ms for _, ms, _ in bound.steps))
        assert sum(bound.phases_ms().values()) == pytest.approx(bound.total_ms)
        assert all(step.ms >= 0 and step.arithmetic for step in bound.steps)


def test_warm_steps_recomputed_from_the_file(typical):
    d = raw("esp32-typical")
    steps = {s.name: s.ms for s in model.warm_bound(typical).steps}
    itv = v(d, "conn_interval_min_ms")
    assert steps["boot to main.py"] == v(d, "boot_to_main_ms")
    assert steps["BLE: wait for an advertisement (connect)"] == v(d, "adv_interval_ms") / 2
    # 0x03 of a 4-cell/2-NTC pack: 7-byte request, 34-byte reply at 9600 8N1
    assert steps["request/reply 0x03 (34-byte reply)"] == pytest.approx(
        itv / 2 + (7 + 34) * 10 * 1000 / 9600 + v(d, "bms_processing_ms") + itv / 2)
    assert steps["request/reply 0x04 (15-byte reply)"] == pytest.approx(itv + 22 * 10 / 9.6 + v(d, "bms_processing_ms"))
    assert steps["BLE: CCCD write (handles cached)"] == itv
    assert steps["Wi-Fi: association (cached channel)"] == v(d, "wifi_assoc_ms")
    assert steps["MQTT QoS 1 publish x 2"] == pytest.approx(2 * v(d, "lan_rtt_ms"))


def test_cold_bound_adds_scan_discovery_probe_and_dhcp(typical):
    d = raw("esp32-typical")
    itv = v(d, "conn_interval_min_ms")
    discovery = (2 + 2 + 1) * itv  # service by UUID, one characteristics pass, the CCCD descriptor
    extra = v(d, "adv_interval_ms") / 2 + discovery + v(d, "wifi_probe_ms") + v(d, "dhcp_ms") - v(d, "static_ip_ms")
    assert model.cold_bound(typical).total_ms - model.warm_bound(typical).total_ms == pytest.approx(extra)


def test_reply_sizes_are_parameters(typical):
    base = model.warm_bound(typical).total_ms
    bigger = model.warm_bound(typical, reply_03_bytes=34 + 10).total_ms
    assert bigger - base == pytest.approx(10 * 10 * 1000 / 9600)


def test_old_script_wake_typical_and_worst(typical):
    old = model.old_script_wake(typical)
    d = raw("esp32-typical")
    fixed = (v(d, "old_scan_s") + v(d, "old_sleep_s")) * 1000
    assert old.worst.total_ms - old.typical.total_ms == pytest.approx(
        2 * v(d, "old_register_timeout_s") * 1000 - sum(s.ms for s in old.typical.steps if s.name.startswith("request/reply")))
    assert old.typical.total_ms > fixed > model.warm_bound(typical).total_ms


def test_full_wlan_scan_and_nagle_stall(typical):
    assert model.full_scan_ms(typical).ms == 11 * 120 + 2 * 360
    one = model.publish_ms(typical, pieces=1).ms
    assert model.publish_ms(typical, pieces=4).ms - one == typical["delayed_ack_ms"] == 40


def test_format_bound_is_one_line_per_step(typical):
    bound = model.warm_bound(typical)
    lines = model.format_bound(bound).splitlines()
    assert len(lines) == len(bound.steps) + 2
    assert f"{bound.total_ms:.1f} ms" in lines[0] and lines[-1].lstrip().startswith("total")


def test_cpu_scale_is_derived_from_the_pystone_figures(typical):
    assert model.cpu_scale(typical) == pytest.approx(typical["host_pystones_per_s"] / typical["esp32_pystones_per_s"], abs=0.1)


# --- energy --------------------------------------------------------------------------------


def test_charge_per_wake_by_phase_name(typical):
    phases = {"boot": 1000.0, "ble": 500.0, "wifi": 250.0, "mqtt": 250.0, "config": 10.0}
    expected = (1010 * typical["cpu_only_ma"] + 500 * typical["ble_active_ma"] + 500 * typical["wifi_active_ma"]) / 1000
    assert model.charge_per_wake(phases, typical) == pytest.approx(expected)


def test_mah_per_day_hand_computed():
    # 288 wakes of 100 mC + 10 uA x 300 s = 3 mC asleep: 288 x 103 / 3600 = 8.24 mAh
    assert model.mah_per_day(100.0, 5, 10) == pytest.approx(8.24)
    # a 60 s awake time stretches the period to 120 s: 720 wakes x (100 + 0.6) mC
    assert model.mah_per_day(100.0, 1, 10, awake_ms=60000) == pytest.approx(720 * 100.6 / 3600)


def test_comparisons_and_their_direction(typical):
    phases = model.warm_bound(typical).phases_ms()
    per_interval = [model.energy(typical, itv, phases) for itv in model.INTERVALS_MIN]
    for e in per_interval:
        assert e.always_on_ratio == pytest.approx(e.always_on_mah_per_day / e.mah_per_day)
        assert e.pi_ratio == pytest.approx(e.pi_mah_per_day / e.mah_per_day)
        assert 1 < e.always_on_ratio < e.pi_ratio
        assert e.always_on_mah_per_day == pytest.approx(typical["always_on_esp32_ma"] * 24)
    days = [e.mah_per_day for e in per_interval]
    assert days == sorted(days, reverse=True)  # waking less often costs less
    board = model.energy(typical, 5, phases, sleep_ua=15000)
    assert board.mah_per_day > per_interval[1].mah_per_day and board.always_on_ratio < per_interval[1].always_on_ratio


def test_pi_mah_per_day_is_5v_scaled_by_energy(typical):
    wake_ms = 6000.0
    runs = 1440 / 5
    mah_5v = 350 * 24 + runs * 6 * 157.5 / 3600
    assert model.pi_mah_per_day(typical, 5, wake_ms) == pytest.approx(mah_5v * 5.0 / 3.3)


def test_warm_bound_meets_the_target_at_5_minutes(typical):
    e = model.energy(typical, model.TARGET_INTERVAL_MIN, model.warm_bound(typical).phases_ms())
    assert e.sleep_ua == typical["deep_sleep_chip_ua"]
    assert e.mah_per_day <= model.TARGET_MAH_PER_DAY


def test_energy_table_has_a_row_per_interval(typical):
    table = model.format_energy_table(typical, model.warm_bound(typical).phases_ms()).splitlines()
    assert len(table) == 2 + len(model.INTERVALS_MIN)
    assert table[3].startswith("| 5 min |")


# --- jbdgw energy --------------------------------------------------------------------------


def test_jbdgw_energy_prints_mah_per_day_and_comparisons():
    out = subprocess.run([str(JBDGW), "energy", "--interval", "5"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "mAh/day" in text and "always-on ESP32" in text and "Pi 3B+" in text
    assert text.count("x ours") == 2 and "sources:" in text and "[1] cpu_only_ma" in text


@pytest.mark.parametrize("args", [
    ["--interval", "-1"], ["--interval", "0"], ["--interval", "abc"], ["--interval", "nan"], [],
    ["--interval", "5", "--awake-ms", "0"], ["--interval", "5", "--battery-ah", "x"],
    ["--interval", "5", "--sleep-ua", "-3"], ["--interval", "5", "--profile", "esp32-fast"],
])
def test_jbdgw_energy_bad_arguments_exit_2_with_one_line(args):
    out = subprocess.run([str(JBDGW), "energy", *args], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jbdgw energy: error: ") and "Traceback" not in out.stderr


def test_jbdgw_energy_uses_the_measured_awake_time(tmp_path, monkeypatch, capsys, typical):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"warm_awake_ms_median": 1500, "phases_ms": {"config": 5, "ble": 300, "wifi": 200, "mqtt": 95}}))
    monkeypatch.setattr(energy_cmd, "BENCH_JSON", bench)
    assert cli.main(["energy", "--interval", "5", "--battery-ah", "100"]) == 0
    text = capsys.readouterr().out
    assert "1500 ms, measured" in text and "% of a 100 Ah" in text
    phases = model.scale_phases({"config": 5, "ble": 300, "wifi": 200, "mqtt": 95}, 1500)
    expected = model.energy(typical, 5, phases)
    assert f"{expected.mah_per_day:.2f} mAh/day" in text


def test_jbdgw_energy_falls_back_to_the_model_and_says_so(tmp_path, monkeypatch, capsys, typical):
    monkeypatch.setattr(energy_cmd, "BENCH_JSON", tmp_path / "missing.json")
    assert cli.main(["energy", "--interval", "15"]) == 0
    text = capsys.readouterr().out
    assert "warm lower bound" in text and "not found" in text
    expected = model.energy(typical, 15, model.warm_bound(typical).phases_ms())
    assert f"{expected.mah_per_day:.2f} mAh/day" in text


def test_measured_awake_rejects_unusable_files(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text("{not json")
    assert isinstance(energy_cmd.measured_awake(bench), str)
    bench.write_text(json.dumps({"warm_awake_ms_median": 900}))
    assert energy_cmd.measured_awake(bench) == (900.0, None)
