# One wake: RTC memory -> config -> BLE reads -> messages -> Wi-Fi + delivery -> RTC memory
# -> deep sleep. BLE runs first and is switched off before Wi-Fi starts (the radios share
# one front end). Each phase lives in its own module and gets what it needs as arguments;
# this module decides (addresses, whether to read the model name) and remembers (`mem`,
# what RTC memory keeps across deep sleep). Every phase is bounded, every failure is
# recorded and published when possible, and every wake ends in machine.deepsleep().
import asyncio
import gc
import json
import sys
import time
from binascii import hexlify
from hashlib import sha256

import machine
from micropython import const

from firmware import rtcstate

_CONFIG_RETRY_MS = const(900000)  # a config that cannot be used: retry in 15 min, no boot loop
_WDT_MS = const(120000)  # fed between phases; each phase is bounded well below this
_BLE_BUDGET_MS = const(60000)
_BLE_GUARD_MS = const(5000)  # on top of the budget, should the BLE phase overrun its own
_NAME_EVERY = const(24)  # re-read the BMS model (0x05) every N wakes, and on cold boot
_FORGET_MAC_AFTER = const(3)  # failed reads in a row before a cached MAC is scanned again
# Wakes in a row without any reading before the interval stretches (doubling, up to
# backoff_max_min): a BMS held by a phone app all weekend must not cost a scan and a
# connect attempt every few minutes.
_BACKOFF_AFTER = const(3)
_ERROR_CHARS = const(200)
# A DHCP lease is reused as a static address (no DHCP exchange, ~0.9 s on the board) for at
# most this many minutes, then renewed: inside common lease times (dnsmasq's default, and
# phone hotspots, give 1 h), so the router never hands the address to another device.
_LEASE_REUSE_MIN = const(45)


_CONFIG_FILE = "config.json"
_CONFIG_CACHE = "state/config.cache"
# The validator itself is part of the key: a firmware update that changes what validation
# returns (a new default, say) must not reuse an old result.
_VALIDATOR_FILES = ("firmware/config.mpy", "firmware/config.py")


def load_config():
    """The validated config. Validation (the config module, comment stripping, every rule)
    runs only when config.json changed: its result is kept in state/config.cache under the
    file's SHA-256 (and the validator's), so a wake that finds both unchanged reads it with the C json
    parser instead (on the board the validator's import and run are a few hundred ms of
    CPU at 240 MHz; docs/benchmarks.md). Raises config.ConfigError."""
    try:
        h = sha256()
        buf = bytearray(128)  # in small pieces: a whole file at once fragments a 96K heap
        for name in (_CONFIG_FILE,) + _VALIDATOR_FILES:
            try:
                with open(name, "rb") as f:
                    while True:
                        n = f.readinto(buf)
                        if not n:
                            break
                        h.update(memoryview(buf)[:n])
            except OSError:
                if name == _CONFIG_FILE:
                    raise
        digest = hexlify(h.digest()).decode()
        with open(_CONFIG_CACHE) as f:
            kept = json.loads(f.read())  # json.load() reads a stream char by char: 6x slower
        if kept["sha256"] == digest:
            return kept["config"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or torn by a power cut (or no config.json: load() says so)
    from firmware import config

    cfg = config.load(_CONFIG_FILE)
    _unload("firmware.config")
    try:
        rtcstate.write_file(_CONFIG_CACHE, json.dumps({"sha256": digest, "config": cfg}))
    except OSError as e:  # a full flash costs the next wake a validation, nothing more
        print("gateway: cannot keep", _CONFIG_CACHE, e)
    return cfg


def _ms_since(t0):
    return time.ticks_diff(time.ticks_ms(), t0)


class Wake:
    """This wake so far: reset cause, seq, the RTC memory `mem`, phase times, the outcome
    (the first failure's status word, or "ok") and every error message."""

    def __init__(self, wdt):
        self.wdt = wdt
        self.t0 = time.ticks_ms()
        self.ms = {}
        self.rtc = machine.RTC()
        self.cause = machine.reset_cause()
        self.mem, self.mem_problem = rtcstate.decode(self.rtc.memory())
        self.outcome = "ok"
        self.errors = []
        self.cfg = None
        self.seq = 0
        self.heap_free = None  # after the BLE phase, collected: what Wi-Fi, MQTT and TLS get
        self.interval_min = None  # the interval in force after this wake, and why if stretched
        self.stretched = None

    def feed(self):
        self.wdt.feed()

    def mark(self, phase, since):
        self.ms[phase] = _ms_since(since)

    def elapsed(self):
        return _ms_since(self.t0)

    def fail(self, outcome, message):
        print("gateway:", outcome + ":", message)
        if self.outcome == "ok":
            self.outcome = outcome
        self.errors.append(message)

    def begin(self):
        mem = self.mem
        if self.mem_problem:
            print("gateway:", self.mem_problem, "- starting without cache")
        # RTC memory survives deep sleep and WDT resets; power loss leaves it invalid.
        restored = self.mem_problem is None and mem["seq"] > 0
        if self.cause != machine.DEEPSLEEP_RESET:
            mem["wakes"] = 0
        mem["wakes"] += 1
        try:
            self.seq = rtcstate.next_seq(mem, restored)
        except OSError as e:  # flash full or read-only: keep going, seq still advances
            print("gateway: cannot write", rtcstate.SEQ_FILE, e)
            self.seq = mem["seq"]
        # Saved at once: a wake cut short by the watchdog must not hand out this seq again.
        self.save()

    def save(self):
        mem = self.mem
        if self.errors:
            mem["last_error"] = "; ".join(self.errors)[:_ERROR_CHARS]
        elif self.cfg is not None:
            mem["last_error"] = None
        if self.cfg is not None:
            rtcstate.prune(mem, self.cfg["bms"])
        rtcstate.store(self.rtc, mem)


# --- before the BLE phase: where each BMS is and what to ask it ---------------------------


def ble_jobs(wake):
    """(entry, (addr_type, mac) or None to scan for the name, read the model name?, GATT
    handles a previous wake found at that MAC or None)"""
    mem = wake.mem
    cold = wake.cause != machine.DEEPSLEEP_RESET
    jobs = []
    for e in wake.cfg["bms"]:
        if e["address"]:
            where = (e["addr_type"], e["address"])
        elif e["name"] in mem["macs"]:
            # A stale cached MAC (module swapped) is not rescanned at once: that would add
            # a scan to every wake while a phone holds the BMS. remember() forgets it after
            # repeated failures.
            where = tuple(mem["macs"][e["name"]])
        else:
            where = None
        last = mem["name_wake"].get(e["label"])
        handles = mem["gatt"].get(where[1]) if where else None
        jobs.append((e, where, cold or last is None or mem["wakes"] - last >= _NAME_EVERY, handles))
    return jobs


def read_bms(wake):
    jobs = ble_jobs(wake)
    gc.collect()  # the config's garbage out of the way before the BLE phase's peak
    t = time.ticks_ms()
    results = None
    try:
        from firmware import ble

        results = asyncio.run(asyncio.wait_for_ms(ble.read_all(jobs, _BLE_BUDGET_MS), _BLE_BUDGET_MS + _BLE_GUARD_MS))
    except asyncio.TimeoutError:
        wake.fail("bms_timeout", "BLE phase exceeded %d s" % (_BLE_BUDGET_MS // 1000))
    except Exception as e:  # BLE stack refused (OSError), aioble missing (ImportError), ...
        wake.fail("ble_failed", "BLE: %r" % (e,))
    wake.mark("ble", t)
    # BLE is off for the rest of the wake. Unhooking aioble's IRQ handler lets the
    # modules and their connection state go, leaving the heap to Wi-Fi, MQTT and TLS.
    try:
        import bluetooth

        bluetooth.BLE().irq(None)
    except Exception:
        pass
    asyncio.new_event_loop()  # drops tasks the BLE phase left behind (and what they hold)
    _unload("aioble", "firmware.ble", "jbd")  # ends in gc.collect()
    wake.heap_free = gc.mem_free()
    if results is None:  # the phase failed as a whole: nothing was read
        return []
    return results


# --- after the BLE phase: what to remember ------------------------------------------------


def next_interval(wake, results):
    """Minutes until the next wake: the configured interval, doubled for each wake beyond
    _BACKOFF_AFTER-1 in a row in which no BMS could be read, up to backoff_max_min; the
    first reading restores it."""
    cfg, mem = wake.cfg, wake.mem
    mem["dry"] = 0 if [r for r in results if r["state"] == "ok"] else mem["dry"] + 1
    base = cfg["interval_min"]
    wake.interval_min = base
    if not base or mem["dry"] < _BACKOFF_AFTER:
        return base
    n = min(mem["dry"] - _BACKOFF_AFTER + 1, 16)
    wake.interval_min = max(base, min(base << n, cfg["backoff_max_min"]))
    wake.stretched = "no BMS read in %d wakes in a row" % mem["dry"]
    return wake.interval_min


def remember(wake, results):
    """Caches what the BLE phase found (a MAC from a scan, the model name), counts failed
    reads, and records each failure as an error of the wake."""
    mem = wake.mem
    for e, r in zip(wake.cfg["bms"], results):
        label = e["label"]
        ok = r["state"] == "ok"
        if not ok:
            wake.fail(r["state"], "%s: %s" % (label, r["error"]))
        if r.get("scanned"):  # the name matched; forgotten below if reads keep failing
            mem["macs"][e["name"]] = [r["addr_type"], r["address"]]
        mac = r.get("address")
        if ok:
            mem["gatt"][mac] = r["handles"]
        elif mac in mem["gatt"]:  # whatever failed, the next wake discovers afresh
            del mem["gatt"][mac]
        if ok and r["name"] is not None:
            mem["names"][label] = r["name"]
            mem["name_wake"][label] = mem["wakes"]
        # A cached MAC that keeps failing may belong to the wrong device (two modules with
        # the same default name): forget it, so the next wake scans for the name again.
        fails = mem["fails"]
        fails[label] = 0 if ok else fails.get(label, 0) + 1
        if fails[label] >= _FORGET_MAC_AFTER and e["name"] in mem["macs"] and not e["address"]:
            del mem["macs"][e["name"]]
            fails[label] = 0


# --- Wi-Fi, clock and delivery ------------------------------------------------------------


def _client_id(mqtt_cfg):
    return mqtt_cfg["client_id"] or "jbdgw-" + machine.unique_id().hex()


def publish(wake, new, per_bms):
    """Joins Wi-Fi, sets the clock if needed, and delivers (backlog, new, status)."""
    from firmware import clock, deliver, messages, wifi

    mem = wake.mem
    cfg = wake.cfg
    waiting = deliver.waiting(mem["backlog_at"])
    link = None
    lease = None
    if mem["net"] != cfg["wifi"]["ssid"]:  # another network: nothing learnt applies
        mem["channel"] = mem["lease"] = None
    # Minutes since the lease was granted, counting the sleep before this wake (stretched or
    # not; unknown counts as too long) and a minute awake.
    since = mem["lease_min"] + (mem["sleep_min"] or _LEASE_REUSE_MIN) + 1
    if not cfg["wifi"]["static"] and mem["lease"] and since <= _LEASE_REUSE_MIN:
        lease = mem["lease"]
    t = time.ticks_ms()
    try:
        try:
            mem["channel"] = wifi.connect(cfg["wifi"], mem["channel"], lease)
            mem["net"] = cfg["wifi"]["ssid"]
            if lease:
                mem["lease_min"] = since
            elif not cfg["wifi"]["static"]:
                mem["lease"], mem["lease_min"] = wifi.dhcp_lease(), 0
            status_topic = (cfg["mqtt"]["topic"] + "/status").encode()
            link = (cfg["mqtt"], _client_id(cfg["mqtt"]), status_topic)
        except Exception as e:  # WifiError, or OSError "Wifi Internal Error" from the driver
            mem["channel"] = mem["lease"] = None
            wake.fail("wifi_failed", str(e) if isinstance(e, wifi.WifiError) else "Wi-Fi: %r" % (e,))
        wake.mark("wifi", t)
        wake.feed()
        if link is not None:
            clock.sync(mem, wake.seq)

        def status():
            return messages.status(wake, clock.unix_time(), per_bms, waiting, mem.get("mqtt_ms"), mem.get("last_error"))

        out = deliver.deliver(link, new, status, mem["backlog_at"], wake.feed)
    finally:
        wifi.off()
    mem["backlog_at"] = out.backlog_at
    if out.error:
        wake.fail("mqtt_failed", out.error)
        mem["lease"] = None  # if the reused address was the reason, DHCP next time
    elif link is not None:
        mem["mqtt_ms"] = out.mqtt_ms
        mem["sent_bytes"] = out.sent_bytes
    if out.dropped:
        wake.errors.append("backlog full or unwritable: %d readings dropped" % out.dropped)


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


def _config_error(wake, e, config):
    wake.fail("config_error", "config.json: %s" % e)
    print("gateway: fix config.json; retrying in %d min" % (_CONFIG_RETRY_MS // 60000))
    sections = config.reporting_sections()
    _unload("firmware.config")
    if sections is not None:  # Wi-Fi and MQTT are usable: tell the user where they look
        wake.cfg = {"wifi": sections["wifi"], "mqtt": sections["mqtt"], "bms": [], "interval_min": 15}
        wake.feed()
        publish(wake, [], [])
        wake.cfg = None  # keep the BMS caches: the config is not known to be valid
    _sleeping(wake, _CONFIG_RETRY_MS // 60000)
    return _CONFIG_RETRY_MS


def run_wake(wake):
    """One wake cycle; returns the deep-sleep time in ms (None = until reset)."""
    wake.begin()
    t = time.ticks_ms()
    try:
        wake.cfg = load_config()
    except Exception as e:
        from firmware import config

        if not isinstance(e, config.ConfigError):
            raise
        return _config_error(wake, e, config)
    wake.mark("config", t)
    wake.feed()
    results = read_bms(wake)
    wake.feed()
    remember(wake, results)
    interval = next_interval(wake, results)
    # Imported after the BLE phase, which is where the heap peaks.
    from firmware import clock, messages

    new, per_bms = messages.readings(wake.cfg, results, wake.seq, clock.unix_time(), wake.mem["names"])
    # One line per reading, not the JSON: a kilobyte at 115200 baud is ~90 ms of UART.
    for topic, payload, _ in new:
        print("gateway: reading %d (%d bytes) -> %s" % (wake.seq, len(payload), topic.decode()))
    publish(wake, new, per_bms)
    _sleeping(wake, interval)
    print("gateway: wake %d done in %d ms, state %s" % (wake.seq, wake.elapsed(), wake.outcome))
    return interval * 60000 if interval else None


def _sleeping(wake, minutes):
    # Saved last: how long the board sleeps is what the next wake's lease accounting needs.
    wake.mem["sleep_min"] = minutes
    wake.save()


def main():
    wdt = machine.WDT(timeout=_WDT_MS)
    sleep_ms = _CONFIG_RETRY_MS
    wake = None
    try:
        wake = Wake(wdt)
        sleep_ms = run_wake(wake)
    except Exception as e:  # never crash: report, keep the state, sleep
        print("gateway: unexpected error, sleeping:")
        sys.print_exception(e)
        if wake is not None:
            try:
                wake.errors.append("unexpected: %r" % (e,))
                wake.save()
            except Exception:
                pass
    wdt.feed()
    if sleep_ms is None:
        machine.deepsleep()
    machine.deepsleep(sleep_ms)
