# State kept across deep sleep in RTC memory: a small JSON document behind a magic word,
# a length and a checksum. Anything that fails validation means "no cache", never a crash.
# seq must keep increasing across power losses (the ingest de-duplicates on it), but flash
# should not be written every wake: a reserved upper bound is kept in flash and raised
# SEQ_BLOCK at a time; after losing the RTC state the count resumes above that bound.
import json
import os

_MAGIC = b"JGW1"
_RTC_MAX = 2048
SEQ_FILE = "state/seq"
SEQ_BLOCK = 1000


def _sum16(buf):
    s = 0
    for b in buf:
        s = (s + b) & 0xFFFF
    return s


def encode(state):
    body = json.dumps(state).encode()
    n = len(body)
    if n + 8 > _RTC_MAX:
        raise ValueError("state is %d bytes; RTC memory holds %d" % (n + 8, _RTC_MAX))
    s = _sum16(body)
    return _MAGIC + bytes([n >> 8, n & 0xFF]) + body + bytes([s >> 8, s & 0xFF])


# key -> (default, accepted type); None defaults accept null too.
_SHAPE = (
    ("wakes", 0, int),  # wakes since the last cold boot
    ("seq", 0, int),  # last published sequence number
    ("seq_limit", 0, int),  # highest seq reserved in SEQ_FILE
    ("macs", None, dict),  # BMS name -> [addr_type, "aa:bb:..."]
    ("names", None, dict),  # BMS label -> model string from register 0x05
    ("name_wake", None, dict),  # BMS label -> wake number of the last 0x05 read
    ("wifi", None, list),  # [bssid hex, channel]
    ("fails", None, dict),  # BMS label -> failed reads in a row
    ("backlog_at", 0, int),  # bytes of the flash backlog already delivered
    ("ntp_seq", 0, int),  # seq of the last NTP attempt
    ("mqtt_ms", None, int),
    ("sent_bytes", None, int),
    ("last_error", None, str),
)


def _fresh():
    st = {}
    for k, default, kind in _SHAPE:
        st[k] = {} if kind is dict else default
    return st


def decode(raw):
    """RTC bytes -> (state dict, problem or None). Corrupt data gives a fresh state."""
    st = _fresh()
    if not raw:
        return st, None
    if len(raw) < 8 or raw[:4] != _MAGIC:
        return st, "RTC memory holds no gateway state"
    n = (raw[4] << 8) | raw[5]
    if len(raw) != n + 8:
        return st, "RTC state length mismatch"
    body = raw[6 : 6 + n]
    if _sum16(body) != (raw[6 + n] << 8) | raw[7 + n]:
        return st, "RTC state checksum mismatch"
    try:
        doc = json.loads(body)
    except ValueError:
        return st, "RTC state is not JSON"
    if not isinstance(doc, dict):
        return st, "RTC state has the wrong shape"
    for k, default, kind in _SHAPE:
        v = doc.get(k)
        if isinstance(v, kind) and not isinstance(v, bool):
            st[k] = v
    if not _valid_macs(st["macs"]):
        st["macs"] = {}
    w = st["wifi"]
    if w is not None and not (len(w) == 2 and isinstance(w[0], str) and isinstance(w[1], int)):
        st["wifi"] = None
    return st, None


def _valid_macs(macs):
    for k in macs:
        v = macs[k]
        if not (isinstance(v, list) and len(v) == 2 and v[0] in (0, 1) and isinstance(v[1], str) and len(v[1]) == 17):
            return False
    return True


def read_seq_limit():
    try:
        with open(SEQ_FILE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def write_seq_limit(n):
    # Write-then-rename so a power cut mid-write leaves the old value, not a torn file.
    try:
        os.mkdir("state")
    except OSError:
        pass
    tmp = SEQ_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(n))
    os.rename(tmp, SEQ_FILE)


def next_seq(st, restored):
    """Advance and return seq. `restored` is False when the RTC state was lost."""
    if not restored or st["seq"] < 1:
        st["seq"] = st["seq_limit"] = max(read_seq_limit(), st["seq_limit"])
    st["seq"] += 1
    if st["seq"] > st["seq_limit"]:
        limit = st["seq"] + SEQ_BLOCK - 1
        write_seq_limit(limit)
        st["seq_limit"] = limit  # only once it is in flash, or a power loss could reuse seq
    return st["seq"]
