# Loading and validating config.json. One rule set, also used by the host tools.
# Every error names the dotted key, what is wrong and how to fix it.
import json

CONFIG_FILE = "config.json"
DEFAULT_TOPIC = "solar"
DEFAULT_INTERVAL_MIN = 5
DEFAULT_BACKOFF_MAX_MIN = 60


class ConfigError(ValueError):
    pass


def _fail(key, problem, fix):
    raise ConfigError("%s: %s; %s" % (key, problem, fix))


def _typename(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, int):
        return "a number"
    if isinstance(v, float):
        return "a fraction"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _known(obj, path, allowed):
    for k in obj:
        if k not in allowed:
            _fail(
                path + k,
                "unknown key",
                "remove it or fix the spelling (allowed here: %s)" % ", ".join(sorted(allowed)),
            )


def _str(obj, key, path, required=True, default=None, empty=False):
    if key not in obj or obj[key] is None:
        if required:
            _fail(path + key, "missing", "add it as a string")
        return default
    v = obj[key]
    if not isinstance(v, str):
        _fail(path + key, "is %s" % _typename(v), "write it as a string in double quotes")
    if not empty and not v:
        _fail(path + key, "is empty", "give a value")
    return v


def _int(obj, key, path, lo, hi, default):
    if key not in obj or obj[key] is None:
        return default
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(path + key, "is %s" % _typename(v), "write a whole number from %d to %d" % (lo, hi))
    if v < lo or v > hi:
        _fail(path + key, "is %d, out of range" % v, "use a whole number from %d to %d" % (lo, hi))
    return v


def _obj(v, path, what):
    if not isinstance(v, dict):
        _fail(path, "is %s" % _typename(v), "it must be an object {...} with " + what)
    return v


def _ipv4(v, key):
    parts = v.split(".")
    ok = len(parts) == 4
    for p in parts:
        if not ok:
            break
        ok = p.isdigit() and len(p) <= 3 and int(p) <= 255
    if not ok:
        _fail(key, "%r is not an IPv4 address" % v, "write four numbers 0-255 like 192.168.1.50")
    return v


def prefix_len(netmask):
    """255.255.255.0 -> 24; None when the mask is not contiguous."""
    bits = 0
    for p in netmask.split("."):
        bits = (bits << 8) | int(p)
    n = 0
    while n < 32 and bits & (0x80000000 >> n):
        n += 1
    if (bits << n) & 0xFFFFFFFF:
        return None
    return n


def normalize_mac(v, key):
    parts = v.split(":") if isinstance(v, str) else []
    ok = len(parts) == 6
    for p in parts:
        if not ok:
            break
        ok = len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
    if not ok:
        _fail(key, "%r is not a MAC address" % (v,), "write six hex pairs like a4:c1:38:30:c2:8e")
    return v.lower()


def parse_uuid(v, key):
    """A 16-bit UUID as 'ff00'/'0xff00'/0xff00 -> int, or a 128-bit UUID string unchanged."""
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 0xFFFF:
        return v
    if isinstance(v, str):
        s = v.lower()
        if s.startswith("0x"):
            s = s[2:]
        if 1 <= len(s) <= 4 and all(c in "0123456789abcdef" for c in s):
            return int(s, 16)
        if len(s) == 36 and s.count("-") == 4 and all(c in "0123456789abcdef-" for c in s):
            return s
    _fail(key, "%r is not a BLE UUID" % (v,), 'write a 16-bit UUID like "ff00" or a full 128-bit one')


def _wifi(v):
    w = _obj(v, "wifi", 'at least "ssid"')
    _known(w, "wifi.", ("ssid", "password", "static"))
    out = {
        "ssid": _str(w, "ssid", "wifi."),
        "password": _str(w, "password", "wifi.", required=False, default="", empty=True),
        "static": None,
    }
    if w.get("static") is not None:
        s = _obj(w["static"], "wifi.static", '"ip", "netmask", "gateway" and "dns"')
        _known(s, "wifi.static.", ("ip", "netmask", "gateway", "dns"))
        st = {}
        for k in ("ip", "netmask", "gateway", "dns"):
            st[k] = _ipv4(_str(s, k, "wifi.static."), "wifi.static." + k)
        st["prefix"] = prefix_len(st["netmask"])
        if st["prefix"] is None:
            _fail("wifi.static.netmask", "%r is not a netmask" % st["netmask"], "use e.g. 255.255.255.0")
        out["static"] = st
    return out


def check_topic(t, key):
    if "+" in t or "#" in t:
        _fail(key, "%r contains a wildcard (+ or #)" % t, "publish topics must be plain, like solar")
    if t.startswith("/") or t.endswith("/") or "//" in t:
        _fail(key, "%r has an empty level (leading, trailing or double /)" % t, "write it like solar/shed")
    return t


def _mqtt(v):
    m = _obj(v, "mqtt", 'at least "host"')
    allowed = ("host", "port", "user", "password", "topic", "client_id", "tls", "keepalive")
    _known(m, "mqtt.", allowed)
    tls = m.get("tls", False)
    if tls is None:
        tls = False
    if not isinstance(tls, bool):
        _fail("mqtt.tls", "is %s" % _typename(tls), "write true or false (no quotes)")
    return {
        "host": _str(m, "host", "mqtt."),
        "port": _int(m, "port", "mqtt.", 1, 65535, 8883 if tls else 1883),
        "user": _str(m, "user", "mqtt.", required=False),
        # umqtt sends a password whenever a user is set, so a missing one is "".
        "password": _str(m, "password", "mqtt.", required=False, empty=True, default="" if m.get("user") else None),
        "topic": check_topic(_str(m, "topic", "mqtt.", required=False, default=DEFAULT_TOPIC), "mqtt.topic"),
        "client_id": _str(m, "client_id", "mqtt.", required=False),
        "tls": tls,
        "keepalive": _int(m, "keepalive", "mqtt.", 0, 65535, 60),
    }


def _bms_entry(e, key):
    _obj(e, key, '"name" or "address"')
    _known(e, key + ".", ("name", "address", "addr_type", "service", "notify", "write"))
    name = _str(e, "name", key + ".", required=False)
    addr = e.get("address")
    if addr is not None:
        addr = normalize_mac(addr, key + ".address")
    if name is None and addr is None:
        _fail(key, "has neither name nor address", 'add "name": "<advertised name>" or "address": "aa:bb:cc:dd:ee:ff"')
    at = e.get("addr_type", "public")
    if at not in ("public", "random"):
        _fail(key + ".addr_type", "is %r" % (at,), 'write "public" (most JBD modules) or "random"')
    out = {"name": name, "address": addr, "addr_type": 0 if at == "public" else 1}
    for k in ("service", "notify", "write"):
        out[k] = parse_uuid(e[k], key + "." + k) if e.get(k) is not None else None
    svc = out["service"]
    if svc is None and (out["notify"] is not None or out["write"] is not None):
        _fail(key + ".service", "missing", "give the service UUID together with notify/write")
    if svc is not None and (out["notify"] is None or out["write"] is None):
        if not isinstance(svc, int):
            _fail(key, "has a 128-bit service but no notify/write", "add both characteristic UUIDs")
        # 16-bit JBD layouts put notify and write right after the service (FF00/01/02).
        out["notify"] = out["notify"] or svc + 1
        out["write"] = out["write"] or svc + 2
    return out


def _bms(v):
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list) or not v:
        _fail("bms", "is %s" % ("an empty list" if v == [] else _typename(v)),
              'list your BMS like [{"name": "Cabin 580ah"}]')
    out = []
    seen = []
    for i in range(len(v)):
        e = _bms_entry(v[i], "bms[%d]" % i)
        label = e["name"] or e["address"]
        if label in seen:
            _fail("bms[%d]" % i, "repeats %r" % label, "list each BMS once")
        seen.append(label)
        e["label"] = label
        e["slug"] = slug(label)
        out.append(e)
    return out


def validate(doc):
    """A parsed config document -> normalized config dict with defaults. Raises ConfigError."""
    _obj(doc, "config", '"wifi", "mqtt" and "bms"')
    _known(doc, "", ("wifi", "mqtt", "bms", "interval_min", "backoff_max_min"))
    for k in ("wifi", "mqtt", "bms"):
        if k not in doc:
            _fail(k, "missing", "add the %s section (see config.example.json)" % k)
    return {
        "wifi": _wifi(doc["wifi"]),
        "mqtt": _mqtt(doc["mqtt"]),
        "bms": _bms(doc["bms"]),
        "interval_min": _int(doc, "interval_min", "", 0, 10080, DEFAULT_INTERVAL_MIN),
        # The longest the interval stretches to while no BMS can be read (a phone app holds it).
        "backoff_max_min": _int(doc, "backoff_max_min", "", 1, 10080, DEFAULT_BACKOFF_MAX_MIN),
    }


def strip_comments(text):
    """Drop // comments (outside strings) so config.json can carry notes like the example."""
    out = []
    i = 0
    n = len(text)
    in_str = False
    start = 0
    while i < n:
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "/" and i + 1 < n and text[i + 1] == "/":
            out.append(text[start:i])
            while i < n and text[i] != "\n":
                i += 1
            start = i
            continue
        i += 1
    out.append(text[start:])
    return "".join(out)


def load(path=CONFIG_FILE):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("%s: cannot be read; copy it to the board (mpremote cp config.json :)" % path)
    try:
        doc = json.loads(strip_comments(text))
    except ValueError:
        raise ConfigError("%s: is not valid JSON; check quotes, commas and braces" % path)
    return validate(doc)


def reporting_sections(path=CONFIG_FILE):
    """When the config is unusable but its wifi and mqtt sections are fine, those two
    (normalized), so the error can still be published; else None."""
    try:
        with open(path) as f:
            doc = json.loads(strip_comments(f.read()))
        return {"wifi": _wifi(doc["wifi"]), "mqtt": _mqtt(doc["mqtt"])}
    except Exception:  # unreadable, not JSON, or the sections themselves are bad
        return None


def slug(label):
    """Topic level for a BMS: lower case, non-alphanumerics as '-'; a MAC loses its colons."""
    if normalize_mac_or_none(label):
        return label.replace(":", "").lower()
    out = []
    for c in label.lower():
        out.append(c if ("a" <= c <= "z" or "0" <= c <= "9") else "-")
    return "".join(out).strip("-") or "bms"


def normalize_mac_or_none(v):
    try:
        return normalize_mac(v, "")
    except ConfigError:
        return None
