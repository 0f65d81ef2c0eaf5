# Decoded registers -> the reading message. Keys keep the old Pi script's meaning
# (volts, amps, capacity, remain, percent, tempN, cellN, cycles, watts) and add the rest.
from firmware.jsonw import Fixed, div_round, obj


def balancing_cells(bits, count):
    cells = []
    for i in range(min(count, 32)):
        if bits >> i & 1:
            cells.append(i + 1)
    return cells


def reading_pairs(topic, label, address, seq, ts, basic, cells, name):
    """The reading as ordered (key, value) pairs; all numbers come from integers."""
    v_mv = basic["voltage_mv"]
    i_ma = basic["current_ma"]
    p = [
        ("topic", topic),
        ("bms", label),
        ("address", address),
        ("seq", seq),
        ("ts", ts),
        ("volts", Fixed(div_round(v_mv, 10), 2)),
        ("amps", Fixed(div_round(i_ma, 10), 2)),
        # W = mV * mA / 1e6, kept to 0.01 W
        ("watts", Fixed(div_round(v_mv * i_ma, 10000), 2)),
        ("capacity", Fixed(div_round(basic["nominal_mah"], 10), 2)),
        ("remain", Fixed(div_round(basic["remaining_mah"], 10), 2)),
        ("percent", basic["soc_pct"]),
        ("soc", basic["soc_pct"]),
        ("cycles", basic["cycles"]),
    ]
    temps = [Fixed(t, 1) for t in basic["temps_dc"]]
    for i in range(len(temps)):
        p.append(("temp%d" % (i + 1), temps[i]))
    p.append(("temps", temps))
    for i in range(len(cells)):
        p.append(("cell%d" % (i + 1), cells[i]))
    lo = min(cells) if cells else None
    hi = max(cells) if cells else None
    p += [
        ("cells", cells),
        ("cell_count", len(cells)),
        ("cell_min", lo),
        ("cell_max", hi),
        ("cell_delta", hi - lo if cells else None),
        ("balancing", balancing_cells(basic["balance_bits"], basic["cell_count"])),
        ("protection", basic["protection"]),
        ("charge_fet", basic["charge_fet"]),
        ("discharge_fet", basic["discharge_fet"]),
        ("production_date", basic["production_date"]),
        ("bms_version", basic["version"]),
    ]
    if name is not None:
        p.append(("name", name))
    return p


def reading_json(*args):
    return obj(reading_pairs(*args)).encode()
