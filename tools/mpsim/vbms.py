# Virtual JBD BMS: frame encoder and a scenario-driven device model.
#
# Pure module: runs on CPython 3.10+ and on MicroPython (unix port), so host tests
# can import it to build frames and the simulator can use it inside the firmware
# process. Protocol reference: shared/docs/jbd-protocol.md sections 2-5.
#
# Units in scenario dicts: mV, mA (signed, + = charging), mAh, 0.1 degC. The wire
# uses 10 mV / 10 mA / 10 mAh, so values are divided by 10 (truncating towards
# zero); use multiples of 10 in scenarios for exact round trips. Temperatures go
# on the wire as deci-kelvin with the JBD offset: raw = temps_dc + 2731.

import binascii
import struct

START = 0xDD
END = 0x77
CMD_READ = 0xA5
CMD_WRITE = 0x5A

REG_BASIC = 0x03
REG_CELLS = 0x04
REG_MODEL = 0x05

STATUS_OK = 0x00
STATUS_ERROR = 0x80  # unknown register / command
STATUS_INVALID = 0x81  # invalid operation (e.g. EEPROM access outside factory mode)

DEFAULT_MODEL = "JBD-SP04S034-L4S-200A-B-U"
DEFAULT_CHUNK = 20

DEFAULT_BATTERY = {
    "cells_mv": [3300, 3301, 3299, 3302],
    "current_ma": -1250,
    "remaining_mah": 65710,
    "nominal_mah": 100000,
    "cycles": 12,
    "production_date": "2023-05-16",
    "temps_dc": [215, 220],
    "balance_bits": 0,
    "protection_bits": 0,
    "fet_bits": 3,
    "soc_pct": 66,
    "version": 32,
}


def checksum(body):
    """16-bit JBD checksum of `body` (frame bytes from offset 2 through the last
    data byte): (0x10000 - sum) & 0xFFFF. Returns an int."""
    s = 0
    for b in body:
        s += b
    return (0x10000 - s) & 0xFFFF


def _frame(b1, b2, data):
    # Requests and replies share one layout; the checksum covers b2, the length
    # and the data, not b1.
    data = bytes(data)
    n = len(data)
    if n > 255:
        raise ValueError("frame data longer than 255 bytes")
    body = bytes([b2, n]) + data
    c = checksum(body)
    return bytes([START, b1]) + body + bytes([c >> 8, c & 0xFF, END])


def response_frame(register, data, status=0):
    """BMS -> host frame: DD <reg> <status> <len> <data> <chk_hi> <chk_lo> 77."""
    return _frame(register & 0xFF, status & 0xFF, data)


def request_frame(register, data=b"", write=False):
    """Host -> BMS frame: DD A5|5A <reg> <len> <data> <chk_hi> <chk_lo> 77."""
    return _frame(CMD_WRITE if write else CMD_READ, register & 0xFF, data)


def _div10(v):
    v = int(v)
    q = abs(v) // 10  # truncate towards zero
    return -q if v < 0 else q


def _ranged(v, lo, hi, kind, what):
    # A scenario value that does not fit its wire field is a scenario error,
    # not something to wrap around silently.
    v = int(v)
    if v < lo or v > hi:
        raise ValueError("%s out of range for %s: %d" % (what, kind, v))
    return v


def _u16(v, what):
    return _ranged(v, 0, 0xFFFF, "u16", what)


def _s16(v, what):
    return _ranged(v, -0x8000, 0x7FFF, "s16", what)


def _u8(v, what):
    return _ranged(v, 0, 0xFF, "u8", what)


def encode_date(text):
    """'YYYY-MM-DD' -> JBD date word ((y-2000)<<9 | m<<5 | d)."""
    parts = str(text).split("-")
    if len(parts) != 3:
        raise ValueError("production_date must be YYYY-MM-DD: %r" % (text,))
    y, m, d = int(parts[0]), int(parts[1]), int(parts[2])
    if not (2000 <= y <= 2127 and 1 <= m <= 12 and 1 <= d <= 31):
        raise ValueError("production_date out of range: %r" % (text,))
    return ((y - 2000) << 9) | (m << 5) | d


def _bat(battery):
    # DEFAULT_BATTERY fills every key a scenario leaves out, so the encoders
    # below read keys directly: there is no second set of defaults.
    b = dict(DEFAULT_BATTERY)
    if battery:
        b.update(battery)
    return b


def basic_info_data(battery):
    """Data bytes of a register 0x03 reply (jbd-protocol.md section 3)."""
    b = _bat(battery)
    cells = list(b["cells_mv"])
    temps = list(b["temps_dc"] or [])
    if b.get("voltage_mv") is not None:
        v10 = _div10(b["voltage_mv"])
    else:
        v10 = (sum(cells) + 5) // 10  # default: sum of cells, rounded to 10 mV
    bal = int(b["balance_bits"]) & 0xFFFFFFFF
    out = struct.pack(
        ">HhHHHHHHH",
        _u16(v10, "voltage"),
        _s16(_div10(b["current_ma"]), "current"),
        _u16(_div10(b["remaining_mah"]), "remaining"),
        _u16(_div10(b["nominal_mah"]), "nominal"),
        _u16(b["cycles"], "cycles"),
        encode_date(b["production_date"]),
        bal & 0xFFFF,
        bal >> 16,
        _u16(b["protection_bits"], "protection_bits"),
    )
    out += bytes(
        [
            _u8(b["version"], "version"),
            _u8(b["soc_pct"], "soc_pct"),
            _u8(b["fet_bits"], "fet_bits"),
            _u8(len(cells), "cell count"),
            _u8(len(temps), "ntc count"),
        ]
    )
    for t in temps:
        out += struct.pack(">H", _u16(int(t) + 2731, "temperature"))
    ext = b.get("extension")
    if ext is not None:
        out += bytes([_u8(ext.get("humidity", 0), "humidity")])
        out += struct.pack(
            ">HHHH",
            _u16(ext.get("alarm_bits", 0), "alarm_bits"),
            _u16(_div10(ext.get("full_charge_mah", b["nominal_mah"])), "full_charge"),
            _u16(_div10(ext.get("remaining_mah", b["remaining_mah"])), "ext remaining"),
            _u16(ext.get("balance_current_ma", 0), "balance_current_ma"),
        )
    return out


def cells_data(battery):
    """Data bytes of a register 0x04 reply: u16 mV per cell."""
    b = _bat(battery)
    out = b""
    for mv in b["cells_mv"]:
        out += struct.pack(">H", _u16(mv, "cell voltage"))
    return out


def chunks(frame, size):
    """Split bytes into notification-sized pieces (list of bytes)."""
    size = int(size)
    if size <= 0:
        raise ValueError("chunk size must be > 0")
    frame = bytes(frame)
    return [frame[i : i + size] for i in range(0, len(frame), size)]


def unhex(text):
    """Hex string (spaces/colons allowed) -> bytes."""
    t = str(text).replace(" ", "").replace(":", "").replace("\n", "")
    return binascii.unhexlify(t)


def _reg_key(k):
    k = str(k).strip().lower()
    if k.startswith("0x"):
        return int(k, 16)
    return int(k)


class VirtualBMS:
    """A JBD BMS behind a BLE UART bridge. `handle_write(data)` takes the bytes the
    host wrote to the write characteristic and returns the list of notification
    payloads (bytes) that the dongle sends back, in order."""

    def __init__(self, device=None):
        d = device or {}
        self.device = d
        self.chunk = int(d.get("mtu_chunk", DEFAULT_CHUNK) or DEFAULT_CHUNK)
        self.battery = _bat(d.get("battery"))
        if "model" in d:
            self.model = d["model"]  # None -> error status, like clones
        else:
            self.model = DEFAULT_MODEL
        self.no_reply = set()
        for r in d.get("no_reply") or []:
            self.no_reply.add(_reg_key(r))
        self.replies = {}
        rep = d.get("replies") or {}
        for k in rep:
            v = rep[k]
            if isinstance(v, (list, tuple)):
                self.replies[_reg_key(k)] = [unhex(x) for x in v]
            else:
                self.replies[_reg_key(k)] = chunks(unhex(v), self.chunk)
        self._buf = bytearray()
        self.requests = []  # (cmd, register, data) of every valid request seen
        self.bad_frames = 0

    def reply_frame(self, register):
        """Full reply frame for a read of `register` (None = no reply)."""
        if register == REG_BASIC:
            return response_frame(REG_BASIC, basic_info_data(self.battery))
        if register == REG_CELLS:
            return response_frame(REG_CELLS, cells_data(self.battery))
        if register == REG_MODEL:
            if self.model is None:
                return response_frame(REG_MODEL, b"", STATUS_ERROR)
            return response_frame(REG_MODEL, str(self.model).encode())
        return response_frame(register, b"", STATUS_ERROR)

    def _reply_chunks(self, cmd, register, data):
        if register in self.no_reply:
            return []
        if cmd == CMD_READ:
            if register in self.replies:
                return list(self.replies[register])
            return chunks(self.reply_frame(register), self.chunk)
        # Write commands: acknowledge factory-mode enter/exit and MOSFET control,
        # reject everything else as "invalid operation" (no factory mode here).
        if register in (0x00, 0x01):
            return chunks(response_frame(register, b""), self.chunk)
        if register == 0xE1 and len(data) == 2:
            # data[1]: bit0 = charge FET off, bit1 = discharge FET off
            fet = int(self.battery["fet_bits"]) & ~3
            fet |= (~data[1]) & 3
            self.battery["fet_bits"] = fet
            return chunks(response_frame(register, b""), self.chunk)
        return chunks(response_frame(register, b"", STATUS_INVALID), self.chunk)

    def handle_write(self, data):
        self._buf.extend(bytes(data))
        out = []
        buf = self._buf
        while True:
            # Resynchronise on the start byte.
            i = 0
            while i < len(buf) and buf[i] != START:
                i += 1
            if i:
                buf[0:i] = b""
            if len(buf) < 4:
                break
            n = buf[3]
            total = n + 7
            if len(buf) < total:
                break
            frame = bytes(buf[0:total])
            if frame[-1] != END or frame[1] not in (CMD_READ, CMD_WRITE):
                # Not a frame: drop the start byte and look for the next one.
                buf[0:1] = b""
                self.bad_frames += 1
                continue
            buf[0:total] = b""
            chk = (frame[-3] << 8) | frame[-2]
            if chk != checksum(frame[2:-3]):
                self.bad_frames += 1  # a real BMS stays silent on a bad checksum
                continue
            cmd, reg, payload = frame[1], frame[2], frame[4:-3]
            self.requests.append((cmd, reg, payload))
            out.extend(self._reply_chunks(cmd, reg, payload))
        return out
