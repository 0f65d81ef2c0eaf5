# Readings that could not be published (Wi-Fi or broker down) wait in flash, one line per
# message, and go out first on the next wake that reaches the broker. Flash is written only
# while something is failing. Resending after a partial failure may duplicate a reading;
# the ingest de-duplicates on seq.
import os

from micropython import const

BACKLOG_FILE = "state/backlog"
_MAX_BYTES = const(200000)  # about 280 readings of 16 cells: a day at 5-minute wakes


def size():
    try:
        return os.stat(BACKLOG_FILE)[6]
    except OSError:
        return 0


def append(msgs):
    """Store [(topic, payload, retain)]; returns how many did not fit (newest are dropped)."""
    used = size()
    dropped = 0
    try:
        os.mkdir("state")
    except OSError:
        pass
    with open(BACKLOG_FILE, "ab") as f:
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


def count():
    n = 0
    try:
        with open(BACKLOG_FILE, "rb") as f:
            while f.readline():
                n += 1
    except OSError:
        pass
    return n


def messages():
    """Yield the stored (topic, payload, retain=False) oldest first, one line in memory."""
    try:
        f = open(BACKLOG_FILE, "rb")
    except OSError:
        return
    try:
        while True:
            line = f.readline()
            if not line:
                break
            tab = line.find(b"\t")
            if tab > 0 and line.endswith(b"\n"):  # a line torn by a power cut is skipped
                yield line[:tab], line[tab + 1 : -1], False
    finally:
        f.close()


def clear():
    try:
        os.remove(BACKLOG_FILE)
    except OSError:
        pass
