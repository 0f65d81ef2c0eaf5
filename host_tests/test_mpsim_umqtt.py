"""Tests for the umqtt.simple stand-in (tools/mpsim/umqtt/simple.py) without a broker.

Each test runs a short script on the MicroPython unix port with
MICROPYPATH=tools/mpsim:.frozen. The script swaps the module's `socket` for a
fake whose sockets answer with scripted bytes and record every call, so the
tests can check the wire bytes, how many sock.write() calls each packet takes,
the timeout handling and the errors. The client's .sock is the simtcp.SimSocket
around the fake (`net.last`); with a profile ($JBDGW_SIM_PROFILE) it logs the
simulated TCP waits as "tcp" events. test_sim_driver.py covers the same client
against a real broker, test_mpsim_net_latency.py the waits in real time.
"""

import json
import os
import subprocess
import textwrap
from pathlib import Path

from conftest import micropython_bin

ROOT = Path(__file__).resolve().parents[1]
MPSIM = ROOT / "tools" / "mpsim"

PRELUDE = textwrap.dedent(
    """
    import json, sys
    import umqtt.simple as simple
    from umqtt.simple import MQTTClient, MQTTException

    calls = []

    class FakeSock:
        def __init__(self, replies):
            self.replies = bytearray(replies)
        def settimeout(self, t):
            calls.append(["settimeout", t])
        def setblocking(self, flag):
            calls.append(["setblocking", flag])
        def connect(self, addr):
            calls.append(["connect", list(addr)])
        def write(self, data):
            calls.append(["write", (data.encode() if isinstance(data, str) else bytes(data)).hex()])
        def read(self, n):
            got = bytes(self.replies[:n])
            self.replies = self.replies[n:]
            return got
        def close(self):
            calls.append(["close"])
        def setsockopt(self, level, opt, value):
            calls.append(["setsockopt", level, opt, value])

    class FakeSocketModule:
        replies = b""
        last = None
        def socket(self):
            calls.append(["socket"])
            self.last = FakeSock(self.replies)
            return self.last
        def getaddrinfo(self, host, port):
            calls.append(["getaddrinfo", host, port])
            return [(2, 1, 0, "", (host, port))]

    net = FakeSocketModule()
    simple.socket = net
    CONNACK = b"\\x20\\x02\\x00\\x00"
    out = {}

    def fails(f, *args, **kw):
        try:
            f(*args, **kw)
        except Exception as e:
            return [type(e).__name__] + list(e.args)
        return None
    """
)


def run_mp(tmp_path, body, profile=None):
    """Run PRELUDE + body (with `profile` as the flat latency profile, if given); returns
    (out dict, calls list, events list)."""
    script = tmp_path / "t.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint('RESULT ' + json.dumps([out, calls]))\n")
    env = dict(os.environ, MICROPYPATH=str(MPSIM) + ":.frozen", JBDGW_SIM_DIR=str(tmp_path))
    if profile is not None:
        (tmp_path / "profile.json").write_text(json.dumps(profile))
        env["JBDGW_SIM_PROFILE"] = str(tmp_path / "profile.json")
    proc = subprocess.run([micropython_bin(), str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out, calls = json.loads(line[len("RESULT ") :])
    ev_file = tmp_path / "events.jsonl"
    events = [json.loads(x) for x in ev_file.read_text().splitlines()] if ev_file.exists() else []
    return out, calls, events


def writes(calls):
    return [bytes.fromhex(c[1]) for c in calls if c[0] == "write"]


def test_qos1_publish_waits_for_its_puback_and_is_written_in_five_parts(tmp_path):
    body = """
        # CONNACK (session present), a PUBACK for another id, then ours (id 1).
        net.replies = b"\\x20\\x02\\x01\\x00" + b"\\x40\\x02\\x00\\x07" + b"\\x40\\x02\\x00\\x01"
        c = MQTTClient(b"gw", "broker.local", 1883, keepalive=60)
        out["present"] = c.connect(timeout=10)
        calls.append(["mark"])
        c.sock.settimeout(10)
        c.publish(b"bms/a", b"{}", True, 1)
        out["left"] = len(net.last.replies)
    """
    out, calls, events = run_mp(tmp_path, body)
    assert out == {"present": 1, "left": 0}
    i = calls.index(["mark"])
    before, after = calls[:i], calls[i + 1 :]
    assert before[:4] == [["socket"], ["settimeout", 10], ["getaddrinfo", "broker.local", 1883],
                          ["connect", ["broker.local", 1883]]]
    # One PUBLISH: fixed header, topic length, topic, packet id, payload -- five writes.
    assert writes(after) == [b"\x33\x0b", b"\x00\x05", b"bms/a", b"\x00\x01", b"{}"]
    # Reading the first reply byte makes the socket blocking (twice: two PUBACKs read).
    assert [c for c in after if c[0] != "write"] == [["settimeout", 10], ["setblocking", True], ["setblocking", True]]
    pub = [e for e in events if e["ev"] == "mqtt_publish"]
    assert [dict(pub[0], ms=0)] == [{"ev": "mqtt_publish", "ms": 0, "topic": "bms/a", "len": 2, "retain": True, "qos": 1}]


def test_connect_packet_carries_will_credentials_and_keepalive(tmp_path):
    body = """
        net.replies = CONNACK
        c = MQTTClient("gw", "h", user=b"u", password=b"pw", keepalive=300)
        c.set_last_will(b"st", b"off", retain=True, qos=1)
        out["present"] = c.connect(clean_session=False)
        out["port"] = c.port
    """
    out, calls, events = run_mp(tmp_path, body)
    assert out == {"present": 0, "port": 1883}
    w = writes(calls)
    # As upstream: type, remaining length and the protocol name length's high byte, then the
    # rest of the variable header, then each string as length and bytes.
    assert w[:2] == [b"\x10\x1e\x00", b"\x04MQTT\x04" + bytes([0xC0 | 0x20 | 0x08 | 0x04]) + b"\x01\x2c"]
    assert w[2:] == [b"\x00\x02", b"gw", b"\x00\x02", b"st", b"\x00\x03", b"off",
                     b"\x00\x01", b"u", b"\x00\x02", b"pw"]
    assert w[0][1] == sum(map(len, w)) - 2  # remaining length
    assert ["settimeout", None] in calls
    [ev] = [e for e in events if e["ev"] == "mqtt_connect"]
    assert (ev["ok"], ev["server"], ev["port"], ev["client_id"]) == (True, "h", 1883, "gw")


def test_refused_login_missing_password_and_short_connack(tmp_path):
    body = """
        net.replies = b"\\x20\\x02\\x00\\x05"
        out["refused"] = fails(MQTTClient("gw", "h", user="u", password="p").connect)
        out["no_password"] = fails(MQTTClient("gw", "h", user="u").connect)
        net.replies = b"\\x20"
        out["short"] = fails(MQTTClient("gw", "h").connect)
    """
    out, _, events = run_mp(tmp_path, body)
    assert out["refused"] == ["MQTTException", 5]
    assert out["no_password"][0] == "TypeError"  # len(None): a user needs a password
    assert out["short"][0] == "IndexError"  # the link closed before a full CONNACK
    evs = [e for e in events if e["ev"] == "mqtt_connect"]
    assert [e["ok"] for e in evs] == [False] * 3 and evs[0]["error"] == "refused 5"
    assert evs[1]["error"].startswith("TypeError")


def test_no_wifi_is_ehostunreach_before_any_socket(tmp_path):
    body = """
        class Net:
            up = False
            def _sta_connected(self):
                return self.up
        sys.modules["network"] = Net()
        c = MQTTClient("gw", "h")
        out["down"] = fails(c.connect)
        sys.modules["network"].up = True
        net.replies = CONNACK
        out["up"] = fails(c.connect)
    """
    out, calls, _ = run_mp(tmp_path, body)
    assert out == {"down": ["OSError", 113], "up": None}
    assert calls.count(["socket"]) == 1


def test_quirks_str_length_qos2_eof_and_unsolicited_publish(tmp_path):
    body = """
        net.replies = CONNACK
        c = MQTTClient("gw", "h")
        c.connect()
        calls.append(["mark"])
        c.publish("t", "é")  # len("é") == 1, but two bytes go out
        net.last.replies = b"\\x50\\x02\\x00\\x01"  # a PUBREC, never read
        out["qos2"] = fails(c.publish, b"t", b"x", qos=2)
        out["eof"] = fails(c.publish, b"t", b"x", qos=1)
        net.last.replies = b"\\x30\\x03\\x00\\x01t"
        out["unsolicited"] = fails(c.publish, b"t", b"x", qos=1)
        calls.append(["mark"])
        c.ping()
        c.publish(b"big", bytes(200))
        c.disconnect()
    """
    out, calls, events = run_mp(tmp_path, body)
    assert out["qos2"][0] == "AssertionError"
    assert out["eof"] == ["OSError", -1]
    assert out["unsolicited"][0] == "TypeError"
    i = calls.index(["mark"])
    j = calls.index(["mark"], i + 1)
    w = writes(calls[i + 1 : j])
    assert w[:4] == [b"\x30\x04", b"\x00\x01", b"t", "é".encode()]
    assert w[4:9] == [b"\x34\x06", b"\x00\x01", b"t", b"\x00\x01", b"x"]  # QoS 2 sent, then the error
    w = writes(calls[j + 1 :])
    assert w == [b"\xc0\x00", b"\x30\xcd\x01", b"\x00\x03", b"big", bytes(200), b"\xe0\x00"]
    assert calls[-1] == ["close"]
    assert [e["ev"] for e in events][-1] == "mqtt_disconnect"


#: What firmware may put around .sock (MicroPython source): the pieces of a packet go out in
#: one write when the answer is read.
ONE_WRITE = textwrap.dedent(
    """
    class OneWrite:
        def __init__(self, sock):
            self.sock, self.buf = sock, bytearray()
        def write(self, b, n=None):
            self.buf.extend(b if n is None else b[:n])
        def read(self, n):
            if self.buf:
                self.sock.write(self.buf)
                self.buf = bytearray()
            return self.sock.read(n)
        def setblocking(self, flag):
            self.sock.setblocking(flag)
    """
)

#: A latency profile in the driver's flat format; time_scale 0: the waits are logged, not slept.
PROFILE = {"lan_rtt_ms": 20, "delayed_ack_ms": 40, "tcp_connect_rtts": 1, "mqtt_disconnect_rtts": 0,
           "time_scale": 0}


def test_tcp_waits_nagle_stall_after_the_brokers_first_answer(tmp_path):
    body = """
        net.replies = CONNACK + b"\\x40\\x02\\x00\\x01" + b"\\x40\\x02\\x00\\x02" + b"\\x40\\x02\\x00\\x03"
        c = MQTTClient(b"gw", "h", keepalive=60)
        c.connect()
        c.publish(b"t", b"a", qos=1)

        inner = c.sock
        c.sock = OneWrite(inner)
        c.publish(b"t", b"b", qos=1)
        c.sock = inner
        inner.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (lwIP's and Linux's numbers)
        c.publish(b"t", b"c", qos=1)
        c.publish(b"t", b"d")  # QoS 0: nothing awaits an answer
        c.disconnect()
    """
    _, calls, events = run_mp(tmp_path, ONE_WRITE + textwrap.dedent(body), PROFILE)
    tcp = [{k: v for k, v in e.items() if k not in ("ev", "ms", "bytes")} for e in events if e["ev"] == "tcp"]
    assert tcp == [
        {"op": "connect", "wait_ms": 20},
        # CONNECT in 4 pieces: the broker is still in quick-ACK mode, no stall
        {"op": "reply", "writes": 4, "nodelay": False, "stall_ms": 0, "wait_ms": 20},
        # a PUBLISH in 5 pieces after the CONNACK: Nagle waits for the delayed ACK
        {"op": "reply", "writes": 5, "nodelay": False, "stall_ms": 40, "wait_ms": 60},
        {"op": "reply", "writes": 1, "nodelay": False, "stall_ms": 0, "wait_ms": 20},  # one write
        {"op": "reply", "writes": 5, "nodelay": True, "stall_ms": 0, "wait_ms": 20},  # TCP_NODELAY
        {"op": "close", "writes": 5},  # the QoS 0 PUBLISH (4) and DISCONNECT (1), unanswered
    ]
    assert ["setsockopt", 6, 1, 1] in calls
    # The coalesced PUBLISH carries the same bytes as the pieces would have.
    assert bytes.fromhex("3206000174000262") in writes(calls)
