# Simulation stand-in for `umqtt.simple`, the MQTT 3.1.1 client from
# micropython-lib frozen into the ESP32 firmware. Our own code, with the part of
# its API that firmware/mqtt.py and the tests use (same names, arguments and
# failures): MQTTClient(client_id, server, port=0, user=None, password=None,
# keepalive=0, ssl=None, ssl_params=None), set_last_will(), connect(),
# publish(), ping(), disconnect(), .sock, MQTTException. ssl is an SSLContext
# (legacy: True plus ssl_params). No subscribe()/wait_msg()/check_msg().
# "Upstream" below is micropython-lib's micropython/umqtt.simple/umqtt/simple.py
# (1.8.0); the quirks of it that the firmware meets are kept on purpose, each
# marked where it is. Simulation extras: while the `network` stand-in is
# imported and its station has no IP, connect() fails with OSError(EHOSTUNREACH)
# as on a board without Wi-Fi; simlog events mqtt_connect (server, port,
# client_id, ok, error when not ok), mqtt_publish (topic, len, retain, qos;
# once written, before any PUBACK) and mqtt_disconnect (server, port).

import errno
import socket
import struct
import sys

import simlog

# Packet types (first byte, flags clear).
CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, DISCONNECT = 0x10, 0x20, 0x30, 0x40, 0xC0, 0xE0


class MQTTException(Exception):
    """The broker refused the login; args[0] is the CONNACK return code."""


def _varint(n):
    """MQTT's remaining-length field: 7 bits a byte, low bits first, top bit = more."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(data):
    """A length-prefixed string field, as two chunks (so two writes, as upstream)."""
    # Upstream writes the object as given behind a prefix of len(data): for a
    # str that counts characters, not UTF-8 bytes, so non-ASCII text gets a
    # wrong length (firmware/mqtt.py encodes to bytes first).
    return (struct.pack("!H", len(data)), data)


def _text(x):
    """A topic, client id or host name (str or bytes) as text for the event log."""
    try:
        return x if isinstance(x, str) else bytes(x).decode()
    except UnicodeError:
        return repr(bytes(x))


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None, ssl_params=None):
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.ssl_params = ssl_params or {}
        self.sock = None
        self.pid = 0
        self.will = None  # (topic, msg, retain, qos)

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert topic and 0 <= qos <= 2
        self.will = (topic, msg, retain, qos)

    def connect(self, clean_session=True, timeout=None):
        where = {"server": _text(self.server), "port": self.port, "client_id": _text(self.client_id)}
        try:
            present = self._login(clean_session, timeout)
        except Exception as e:
            why = "refused %s" % e.args[0] if isinstance(e, MQTTException) else "%s: %s" % (type(e).__name__, e)
            simlog.event("mqtt_connect", ok=False, error=why, **where)
            raise
        simlog.event("mqtt_connect", ok=True, **where)
        return present

    def _login(self, clean_session, timeout):
        if self.sock:
            self.sock.close()
        net = sys.modules.get("network")
        if net is not None and not net._sta_connected():
            raise OSError(errno.EHOSTUNREACH)
        # As upstream's connect(): a fresh socket whose timeout, set first, stays
        # for later I/O; getaddrinfo() on every call; socket failures are OSError.
        raw = self.sock = socket.socket()
        raw.settimeout(timeout)
        raw.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        if self.ssl is True:
            import ssl  # the module; the argument is self.ssl
            self.sock = ssl.wrap_socket(raw, **self.ssl_params)
        elif self.ssl:
            self.sock = self.ssl.wrap_socket(raw, server_hostname=self.server)
        flags = 0x02 if clean_session else 0
        chunks = _field(self.client_id)
        if self.will:
            topic, msg, retain, qos = self.will
            flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
            chunks += _field(topic) + _field(msg)
        if self.user:
            # As upstream: a user always goes with a password field, so password=None
            # fails here with TypeError (firmware/config.py supplies "" instead).
            flags |= 0xC0
            chunks += _field(self.user) + _field(self.pswd)
        assert self.keepalive < 65536
        self._send(CONNECT, struct.pack("!H4sBBH", 4, b"MQTT", 4, flags, self.keepalive), *chunks)
        # As upstream: the CONNACK is read as exactly four bytes, so a closed
        # link fails with IndexError, a foreign reply with AssertionError, and a
        # refusal raises MQTTException with the broker's return code.
        ack = self.sock.read(4)
        assert ack[0] == CONNACK and ack[1] == 2
        if ack[3]:
            raise MQTTException(ack[3])
        return ack[2] & 1

    def ping(self):
        self._send(PINGREQ, b"")

    def disconnect(self):
        self._send(DISCONNECT, b"")
        self.sock.close()
        simlog.event("mqtt_disconnect", server=_text(self.server), port=self.port)

    def publish(self, topic, msg, retain=False, qos=0):
        # Write pattern kept from upstream's publish(): one PUBLISH goes out in
        # separate sock.write() calls -- fixed header, topic length, topic,
        # packet id (QoS 1 and 2), payload. On a board the first small write
        # leaves at once and Nagle's algorithm holds the rest until the broker
        # ACKs it, which its delayed ACK postpones: about 40 ms per QoS 1
        # publish. The simulation's latency model is meant to see these writes.
        chunks = _field(topic)
        if qos:
            self.pid = self.pid % 0xFFFF + 1
            pid = struct.pack("!H", self.pid)
            chunks += (pid,)
        self._send(PUBLISH | qos << 1 | (1 if retain else 0), b"", *chunks + (msg,))
        simlog.event("mqtt_publish", topic=_text(topic), len=len(msg), retain=bool(retain), qos=qos)
        if qos == 2:  # as upstream: the QoS 2 packet is sent, then publish() fails
            raise AssertionError("QoS 2 publish is not supported")
        while qos:
            # As upstream: QoS 1 returns once the PUBACK with its packet id came,
            # read the way upstream's wait_msg() reads (see _next_packet).
            if self._next_packet() == (PUBACK, pid):
                return

    def _send(self, kind, head, *chunks):
        """Write one packet: type byte, remaining length and `head` in one
        sock.write(), then one sock.write() per chunk."""
        # Upstream caps a PUBLISH below 2 MiB with an assert. Its CONNECT starts
        # with a 3-byte write; here the whole variable header joins the fixed
        # header, so a test server's first recv() sees the flags.
        size = len(head) + sum(len(c) for c in chunks)
        assert size < 0x200000
        self.sock.write(bytes((kind,)) + _varint(size) + head)
        for c in chunks:
            self.sock.write(c)

    def _next_packet(self):
        """Read one packet as (type byte, body)."""
        sock = self.sock
        first = sock.read(1)
        # As upstream's wait_msg(): after the first byte the socket is made
        # blocking, which drops the connect() timeout for the rest of the
        # session (firmware/mqtt.py sets it again before each publish).
        sock.setblocking(True)
        if not first:
            raise OSError(-1)  # end of stream, reported as upstream does
        size = 0
        for shift in range(0, 28, 7):
            b = sock.read(1)[0]
            size += (b & 0x7F) << shift
            if b < 0x80:
                break
        if first[0] & 0xF0 == PUBLISH:
            # Upstream hands an incoming PUBLISH to the callback set with
            # set_callback(); a publish-only client has none, and the call fails
            # with TypeError (see the amqtt note in tools/jbdgw/broker.py).
            raise TypeError("PUBLISH received but no callback is set")
        return first[0], sock.read(size) if size else b""
