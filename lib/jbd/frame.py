# JBD "DD ... 77" framing: requests, validation and reassembly of BLE notifications.
# Pure functions over bytes; no I/O. Runs on CPython and MicroPython.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_START = const(0xDD)
_END = const(0x77)
_READ = const(0xA5)
_WRITE = const(0x5A)
_OVERHEAD = const(7)  # DD reg status len ... chk chk 77
# The length byte allows at most 255 data bytes, so no frame is longer than this.
MAX_FRAME = const(262)

REG_BASIC = const(0x03)
REG_CELLS = const(0x04)
REG_NAME = const(0x05)

# Status byte of a reply (protocol doc section 2.4).
STATUS_NAMES = {
    0x80: "error or unknown register",
    0x81: "invalid operation (factory mode or password needed)",
    0x82: "checksum error",
    0x83: "password error",
}


class FrameError(ValueError):
    """A byte run that is not a valid JBD frame (bad start or end byte)."""


class ChecksumError(FrameError):
    pass


class LengthError(FrameError):
    pass


class StatusError(FrameError):
    """A well-formed reply whose status byte reports an error (0x80 etc.)."""

    def __init__(self, register, status):
        self.register = register
        self.status = status
        super().__init__(
            "register 0x%02X answered with error status 0x%02X (%s)"
            % (register, status, STATUS_NAMES.get(status, "unknown status")),
        )


def checksum(buf, start, end):
    """JBD checksum of buf[start:end]: 0x10000 minus the byte sum, truncated to 16 bits."""
    s = 0
    for i in range(start, end):
        s += buf[i]
    return (0x10000 - s) & 0xFFFF


def _request(command, register, data):
    if not isinstance(register, int) or not 0 <= register <= 0xFF:
        raise ValueError("register must be an integer 0x00..0xFF, got %r" % (register,))
    n = len(data)
    if n > 0xFF:
        raise ValueError("request data is %d bytes; at most 255 fit in a frame" % n)
    frame = bytearray(n + _OVERHEAD)
    frame[0] = _START
    frame[1] = command
    frame[2] = register
    frame[3] = n
    frame[4 : 4 + n] = data
    chk = checksum(frame, 2, 4 + n)
    frame[4 + n] = chk >> 8
    frame[5 + n] = chk & 0xFF
    frame[6 + n] = _END
    return bytes(frame)


def read_request(register):
    """The read frame DD A5 <reg> 00 <chk> 77."""
    return _request(_READ, register, b"")


def write_request(register, data):
    """The write frame DD 5A <reg> <n> <data> <chk> 77 (no control commands are sent yet)."""
    return _request(_WRITE, register, data)


def check_frame(frame):
    """Validate a whole frame; returns its data length. Raises FrameError subclasses."""
    size = len(frame)
    if size < _OVERHEAD:
        raise LengthError(
            "frame is %d bytes; a JBD frame has at least 7 (DD reg status len chk chk 77)" % size
        )
    if frame[0] != _START:
        raise FrameError("frame starts with 0x%02X, expected 0xDD" % frame[0])
    n = frame[3]
    if size != n + _OVERHEAD:
        raise LengthError(
            "frame is %d bytes but its length byte 0x%02X means %d (%d data bytes + 7)"
            % (size, n, n + _OVERHEAD, n)
        )
    if frame[size - 1] != _END:
        raise FrameError("frame ends with 0x%02X, expected 0x77" % frame[size - 1])
    got = (frame[size - 3] << 8) | frame[size - 2]
    want = checksum(frame, 2, 4 + n)
    if got != want:
        raise ChecksumError(
            "checksum 0x%04X of register 0x%02X frame does not match computed 0x%04X"
            % (got, frame[1], want)
        )
    return n


def parse_frame(frame):
    """Validate one frame and split it: (register, status, payload bytes)."""
    n = check_frame(frame)
    return frame[1], frame[2], bytes(frame[4 : 4 + n])


class FrameAssembler:
    """Rebuilds frames from BLE notifications split at arbitrary points.

    One preallocated buffer; frames are cut by their length byte, never by chunk boundaries.
    A run that fails validation is counted in .errors and the assembler resynchronises on
    the next 0xDD, so junk never wedges it.
    """

    def __init__(self):
        self._buf = bytearray(MAX_FRAME)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._junk = False
        self.errors = 0
        self.last_error = None

    @property
    def pending(self):
        return bytes(self._buf[: self._n])

    def reset(self):
        self._n = 0
        self._junk = False
        self.errors = 0
        self.last_error = None

    def feed(self, chunk):
        out = []
        total = len(chunk)
        if self._n + total <= MAX_FRAME:  # the usual case: copy without slicing the chunk
            self._buf[self._n : self._n + total] = chunk
            self._n += total
            self._drain(out)
            return out
        mv = memoryview(chunk)
        pos = 0
        while pos < total:
            take = min(MAX_FRAME - self._n, total - pos)
            self._buf[self._n : self._n + take] = mv[pos : pos + take]
            self._n += take
            pos += take
            self._drain(out)
        return out

    def _reject(self, reason, drop):
        self.errors += 1
        self.last_error = reason
        self._shift(drop)

    def _shift(self, k):
        # In-place move without allocating; the remainder is at most one frame long.
        buf = self._buf
        m = self._n - k
        for i in range(m):
            buf[i] = buf[k + i]
        self._n = m

    def _next_start(self, begin):
        buf = self._buf
        for i in range(begin, self._n):
            if buf[i] == _START:
                return i
        return -1

    def _complete_at(self, p):
        # True when a whole checksum-valid frame starts at buffer offset p.
        buf = self._buf
        if self._n - p < 4:
            return False
        end = p + buf[p + 3] + _OVERHEAD
        if end > self._n or buf[end - 1] != _END:
            return False
        return ((buf[end - 3] << 8) | buf[end - 2]) == checksum(buf, p + 2, end - 3)

    def _drain(self, out):
        buf = self._buf
        while self._n:
            if buf[0] != _START:
                p = self._next_start(1)
                skip = self._n if p < 0 else p
                if self._junk:  # same junk run as the previous chunk's tail: count it once
                    self._shift(skip)
                else:
                    self._reject("skipped %d bytes that are not part of a frame" % skip, skip)
                self._junk = p < 0
                continue
            self._junk = False
            if self._n < 4:
                return
            size = buf[3] + _OVERHEAD
            if self._n >= size:
                if self._complete_at(0):
                    out.append(bytes(self._mv[:size]))
                    self._shift(size)
                else:
                    why = "bad end byte" if buf[size - 1] != _END else "bad checksum"
                    self._reject(
                        "dropped a %d-byte register 0x%02X frame: %s" % (size, buf[1], why), 1
                    )
                    self._junk = True  # the rest of this run is part of the same rejection
                continue
            # Head frame incomplete. A whole valid frame further on means the head was cut
            # off (truncated reply, or a junk 0xDD with a large length byte): drop the head.
            p = self._next_start(1)
            while p > 0:
                if self._complete_at(p):
                    break
                p = self._next_start(p + 1)
            if p < 0:
                return
            self._reject("dropped %d bytes of a frame cut off by a new frame" % p, p)
