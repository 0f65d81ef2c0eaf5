"""A throw-away local MQTT broker for simulations and tests, and a collecting subscriber.

`start_broker()` runs mosquitto when it is installed (CI installs it with apt) and
otherwise amqtt from the same Python environment, on a free 127.0.0.1 port, and
returns once the broker answers a real MQTT CONNECT. Use it as a context manager
so that the process and its temporary files are always cleaned up::

    with start_broker() as broker, Subscriber(broker.host, broker.port, ["solar/#"]) as sub:
        ...
        messages = sub.wait_for(1, timeout=5)
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mqtt_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if an MQTT CONNECT to host:port is accepted (checked with paho)."""
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):  # noqa: ARG001
        if not reason_code.is_failure:
            connected.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"jbdgw-probe-{os.getpid()}")
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + timeout
        while not connected.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if connected.is_set():
            client.disconnect()
        return connected.is_set()
    finally:
        sock = client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class Broker:
    """A running broker process. `.host`, `.port`, `.kind` ("mosquitto" or "amqtt")."""

    def __init__(self, kind: str, host: str, port: int, proc: subprocess.Popen, tmpdir: Path) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self._proc = proc
        self._tmpdir = tmpdir

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._tmpdir / "broker.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        """Stop the process (TERM, then KILL after 5 s) and remove the temp files."""
        proc = self._proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Broker({self.kind!r}, {self.address})"


def _mosquitto_cmd(exe: str, tmp: Path, port: int) -> list[str]:
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n",
        encoding="utf-8",
    )
    return [exe, "-c", str(conf)]


def _amqtt_cmd(tmp: Path, port: int) -> list[str]:
    conf = tmp / "amqtt.yaml"
    conf.write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n",
        encoding="utf-8",
    )
    # Not amqtt's own script: _serve_amqtt() below fixes a retained-message bug first.
    return [sys.executable, "-m", "jbdgw.broker", "--serve-amqtt", str(conf)]


def start_broker(kind: str = "auto", timeout_s: float = 20.0) -> Broker:
    """Start a broker on a free 127.0.0.1 port and wait until it accepts MQTT.

    kind: "auto" (the JBDGW_BROKER environment variable, else mosquitto if installed, else
    amqtt), "mosquitto" or "amqtt".
    Raises BrokerError when it does not come up within `timeout_s`.
    """
    # Debian installs it in /usr/sbin, which is not on every PATH.
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if kind == "auto":
        # JBDGW_BROKER=amqtt runs the fallback even where mosquitto is installed.
        kind = os.environ.get("JBDGW_BROKER") or ("mosquitto" if mosquitto else "amqtt")
    if kind == "mosquitto" and not mosquitto:
        raise BrokerError("mosquitto is not installed (apt install mosquitto), or use kind='amqtt'")
    if kind not in ("mosquitto", "amqtt"):
        raise ValueError(f"unknown broker kind {kind!r}")

    tmp = Path(tempfile.mkdtemp(prefix=f"jbdgw-{kind}-"))
    host = "127.0.0.1"
    port = free_port(host)
    cmd = _mosquitto_cmd(mosquitto, tmp, port) if kind == "mosquitto" else _amqtt_cmd(tmp, port)
    env = dict(os.environ)
    tools = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = tools + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else tools
    log.debug("starting %s: %s", kind, " ".join(cmd))
    try:
        logf = open(tmp / "broker.log", "wb")  # noqa: SIM115 - the child keeps it open
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        logf.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(f"cannot run {cmd[0]}: {exc}") from exc
    finally:
        logf.close()  # the child has its own descriptor

    broker = Broker(kind, host, port, proc, tmp)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = broker.log_tail()
            broker.stop()
            raise BrokerError(f"{kind} exited with status {proc.returncode}:\n{tail}")
        if mqtt_ready(host, port, timeout=1.0):
            log.debug("%r is up", broker)
            return broker
        time.sleep(0.1)
    tail = broker.log_tail()
    broker.stop()
    raise BrokerError(f"{kind} did not accept MQTT connections on {host}:{port} within {timeout_s:g} s:\n{tail}")


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """Subscribe to topics (paho-mqtt 2.x) and collect the messages in a thread-safe list.

    `on_message(msg)` is called from paho's network thread for every message.
    `start()` returns once the broker has acknowledged the subscriptions.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Iterable[str],
        on_message: Callable[[Message], None] | None = None,
        client_id: str | None = None,
        qos: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.topics = list(topics)
        self.qos = qos
        self._callback = on_message
        self._messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"jbdgw-sub-{os.getpid()}-{id(self):x}",
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):  # noqa: ARG002
        if reason_code.is_failure:
            log.warning("subscriber: connect refused: %s", reason_code)
            return
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):  # noqa: ARG002
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):  # noqa: ARG002
        if not any(mqtt.topic_matches_sub(f, msg.topic) for f in self.topics):
            # amqtt 0.12 sends a new client the retained messages of *every*
            # client's subscriptions; drop what this subscriber did not ask for.
            log.debug("subscriber: ignoring unsolicited message on %s", msg.topic)
            return
        m = Message(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._cond:
            self._messages.append(m)
            self._cond.notify_all()
        if self._callback is not None:
            try:
                self._callback(m)
            except Exception:  # a bad callback must not kill paho's thread
                log.exception("subscriber callback failed")

    def start(self, timeout: float = 10.0) -> Subscriber:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._started = True
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from {self.host}:{self.port} within {timeout:g} s")
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._client.disconnect()
            finally:
                self._client.loop_stop()

    @property
    def messages(self) -> list[Message]:
        """A copy of the messages received so far."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Message]:
        """Wait until at least `n` messages have arrived (or `timeout` s); return all so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self._messages)

    def __enter__(self) -> Subscriber:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_amqtt(config_path: str) -> int:
    """Run amqtt in this process (the child started by start_broker).

    amqtt 0.12.1 sends every newly connected client the retained messages that
    match *any* client's subscriptions (Broker.client_connected loops over all
    subscription filters), so a publish-only umqtt client receives PUBLISH
    packets it never asked for, and a QoS 1 publish then fails in wait_msg()
    with no callback set. Mosquitto does not do that; this patch restricts the
    retained delivery to filters the session itself subscribed to.
    """
    import asyncio

    from amqtt.broker import Broker as AmqttBroker
    from amqtt.utils import read_yaml_config

    original = AmqttBroker._publish_retained_messages_for_subscription

    async def only_own(self, subscription, session):  # type: ignore[no-untyped-def]
        subs = self._subscriptions.get(subscription[0], [])
        if any(s.client_id == session.client_id for s, _ in subs):
            await original(self, subscription, session)

    AmqttBroker._publish_retained_messages_for_subscription = only_own

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    config = read_yaml_config(config_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    broker = AmqttBroker(config, loop=loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def main() -> None:
        await broker.start()
        await stop.wait()
        await broker.shutdown()

    loop.run_until_complete(main())
    loop.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-amqtt":
        sys.exit(_serve_amqtt(sys.argv[2]))
    print("usage: python -m jbdgw.broker --serve-amqtt CONFIG.yaml", file=sys.stderr)
    sys.exit(2)
