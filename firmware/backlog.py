# Readings that could not be published (Wi-Fi or broker down) wait in flash, one line per
# message, and go out first on the next wake that reaches the broker. Flash is written only
# while something is failing. Delivery resumes after the last acknowledged message; a
# reading resent after a power loss is de-duplicated by the ingest on seq.
import os

from micropython import const

BACKLOG_FILE = "state/backlog"
_MAX_BYTES = const(200000)  # about 280 readings of 16 cells: a day at 5-minute wakes


def size():
    try:
        return os.stat(BACKLOG_FILE)[6]
    except OSError:
        return 0


def _ends_in_newline():
    try:
        with open(BACKLOG_FILE, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"
    except OSError:
        return True  # no file (or empty): nothing to terminate


def append(msgs):
    """Store [(topic, payload, retain)]; returns how many did not fit (newest are dropped)."""
    used = size()
    dropped = 0
    try:
        os.mkdir("state")
    except OSError:
        pass
    torn = used and not _ends_in_newline()
    with open(BACKLOG_FILE, "ab") as f:
        if torn:  # a power cut mid-write left half a line: end it so it cannot merge
            f.write(b"\n")
            used += 1
        for topic, payload, _ in msgs:
            n = len(topic) + len(payload) + 2
            if used + n > _MAX_BYTES:
                dropped += 1
                continue
            f.write(topic)
            f.write(b"\t")
            f.write(payload)
            f.write(b"\n")
            used += n
    return dropped


def clear():
    try:
        os.remove(BACKLOG_FILE)
    except OSError:
        pass


def _parse(line):
    tab = line.find(b"\t")
    # Whole lines with a JSON object only: anything else is a torn write and is skipped.
    if tab > 0 and line[tab + 1 : tab + 2] == b"{" and line[-2:] == b"}\n":
        return line[:tab], line[tab + 1 : -1]
    return None


class Reader:
    """Iterates the stored messages from byte offset `start`, one line in memory.

    `.done` is the offset up to which every message was handed out and came back for the
    next one (i.e. was published); `.finished()` says the whole file was delivered.
    """

    def __init__(self, start):
        self._size = size()
        self.done = start if 0 <= start <= self._size else 0
        self._f = None

    def count(self):
        n = 0
        for m, _ in self._lines():
            if m is not None:
                n += 1
        self.close()
        return n

    def _lines(self):
        if self.done >= self._size:
            return
        self._f = open(BACKLOG_FILE, "rb")
        self._f.seek(self.done)
        while True:
            line = self._f.readline()
            if not line:
                break
            yield _parse(line), len(line)

    def __iter__(self):
        pos = self.done
        for m, n in self._lines():
            if m is not None:
                yield m[0], m[1], False
            pos += n
            self.done = pos
        self.close()

    def finished(self):
        return self.done >= self._size

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None
