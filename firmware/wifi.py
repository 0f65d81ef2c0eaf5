# Wi-Fi phase: bounded connect, a static IP when configured (or a recent DHCP lease reused),
# the cached channel to skip the channel probe, and radio off afterwards.
import time

import network
from micropython import const

_CONNECT_MS = const(15000)
_RECONNECTS = const(2)
_POLL_MS = const(5)
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


def _prefix(netmask):
    n = 0
    for part in netmask.split("."):
        n += bin(int(part)).count("1")
    return n


def _set_static(wlan, st):
    try:
        wlan.ipconfig(addr4="%s/%d" % (st[0], _prefix(st[1])), gw4=st[2])
        network.ipconfig(dns=st[3])
    except AttributeError:  # MicroPython before 1.24 has only ifconfig()
        wlan.ifconfig(tuple(st))


def _join(wlan, ssid, key, hint):
    # connect() with an SSID rebuilds the station config with channel 0, dropping a channel
    # set before it (ports/esp32/network_wlan.c; micropython#11819): start, stop at once,
    # put the channel into that config, and connect again with it as the scan's first
    # channel, so the driver finds the AP without probing every channel.
    wlan.connect(ssid, key)
    wlan.disconnect()
    wlan.config(channel=hint)
    wlan.connect()
    _wait(wlan, ssid)


def connect(cfg, channel, lease):
    """Join the network. `channel` is the one the AP was on last time (None: unknown),
    `lease` a cached DHCP lease [ip, netmask, gateway, dns] to use as a static address
    (None: DHCP, or the configured static address). Returns the channel to cache; never
    calls wlan.scan(), a blocking scan of every channel (about 2 s on the board)."""
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    try:
        wlan.config(reconnects=_RECONNECTS)
        wlan.config(pm=wlan.PM_NONE)  # no modem sleep for a short burst
    except (ValueError, OSError, AttributeError):
        pass
    st = cfg["static"]
    if st:
        _set_static(wlan, (st["ip"], st["netmask"], st["gateway"], st["dns"]))
    elif lease:
        _set_static(wlan, lease)
    ssid, key = cfg["ssid"], cfg["password"]
    if channel:
        try:
            _join(wlan, ssid, key, channel)
            return wlan.config("channel")
        except (WifiError, OSError, ValueError) as e:
            print("wifi: joining on channel %d failed (%s); probing" % (channel, e))
            try:
                wlan.disconnect()
            except OSError:
                pass
    wlan.connect(ssid, key)
    _wait(wlan, ssid)
    return wlan.config("channel")


def dhcp_lease():
    """The address DHCP gave this wake: [ip, netmask, gateway, dns], or None."""
    try:
        return list(network.WLAN(network.STA_IF).ifconfig())
    except Exception:
        return None


def off():
    try:
        wlan = network.WLAN(network.STA_IF)
        wlan.disconnect()
        wlan.active(False)
    except Exception as e:
        print("wifi: off:", repr(e))
