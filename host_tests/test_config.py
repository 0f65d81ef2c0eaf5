"""config.json validation, run on the MicroPython unix port (and compared with CPython)."""

import json

import pytest

from conftest import REPO, run_on_both

SCRIPT = REPO / "host_tests" / "mp_config.py"

GOOD = {
    "wifi": {"ssid": "home", "password": "pw"},
    "mqtt": {"host": "192.168.1.10"},
    "bms": {"name": "Cabin 580ah"},
}


def with_(path: str, value):
    doc = json.loads(json.dumps(GOOD))
    keys = path.split(".")
    node = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return doc


DELETE = object()

BAD = [
    (with_("mqtt.hots", "x"), "mqtt.hots: unknown key; remove it or fix the spelling"),
    (with_("extra", 1), "extra: unknown key"),
    (with_("wifi.static", {"ip": "10.0.0.2", "netmask": "255.255.255.0", "gateway": "10.0.0.1", "dsn": "x"}), "wifi.static.dsn: unknown key"),
    (with_("wifi.static", {"ip": "10.0.0.300", "netmask": "255.255.255.0", "gateway": "10.0.0.1", "dns": "1.1.1.1"}), "wifi.static.ip: '10.0.0.300' is not an IPv4 address"),
    (with_("wifi.static", {"ip": "10.0.0.3", "netmask": "255.0.255.0", "gateway": "10.0.0.1", "dns": "1.1.1.1"}), "wifi.static.netmask: '255.0.255.0' is not a netmask"),
    (with_("wifi.ssid", DELETE), "wifi.ssid: missing; add it as a string"),
    (with_("wifi.ssid", 5), "wifi.ssid: is a number; write it as a string"),
    (with_("mqtt", DELETE), "mqtt: missing; add the mqtt section"),
    (with_("mqtt.port", 0), "mqtt.port: is 0, out of range; use a whole number from 1 to 65535"),
    (with_("mqtt.port", "1883"), "mqtt.port: is a string; write a whole number"),
    (with_("mqtt.tls", "yes"), "mqtt.tls: is a string; write true or false"),
    (with_("mqtt.topic", "solar/#"), "mqtt.topic: 'solar/#' contains a wildcard"),
    (with_("mqtt.topic", "/solar"), "mqtt.topic: '/solar' has an empty level"),
    (with_("mqtt.topic", "a//b"), "mqtt.topic: 'a//b' has an empty level"),
    (with_("bms", []), "bms: is an empty list"),
    (with_("bms", [{"name": "A"}, {}]), "bms[1]: has neither name nor address"),
    (with_("bms", [{"address": "a4:c1:38:30:c2"}]), "bms[0].address: 'a4:c1:38:30:c2' is not a MAC address"),
    (with_("bms", [{"name": "A", "adress": "x"}]), "bms[0].adress: unknown key"),
    (with_("bms", [{"name": "A"}, {"name": "A"}]), "bms[1]: repeats 'A'"),
    (with_("bms", [{"name": "A", "service": "zz"}]), "bms[0].service: 'zz' is not a BLE UUID"),
    (with_("interval_min", -1), "interval_min: is -1, out of range"),
    (with_("interval_min", 2.5), "interval_min: is a fraction; write a whole number"),
    (with_("backoff_max_min", 0), "backoff_max_min: is 0, out of range; use a whole number from 1 to 10080"),
    (with_("backof_max_min", 30), "backof_max_min: unknown key"),
    ([1, 2], "config: is a list; it must be an object"),
]


def check(cases: list, tmp_path) -> list[dict]:
    """firmware/config.validate() of each case, the same on MicroPython and CPython."""
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    return run_on_both(SCRIPT, "validate", path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cfg")
    from firmware.config import strip_comments

    example = json.loads(strip_comments((REPO / "config.example.json").read_text()))
    cases = [GOOD, example] + [doc for doc, _ in BAD]
    return check(cases, tmp)


def test_minimal_config_gets_defaults(results):
    cfg = results[0]["ok"]
    assert cfg["mqtt"] == {
        "host": "192.168.1.10", "port": 1883, "user": None, "password": None, "topic": "solar",
        "client_id": None, "tls": False, "keepalive": 60,
    }
    assert cfg["interval_min"] == 5
    assert cfg["bms"] == [{"name": "Cabin 580ah", "address": None, "addr_type": 0, "service": None,
                           "notify": None, "write": None, "label": "Cabin 580ah", "slug": "cabin-580ah"}]


def test_example_config_is_valid(results):
    cfg = results[1]["ok"]
    assert cfg["wifi"]["static"]["ip"] == "192.168.1.50"
    assert cfg["wifi"]["static"]["prefix"] == 24
    assert [b["slug"] for b in cfg["bms"]] == ["cabin-580ah", "a4c13830c28e"]
    assert [b["label"] for b in cfg["bms"]] == ["Cabin 580ah", "a4:c1:38:30:c2:8e"]


@pytest.mark.parametrize("i", range(len(BAD)), ids=[m.split(":")[0] for _, m in BAD])
def test_bad_config_names_key_problem_and_fix(results, i):
    message = BAD[i][1]
    got = results[i + 2]
    assert "error" in got, got
    assert got["error"].startswith(message), got["error"]
    assert ";" in got["error"]  # what is wrong; how to fix it


def test_mqtt_user_without_password_gets_an_empty_one(tmp_path):
    doc = with_("mqtt.user", "gateway")
    (got,) = check([doc], tmp_path)
    assert got["ok"]["mqtt"]["password"] == ""


def test_service_override_fills_notify_and_write(results, tmp_path):
    doc = with_("bms", [{"name": "A", "service": "fff0"}])
    (got,) = check([doc], tmp_path)
    assert got["ok"]["bms"][0]["service"] == 0xFFF0
    assert (got["ok"]["bms"][0]["notify"], got["ok"]["bms"][0]["write"]) == (0xFFF1, 0xFFF2)


def test_commented_example_loads_and_comments_inside_strings_survive(tmp_path):
    tricky = tmp_path / "tricky.json"
    tricky.write_text(
        '{"wifi": {"ssid": "a//b", "password": "x\\\\"}, // trailing note\n'
        ' "mqtt": {"host": "h", "topic": "t"}, "bms": {"name": "B \\" // c"}}\n'
    )
    missing = tmp_path / "missing.json"
    paths = [REPO / "config.example.json", tricky, missing]
    example, tricky_cfg, absent = run_on_both(SCRIPT, "load", *paths)
    assert example["ok"]["wifi"]["static"]["prefix"] == 24
    assert example["ok"]["bms"][1]["address"] == "a4:c1:38:30:c2:8e"
    assert tricky_cfg["ok"]["wifi"]["ssid"] == "a//b" and tricky_cfg["ok"]["wifi"]["password"] == "x\\"
    assert tricky_cfg["ok"]["bms"][0]["name"] == 'B " // c'
    assert absent["error"].endswith("cannot be read; copy it to the board (mpremote cp config.json :)")
