# The wall clock: Unix time when it is known, and NTP when it is not (or once a day).
import time

from micropython import const

_EPOCH_2000 = const(946684800)
_CLOCK_VALID_AFTER = const(1704067200)  # 2024-01-01: an earlier clock was never set
_NTP_RETRY = const(12)  # wakes between NTP attempts while the clock is unknown
_NTP_RESYNC = const(288)  # wakes between re-syncs (a day at 5 min): the sleep RTC drifts
_NTP_TIMEOUT_S = const(2)


def unix_time():
    """Unix seconds, or None when the clock was never set (ESP32 starts at 2000-01-01)."""
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:
        t += _EPOCH_2000
    return t if t >= _CLOCK_VALID_AFTER else None


def sync(mem, seq):
    """Sets the clock by NTP when it is unknown (not on every wake if NTP is unreachable)
    and once a day against drift; the RTC keeps time through deep sleep. Needs Wi-Fi."""
    since = seq - mem["ntp_seq"]
    if unix_time() is None:
        if mem["ntp_seq"] and since < _NTP_RETRY:
            return
    elif since < _NTP_RESYNC:
        return
    mem["ntp_seq"] = seq
    try:
        import ntptime

        ntptime.timeout = _NTP_TIMEOUT_S
        ntptime.settime()
    except Exception as e:  # no NTP on this network: readings carry "ts": null
        print("gateway: clock not set:", repr(e))
