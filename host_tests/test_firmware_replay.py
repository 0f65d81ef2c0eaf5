"""Captured frames from real units, replayed byte for byte (with their real notification
splits where the capture shows them) through the firmware, BLE to MQTT."""

import json

import pytest

from conftest import FRAMES
from simharness import config_for, device, run_gateway, scenario

# (corpus file, index of the 0x03 frame, index of the 0x04 frame, index of the 0x05 frame)
UNITS = [
    ("ecoworthy-eco-lfp48100-16s.json", 0, 1, None),
    ("jakeler-sp15s001-p13s-30a-11s.json", 0, 2, 3),
    ("jbd-4s-300ah-dbus-btbattery-issue14.json", 0, 1, None),
    ("jiabaida-protocol-document-examples.json", 4, 3, 2),
    ("syssi-jbd-sp04s034-l4s-200a-b-u.json", 14, 15, 4),
    ("berger-lifepo4-pro-12v-200ah.json", 0, 1, None),
    ("jbd-8s-60ah-gatt.json", 0, 1, None),
]


def reply(frame: dict):
    return frame.get("notifications") or frame["hex"]


@pytest.mark.parametrize("unit", UNITS, ids=[u[0].removesuffix(".json") for u in UNITS])
def test_captured_unit_publishes_its_expected_values(tmp_path, broker, unit):
    name, i3, i4, i5 = unit
    frames = json.loads((FRAMES / name).read_text())["frames"]
    f3, f4 = frames[i3], frames[i4]
    replies = {"3": reply(f3), "4": reply(f4)}
    if i5 is not None:
        replies["5"] = reply(frames[i5])
    dev = device(replies=replies, model=None)
    run = run_gateway(tmp_path, broker, scenario(dev), config_for(broker, {"name": dev["name"]}))
    (r,) = run.readings
    e3, e4 = f3["expected"], f4["expected"]
    assert r["volts"] == e3["voltage_V"]
    assert r["amps"] == e3["current_A"]
    assert r["capacity"] == e3["nominal_Ah"] and r["remain"] == e3["residual_Ah"]
    assert r["percent"] == e3["soc_pct"] and r["cycles"] == e3["cycles"]
    assert r["temps"] == e3["temperatures_C"]
    assert r["balancing"] == e3["balancing_cells"]
    assert r["protection"] == e3["protection_flags"]
    assert (r["charge_fet"], r["discharge_fet"]) == (e3["charge_fet_on"], e3["discharge_fet_on"])
    assert r["production_date"] == e3["production_date"]
    assert r["cells"] == e4["cell_mV"] and r["cell_count"] == e4["cell_count"]
    for k, mv in enumerate(e4["cell_mV"]):
        assert r[f"cell{k + 1}"] == mv
    if i5 is not None:
        assert r["name"] == frames[i5]["expected"]["name"]
    else:
        assert "name" not in r
    assert run.statuses[0]["bms"][0]["frame_errors"] == 0
    # The replayed notifications are the capture's own, byte for byte.
    got = [n["len"] for n in run.events(0, "notify")]
    if isinstance(replies["3"], list):
        assert got[: len(replies["3"])] == [len(c) // 2 for c in replies["3"]]
