"""Every fault is survived (the wake always ends in deep sleep), reported on the status
topic, and loses no reading."""

import json

import pytest

from jbdgw.image import build_image
from jbdgw.sim import DEEPSLEEP_RESET, WDT_RESET
from simharness import battery, config_for, device, run_gateway, scenario

MAC = "a4:c1:38:30:c2:8e"


def test_bms_held_by_a_phone_app_is_reported_then_read_next_wake(tmp_path, broker):
    def phone_leaves(i, scen):
        scen["devices"][0]["busy"] = False

    run = run_gateway(tmp_path, broker, scenario(device(busy=True)), config_for(broker, {"address": MAC}),
                      wakes=2, between=phone_leaves)
    assert all(w.slept and w.sleep_ms == 300000 for w in run.wakes)
    first, second = run.statuses
    assert first["state"] == "bms_busy" and "phone app" in first["errors"][0]
    assert first["bms"][0]["state"] == "bms_busy"
    assert second["state"] == "ok" and "phone app" in second["prev_error"]
    (r,) = run.readings
    assert r["seq"] == 2


def test_bms_not_advertising_its_name_is_reported(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device(advertising=False)),
                      config_for(broker, {"name": "Cabin 580ah"}))
    (s,) = run.statuses
    assert s["state"] == "bms_not_found" and "Cabin 580ah" in s["errors"][0]
    assert run.readings == [] and run.wakes[0].sleep_ms == 300000


def test_wifi_down_keeps_the_reading_for_the_next_wake(tmp_path, broker):
    def wifi_back(i, scen):
        scen["wifi"]["down"] = False

    run = run_gateway(tmp_path, broker, scenario(down=True), config_for(broker, {"name": "Cabin 580ah"}),
                      wakes=2, between=wifi_back, expect_messages=3)
    assert all(w.slept for w in run.wakes)
    assert "could not join 'demo'" in run.wakes[0].stdout
    assert [r["seq"] for r in run.readings] == [1, 2]  # the first reading arrives late, not lost
    (s,) = run.statuses
    assert s["state"] == "ok" and s["backlog"] == 1 and "could not join" in s["prev_error"]


def test_wrong_wifi_password_is_reported_not_fatal(tmp_path, broker):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    cfg["wifi"]["password"] = "wrong"
    run = run_gateway(tmp_path, broker, scenario(), cfg)
    assert run.wakes[0].slept and run.messages == []
    assert "wrong_password" in run.wakes[0].stdout


def test_broker_down_keeps_readings_until_it_is_back(tmp_path, broker):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    cfg["mqtt"]["port"] = 1  # nothing listens there
    down = build_image(tmp_path / "down", cfg)
    state = tmp_path / "world"
    first = run_gateway(state, broker, scenario(), cfg, wakes=2, image=down)
    assert first.messages == [] and all(w.slept for w in first.wakes)
    assert "mqtt_failed" in first.wakes[1].stdout
    # A reused DHCP lease could be why the broker is unreachable: after a failed session the
    # next wake asks DHCP again instead of reusing it.
    static = [[e["static"] for e in first.events(w, "wifi_connect") if e["ok"]] for w in range(2)]
    assert static == [[False], [False]]
    # Same board (same flash and RTC memory), broker reachable again.
    cfg["mqtt"]["port"] = broker.port
    (down / "config.json").write_text(json.dumps(cfg))
    again = run_gateway(state, broker, scenario(), cfg, wakes=1, image=down, first_reset_cause=DEEPSLEEP_RESET,
                        expect_messages=4)
    assert [r["seq"] for r in again.readings] == [1, 2, 3]
    (s,) = again.statuses
    assert s["backlog"] == 2 and s["state"] == "ok"
    assert not (down / "state" / "backlog").exists()


def test_corrupt_frames_are_counted_and_reported(tmp_path, broker):
    good = "dd0400080cde0cdf0cdf0ce0fc4c77"
    bad3 = "dd03001b0534000019ab271000002a750000000000002042030402097f0ba3fc7077"  # checksum off by one
    dev = device(replies={"3": bad3, "4": good}, model=None)
    run = run_gateway(tmp_path, broker, scenario(dev), config_for(broker, {"name": "Cabin 580ah"}))
    (s,) = run.statuses
    assert s["state"] == "bad_frame" and "bad checksum" in s["errors"][0]
    assert run.readings == [] and run.wakes[0].slept


def test_link_dropped_mid_read_is_reported(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device(drop_after_ms=20, latency_ms=200)),
                      config_for(broker, {"address": MAC}))
    (s,) = run.statuses
    assert s["state"] in ("bms_disconnected", "bms_no_reply") and run.wakes[0].slept


def test_first_request_unanswered_after_bms_sleep_is_repeated(tmp_path, broker):
    run = run_gateway(tmp_path, broker, scenario(device(no_reply=[3])), config_for(broker, {"address": MAC}))
    (s,) = run.statuses
    assert s["state"] == "bms_no_reply" and "0x03" in s["errors"][0]
    writes = [e["hex"] for e in run.events(0, "write")]
    assert writes.count("dda50300fffd77") == 3  # asked three times, then gave up


@pytest.mark.parametrize("text,words", [
    ('{"wifi": {"ssid": "x"}, "mqtt": {"host": "h", "hots": 1}, "bms": {"name": "A"}}', "mqtt.hots: unknown key"),
    ("{not json", "not valid JSON"),
])
def test_bad_config_sleeps_15_minutes_without_crashing(tmp_path, broker, text, words):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    image = build_image(tmp_path / "image", cfg)
    (image / "config.json").write_text(text)
    run = run_gateway(tmp_path, broker, scenario(), cfg, wakes=2, image=image)
    assert [w.sleep_ms for w in run.wakes] == [900000, 900000]
    assert words in run.wakes[0].stdout and "Traceback" not in run.wakes[0].stdout + run.wakes[0].stderr


def test_config_error_is_published_when_wifi_and_mqtt_are_usable(tmp_path, broker):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    cfg["bms"] = [{"nmae": "Cabin 580ah"}]
    image = build_image(tmp_path / "image", {"interval_min": 5})
    (image / "config.json").write_text(json.dumps(cfg))
    run = run_gateway(tmp_path, broker, scenario(), cfg, image=image)
    assert run.wakes[0].sleep_ms == 900000 and run.readings == []
    (s,) = run.statuses
    assert s["state"] == "config_error"
    assert s["errors"] == ["config.json: bms[0].nmae: unknown key; remove it or fix the spelling "
                           "(allowed here: addr_type, address, name, notify, service, write)"]


def test_corrupt_rtc_memory_means_no_cache_not_a_crash(tmp_path, broker):
    state = tmp_path / "state"
    state.mkdir()
    (state / "rtc.bin").write_bytes(b"JGW1\x00\x05{bad}\x00\x00")
    run = run_gateway(tmp_path, broker, scenario(), config_for(broker, {"name": "Cabin 580ah"}),
                      first_reset_cause=DEEPSLEEP_RESET)
    (r,) = run.readings
    assert r["seq"] == 1 and len(run.events(0, "scan")) == 1
    assert "checksum mismatch" in run.wakes[0].stdout or "length mismatch" in run.wakes[0].stdout


def test_seq_keeps_increasing_across_a_power_loss(tmp_path, broker):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    image = build_image(tmp_path / "image", cfg)
    a = run_gateway(tmp_path / "a", broker, scenario(), cfg, wakes=2, image=image)
    b = run_gateway(tmp_path / "b", broker, scenario(), cfg, wakes=1, image=image)  # RTC memory lost
    seqs = [r["seq"] for r in a.readings + b.readings]
    assert seqs[:2] == [1, 2] and seqs[2] > 2


def test_safe_mode_returns_to_the_repl(tmp_path, broker):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    image = build_image(tmp_path / "image", cfg)
    (image / "safe").write_text("")
    run = run_gateway(tmp_path, broker, scenario(), cfg, wakes=2, image=image)
    assert len(run.wakes) == 1 and not run.wakes[0].slept and run.wakes[0].returncode == 0
    assert run.events(0, "wdt") == [] and "safe mode" in run.wakes[0].stdout


def test_wake_cut_short_does_not_reuse_seq(tmp_path, broker):
    cfg = config_for(broker, {"address": MAC})
    image = build_image(tmp_path / "image", cfg)
    # The BMS answers too slowly for the driver's 0.6 s limit: the wake is killed like a
    # watchdog reset or a power cut that spares RTC memory.
    cut = run_gateway(tmp_path, broker, scenario(device(latency_ms=3000)), cfg, image=image, timeout_s=0.6)
    assert cut.wakes[0].timed_out and cut.messages == []
    again = run_gateway(tmp_path, broker, scenario(), cfg, image=image, first_reset_cause=WDT_RESET)
    (r,) = again.readings
    assert r["seq"] == 2  # seq 1 was handed out before the cut and is never reused


def test_a_cached_mac_that_keeps_failing_is_scanned_again(tmp_path, broker):
    # The module advertising the name answers on 0xFFF0 only, while the config pins 0xFF00:
    # every read fails fast with bms_no_service.
    cfg = config_for(broker, {"name": "Cabin 580ah", "service": "ff00"})
    run = run_gateway(tmp_path, broker, scenario(device(uuids="fff0")), cfg, wakes=5)
    scans = [len(run.events(i, "scan")) for i in range(5)]
    assert scans == [1, 0, 0, 1, 0]  # forgotten after three failures in a row
    assert all(s["state"] == "bms_no_service" for s in run.statuses)


def test_mqtt_user_without_password_connects(tmp_path, broker):
    cfg = config_for(broker, {"name": "Cabin 580ah"})
    cfg["mqtt"]["user"] = "gateway"
    run = run_gateway(tmp_path, broker, scenario(), cfg)
    assert run.statuses[0]["state"] == "ok" and len(run.readings) == 1


def test_lost_notification_is_resynchronised_and_the_request_repeated(tmp_path, broker):
    # The second chunk of the first 0x03 reply never arrives: the assembler is left with a
    # cut-off frame, the request times out and is sent again, and the next reply is whole.
    bat = battery([3300 + k for k in range(16)])
    run = run_gateway(tmp_path, broker, scenario(device(bat=bat, lose_notifications=[1])),
                      config_for(broker, {"address": MAC}))
    assert [e["reason"] for e in run.events(0, "notify_lost")] == ["air"]
    (r,) = run.readings
    assert r["cells"] == bat["cells_mv"] and r["volts"] == bat["voltage_mv"] / 1000
    writes = [e["hex"] for e in run.events(0, "write")]
    assert writes.count("dda50300fffd77") == 2
    (s,) = run.statuses
    assert s["state"] == "ok" and s["bms"][0]["frame_errors"] == 1  # the torn frame, counted
