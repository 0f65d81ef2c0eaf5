# Simulated ESP32 `network` (station interface) for the MicroPython unix port.
#
# The access point comes from the scenario's optional "wifi" object:
#   {"ssid": "demo", "password": "demo-pass", "bssid": "02:11:22:33:44:55",
#    "channel": 6, "rssi": -62, "down": false}
# plus, to override the latency profile for one test, any of its Wi-Fi figures
# (wifi_probe_ms, wifi_assoc_ms, dhcp_ms, static_ip_ms, wifi_scan_*). Without the
# object any ssid/password connects to an AP on channel 6. The AP moving to
# another channel, or being replaced (another bssid), is a change of the scenario
# between wakes (run_wakes' on_wake rewrites the file).
#
# connect() is asynchronous as on the ESP32: status() is STAT_CONNECTING (at
# least once) until the simulated time has passed, then STAT_GOT_IP or a failure
# code (which, as on the ESP32, status() reports even though the driver keeps
# retrying). Once connected, sockets use the host's network.
#
# Timing (simulated ms from the profile via simlog.figure, waited at its
# time_scale; 0 without a profile), as tools/jbdgw/model.py adds it up:
# - the channel probe: ESP-IDF's connect scans the station config's channel
#   first, then channels 1..N skipping it, and (fast scan, the default) stops at
#   the first AP that matches ssid (and bssid when given) (ESP-IDF Wi-Fi guide,
#   "Station Basic Configuration", fields scan_method/channel:
#   espressif/esp-idf@002c10d97b51 docs/en/api-guides/wifi.rst). Hint = the AP's
#   channel: no probe; no hint: wifi_probe_ms; a wrong hint (the AP moved):
#   one dwell on the hinted channel (wifi_scan_active_dwell_ms, or the passive
#   dwell above wifi_scan_active_channels) + wifi_probe_ms, and then it connects.
# - then wifi_assoc_ms (authentication, association, 4-way handshake), then
#   dhcp_ms, or static_ip_ms once ipconfig(addr4=..)/ifconfig((..)) set an address;
# - no matching AP (wrong ssid, "down", or a bssid that is not the AP's): the
#   connect scan visits every channel in vain, STAT_NO_AP_FOUND after a full
#   scan's time; a wrong password: STAT_WRONG_PASSWORD after probe + association;
# - scan() blocks for a full scan: wifi_scan_active_channels x
#   wifi_scan_active_dwell_ms + wifi_scan_passive_channels x
#   wifi_scan_passive_dwell_ms (model.full_scan_ms).
# The hint is the station config's channel, set by config(channel=n). As on the
# board, connect() with an ssid/key replaces the whole station config, so a
# channel set before it is dropped (micropython/micropython@1c3c2011
# ports/esp32/network_wlan.c L330-L352: a zeroed wifi_config_t with ssid, key
# and bssid only; micropython/micropython#11819 reports config(channel=11) then
# connect(ssid, key) joining on channel 1). connect() without arguments keeps
# it: connect(ssid, key, bssid=b); disconnect(); config(channel=n); connect()
# is how a board connects with a channel hint.
#
# Readable after connecting, as on the ESP32 port (network_wlan.c
# network_wlan_config/network_wlan_status): config("channel") (the radio's
# channel: the AP's once connected), config("mac"), config("ssid"),
# status("rssi"). The BSSID is not readable there (no "bssid" key: ValueError).
# Events: wifi_active, wifi_connect (hint, probe_ms, connect_ms: simulated),
# wifi_scan (scan_ms), wifi_disconnect.

import time

import machine
import simlog

STA_IF = 0
AP_IF = 1

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
# Failures are ESP-IDF wifi_err_reason_t codes (ports/esp32/modnetwork_globals.h).
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD = 211
STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD = 212
STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY = 210

_REASON_ASSOC_LEAVE = 8  # after disconnect(): status() is STAT_IDLE

AUTH_OPEN = 0
AUTH_WEP = 1
AUTH_WPA_PSK = 2
AUTH_WPA2_PSK = 3
AUTH_WPA_WPA2_PSK = 4

MODE_11B = 1
MODE_11G = 2
MODE_11N = 4

_hostname = "mpy-esp32"
_dns = "0.0.0.0"
_country = "01"


def _ap():
    """The simulated access point, or None when the scenario has no "wifi"."""
    w = simlog.scenario().get("wifi")
    if not w:
        return None
    return w


def _ap_bssid():
    ap = _ap() or {}
    return simlog.mac_bytes(ap.get("bssid") or "02:11:22:33:44:55")


def _ap_channel():
    ap = _ap() or {}
    return int(ap.get("channel", 6))


def _fig(key):
    """A Wi-Fi figure in simulated ms (or a channel count): the scenario's "wifi" object
    overrides the latency profile."""
    ap = _ap() or {}
    if key in ap:
        return ap[key]
    return simlog.figure(key, 0)


def _dwell_ms(channel):
    """One channel of a scan: channels above the active ones are scanned passively."""
    active = _fig("wifi_scan_active_channels")
    if active and channel > active:
        return _fig("wifi_scan_passive_dwell_ms")
    return _fig("wifi_scan_active_dwell_ms")


def _full_scan_ms():
    return (_fig("wifi_scan_active_channels") * _fig("wifi_scan_active_dwell_ms")
            + _fig("wifi_scan_passive_channels") * _fig("wifi_scan_passive_dwell_ms"))


def hostname(*name):
    global _hostname
    if not name:
        return _hostname
    n = name[0]
    if len(n) > 32:
        raise ValueError("hostname too long")
    _hostname = n
    return None


def country(*code):
    global _country
    if not code:
        return _country
    _country = code[0]
    return None


def ipconfig(*args, **kw):
    global _dns
    if not kw:
        if len(args) != 1:
            raise TypeError("must query one param")
        if args[0] == "dns":
            return _dns
        raise ValueError("unexpected key")
    if args:
        raise TypeError("can't specify pos and kw args")
    for k in kw:
        if k != "dns":
            raise ValueError("unexpected key")
        _dns = kw[k]
    return None


def _require(self, if_id):
    if self._if != if_id:
        raise OSError("STA required" if if_id == STA_IF else "AP required")


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2

    _instances = {}

    def __new__(cls, interface_id=STA_IF):
        o = cls._instances.get(interface_id)
        if o is None:
            if interface_id not in (STA_IF, AP_IF):
                raise ValueError("invalid WLAN interface identifier")
            o = object.__new__(cls)
            o._setup(interface_id)
            cls._instances[interface_id] = o
        return o

    def __init__(self, interface_id=STA_IF):
        pass  # state is set once per interface in __new__

    def _setup(self, if_id):
        self._if = if_id
        self._active = False
        mac = bytearray(machine._base_mac())
        if if_id == AP_IF:
            mac[5] = (mac[5] + 1) & 0xFF
        self._mac = bytes(mac)
        self._ssid = ""
        self._key = ""
        self._bssid = None
        self._cfg_channel = 0
        self._channel = 1
        self._reconnects = 0  # as stored by the ESP32 port: n + 1, 0 = forever
        self._pm = self.PM_PERFORMANCE
        self._txpower = 20.0
        # connection state
        self._requested = False
        self._connected = False
        self._reason = 0
        self._t0 = 0
        self._due = 0
        self._outcome = 0
        self._pending = False
        self._polled = False
        self._plan_ms = 0
        self._probe_ms = 0
        # IPv4
        self._dhcp = True
        self._static = None  # (addr, mask, gw) set with ipconfig/ifconfig
        self._ip = ("0.0.0.0", "0.0.0.0", "0.0.0.0")

    def __repr__(self):
        return "<WLAN %s>" % ("STA" if self._if == STA_IF else "AP")

    # -- activation --

    def active(self, *is_active):
        if not is_active:
            return self._active
        on = bool(is_active[0])
        if on != self._active:
            if not on:
                self._drop(_REASON_ASSOC_LEAVE)
                self._requested = False
            self._active = on
            simlog.event("wifi_active", active=on)
        return on

    # -- connection --

    def _drop(self, reason):
        was = self._connected
        self._connected = False
        self._pending = False
        self._reason = reason
        self._ip = ("0.0.0.0", "0.0.0.0", "0.0.0.0")
        if was:
            simlog.event("wifi_disconnect", reason=reason)

    def connect(self, ssid=None, key=None, *, bssid=None):
        _require(self, STA_IF)
        if ssid is not None or key is not None:
            # As on the ESP32, positional arguments replace the whole station
            # config (a bssid not given now is forgotten, the channel hint is
            # cleared); connect() alone reuses the previous one.
            self._ssid = ssid if ssid is not None else ""
            self._key = key if key is not None else ""
            self._bssid = None
            self._cfg_channel = 0
            if bssid is not None:
                b = bytes(bssid)
                if len(b) != 6:
                    raise ValueError()
                self._bssid = b
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._connected:
            self._drop(0)
        self._plan()
        self._requested = True
        self._reason = 0

    def _plan(self):
        ap = _ap()
        hint, channel = self._cfg_channel, _ap_channel()
        if hint == channel:
            probe = 0
        elif hint:
            probe = _dwell_ms(hint) + _fig("wifi_probe_ms")
        else:
            probe = _fig("wifi_probe_ms")
        if ap is not None and (ap.get("down") or self._ssid != ap.get("ssid", "")
                               or (self._bssid is not None and self._bssid != _ap_bssid())):
            outcome, probe, due = STAT_NO_AP_FOUND, None, _full_scan_ms()
        elif ap is not None and self._key != ap.get("password", ""):
            outcome, due = STAT_WRONG_PASSWORD, probe + _fig("wifi_assoc_ms")
        else:
            outcome = STAT_GOT_IP
            ip = _fig("dhcp_ms") if self._dhcp else _fig("static_ip_ms")
            due = probe + _fig("wifi_assoc_ms") + ip
        self._outcome = outcome
        self._plan_ms = due
        self._probe_ms = probe
        self._t0 = time.ticks_ms()
        self._due = simlog.delay_ms(due)
        self._polled = False
        self._pending = True

    def _update(self):
        global _dns
        if not self._pending:
            return
        if not self._polled:  # connect() returns before the driver has done anything
            self._polled = True
            return
        if time.ticks_diff(time.ticks_ms(), self._t0) < self._due:
            return
        self._pending = False
        ok = self._outcome == STAT_GOT_IP
        if ok:
            self._connected = True
            self._reason = 0
            self._channel = _ap_channel()
            if self._static is not None:
                self._ip = self._static
            else:
                self._ip = ("192.168.4.23", "255.255.255.0", "192.168.4.1")
                if _dns == "0.0.0.0":
                    _dns = "192.168.4.1"
        else:
            self._reason = self._outcome
        simlog.event(
            "wifi_connect",
            ssid=self._ssid,
            bssid=simlog.mac_text(self._bssid) if self._bssid else None,
            hint=self._cfg_channel or None,
            static=not self._dhcp,
            probe_ms=self._probe_ms,
            ok=ok,
            status=STAT_GOT_IP if ok else self._outcome,
            connect_ms=self._plan_ms,
        )

    def disconnect(self):
        self._update()
        self._requested = False
        self._drop(_REASON_ASSOC_LEAVE)

    def isconnected(self):
        if self._if != STA_IF:
            return False
        self._update()
        return self._connected

    def status(self, *param):
        if not param:
            if self._if != STA_IF:
                return None
            self._update()
            if self._connected:
                return STAT_GOT_IP
            r = self._reason
            if r in (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD):
                return r
            if r == _REASON_ASSOC_LEAVE:
                return STAT_IDLE
            if self._requested:
                return STAT_CONNECTING
            if r == 0:
                return STAT_IDLE
            return r
        p = param[0]
        if p == "rssi":
            _require(self, STA_IF)
            self._update()
            if not self._connected:
                raise OSError("Wifi Not Connected")
            return int((_ap() or {}).get("rssi", -62))
        if p == "stations":
            _require(self, AP_IF)
            return []
        raise ValueError("unknown status param")

    def scan(self):
        if not (self._if == STA_IF and self._active):
            raise OSError("STA must be active")
        ms = _full_scan_ms()
        real = simlog.delay_ms(ms)
        if real > 0:
            time.sleep_ms(real)  # blocking, as the port's esp_wifi_scan_start(&config, 1)
        simlog.event("wifi_scan", scan_ms=ms)
        ap = _ap()
        if ap is not None and ap.get("down"):
            return []
        ssid = (ap or {}).get("ssid", "sim-ap")
        return [
            (
                ssid.encode(),
                _ap_bssid(),
                _ap_channel(),
                int((ap or {}).get("rssi", -62)),
                AUTH_WPA2_PSK,
                False,
            )
        ]

    # -- configuration --

    def config(self, *args, **kw):
        if args and kw:
            raise TypeError("either pos or kw args are allowed")
        if kw:
            for k in kw:
                v = kw[k]
                if k == "mac":
                    b = bytes(v)
                    if len(b) != 6:
                        raise ValueError("invalid buffer length")
                    self._mac = b
                elif k in ("ssid", "essid", "hidden", "security", "authmode", "key", "password", "max_clients"):
                    _require(self, AP_IF)
                elif k == "channel":
                    self._cfg_channel = int(v)
                    if not self._connected:
                        self._channel = int(v)
                elif k in ("hostname", "dhcp_hostname"):
                    hostname(v)
                elif k == "reconnects":
                    _require(self, STA_IF)
                    v = int(v)
                    self._reconnects = 0 if v == -1 else v + 1
                elif k == "txpower":
                    self._txpower = int(float(v) * 4) / 4
                elif k == "pm":
                    self._pm = int(v)
                elif k in ("protocol", "bandwidth"):
                    pass
                else:
                    raise ValueError("unknown config param")
            return None
        if len(args) != 1:
            raise TypeError("can query only one param")
        k = args[0]
        if k == "mac":
            return self._mac
        if k in ("ssid", "essid"):
            return self._ssid
        if k == "channel":
            self._update()
            return self._channel
        if k in ("hostname", "dhcp_hostname"):
            _require(self, STA_IF)
            return _hostname
        if k == "reconnects":
            _require(self, STA_IF)
            return self._reconnects - 1
        if k == "txpower":
            return self._txpower
        if k == "pm":
            return self._pm
        if k == "ifname":
            return "st1" if self._if == STA_IF else "ap1"
        raise ValueError("unknown config param")

    # -- IPv4 --

    def ipconfig(self, *args, **kw):
        self._update()
        if not kw:
            if len(args) != 1:
                raise TypeError("must query one param")
            k = args[0]
            if k == "dhcp4":
                return self._dhcp
            if k == "addr4":
                return (self._ip[0], self._ip[1])
            if k == "gw4":
                return self._ip[2]
            raise ValueError("unexpected key")
        if args:
            raise TypeError("can't specify pos and kw args")
        addr, mask, gw = self._static or self._ip
        touched = False
        for k in kw:
            v = kw[k]
            if k == "dhcp4":
                self._dhcp = bool(v)
                if self._dhcp:
                    self._static = None
            elif k == "addr4":
                if isinstance(v, str):
                    if "/" in v:
                        addr, bits = v.split("/")
                        bits = int(bits)
                        m = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
                        mask = "%d.%d.%d.%d" % (m >> 24, (m >> 16) & 255, (m >> 8) & 255, m & 255)
                    else:
                        addr = v
                elif v is not None:
                    addr, mask = v
                touched = True
            elif k == "gw4":
                gw = v
                touched = True
            else:
                raise ValueError("unexpected key")
        if touched:
            self._set_static(addr, mask, gw)
        return None

    def _set_static(self, addr, mask, gw):
        # A static address turns DHCP off and applies at once to a live link.
        self._dhcp = False
        self._static = (addr, mask, gw)
        if self._connected:
            self._ip = self._static

    def ifconfig(self, *cfg):
        global _dns
        self._update()
        if not cfg:
            return (self._ip[0], self._ip[1], self._ip[2], _dns)
        c = cfg[0]
        if isinstance(c, str):
            if c != "dhcp":
                raise ValueError("invalid arguments")
            self._dhcp = True
            self._static = None
            return None
        addr, mask, gw, dns = c
        self._set_static(addr, mask, gw)
        _dns = dns
        return None


def _sta_connected():
    """True when the station has an IP (used by the umqtt stand-in)."""
    sta = WLAN._instances.get(STA_IF)
    return sta is not None and sta.isconnected()
