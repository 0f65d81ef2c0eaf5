# Stand-in for micropython-lib umqtt.simple 1.8.0 (frozen into the ESP32
# firmware): a small MQTT 3.1.1 client over real sockets, with the same
# constructor, methods, attributes and quirks as the original:
#   - topics/messages are written as given and length-prefixed with len(),
#     so a non-ASCII str gets a wrong length: encode to bytes first;
#   - connect() resolves the server with getaddrinfo() every time and applies
#     sock.settimeout(timeout) to all later socket I/O;
#   - a refused CONNACK raises MQTTException(return code); socket problems are
#     OSError; EOF in wait_msg() is OSError(-1); publish(qos=2) sends the
#     packet and then fails with AssertionError.
# Simulation only: while the `network` stand-in is imported and the station
# has no IP, connect() fails with OSError(EHOSTUNREACH) as on a board without
# Wi-Fi. Events: mqtt_connect, mqtt_publish, mqtt_disconnect.

import socket
import struct
import sys

try:
    from simlog import event as _event
except ImportError:

    def _event(ev, **fields):
        pass


_EHOSTUNREACH = 113


class MQTTException(Exception):
    pass


def _remaining_length(n):
    # MQTT "remaining length": 7 bits per byte, high bit = more bytes follow.
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return out


def _text(s):
    if isinstance(s, (bytes, bytearray, memoryview)):
        try:
            return bytes(s).decode()
        except UnicodeError:
            return repr(bytes(s))
    return s


class MQTTClient:
    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=None,
        ssl_params={},
    ):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.sock = None
        self.server = server
        self.port = port
        self.ssl = ssl
        self.ssl_params = ssl_params
        self.pid = 0
        self.cb = None
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False

    # -- wire helpers --

    def _send_str(self, s):
        self.sock.write(struct.pack("!H", len(s)))
        self.sock.write(s)

    def _recv_len(self):
        n = 0
        shift = 0
        while True:
            b = self.sock.read(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def _next_pid(self):
        self.pid += 1
        return self.pid

    # -- API --

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2
        assert topic
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def connect(self, clean_session=True, timeout=None):
        try:
            present = self._connect(clean_session, timeout)
        except MQTTException as e:
            self._log_connect(False, "refused %s" % e.args[0])
            raise
        except Exception as e:
            self._log_connect(False, "%s: %s" % (type(e).__name__, e))
            raise
        self._log_connect(True, None)
        return present

    def _log_connect(self, ok, error):
        fields = {
            "server": _text(self.server),
            "port": self.port,
            "client_id": _text(self.client_id),
            "ok": ok,
        }
        if error:
            fields["error"] = error
        _event("mqtt_connect", **fields)

    def _connect(self, clean_session, timeout):
        if self.sock:
            self.sock.close()
        net = sys.modules.get("network")
        if net is not None and hasattr(net, "_sta_connected") and not net._sta_connected():
            raise OSError(_EHOSTUNREACH)
        self.sock = socket.socket()
        self.sock.settimeout(timeout)
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        self.sock.connect(addr)
        if self.ssl is True:
            import ssl

            self.sock = ssl.wrap_socket(self.sock, **self.ssl_params)
        elif self.ssl:
            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)

        # Variable header: protocol name, level 4 (3.1.1), flags, keepalive.
        flags = (1 if clean_session else 0) << 1
        size = 10 + 2 + len(self.client_id)
        if self.user:
            # Like the original: a user implies a password (len(None) fails).
            flags |= 0xC0
            size += 2 + len(self.user) + 2 + len(self.pswd)
        if self.keepalive:
            assert self.keepalive < 65536
        if self.lw_topic:
            flags |= 0x04 | (self.lw_qos & 0x3) << 3 | (1 if self.lw_retain else 0) << 5
            size += 2 + len(self.lw_topic) + 2 + len(self.lw_msg)
        head = bytearray(b"\x10")
        head += _remaining_length(size)
        head += b"\x00\x04MQTT\x04"
        head.append(flags)
        head += struct.pack("!H", self.keepalive & 0xFFFF)
        self.sock.write(head)
        self._send_str(self.client_id)
        if self.lw_topic:
            self._send_str(self.lw_topic)
            self._send_str(self.lw_msg)
        if self.user:
            self._send_str(self.user)
            self._send_str(self.pswd)
        resp = self.sock.read(4)
        # A short reply (connection closed) fails here with IndexError, as in
        # the original.
        assert resp[0] == 0x20 and resp[1] == 0x02
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self):
        self.sock.write(b"\xe0\x00")
        self.sock.close()
        _event("mqtt_disconnect", server=_text(self.server), port=self.port)

    def ping(self):
        self.sock.write(b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        size = 2 + len(topic) + len(msg)
        if qos > 0:
            size += 2
        assert size < 2097152
        head = bytearray()
        head.append(0x30 | qos << 1 | (1 if retain else 0))
        head += _remaining_length(size)
        self.sock.write(head)
        self._send_str(topic)
        pid = 0
        if qos > 0:
            pid = self._next_pid()
            self.sock.write(struct.pack("!H", pid))
        self.sock.write(msg)
        _event("mqtt_publish", topic=_text(topic), len=len(msg), retain=bool(retain), qos=qos)
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40:
                    n = self.sock.read(1)
                    assert n == b"\x02"
                    ack = self.sock.read(2)
                    if (ack[0] << 8 | ack[1]) == pid:
                        return
        elif qos == 2:
            assert 0

    def _sub_unsub(self, topic, packet_type, ack_type, ack_len, qos=0):
        pid = self._next_pid()
        size = 2 + 2 + len(topic) + (1 if ack_len > 3 else 0)
        head = bytearray()
        head.append(packet_type)
        head += _remaining_length(size)
        head += struct.pack("!H", pid)
        self.sock.write(head)
        self._send_str(topic)
        if ack_len > 3:
            self.sock.write(bytes((qos,)))
        while True:
            op = self.wait_msg()
            if op == ack_type:
                resp = self.sock.read(ack_len)
                assert (resp[1] << 8 | resp[2]) == pid
                if ack_len > 3 and resp[3] == 0x80:
                    raise MQTTException(resp[3])
                return

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        self._sub_unsub(topic, 0x82, 0x90, 4, qos)

    def unsubscribe(self, topic):
        self._sub_unsub(topic, 0xA2, 0xB0, 3)

    def wait_msg(self):
        """Read one packet; deliver PUBLISH to the callback, return its type byte."""
        first = self.sock.read(1)
        self.sock.setblocking(True)
        if first is None:
            return None
        if first == b"":
            raise OSError(-1)
        if first == b"\xd0":  # PINGRESP
            n = self.sock.read(1)[0]
            assert n == 0
            return None
        op = first[0]
        if op & 0xF0 != 0x30:
            return op  # the caller reads the rest of the packet
        size = self._recv_len()
        tl = self.sock.read(2)
        tl = tl[0] << 8 | tl[1]
        topic = self.sock.read(tl)
        size -= tl + 2
        pid = 0
        if op & 6:
            p = self.sock.read(2)
            pid = p[0] << 8 | p[1]
            size -= 2
        msg = self.sock.read(size)
        self.cb(topic, msg)
        if op & 6 == 2:
            self.sock.write(b"\x40\x02" + struct.pack("!H", pid))
        elif op & 6 == 4:
            assert 0
        return op

    def check_msg(self):
        self.sock.setblocking(False)
        return self.wait_msg()
