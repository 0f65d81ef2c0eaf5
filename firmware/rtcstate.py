# What the gateway remembers across deep sleep ("mem" wherever it is used): a small JSON
# document in RTC memory behind a magic word, a length and a checksum. Anything that fails
# validation means "no cache", never a crash.
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
    ("gatt", None, dict),  # "aa:bb:..." -> [notify, write, cccd handle, write mode]
    ("names", None, dict),  # BMS label -> model string from register 0x05
    ("name_wake", None, dict),  # BMS label -> wake number of the last 0x05 read
    ("net", None, str),  # the SSID that channel and lease belong to
    ("channel", None, int),  # the Wi-Fi channel the AP was on
    ("lease", None, list),  # [ip, netmask, gateway, dns] from DHCP, reused as a static address
    ("lease_min", 0, int),  # minutes since that lease came from DHCP, as far as known
    ("fails", None, dict),  # BMS label -> failed reads in a row
    ("dry", 0, int),  # wakes in a row in which no BMS could be read
    ("sleep_min", None, int),  # the deep sleep that ended this wake (minutes; 0: until reset)
    ("backlog_at", 0, int),  # bytes of the flash backlog already delivered
    ("ntp_seq", 0, int),  # seq of the last NTP attempt
    ("mqtt_ms", None, int),
    ("sent_bytes", None, int),
    ("last_error", None, str),
)


# The per-BMS caches, and what each is keyed by.
_BY_LABEL = ("names", "name_wake", "fails")
_BY_NAME = ("macs",)


def _fresh():
    mem = {}
    for k, default, kind in _SHAPE:
        mem[k] = {} if kind is dict else default
    return mem


def decode(raw):
    """RTC bytes -> (mem dict, problem or None). Corrupt data gives a fresh one."""
    mem = _fresh()
    if not raw:
        return mem, None
    if len(raw) < 8 or raw[:4] != _MAGIC:
        return mem, "RTC memory holds no gateway state"
    n = (raw[4] << 8) | raw[5]
    if len(raw) != n + 8:
        return mem, "RTC state length mismatch"
    body = raw[6 : 6 + n]
    if _sum16(body) != (raw[6 + n] << 8) | raw[7 + n]:
        return mem, "RTC state checksum mismatch"
    try:
        doc = json.loads(body)
    except ValueError:
        return mem, "RTC state is not JSON"
    if not isinstance(doc, dict):
        return mem, "RTC state has the wrong shape"
    for k, default, kind in _SHAPE:
        v = doc.get(k)
        if isinstance(v, kind) and not isinstance(v, bool):
            mem[k] = v
    if not _valid_macs(mem["macs"]):
        mem["macs"] = {}
    if not _valid_handles(mem["gatt"]):
        mem["gatt"] = {}
    lease = mem["lease"]
    if lease is not None and not (len(lease) == 4 and all(isinstance(x, str) for x in lease)):
        mem["lease"] = None
    return mem, None


def _valid_macs(macs):
    for k in macs:
        v = macs[k]
        if not (isinstance(v, list) and len(v) == 2 and v[0] in (0, 1) and isinstance(v[1], str) and len(v[1]) == 17):
            return False
    return True


def _valid_handles(gatt):
    for k in gatt:
        v = gatt[k]
        if not (isinstance(v, list) and len(v) == 4):
            return False
        for h in v:
            if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h <= 0xFFFF:
                return False
    return True


def read_seq_limit():
    try:
        with open(SEQ_FILE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def write_file(path, text):
    """Writes a file under state/ whole or not at all: a power cut mid-write leaves the old
    file (write to a temporary name, then rename). Raises OSError (flash full)."""
    try:
        os.mkdir("state")
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def write_seq_limit(n):
    write_file(SEQ_FILE, str(n))


def next_seq(mem, restored):
    """Advance and return seq. `restored` is False when the RTC state was lost."""
    if not restored or mem["seq"] < 1:
        mem["seq"] = mem["seq_limit"] = max(read_seq_limit(), mem["seq_limit"])
    mem["seq"] += 1
    if mem["seq"] > mem["seq_limit"]:
        limit = mem["seq"] + SEQ_BLOCK - 1
        write_seq_limit(limit)
        mem["seq_limit"] = limit  # only once it is in flash, or a power loss could reuse seq
    return mem["seq"]


def prune(mem, entries):
    """Forgets the caches of BMS that are no longer configured."""
    labels = [e["label"] for e in entries]
    names = [e["name"] for e in entries]
    for keys, keep in ((_BY_LABEL, labels), (_BY_NAME, names)):
        for k in keys:
            for x in list(mem[k]):
                if x not in keep:
                    del mem[k][x]
    macs = [e["address"] for e in entries if e["address"]]
    for v in mem["macs"].values():
        macs.append(v[1])
    for mac in list(mem["gatt"]):
        if mac not in macs:
            del mem["gatt"][mac]


def store(rtc, mem):
    """Writes mem to RTC memory; if it has outgrown it, drops the caches and keeps counters."""
    try:
        rtc.memory(encode(mem))
        return
    except ValueError as e:
        print("gateway:", e)
    for k in _BY_LABEL + _BY_NAME + ("gatt",):
        mem[k] = {}
    mem["last_error"] = None
    try:
        rtc.memory(encode(mem))
    except ValueError:
        pass
