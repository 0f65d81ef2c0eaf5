# Decoders for the read registers, one per register. Integer base units throughout:
# mV, mA (signed, + = charging), mAh, 0.1 degC.
from jbd.frame import (
    LengthError,
    StatusError,
    REG_BASIC,
    REG_CELLS,
    REG_NAME,
    check_frame,
)

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_BASIC_MIN = const(23)  # data bytes before the NTC words
_EXT_LEN = const(9)  # humidity, alarm, full-charge, remaining, balance current
_KELVIN_DC = const(2731)
_MAX_CELLS = const(32)

# Protection status word (register 0x03, data offset 16), bit n -> name.
# Vendor V4/V11 meanings (jbd-protocol.md section 3.1).
PROTECTION_FLAGS = (
    "cell_overvoltage",
    "cell_undervoltage",
    "pack_overvoltage",
    "pack_undervoltage",
    "charge_overtemperature",
    "charge_undertemperature",
    "discharge_overtemperature",
    "discharge_undertemperature",
    "charge_overcurrent",
    "discharge_overcurrent",
    "short_circuit",
    "frontend_ic_error",
    "mosfet_software_lock",
    "charge_mosfet_breakdown",
    "discharge_mosfet_breakdown",
    "unknown_bit15",
)

# Alarm word of the newer firmware's extension (V11 section 3.1 note 2).
ALARM_FLAGS = (
    "cell_high_voltage",
    "cell_low_voltage",
    "pack_high_voltage",
    "pack_low_voltage",
    "charge_high_temperature",
    "charge_low_temperature",
    "discharge_high_temperature",
    "discharge_low_temperature",
    "charge_overcurrent",
    "discharge_overcurrent",
    "cell_voltage_difference",
    "low_capacity",
    "unknown_bit12",
    "unknown_bit13",
    "unknown_bit14",
    "unknown_bit15",
)


def flag_names(bits, table):
    names = []
    for i in range(len(table)):
        if bits & (1 << i):
            names.append(table[i])
    return names


def _u16(p, i):
    return (p[i] << 8) | p[i + 1]


def decode_basic(payload):
    """Register 0x03 (basic information) -> dict; see README for the keys."""
    size = len(payload)
    if size < _BASIC_MIN:
        raise LengthError(
            "basic-info payload is %d bytes; register 0x03 carries at least %d"
            % (size, _BASIC_MIN)
        )
    ntc = payload[22]
    end = _BASIC_MIN + 2 * ntc
    if size < end:
        raise LengthError(
            "basic-info payload is %d bytes but announces %d NTC probes (needs %d)"
            % (size, ntc, end)
        )
    fet = payload[20]
    ext = size >= end + _EXT_LEN
    # Capacity/current unit: 10 mA normally; 100 mA when FET bit 7 is set (V11) or,
    # on some custom packs, bit 7 of the extension's humidity byte (aiobmsble).
    unit = 10
    unit_source = None
    if fet & 0x80:
        unit = 100
        unit_source = "fet_bit7"
    elif ext and payload[end] & 0x80:
        unit = 100
        unit_source = "humidity_bit7"
    current = _u16(payload, 2)
    if current & 0x8000:
        current -= 0x10000
    date = _u16(payload, 10)
    protection = _u16(payload, 16)
    temps = []
    for i in range(ntc):
        temps.append(_u16(payload, _BASIC_MIN + 2 * i) - _KELVIN_DC)
    r = {
        "register": REG_BASIC,
        "voltage_mv": _u16(payload, 0) * 10,
        "current_ma": current * unit,
        "remaining_mah": _u16(payload, 4) * unit,
        "nominal_mah": _u16(payload, 6) * unit,
        "cycles": _u16(payload, 8),
        "production_date": "%04d-%02d-%02d"
        % (2000 + (date >> 9), (date >> 5) & 0x0F, date & 0x1F),
        "balance_bits": _u16(payload, 12) | (_u16(payload, 14) << 16),
        "protection_bits": protection,
        "protection": flag_names(protection, PROTECTION_FLAGS),
        "version": payload[18],
        "soc_pct": payload[19],
        "fet_bits": fet,
        "charge_fet": bool(fet & 1),
        "discharge_fet": bool(fet & 2),
        "cell_count": payload[21],
        "ntc_count": ntc,
        "temps_dc": temps,
        "unit_ma": unit,
        "unit_source": unit_source,
    }
    if ext:
        humidity = payload[end]
        alarm = _u16(payload, end + 1)
        r["humidity_pct"] = None if humidity & 0x80 else humidity
        r["alarm_bits"] = alarm
        r["alarms"] = flag_names(alarm, ALARM_FLAGS)
        r["full_charge_mah"] = _u16(payload, end + 3) * unit
        r["ext_remaining_mah"] = _u16(payload, end + 5) * unit
        # Unit disputed between sources (mA vs 10 mA), so the raw word is kept.
        r["balance_current_raw"] = _u16(payload, end + 7)
    return r


def decode_cells(payload):
    """Register 0x04 -> list of cell millivolts."""
    size = len(payload)
    if size == 0 or size & 1 or size > 2 * _MAX_CELLS:
        raise LengthError(
            "cell-voltage payload is %d bytes; register 0x04 carries 2 bytes per cell for 1..32 cells"
            % size
        )
    cells = [0] * (size >> 1)
    for i in range(size >> 1):
        cells[i] = (payload[2 * i] << 8) | payload[2 * i + 1]
    return cells


def decode_name(payload):
    """Register 0x05 -> model string. Stops at NUL, shows other odd bytes as '?'."""
    chars = []
    for b in payload:
        if b == 0:
            break
        chars.append(chr(b) if 0x20 <= b < 0x7F else "?")
    return "".join(chars).strip()


def decode(frame):
    """Validate a whole frame and decode it by register; the dict includes "register"."""
    n = check_frame(frame)
    register = frame[1]
    if frame[2]:
        raise StatusError(register, frame[2])
    # A view, not a copy: decoding a reading pair should allocate little (see make bench).
    payload = memoryview(frame)[4 : 4 + n]
    if register == REG_BASIC:
        return decode_basic(payload)
    if register == REG_CELLS:
        cells = decode_cells(payload)
        return {"register": REG_CELLS, "cells_mv": cells, "cell_count": len(cells)}
    if register == REG_NAME:
        return {"register": REG_NAME, "name": decode_name(payload)}
    return {"register": register, "data": bytes(payload)}
