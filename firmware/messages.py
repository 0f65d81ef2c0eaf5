# What a wake publishes: one reading per BMS read, and the retained status of the wake.
from firmware import VERSION
from firmware.jsonw import Raw, obj
from firmware.reading import reading_json

_PHASES = ("config", "ble", "wifi")


def reading_topic(cfg, entry):
    topic = cfg["mqtt"]["topic"]
    if len(cfg["bms"]) > 1:
        topic += "/" + entry["slug"]
    return topic


def readings(cfg, results, seq, ts, names):
    """BLE results (in cfg["bms"] order) -> ([(topic, payload, retain)], per-BMS status
    pairs). `names` maps a BMS label to its model name from register 0x05."""
    out = []
    per_bms = []
    for entry, r in zip(cfg["bms"], results):
        label = entry["label"]
        if r["state"] != "ok":
            pairs = [("bms", label), ("state", r["state"]), ("error", r["error"])]
            if "heard" in r:  # what the scan did hear, so the user can fix the name from here
                pairs.append(("heard", [Raw(obj([("name", h[0]), ("address", h[1]), ("rssi", h[2])])) for h in r["heard"]]))
            per_bms.append(pairs)
            continue
        topic = reading_topic(cfg, entry)
        payload = reading_json(topic, label, r["address"], seq, ts, r["basic"], r["cells"], names.get(label) or None)
        out.append((topic.encode(), payload, False))
        per_bms.append([("bms", label), ("state", "ok"), ("frame_errors", r["frame_errors"])])
    return out, per_bms


def status(wake, ts, per_bms, waiting, prev_mqtt_ms, prev_error):
    """The status message of this wake, built last so that its times are the latest."""
    pairs = [
        ("state", wake.outcome),
        ("seq", wake.seq),
        ("ts", ts),
        ("fw", VERSION),
        ("reset", wake.cause),
        ("ms", Raw(obj([(k, wake.ms[k]) for k in _PHASES if k in wake.ms]))),
        ("awake_ms", wake.elapsed()),
        ("prev_mqtt_ms", prev_mqtt_ms),
        ("heap_free", wake.heap_free),
        ("bms", [Raw(obj(p)) for p in per_bms]),
        ("backlog", waiting),
        ("interval_min", wake.interval_min),
        ("interval_why", wake.stretched),
        ("errors", wake.errors),
        ("prev_error", prev_error),
    ]
    return obj(pairs).encode()
