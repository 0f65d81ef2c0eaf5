# MQTT phase: one connection, the readings and the retained status, clean disconnect.
from umqtt.simple import MQTTClient

OFFLINE = b'{"state":"offline"}'
_IO_TIMEOUT_S = 10


def _tls_context():
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # No CA bundle on the board: the link is encrypted but the server is not verified.
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _b(s):
    # umqtt writes len(str) as the length: non-ASCII text must go as bytes.
    return s.encode() if isinstance(s, str) else s


class OnePacketWrites:
    """Stands in for umqtt.simple's `sock` once connected: the pieces it writes for one
    packet (a PUBLISH is header, topic length, topic, packet id, payload) are collected and
    sent in one write when it next reads (the PUBACK) or closes. Written in pieces, a packet
    waits under Nagle's algorithm for the broker's delayed ACK of the first piece, about
    40 ms per QoS 1 publish (docs/benchmarks.md); in one write it goes out at once."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = bytearray()
        try:  # umqtt.simple before 1.5 connects without a timeout; TLS sockets have none
            sock.settimeout(_IO_TIMEOUT_S)
        except AttributeError:
            pass

    def write(self, data, n=None):
        if n is None or n == len(data):
            self.pending.extend(data)
            return len(data)
        self.pending.extend(data[:n])
        return n

    def flush(self):
        if self.pending:
            self.sock.write(self.pending)
            self.pending = bytearray()

    def read(self, n):
        self.flush()
        return self.sock.read(n)

    def setblocking(self, flag):
        # umqtt.simple's wait_msg() sets the socket blocking after each packet it reads,
        # which would drop the I/O timeout for good (a TLS socket has no settimeout() to
        # set it again); blocking-with-timeout is what a publish needs, so only a switch to
        # non-blocking is passed on.
        if not flag:
            self.sock.setblocking(False)

    def close(self):
        try:
            self.flush()
        finally:
            self.sock.close()


class Session:
    """Publishes messages one by one; .acked counts those the broker acknowledged."""

    def __init__(self, cfg, client_id, status_topic):
        self.acked = 0
        self.sent_bytes = 0
        self.client = MQTTClient(
            _b(client_id),
            cfg["host"],
            cfg["port"],
            _b(cfg["user"]),
            _b(cfg["password"]),
            cfg["keepalive"],
            ssl=_tls_context() if cfg["tls"] else None,
        )
        # The will fires only if the link dies mid-session; a clean disconnect suppresses it.
        self.client.set_last_will(status_topic, OFFLINE, retain=True)

    def connect(self):
        try:
            self.client.connect(timeout=_IO_TIMEOUT_S)
        except TypeError:  # umqtt.simple before 1.5 (MicroPython < 1.25) has no timeout
            self.client.connect()
        # `sock` is umqtt.simple's public attribute; everything it sends goes through it.
        self.client.sock = OnePacketWrites(self.client.sock)

    def publish(self, topic, payload, retain):
        # QoS 1: publish() returns only once the broker acknowledged the message.
        self.client.publish(topic, payload, retain, 1)
        self.acked += 1
        self.sent_bytes += len(payload)

    def close(self, clean):
        try:
            if clean:
                self.client.disconnect()
        finally:
            try:
                self.client.sock.close()
            except Exception:
                pass
