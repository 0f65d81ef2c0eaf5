# Wi-Fi phase: bounded connect, static IP when configured, cached BSSID + channel to skip
# the all-channel scan, and radio off afterwards.
import time

import network
from micropython import const

_CONNECT_MS = const(15000)
_RECONNECTS = const(2)
_POLL_MS = const(20)
_FAIL_GRACE_MS = const(3000)


class WifiError(Exception):
    pass


def _status_name(code):
    for k in dir(network):
        if k.startswith("STAT_") and getattr(network, k) == code:
            return k[5:].lower()
    return str(code)


def _wait(wlan, ssid):
    t0 = time.ticks_ms()
    while True:
        s = wlan.status()
        if s == network.STAT_GOT_IP or wlan.isconnected():
            return
        # ESP32 failure reasons are below STAT_IDLE (1000). The driver keeps the previous
        # attempt's reason until it gets an IP, so a failure counts only after a grace period.
        if s < network.STAT_IDLE and time.ticks_diff(time.ticks_ms(), t0) > _FAIL_GRACE_MS:
            raise WifiError("could not join %r: %s" % (ssid, _status_name(s)))
        if time.ticks_diff(time.ticks_ms(), t0) > _CONNECT_MS:
            raise WifiError("could not join %r within %d s (status %s)" % (ssid, _CONNECT_MS // 1000, _status_name(s)))
        time.sleep_ms(_POLL_MS)


def _find_ap(wlan, ssid):
    # One scan on the uncached path; the strongest AP with our SSID gives BSSID + channel.
    best = None
    try:
        for ap in wlan.scan():
            if ap[0] == ssid.encode() and (best is None or ap[3] > best[3]):
                best = ap
    except OSError:
        return None
    return best


def connect(cfg, cache):
    """Join the network. Returns the [bssid_hex, channel] to cache for the next wake."""
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    try:
        wlan.config(reconnects=_RECONNECTS)
        wlan.config(pm=wlan.PM_NONE)  # no modem sleep for a short burst
    except (ValueError, OSError, AttributeError):
        pass
    st = cfg["static"]
    if st:
        try:
            wlan.ipconfig(addr4="%s/%d" % (st["ip"], st["prefix"]), gw4=st["gateway"])
            network.ipconfig(dns=st["dns"])
        except AttributeError:  # MicroPython before 1.24 has only ifconfig()
            wlan.ifconfig((st["ip"], st["netmask"], st["gateway"], st["dns"]))
    ssid, key = cfg["ssid"], cfg["password"]
    if cache:
        try:
            wlan.config(channel=cache[1])
            wlan.connect(ssid, key, bssid=bytes.fromhex(cache[0]))
            _wait(wlan, ssid)
            return cache
        except (WifiError, OSError, ValueError) as e:
            print("wifi: cached access point failed (%s); scanning" % e)
            try:
                wlan.disconnect()
            except OSError:
                pass
    ap = _find_ap(wlan, ssid)
    if ap is None:
        wlan.connect(ssid, key)
        _wait(wlan, ssid)
        return None
    wlan.config(channel=ap[2])
    wlan.connect(ssid, key, bssid=ap[1])
    _wait(wlan, ssid)
    return [ap[1].hex(), ap[2]]


def off():
    try:
        wlan = network.WLAN(network.STA_IF)
        wlan.disconnect()
        wlan.active(False)
    except Exception as e:
        print("wifi: off:", repr(e))
