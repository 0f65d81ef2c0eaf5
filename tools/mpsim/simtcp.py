# Simulated TCP timing for the MicroPython stand-ins: a socket wrapper that waits what the
# latency profile (simlog.figure) says a board's TCP connection would, while the bytes go to a
# real peer over the host's loopback. umqtt/simple.py wraps its socket in SimSocket, so the
# object at MQTTClient.sock is this wrapper (firmware may wrap it again).
#
# What is modelled (figures from tools/jbdgw/profiles, the same arithmetic as
# tools/jbdgw/model.py: _mqtt and publish_ms):
# - connect(): tcp_connect_rtts x lan_rtt_ms (SYN / SYN-ACK, RFC 9293 3.5), before the real
#   connect, so a refused port also costs the round trip.
# - Writes cost nothing when made: they are counted (non-empty ones, "pieces") until a read
#   waits for the peer's answer. That read costs one lan_rtt_ms, plus delayed_ack_ms when the
#   request went out in 2 or more pieces, TCP_NODELAY is off and the peer has answered once
#   before on this connection. Why: on the board lwIP's Nagle test (tcp_do_output_nagle,
#   lwip src/include/lwip/priv/tcp_priv.h) sends the first small piece at once and holds the
#   rest while it is unacknowledged; Linux (the broker) delays that ACK by its delayed-ACK
#   timer, TCP_DELACK_MIN = HZ/25 = 40 ms (include/net/tcp.h). Not before the peer's first
#   answer: Linux starts every connection in quick-ACK mode (net/ipv4/tcp_input.c
#   tcp_event_data_recv(): "The _first_ data packet received, initialize delayed ACK engine",
#   tcp_incr_quickack(sk, TCP_MAX_QUICKACKS)) and ACKs at once while not in "pingpong"
#   (interactive) mode (tcp_in_quickack_mode(): quick && !pingpong); it enters pingpong mode
#   when it sends data within its ACK timeout of receiving some (tcp_output.c
#   tcp_event_data_sent(); threshold 1 since torvalds/linux@4d8f24eeedc5 "Revert tcp: change
#   pingpong threshold to 3", 2022). So a CONNECT written in pieces is quick-ACKed (no
#   stall), the CONNACK puts the broker into pingpong mode, and every later packet written in
#   pieces waits for a delayed ACK; a delayed ACK that fires leaves pingpong mode
#   (tcp_delack_timer_handler), but the next reply re-enters it, so each such packet stalls.
#   Left out, as in model.publish_ms: the held pieces also wait for the ACK's flight back
#   (part of a round trip; lan_rtt_ms is itself an upper figure that includes umqtt's CPU
#   time), and the quick ACK's flight for a CONNECT in pieces.
# - setsockopt(IPPROTO_TCP, TCP_NODELAY, 1) turns the stall off, as on the board: the ESP32
#   port's socket.setsockopt has TCP_NODELAY since MicroPython v1.23.0
#   (micropython/micropython@a196468c47, ports/esp32/modsocket.c socket_setsockopt(), which
#   switches on the option alone and ignores the level; here it must come with IPPROTO_TCP).
#   The option is also set on the real socket (Linux uses the same numbers: IPPROTO_TCP 6, TCP_NODELAY 1). The unix port's
#   `socket` module has neither constant; use the numbers.
# - Reads that do not wait for an answer (the rest of a packet, or a second packet already
#   there) cost nothing.
# Events (simlog): tcp with op "connect" (wait_ms), "reply" (writes: the pieces of the
# request, bytes, nodelay, stall_ms, wait_ms: simulated ms) and "close" (writes still
# unanswered). Without a profile every figure is 0: nothing waits, events are still written.

import io
import time

import simlog

IPPROTO_TCP = 6
TCP_NODELAY = 1


def wait(ms):
    """Wait `ms` simulated milliseconds (scaled by the profile's time_scale)."""
    real = simlog.delay_ms(ms)
    if real > 0:
        time.sleep_ms(real)


def round_trips(key):
    """Wait the profile's `key` (a count of round trips) x lan_rtt_ms; returns the ms."""
    ms = simlog.figure(key, 0) * simlog.figure("lan_rtt_ms", 0)
    wait(ms)
    return ms


class SimSocket(io.IOBase):
    """A socket whose connect and awaited reads take the profile's time (see above). An
    io.IOBase, so that ssl can wrap it as a stream; what it does not define goes to the real
    socket."""

    def __init__(self, sock):
        self._s = sock
        self._pieces = 0  # non-empty writes since the last awaited answer
        self._bytes = 0
        self._answers = 0  # answers the peer has sent: after the first it delays its ACKs
        self._nodelay = False

    def __getattr__(self, name):
        return getattr(self._s, name)

    def connect(self, addr):
        ms = round_trips("tcp_connect_rtts")
        simlog.event("tcp", op="connect", wait_ms=ms)
        return self._s.connect(addr)

    def setsockopt(self, level, opt, value):
        if level == IPPROTO_TCP and opt == TCP_NODELAY:
            self._nodelay = bool(value)
        return self._s.setsockopt(level, opt, value)

    # -- writes: counted, free until the answer is awaited --

    def _sent(self, data, n=None):
        size = len(data) if n is None else min(n, len(data))
        if size:
            self._pieces += 1
            self._bytes += size
        return size

    def write(self, buf, n=None):
        # write(buf, n) sends the first n bytes, as on MicroPython's streams (upstream umqtt
        # writes its fixed headers that way).
        if n is not None:
            buf = memoryview(buf)[:n]
        self._sent(buf)
        return self._s.write(buf)

    def send(self, buf):
        self._sent(buf)
        return self._s.send(buf)

    def sendall(self, buf):
        self._sent(buf)
        return self._s.sendall(buf)

    # -- reads: the first after writes waits for the answer --

    def _await(self):
        if not self._pieces:
            return
        rtt = simlog.figure("lan_rtt_ms", 0)
        stall = 0
        if self._pieces > 1 and self._answers and not self._nodelay:
            stall = simlog.figure("delayed_ack_ms", 0)
        wait(rtt + stall)
        simlog.event("tcp", op="reply", writes=self._pieces, bytes=self._bytes, nodelay=self._nodelay,
                     stall_ms=stall, wait_ms=rtt + stall)
        self._pieces = 0
        self._bytes = 0
        self._answers += 1

    def read(self, n=-1):
        self._await()
        return self._s.read(n)

    def readinto(self, buf, n=None):
        self._await()
        return self._s.readinto(buf) if n is None else self._s.readinto(buf, n)

    def readline(self):
        self._await()
        return self._s.readline()

    def recv(self, n):
        self._await()
        return self._s.recv(n)

    def settimeout(self, t):
        return self._s.settimeout(t)

    def setblocking(self, flag):
        return self._s.setblocking(flag)

    def close(self):
        if self._pieces:
            simlog.event("tcp", op="close", writes=self._pieces, bytes=self._bytes)
            self._pieces = 0
            self._bytes = 0
        return self._s.close()
