"""Every captured frame in host_tests/frames behaves as its `expected` block says."""

import struct

import pytest

import jbd
from conftest import corpus, feed_all

FRAMES = corpus()
WELL_FORMED = [f for f in FRAMES if not f[2].get("malformed") and f[2].get("checksum_ok", True)]
MALFORMED = [f for f in FRAMES if f not in WELL_FORMED]
SPLIT = [f for f in FRAMES if f[2].get("notifications")]


def ids(items):
    return ["%s#%d" % (name, i) for name, i, _ in items]


def test_corpus_is_complete():
    # 73 frames in 13 files per the corpus README; a lost file would silently shrink coverage.
    assert len(FRAMES) == 73
    assert len(MALFORMED) >= 7
    assert len(SPLIT) >= 10


def centi(x):
    return round(x * 100)


def milli(x):
    return round(x * 1000)


def check_basic(r, exp):
    # Mapping from the corpus' display units to the decoder's integer base units.
    pairs = {
        "voltage_V": ("voltage_mv", milli),
        "current_A": ("current_ma", milli),
        "residual_Ah": ("remaining_mah", milli),
        "nominal_Ah": ("nominal_mah", milli),
        "cycles": ("cycles", int),
        "production_date": ("production_date", str),
        "protection_bits": ("protection_bits", int),
        "protection_flags": ("protection", list),
        "software_version_byte": ("version", lambda s: int(s, 16)),
        "soc_pct": ("soc_pct", int),
        "fet_byte": ("fet_bits", int),
        "charge_fet_on": ("charge_fet", bool),
        "discharge_fet_on": ("discharge_fet", bool),
        "cell_count": ("cell_count", int),
        "ntc_count": ("ntc_count", int),
        "temperatures_C": ("temps_dc", lambda ts: [round(t * 10) for t in ts]),
        "ext_humidity_pct": ("humidity_pct", int),
        "ext_alarm_bits": ("alarm_bits", int),
        "ext_full_charge_capacity_Ah": ("full_charge_mah", milli),
        "ext_remaining_capacity_Ah": ("ext_remaining_mah", milli),
        "ext_balance_current_raw": ("balance_current_raw", int),
    }
    checked = 0
    for key, (ours, conv) in pairs.items():
        if key in exp:
            assert r[ours] == conv(exp[key]), key
            checked += 1
    if "balance_low" in exp:
        assert r["balance_bits"] == exp["balance_low"] | (exp["balance_high"] << 16)
        cells = [i + 1 for i in range(32) if r["balance_bits"] >> i & 1]
        assert cells == exp["balancing_cells"]
        checked += 1
    if "extension_hex" not in exp:
        assert "full_charge_mah" not in r
    assert checked >= 15


@pytest.mark.parametrize("name,index,fr", WELL_FORMED, ids=ids(WELL_FORMED))
def test_well_formed_frame_decodes_to_expected(name, index, fr):
    raw = bytes.fromhex(fr["hex"])
    exp = fr.get("expected", {})
    register, status, payload = jbd.parse_frame(raw)
    assert register == fr["register"]
    assert status == exp.get("status", status)
    if "data_length" in exp:
        assert len(payload) == exp["data_length"]
    if status:
        with pytest.raises(jbd.StatusError, match="status 0x%02X" % status):
            jbd.decode(raw)
        return
    r = jbd.decode(raw)
    assert r["register"] == fr["register"]
    if register == 3:
        check_basic(r, exp)
    elif register == 4:
        assert r["cells_mv"] == exp["cell_mV"]
        assert r["cell_count"] == exp["cell_count"]
    elif register == 5:
        assert r["name"] == exp["name"]
    else:
        assert r["data"] == payload


def expected_error(fr):
    problem = fr.get("checksum_problem") or ""
    if "first byte" in problem:
        return jbd.FrameError, "starts with 0x"
    if "length" in problem:
        return jbd.LengthError, "length byte"
    return jbd.ChecksumError, "checksum 0x"


@pytest.mark.parametrize("name,index,fr", MALFORMED, ids=ids(MALFORMED))
def test_malformed_run_is_rejected_with_a_clear_error(name, index, fr):
    raw = bytes.fromhex(fr["hex"])
    kind, words = expected_error(fr)
    with pytest.raises(kind, match=words) as info:
        jbd.parse_frame(raw)
    if kind is jbd.FrameError:
        assert type(info.value) is jbd.FrameError
    with pytest.raises(jbd.FrameError):
        jbd.decode(raw)


@pytest.mark.parametrize("name,index,fr", MALFORMED, ids=ids(MALFORMED))
def test_assembler_never_yields_an_invalid_frame_from_malformed_runs(name, index, fr):
    raw = bytes.fromhex(fr["hex"])
    a = jbd.FrameAssembler()
    frames = a.feed(raw)
    for f in frames:
        jbd.parse_frame(f)  # raises if invalid
    # Runs with stray bytes in front of a whole frame give that frame back (resync on DD).
    start = raw.find(b"\xdd")
    if start > 0 and raw[0] != 0xDD:
        tail = raw[start:]
        try:
            jbd.parse_frame(tail)
            assert frames == [tail]
            assert a.errors == 1 and "skipped %d bytes" % start in a.last_error
            return
        except jbd.FrameError:
            pass
    assert frames == []


@pytest.mark.parametrize("name,index,fr", SPLIT, ids=ids(SPLIT))
def test_notifications_reassemble_to_the_frame(name, index, fr):
    a, got = feed_all(bytes.fromhex(c) for c in fr["notifications"])
    assert got == [bytes.fromhex(fr["hex"])]
    assert a.errors == 0 and a.pending == b""


def test_truncated_reply_followed_by_a_whole_one_recovers():
    # jbdtool's trace: a 7-byte piece of a 0x03 reply, then a complete 0x04 reply.
    cut = bytes.fromhex("dd03001d061800")
    whole = bytes.fromhex("dd0400080f460f3e0f370f3dfec477")
    a = jbd.FrameAssembler()
    assert a.feed(cut) == []
    assert a.feed(whole) == [whole]
    assert a.errors == 1 and "cut off" in a.last_error
    assert a.pending == b""


def test_read_request_matches_documented_frames():
    assert jbd.read_request(0x03) == bytes.fromhex("dda50300fffd77")
    assert jbd.read_request(0x04) == bytes.fromhex("dda50400fffc77")
    assert jbd.read_request(0x05) == bytes.fromhex("dda50500fffb77")
    assert jbd.read_request(0xAA) == bytes.fromhex("dda5aa00ff5677")


def test_write_request_matches_documented_frame():
    assert jbd.write_request(0xE1, b"\x00\x02") == bytes.fromhex("dd5ae1020002ff1b77")


@pytest.mark.parametrize("bad", [-1, 256, "3", None, 3.0])
def test_read_request_rejects_bad_register(bad):
    with pytest.raises(ValueError, match="register must be an integer 0x00..0xFF"):
        jbd.read_request(bad)


def test_documented_worked_example():
    # jbd-protocol.md section 11: Chins 320 Ah with the 9-byte extension.
    raw = bytes.fromhex(
        "dd0300220539 02d1420c7d00005532610000000000002a3503040 10b93000000 7d00420c0000fb4a77".replace(" ", "")
    )
    r = jbd.decode(raw)
    assert (r["voltage_mv"], r["current_ma"]) == (13370, 7210)
    assert (r["remaining_mah"], r["nominal_mah"], r["cycles"]) == (169080, 320000, 85)
    assert r["production_date"] == "2025-03-01"
    assert (r["soc_pct"], r["temps_dc"], r["version"]) == (53, [232], 0x2A)
    assert (r["full_charge_mah"], r["ext_remaining_mah"], r["humidity_pct"]) == (320000, 169080, 0)


def basic_payload(current=0, nominal=32000, fet=3, temps=(2963,), ext=None):
    """A 0x03 payload in wire units (10 mA, 10 mAh, 0.1 K), with an optional extension."""
    head = struct.pack(">HhHHHHHHHBBBBB", 1337, current, 16908, nominal, 85, 0x3261, 0, 0, 0,
                       0x2A, 53, fet, 4, len(temps))
    return head + b"".join(struct.pack(">H", t) for t in temps) + (ext or b"")


def test_unit_flag_in_fet_byte_scales_current_and_capacity():
    r = jbd.decode_basic(basic_payload(current=-10, fet=0x83))
    assert r["unit_ma"] == 100 and r["unit_source"] == "fet_bit7"
    assert r["current_ma"] == -1000 and r["nominal_mah"] == 3200000
    assert r["charge_fet"] and r["discharge_fet"]
    plain = jbd.decode_basic(basic_payload(current=-10))
    assert plain["unit_source"] is None and plain["current_ma"] == -100


def test_unit_flag_in_humidity_byte_scales_capacity():
    # A Fogstar 628 Ah pack (aiobmsble test data) flags 100 mAh units with humidity 0x88.
    r = jbd.decode_basic(basic_payload(nominal=6280, ext=bytes([0x88]) + bytes(8)))
    assert r["unit_source"] == "humidity_bit7"
    assert r["nominal_mah"] == 628000 and r["humidity_pct"] is None
    assert r["temps_dc"] == [232]


def test_short_payloads_name_what_is_missing():
    with pytest.raises(jbd.LengthError, match="at least 23"):
        jbd.decode_basic(bytes(10))
    p = bytearray(23)
    p[22] = 4
    with pytest.raises(jbd.LengthError, match="4 NTC probes"):
        jbd.decode_basic(bytes(p))
    with pytest.raises(jbd.LengthError, match="1..32 cells"):
        jbd.decode_cells(bytes(3))
    with pytest.raises(jbd.LengthError, match="1..32 cells"):
        jbd.decode_cells(bytes(66))


def test_name_is_tolerant_of_odd_bytes():
    assert jbd.decode_name(b"SP04S\xff34\x00junk") == "SP04S?34"
    assert jbd.decode_name(b"  JBD  ") == "JBD"


def test_all_32_cells_and_high_balance_word():
    p = bytearray(23)
    p[12:16] = bytes([0x00, 0x01, 0x80, 0x00])  # cell 1 and cell 32
    p[21] = 32
    r = jbd.decode_basic(bytes(p))
    assert r["balance_bits"] == (1 << 31) | 1
    cells = jbd.decode_cells(bytes(range(64)))
    assert len(cells) == 32 and cells[0] == 0x0001 and cells[31] == 0x3E3F
