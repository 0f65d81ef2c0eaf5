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
import struct
import sys

import simlog
import simtcp

# Packet types (first byte, flags clear).
CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, DISCONNECT = 0x10, 0x20, 0x30, 0x40, 0xC0, 0xE0


class MQTTException(Exception):
    """The broker refused the login; args[0] is the CONNACK return code."""


def _encode_len(pkt, sz):
    """MQTT's remaining length into pkt[1:], 7 bits a byte, low bits first; returns the
    index of its last byte (as upstream's _encode_len)."""
    i = 1
    while sz > 0x7F:
        pkt[i] = (sz & 0x7F) | 0x80
        sz >>= 7
        i += 1
    pkt[i] = sz
    return i


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
        raw = self.sock = simtcp.SimSocket(socket.socket())
        raw.settimeout(timeout)
        raw.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        if self.ssl is True:
            import ssl  # the module; the argument is self.ssl
            self.sock = ssl.wrap_socket(raw, **self.ssl_params)
        elif self.ssl:
            self.sock = self.ssl.wrap_socket(raw, server_hostname=self.server)
        # As upstream: a 6-byte fixed-header buffer of which the remaining length and one
        # byte more (the high byte of the protocol name's length) go in the first write,
        # then the rest of the variable header, then each string as length and bytes.
        premsg = bytearray(b"\x10\0\0\0\0\0")
        msg = bytearray(b"\x04MQTT\x04\x02\0\0")
        sz = 10 + 2 + len(self.client_id)
        msg[6] = clean_session << 1
        if self.user:
            # As upstream: a user always goes with a password field, so password=None
            # fails here with TypeError (firmware/config.py supplies "" instead).
            sz += 2 + len(self.user) + 2 + len(self.pswd)
            msg[6] |= 0xC0
        if self.keepalive:
            assert self.keepalive < 65536
            msg[7] |= self.keepalive >> 8
            msg[8] |= self.keepalive & 0x00FF
        if self.will:
            topic, wmsg, retain, qos = self.will
            sz += 2 + len(topic) + 2 + len(wmsg)
            msg[6] |= 0x4 | (qos & 0x1) << 3 | (qos & 0x2) << 3
            msg[6] |= retain << 5
        i = _encode_len(premsg, sz)
        self.sock.write(premsg, i + 2)
        self.sock.write(msg)
        self._send_str(self.client_id)
        if self.will:
            self._send_str(topic)
            self._send_str(wmsg)
        if self.user:
            self._send_str(self.user)
            self._send_str(self.pswd)
        # As upstream: the CONNACK is read as exactly four bytes, so a closed
        # link fails with IndexError, a foreign reply with AssertionError, and a
        # refusal raises MQTTException with the broker's return code.
        ack = self.sock.read(4)
        assert ack[0] == CONNACK and ack[1] == 2
        if ack[3]:
            raise MQTTException(ack[3])
        return ack[2] & 1

    def _send_str(self, s):
        # Upstream writes the object as given behind a prefix of len(s): for a
        # str that counts characters, not UTF-8 bytes, so non-ASCII text gets a
        # wrong length (firmware/mqtt.py encodes to bytes first).
        self.sock.write(struct.pack("!H", len(s)))
        self.sock.write(s)

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
        pkt = bytearray(b"\x30\0\0\0")
        pkt[0] |= qos << 1 | retain
        sz = 2 + len(topic) + len(msg)
        if qos > 0:
            sz += 2
        assert sz < 2097152
        i = _encode_len(pkt, sz)
        self.sock.write(pkt, i + 1)
        self._send_str(topic)
        if qos > 0:
            # Upstream counts packet ids up without wrapping; here they wrap at 65535.
            self.pid = self.pid % 0xFFFF + 1
            pid = self.pid
            struct.pack_into("!H", pkt, 0, pid)  # as upstream: the header's buffer, reused
            self.sock.write(pkt, 2)
        self.sock.write(msg)
        simlog.event("mqtt_publish", topic=_text(topic), len=len(msg), retain=bool(retain), qos=qos)
        if qos == 2:  # as upstream: the QoS 2 packet is sent, then publish() fails
            raise AssertionError("QoS 2 publish is not supported")
        while qos:
            # As upstream: QoS 1 returns once the PUBACK with its packet id came,
            # read the way upstream's wait_msg() reads (see _next_packet).
            if self._next_packet() == (PUBACK, struct.pack("!H", pid)):
                return

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
