# MQTT phase: one connection, the readings and the retained status, clean disconnect.
from umqtt.simple import MQTTClient

OFFLINE = b'{"state":"offline"}'
_CONNECT_TIMEOUT_S = 10


def _tls_context():
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # No CA bundle on the board: the link is encrypted but the server is not verified.
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def publish_all(cfg, client_id, status_topic, messages):
    """messages: [(topic bytes, payload bytes, retain)]. Raises OSError or MQTTException."""
    client = MQTTClient(
        client_id,
        cfg["host"],
        cfg["port"],
        cfg["user"],
        cfg["password"],
        cfg["keepalive"],
        ssl=_tls_context() if cfg["tls"] else None,
    )
    # The will fires only if the link dies mid-session; a clean disconnect suppresses it.
    client.set_last_will(status_topic, OFFLINE, retain=True)
    client.connect(timeout=_CONNECT_TIMEOUT_S)
    try:
        sent = 0
        for topic, payload, retain in messages:
            # QoS 1: publish() returns only once the broker acknowledged the message.
            client.publish(topic, payload, retain, 1)
            sent += len(payload)
        client.disconnect()
        return sent
    finally:
        try:
            client.sock.close()
        except Exception:
            pass
