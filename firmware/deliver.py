# Delivery of a wake's messages: the flash backlog first (oldest readings), then this
# wake's readings, then the retained status; whatever the broker did not acknowledge goes
# to the backlog for the next wake. This is the one place that reads or writes the backlog.
import time

from firmware import backlog, mqtt


class Outcome:
    """What deliver() did: .sent_new readings of this wake acknowledged, .error (None or
    text), .mqtt_ms and .sent_bytes of a session that completed, .backlog_at to keep."""

    def __init__(self, backlog_at):
        self.sent_new = 0
        self.error = None
        self.mqtt_ms = None
        self.sent_bytes = None
        self.backlog_at = backlog_at
        self.kept = 0
        self.dropped = 0


def waiting(backlog_at):
    """How many stored readings wait to be sent, from byte offset backlog_at."""
    return backlog.Reader(backlog_at).count()


def deliver(link, new, status, backlog_at, feed):
    """Sends through `link` (mqtt settings, client id, status topic; None when there is no
    network) the backlog from byte `backlog_at`, then `new` [(topic, payload, retain)],
    then `status()`'s message; stores what was not acknowledged. `feed` is called after
    each message (the watchdog)."""
    out = Outcome(backlog_at)
    reader = backlog.Reader(backlog_at)
    had_backlog = not reader.finished()
    try:
        if link is not None:
            _send(link, reader, new, status, feed, out)
    finally:
        reader.close()
    out.backlog_at = reader.done
    if reader.finished():
        backlog.clear()
        out.backlog_at = 0
        if had_backlog:
            print("gateway: backlog delivered")
    unsent = new[out.sent_new :]
    if unsent:
        try:
            out.dropped = backlog.append(unsent)
        except OSError as e:
            out.dropped = len(unsent)
            print("gateway: backlog write failed:", e)
        out.kept = len(unsent) - out.dropped
        print("gateway: kept %d readings for the next wake" % out.kept)
    return out


def _send(link, reader, new, status, feed, out):
    cfg, client_id, status_topic = link
    t = time.ticks_ms()
    session = None
    try:
        session = mqtt.Session(cfg, client_id, status_topic)
        session.connect()
        for topic, payload, retain in reader:
            session.publish(topic, payload, retain)
            feed()
        for topic, payload, retain in new:
            session.publish(topic, payload, retain)
            out.sent_new += 1
            feed()
        session.publish(status_topic, status(), True)
        session.close(True)
        out.mqtt_ms = time.ticks_diff(time.ticks_ms(), t)
        out.sent_bytes = session.sent_bytes
    except Exception as e:  # OSError, MQTTException, TLS errors
        out.error = "broker %s:%d: %r" % (cfg["host"], cfg["port"], e)
        if session is not None:
            session.close(False)
