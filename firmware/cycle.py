# One wake: state -> config -> BLE reads -> messages -> Wi-Fi + MQTT -> state -> deep sleep.
# BLE runs first and is switched off before Wi-Fi starts (the radios share one front end).
import asyncio
import gc
import os
import sys
import time

import machine
from micropython import const

from firmware import VERSION
from firmware import state as statemod
from firmware.jsonw import obj
from firmware.reading import reading_json

_CONFIG_RETRY_MS = const(900000)  # a config that cannot be used: retry in 15 min, no boot loop
_WDT_MS = const(120000)
_BLE_TOTAL_MS = const(90000)
_NAME_EVERY = const(24)  # re-read the BMS model (0x05) every N wakes, and on cold boot
_EPOCH_2000 = const(946684800)
_CLOCK_VALID_AFTER = const(1704067200)  # 2024-01-01: an earlier clock was never set


def unix_time():
    """Unix seconds, or None when the clock was never set (ESP32 starts at 2000-01-01)."""
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:
        t += _EPOCH_2000
    return t if t >= _CLOCK_VALID_AFTER else None


def _set_clock():
    # Once per power-on: the RTC keeps time through deep sleep, so later readings carry ts.
    try:
        import ntptime

        ntptime.timeout = 2
        ntptime.settime()
    except Exception as e:  # no NTP on this network: readings keep "ts": null
        print("gateway: clock not set:", repr(e))


def _ms_since(t0):
    return time.ticks_diff(time.ticks_ms(), t0)


def _topic_for(cfg, entry):
    topic = cfg["mqtt"]["topic"]
    if len(cfg["bms"]) == 1:
        return topic
    return topic + "/" + entry["slug"]


def _client_id(cfg):
    cid = cfg["mqtt"]["client_id"]
    if cid:
        return cid
    return "jbdgw-" + machine.unique_id().hex()


class Wake:
    def __init__(self):
        self.t0 = time.ticks_ms()
        self.ms = {}
        self.rtc = machine.RTC()
        self.cause = machine.reset_cause()
        self.st, self.state_problem = statemod.decode(self.rtc.memory())
        self.state = "ok"
        self.errors = []
        self.cfg = None

    def mark(self, phase, since):
        self.ms[phase] = _ms_since(since)

    def fail(self, state, message):
        print("gateway:", state + ":", message)
        if self.state == "ok":
            self.state = state
        self.errors.append(message)

    def begin(self):
        st = self.st
        if self.state_problem:
            print("gateway:", self.state_problem, "- starting without cache")
        # RTC memory survives deep sleep and WDT resets; power loss leaves it invalid.
        restored = self.state_problem is None and st["seq"] > 0
        if self.cause != machine.DEEPSLEEP_RESET:
            st["wakes"] = 0
        st["wakes"] += 1
        try:
            self.seq = statemod.next_seq(st, restored)
        except OSError as e:  # flash full or read-only: keep going, seq still advances
            print("gateway: cannot write", statemod.SEQ_FILE, e)
            self.seq = st["seq"]

    def want_name(self, label):
        last = self.st["name_wake"].get(label)
        cold = self.cause != machine.DEEPSLEEP_RESET
        return cold or last is None or self.st["wakes"] - last >= _NAME_EVERY

    def read_bms(self):
        from firmware import ble

        t = time.ticks_ms()
        try:
            results = asyncio.run(
                asyncio.wait_for_ms(ble.read_all(self.cfg["bms"], self.st, self.want_name), _BLE_TOTAL_MS)
            )
        except asyncio.TimeoutError:
            results = []
            self.fail("bms_timeout", "BLE phase exceeded %d s" % (_BLE_TOTAL_MS // 1000))
        self.mark("ble", t)
        # BLE is off for the rest of the wake. Unhooking aioble's IRQ handler lets the
        # modules and their connection state go, leaving the heap to Wi-Fi, MQTT and TLS.
        import bluetooth

        bluetooth.BLE().irq(None)
        asyncio.new_event_loop()  # drops tasks the BLE phase left behind (and what they hold)
        _unload("aioble", "firmware.ble", "jbd")
        return results

    def messages(self, results):
        ts = unix_time()
        out = []
        per_bms = []
        for r in results:
            e = r["entry"]
            topic = _topic_for(self.cfg, e)
            label = e["label"]
            if r["state"] != "ok":
                self.fail(r["state"], "%s: %s" % (label, r["error"]))
                per_bms.append([("bms", label), ("state", r["state"]), ("error", r["error"])])
                continue
            if r["name"] is not None:
                self.st["names"][label] = r["name"]
                self.st["name_wake"][label] = self.st["wakes"]
            name = self.st["names"].get(label) or None
            payload = reading_json(topic, label, r["address"], self.seq, ts, r["basic"], r["cells"], name)
            out.append((topic.encode(), payload, False))
            per_bms.append([("bms", label), ("state", "ok"), ("frame_errors", r["frame_errors"])])
        return out, per_bms

    def status(self, per_bms, ts, waiting):
        gc.collect()
        pairs = [
            ("state", self.state),
            ("seq", self.seq),
            ("ts", ts),
            ("fw", VERSION),
            ("reset", self.cause),
            ("ms", [(k, self.ms[k]) for k in ("config", "ble", "wifi")if k in self.ms]),
            ("awake_ms", _ms_since(self.t0)),
            ("prev_mqtt_ms", self.st.get("mqtt_ms")),
            ("heap_free", gc.mem_free()),
            ("bms", [obj(p) for p in per_bms]),
            ("backlog", waiting),
            ("errors", self.errors),
            ("prev_error", self.st.get("last_error")),
        ]
        return _status_json(pairs)

    def publish(self, msgs, per_bms):
        from firmware import backlog, wifi

        t = time.ticks_ms()
        topic = (self.cfg["mqtt"]["topic"] + "/status").encode()
        waiting = backlog.count()
        sent = False
        try:
            self.st["wifi"] = wifi.connect(self.cfg["wifi"], self.st["wifi"])
            self.mark("wifi", t)
            if unix_time() is None:
                _set_clock()
            from firmware import mqtt

            t = time.ticks_ms()
            status = self.status(per_bms, unix_time(), waiting)
            try:
                n = mqtt.publish_all(self.cfg["mqtt"], _client_id(self.cfg), topic,
                                     _chain(backlog.messages(), msgs, ((topic, status, True),)))
                sent = True
                self.st["mqtt_ms"] = _ms_since(t)
                self.st["sent_bytes"] = n
            except Exception as e:  # OSError, MQTTException, TLS errors
                self.fail("mqtt_failed", "broker %s:%d: %r" % (self.cfg["mqtt"]["host"], self.cfg["mqtt"]["port"], e))
        except wifi.WifiError as e:
            self.st["wifi"] = None
            self.fail("wifi_failed", str(e))
        finally:
            wifi.off()
        if sent:
            if waiting:
                print("gateway: sent %d readings from the backlog" % waiting)
            backlog.clear()
        elif msgs:
            dropped = backlog.append(msgs)
            print("gateway: kept %d readings for the next wake (%d waiting)" % (len(msgs) - dropped, waiting + len(msgs) - dropped))
            if dropped:
                self.errors.append("backlog full: %d readings dropped" % dropped)

    def save(self):
        self.st["last_error"] = self.errors[0] if self.errors else None
        try:
            self.rtc.memory(statemod.encode(self.st))
        except ValueError as e:  # too big for RTC memory: drop the caches, keep counters
            print("gateway:", e)
            self.st["names"] = {}
            self.st["macs"] = {}
            self.rtc.memory(statemod.encode(self.st))


def _chain(*iterables):
    for it in iterables:
        for x in it:
            yield x


def _unload(*prefixes):
    # A phase is done for this wake: give its modules' memory to the next one. A module
    # is only freed once neither sys.modules nor its parent package refers to it.
    for name in list(sys.modules):
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                del sys.modules[name]
                dot = name.rfind(".")
                parent = sys.modules.get(name[:dot]) if dot > 0 else None
                if parent is not None and hasattr(parent, name[dot + 1 :]):
                    delattr(parent, name[dot + 1 :])
    gc.collect()


def _status_json(pairs):
    # ms is a nested ordered object; bms entries are pre-rendered objects.
    parts = []
    for k, v in pairs:
        if k == "ms":
            parts.append('"ms":' + obj(v))
        elif k == "bms":
            parts.append('"bms":[' + ",".join(v) + "]")
        else:
            parts.append(obj([(k, v)])[1:-1])
    return ("{" + ",".join(parts) + "}").encode()


def run_wake():
    """One wake cycle; returns the deep-sleep time in ms (None = until reset)."""
    w = Wake()
    w.begin()
    t = time.ticks_ms()
    from firmware import config

    try:
        w.cfg = config.load()
    except config.ConfigError as e:
        print("gateway: config error:", e)
        print("gateway: fix config.json; retrying in %d min" % (_CONFIG_RETRY_MS // 60000))
        w.errors.append("config: %s" % e)
        w.save()
        return _CONFIG_RETRY_MS
    config = None
    _unload("firmware.config")
    w.mark("config", t)
    gc.collect()
    results = w.read_bms()
    gc.collect()
    msgs, per_bms = w.messages(results)
    for topic, payload, _ in msgs:
        print(topic.decode(), payload.decode())
    w.publish(msgs, per_bms)
    w.save()
    print("gateway: wake %d done in %d ms, state %s" % (w.seq, _ms_since(w.t0), w.state))
    interval = w.cfg["interval_min"]
    return interval * 60000 if interval else None


def main():
    try:
        os.stat("safe")
        print("gateway: safe mode (file 'safe' present): not running; delete it to resume")
        return
    except OSError:
        pass
    wdt = machine.WDT(timeout=_WDT_MS)
    sleep_ms = _CONFIG_RETRY_MS
    try:
        sleep_ms = run_wake()
    except Exception as e:  # never crash: report and sleep
        print("gateway: unexpected error, sleeping:")
        sys.print_exception(e)
    wdt.feed()
    if sleep_ms is None:
        machine.deepsleep()
    machine.deepsleep(sleep_ms)
