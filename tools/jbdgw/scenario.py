"""The keys a scenario file may hold (what the simulation stand-ins in tools/mpsim read), so
that a misspelt one is an error naming it, as in config files, not an option quietly
ignored."""

from __future__ import annotations

#: Top level: "devices" (virtual BMS), "wifi" (the access point), and the board's identity.
TOP = {"description", "devices", "wifi", "seed", "mac", "unique_id"}
#: A virtual BMS (tools/mpsim/bluetooth.py and vbms.py).
DEVICE = {
    "name", "address", "addr_type", "rssi", "model", "battery", "replies", "no_reply", "mtu", "mtu_chunk",
    "busy", "connect_failures", "connect_ms", "gatt_ms", "latency_ms", "drop_after_ms", "handles_shift",
    "lose_notifications", "refuse_short_interval", "advertising", "name_in", "uuids", "write_props",
    "manufacturer_hex",
}
#: The access point (tools/mpsim/network.py), and the Wi-Fi figures it may override.
WIFI = {
    "ssid", "password", "bssid", "channel", "rssi", "down",
    "wifi_probe_ms", "wifi_assoc_ms", "dhcp_ms", "static_ip_ms", "wifi_scan_active_dwell_ms",
    "wifi_scan_active_channels", "wifi_scan_passive_dwell_ms", "wifi_scan_passive_channels",
}


def _close(key: str, known: set[str]) -> str:
    import difflib

    near = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(sorted(known))}"


def problems(doc: dict) -> list[str]:
    """Every unknown key with its dotted path and the fix; [] for a usable scenario."""
    out = []

    def check(obj, path: str, known: set[str]) -> None:
        if not isinstance(obj, dict):
            out.append(f"{path or 'the scenario'} must be a JSON object")
            return
        for key in obj:
            if key not in known:
                out.append(f"{path}{key}: unknown key; {_close(key, known)}")

    check(doc, "", TOP)
    if isinstance(doc.get("wifi"), dict) or "wifi" in doc:
        check(doc["wifi"], "wifi.", WIFI)
    devices = doc.get("devices", [])
    if not isinstance(devices, list):
        out.append("devices must be a list of objects")
    else:
        for i, d in enumerate(devices):
            check(d, f"devices[{i}].", DEVICE)
    return out
