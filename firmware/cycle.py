# One wake: state -> config -> BLE reads -> messages -> Wi-Fi + MQTT -> state -> deep sleep.
# BLE runs first and is switched off before Wi-Fi starts (the radios share one front end).
# Every phase is bounded, every failure is recorded and published when possible, and every
# wake ends in machine.deepsleep().
import asyncio
import gc
import sys
import time

import machine
from micropython import const

from firmware import VERSION
from firmware import state as statemod

_CONFIG_RETRY_MS = const(900000)  # a config that cannot be used: retry in 15 min, no boot loop
_WDT_MS = const(120000)  # fed between phases; each phase is bounded well below this
_BLE_TOTAL_MS = const(60000)
_NAME_EVERY = const(24)  # re-read the BMS model (0x05) every N wakes, and on cold boot
_FORGET_MAC_AFTER = const(3)  # failed reads in a row before a cached MAC is scanned again
_NTP_RETRY = const(12)  # wakes between NTP attempts while the clock is unknown
_NTP_RESYNC = const(288)  # wakes between re-syncs (a day at 5 min): the sleep RTC drifts
_EPOCH_2000 = const(946684800)
_CLOCK_VALID_AFTER = const(1704067200)  # 2024-01-01: an earlier clock was never set
_ERROR_CHARS = const(200)


def unix_time():
    """Unix seconds, or None when the clock was never set (ESP32 starts at 2000-01-01)."""
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:
        t += _EPOCH_2000
    return t if t >= _CLOCK_VALID_AFTER else None


def _ms_since(t0):
    return time.ticks_diff(time.ticks_ms(), t0)


def _client_id(cfg):
    cid = cfg["mqtt"]["client_id"]
    if cid:
        return cid
    return "jbdgw-" + machine.unique_id().hex()


class Wake:
    def __init__(self, wdt):
        self.wdt = wdt
        self.t0 = time.ticks_ms()
        self.ms = {}
        self.rtc = machine.RTC()
        self.cause = machine.reset_cause()
        self.st, self.state_problem = statemod.decode(self.rtc.memory())
        self.state = "ok"
        self.errors = []
        self.cfg = None
        self.seq = 0

    def feed(self):
        self.wdt.feed()

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
        # Saved at once: a wake cut short by the watchdog must not hand out this seq again.
        self.save()

    def want_name(self, label):
        last = self.st["name_wake"].get(label)
        cold = self.cause != machine.DEEPSLEEP_RESET
        return cold or last is None or self.st["wakes"] - last >= _NAME_EVERY

    def read_bms(self):
        t = time.ticks_ms()
        results = []  # filled as each BMS is done, so a phase timeout keeps what was read
        try:
            from firmware import ble

            asyncio.run(
                asyncio.wait_for_ms(ble.read_all(self.cfg["bms"], self.st, self.want_name, results), _BLE_TOTAL_MS)
            )
        except asyncio.TimeoutError:
            self.fail("bms_timeout", "BLE phase exceeded %d s" % (_BLE_TOTAL_MS // 1000))
        except Exception as e:  # BLE stack refused (OSError), aioble missing (ImportError), ...
            self.fail("ble_failed", "BLE: %r" % (e,))
        self.mark("ble", t)
        # BLE is off for the rest of the wake. Unhooking aioble's IRQ handler lets the
        # modules and their connection state go, leaving the heap to Wi-Fi, MQTT and TLS.
        try:
            import bluetooth

            bluetooth.BLE().irq(None)
        except Exception:
            pass
        asyncio.new_event_loop()  # drops tasks the BLE phase left behind (and what they hold)
        _unload("aioble", "firmware.ble", "jbd")
        return results

    def messages(self, results):
        # Imported after the BLE phase, which is where the heap peaks.
        from firmware.reading import reading_json

        ts = unix_time()
        out = []
        per_bms = []
        for r in results:
            e = r["entry"]
            label = e["label"]
            self._count_failures(e, r["state"] == "ok")
            if r["state"] != "ok":
                self.fail(r["state"], "%s: %s" % (label, r["error"]))
                per_bms.append([("bms", label), ("state", r["state"]), ("error", r["error"])])
                continue
            if r["name"] is not None:
                self.st["names"][label] = r["name"]
                self.st["name_wake"][label] = self.st["wakes"]
            name = self.st["names"].get(label) or None
            topic = self.cfg["mqtt"]["topic"]
            if len(self.cfg["bms"]) > 1:
                topic += "/" + e["slug"]
            payload = reading_json(topic, label, r["address"], self.seq, ts, r["basic"], r["cells"], name)
            out.append((topic.encode(), payload, False))
            per_bms.append([("bms", label), ("state", "ok"), ("frame_errors", r["frame_errors"])])
        return out, per_bms

    def _count_failures(self, entry, ok):
        # A cached MAC that keeps failing may belong to the wrong device (two modules with
        # the same default name): forget it, so the next wake scans for the name again.
        label = entry["label"]
        fails = self.st["fails"]
        fails[label] = 0 if ok else fails.get(label, 0) + 1
        if fails[label] >= _FORGET_MAC_AFTER and entry["name"] in self.st["macs"] and not entry["address"]:
            del self.st["macs"][entry["name"]]
            fails[label] = 0

    def status(self, per_bms, waiting):
        from firmware.jsonw import Raw, obj

        gc.collect()
        pairs = [
            ("state", self.state),
            ("seq", self.seq),
            ("ts", unix_time()),
            ("fw", VERSION),
            ("reset", self.cause),
            ("ms", Raw(obj([(k, self.ms[k]) for k in ("config", "ble", "wifi") if k in self.ms]))),
            ("awake_ms", _ms_since(self.t0)),
            ("prev_mqtt_ms", self.st.get("mqtt_ms")),
            ("heap_free", gc.mem_free()),
            ("bms", [Raw(obj(p)) for p in per_bms]),
            ("backlog", waiting),
            ("errors", self.errors),
            ("prev_error", self.st.get("last_error")),
        ]
        return obj(pairs).encode()

    def publish(self, msgs, per_bms):
        from firmware import backlog, wifi

        reader = backlog.Reader(self.st["backlog_at"])
        waiting = reader.count()
        new_acked = 0
        try:
            t = time.ticks_ms()
            try:
                self.st["wifi"] = wifi.connect(self.cfg["wifi"], self.st["wifi"])
                joined = True
            except Exception as e:  # WifiError, or OSError "Wifi Internal Error" from the driver
                self.st["wifi"] = None
                self.fail("wifi_failed", str(e) if isinstance(e, wifi.WifiError) else "Wi-Fi: %r" % (e,))
                joined = False
            self.mark("wifi", t)
            self.feed()
            if joined:
                self._maybe_set_clock()
                new_acked = self._send(reader, msgs, per_bms, waiting)
        finally:
            reader.close()
            wifi.off()
        self.st["backlog_at"] = reader.done
        if reader.finished():
            backlog.clear()
            self.st["backlog_at"] = 0
            if waiting:
                print("gateway: sent %d readings from the backlog" % waiting)
        unsent = msgs[new_acked:]
        if unsent:
            try:
                dropped = backlog.append(unsent)
            except OSError as e:
                dropped = len(unsent)
                print("gateway: backlog write failed:", e)
            kept = len(unsent) - dropped
            print("gateway: kept %d readings for the next wake" % kept)
            if dropped:
                self.errors.append("backlog full or unwritable: %d readings dropped" % dropped)

    def _send(self, reader, msgs, per_bms, waiting):
        """Backlog, then this wake's readings, then the status; returns new readings acked."""
        from firmware import mqtt

        t = time.ticks_ms()
        status_topic = (self.cfg["mqtt"]["topic"] + "/status").encode()
        status = self.status(per_bms, waiting)
        session = None
        acked = 0
        try:
            session = mqtt.Session(self.cfg["mqtt"], _client_id(self.cfg), status_topic)
            session.connect()
            for topic, payload, retain in reader:
                session.publish(topic, payload, retain)
                self.feed()
            for topic, payload, retain in msgs:
                session.publish(topic, payload, retain)
                acked += 1
                self.feed()
            session.publish(status_topic, status, True)
            session.close(True)
            self.st["mqtt_ms"] = _ms_since(t)
            self.st["sent_bytes"] = session.sent_bytes
        except Exception as e:  # OSError, MQTTException, TLS errors
            m = self.cfg["mqtt"]
            self.fail("mqtt_failed", "broker %s:%d: %r" % (m["host"], m["port"], e))
            if session is not None:
                session.close(False)
        return acked

    def _maybe_set_clock(self):
        # The RTC keeps time through deep sleep: sync when it is unknown (not on every wake
        # if NTP is unreachable) and once a day against drift.
        st = self.st
        since = self.seq - st["ntp_seq"]
        if unix_time() is None:
            if st["ntp_seq"] and since < _NTP_RETRY:
                return
        elif since < _NTP_RESYNC:
            return
        st["ntp_seq"] = self.seq
        try:
            import ntptime

            ntptime.timeout = 2
            ntptime.settime()
        except Exception as e:  # no NTP on this network: readings carry "ts": null
            print("gateway: clock not set:", repr(e))

    def save(self):
        st = self.st
        if self.errors:
            st["last_error"] = "; ".join(self.errors)[:_ERROR_CHARS]
        elif self.cfg is not None:
            st["last_error"] = None
        if self.cfg is not None:  # forget BMS that are no longer configured
            labels = [e["label"] for e in self.cfg["bms"]]
            names = [e["name"] for e in self.cfg["bms"]]
            for k, keep in (("names", labels), ("name_wake", labels), ("fails", labels), ("macs", names)):
                for x in list(st[k]):
                    if x not in keep:
                        del st[k][x]
        try:
            self.rtc.memory(statemod.encode(st))
        except ValueError as e:  # too big for RTC memory: drop the caches, keep counters
            print("gateway:", e)
            for k in ("names", "name_wake", "macs", "fails"):
                st[k] = {}
            st["last_error"] = None
            try:
                self.rtc.memory(statemod.encode(st))
            except ValueError:
                pass


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


def run_wake(w):
    """One wake cycle; returns the deep-sleep time in ms (None = until reset)."""
    w.begin()
    t = time.ticks_ms()
    from firmware import config

    try:
        w.cfg = config.load()
    except config.ConfigError as e:
        w.fail("config_error", "config.json: %s" % e)
        print("gateway: fix config.json; retrying in %d min" % (_CONFIG_RETRY_MS // 60000))
        sections = config.reporting_sections()
        config = None
        _unload("firmware.config")
        if sections is not None:  # Wi-Fi and MQTT are usable: tell the user where they look
            w.cfg = {"wifi": sections["wifi"], "mqtt": sections["mqtt"], "bms": [], "interval_min": 15}
            w.feed()
            w.publish([], [])
            w.cfg = None  # keep the BMS caches: the config is not known to be valid
        w.save()
        return _CONFIG_RETRY_MS
    config = None
    _unload("firmware.config")
    w.mark("config", t)
    w.feed()
    results = w.read_bms()
    w.feed()
    msgs, per_bms = w.messages(results)
    for topic, payload, _ in msgs:
        print(topic.decode(), payload.decode())
    w.publish(msgs, per_bms)
    w.save()
    print("gateway: wake %d done in %d ms, state %s" % (w.seq, _ms_since(w.t0), w.state))
    interval = w.cfg["interval_min"]
    return interval * 60000 if interval else None


def main():
    wdt = machine.WDT(timeout=_WDT_MS)
    sleep_ms = _CONFIG_RETRY_MS
    w = None
    try:
        w = Wake(wdt)
        sleep_ms = run_wake(w)
    except Exception as e:  # never crash: report, keep the state, sleep
        print("gateway: unexpected error, sleeping:")
        sys.print_exception(e)
        if w is not None:
            try:
                w.errors.append("unexpected: %r" % (e,))
                w.save()
            except Exception:
                pass
    wdt.feed()
    if sleep_ms is None:
        machine.deepsleep()
    machine.deepsleep(sleep_ms)
