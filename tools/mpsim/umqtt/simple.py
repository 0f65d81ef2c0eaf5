# Simulation stand-in for `umqtt.simple`, the MQTT 3.1.1 client from
# micropython-lib frozen into the ESP32 firmware. Our own code, with the part of
# its API that firmware/mqtt.py and the tests use (same names, arguments and
# failures): MQTTClient(client_id, server, port=0, user=None, password=None,
# keepalive=0, ssl=None, ssl_params=None), set_last_will(), connect(),
# publish(), ping(), disconnect(), .sock, MQTTException. ssl is an SSLContext
# (legacy: True plus ssl_params). No subscribe()/wait_msg()/check_msg().
# "Upstream" below is micropython-lib's micropython/umqtt.simple/umqtt/simple.py
# (1.8.0); the quirks of it that the firmware meets are kept on purpose, each
# marked where it is. Every packet goes out in the same sock.write() calls as
# upstream's, with the same arguments (write(buf, n) for fixed headers, one
# bytearray reused for a PUBLISH's header and packet id), so that the latency
# model sees the same pieces and a firmware wrapper around .sock meets the same
# calls. Simulation extras: the socket is a simtcp.SimSocket (TCP connect, reply
# and Nagle/delayed-ACK timing from the latency profile; events "tcp"), and
# DISCONNECT waits the profile's mqtt_disconnect_rtts; while the `network`
# stand-in is imported and its station has no IP, connect() fails with
# OSError(EHOSTUNREACH) as on a board without Wi-Fi; simlog events mqtt_connect
# (server, port, client_id, ok, error when not ok), mqtt_publish (topic, len,
# retain, qos; once written, before any PUBACK) and mqtt_disconnect (server, port).

import errno
import socket
import sys

import simlog
import simtcp

# Packet types (first byte, flags clear).
CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, DISCONNECT = 0x10, 0x20, 0x30, 0x40, 0xC0, 0xE0


class MQTTException(Exception):
    """The broker refused the login; args[0] is the CONNACK return code."""


def _remaining(n):
    """MQTT's remaining length: 7 bits a byte, low bits first, the high bit set while more
    bytes follow."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return out


def _field(s):
    # A string goes as its length and its bytes, in two writes. The length is len(s): for
    # a str that counts characters, not UTF-8 bytes, so non-ASCII text gets a wrong one
    # (upstream does the same; firmware/mqtt.py encodes to bytes first).
    return [len(s).to_bytes(2, "big"), s]


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
        self._scratch = bytearray(8)
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
        raw = self.sock = simtcp.SimSocket(socket.socket())
        raw.settimeout(timeout)
        raw.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        if self.ssl is True:
            import ssl  # the module; the argument is self.ssl
            self.sock = ssl.wrap_socket(raw, **self.ssl_params)
        elif self.ssl:
            self.sock = self.ssl.wrap_socket(raw, server_hostname=self.server)
        self._send(self._connect_pieces(clean_session))
        # As upstream: the CONNACK is read as exactly four bytes, so a closed
        # link fails with IndexError, a foreign reply with AssertionError, and a
        # refusal raises MQTTException with the broker's return code.
        ack = self.sock.read(4)
        assert ack[0] == CONNACK and ack[1] == 2
        if ack[3]:
            raise MQTTException(ack[3])
        return ack[2] & 1

    def _connect_pieces(self, clean_session):
        """CONNECT, cut where upstream's writes cut it: the fixed header with the high byte
        of the protocol name's length, the rest of the variable header (name, level 4,
        flags, keepalive), then each string: client id, will topic and message, user and
        password. A user always goes with a password field, so password=None fails with
        TypeError, as upstream (firmware/config.py supplies "" instead)."""
        strings = [self.client_id]
        flags = clean_session << 1
        if self.will:
            topic, wmsg, retain, qos = self.will
            strings += [topic, wmsg]
            flags |= 0x04 | qos << 3 | retain << 5
        if self.user:
            strings += [self.user, self.pswd]
            flags |= 0xC0
        assert self.keepalive < 0x10000
        size = 10
        for x in strings:
            size += 2 + len(x)
        pieces = [bytes([CONNECT]) + _remaining(size) + b"\0",
                  b"\x04MQTT" + bytes([4, flags]) + self.keepalive.to_bytes(2, "big")]
        for x in strings:
            pieces += _field(x)
        return pieces

    def _send(self, pieces):
        # The fixed header goes as write(buffer, length) from a scratch buffer, the rest
        # one write each: the calls a wrapper of .sock meets on a board.
        head = pieces[0]
        self._scratch[: len(head)] = head
        self.sock.write(self._scratch, len(head))
        for piece in pieces[1:]:
            self.sock.write(piece)

    def ping(self):
        self.sock.write(b"\xc0\0")

    def disconnect(self):
        self.sock.write(b"\xe0\0")
        simtcp.round_trips("mqtt_disconnect_rtts")  # 0 in the profile: nothing answers it
        self.sock.close()
        simlog.event("mqtt_disconnect", server=_text(self.server), port=self.port)

    def publish(self, topic, msg, retain=False, qos=0):
        # Write pattern kept from upstream's publish(): one PUBLISH goes out in
        # separate sock.write() calls -- fixed header, topic length, topic,
        # packet id (QoS 1 and 2), payload. On a board the first small write
        # leaves at once and Nagle's algorithm holds the rest until the broker
        # ACKs it, which its delayed ACK postpones: about 40 ms per QoS 1
        # publish (simtcp.py models it).
        size = 2 + len(topic) + len(msg) + (2 if qos else 0)
        assert size < 2097152
        pieces = [bytes([PUBLISH | qos << 1 | retain]) + _remaining(size)] + _field(topic)
        if qos:
            # Upstream counts packet ids up without wrapping; here they wrap at 65535.
            self.pid = self.pid % 0xFFFF + 1
            pid = self.pid.to_bytes(2, "big")
            pieces.append(pid)
        self._send(pieces + [msg])
        simlog.event("mqtt_publish", topic=_text(topic), len=len(msg), retain=bool(retain), qos=qos)
        if qos == 2:  # as upstream: the QoS 2 packet is sent, then publish() fails
            raise AssertionError("QoS 2 publish is not supported")
        while qos:
            # As upstream: QoS 1 returns once the PUBACK with its packet id came,
            # read the way upstream's wait_msg() reads (see _next_packet).
            if self._next_packet() == (PUBACK, pid):
                return

    def _next_packet(self):
        """Read one packet as (type byte, body)."""
        sock = self.sock
        first = sock.read(1)
        # As upstream's wait_msg(): after the first byte the socket is made
        # blocking, which drops the connect() timeout for the rest of the
        # session (firmware/mqtt.py's socket wrapper does not pass this on).
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
