"""The simulated radio (tools/mpsim/bluetooth.py) obeys the latency profile: connection
interval requested vs NimBLE's default, a dongle that refuses the short interval, ATT round
trips per connection interval, the BMS's reply time (UART + processing + half an interval
each way), discovery events, advertising, and a module with another GATT table (stale
cached handles).

Each test writes a profile file (esp32-typical's figures, flat, as the driver writes it),
runs a short script on the MicroPython unix port against one virtual BMS, and checks the
logged events and generous time ranges: the model's time at least (less 10 % and the
rounding of a sleep to whole ms), well below three times it (the machine may be loaded).
"""

from __future__ import annotations

import json
import textwrap

from conftest import run_script

from jbdgw.model import load_profile
from test_mpsim_aioble import ADDR
from test_mpsim_aioble import PRELUDE as AIOBLE_PRELUDE

FIGURES = load_profile("esp32-typical").values()
REPLY03_BYTES = 34  # the default battery: 4 cells, 2 NTCs (vbms.DEFAULT_BATTERY)
REPLY04_BYTES = 15

# test_mpsim_aioble's helpers, and:
PRELUDE = AIOBLE_PRELUDE + textwrap.dedent(
    """
    class Radio:
        # The raw events a firmware that caches handles uses: the link's handle, write
        # statuses, every notification.
        def __init__(self):
            self.conn = None
            self.status = None
            self.written = asyncio.ThreadSafeFlag()
            self.got = []
            self.chars = []
            aioble.core.register_irq_handler(self.irq, None)

        def irq(self, event, data):
            if event == 7:  # _IRQ_PERIPHERAL_CONNECT
                self.conn = data[0]
            elif event == 11:  # _IRQ_GATTC_CHARACTERISTIC_RESULT: value handles
                self.chars.append(data[2])
            elif event == 17:  # _IRQ_GATTC_WRITE_DONE
                self.status = data[2]
                self.written.set()
            elif event == 18:  # _IRQ_GATTC_NOTIFY
                self.got.append(bytes(data[2]))

        async def write_cccd(self, handle):
            self.status = None
            aioble.core.ble.gattc_write(self.conn, handle, b"\\x01\\x00", 1)
            while self.status is None:
                await self.written.wait()
            return self.status

    async def connect(interval_us=None):
        dev = aioble.Device(aioble.ADDR_PUBLIC, %r)
        return await dev.connect(timeout_ms=3000, scan_duration_ms=2500,
                                 min_conn_interval_us=interval_us, max_conn_interval_us=interval_us)

    async def subscribed():
        # Connected at 15 ms, discovered, subscribed: (connection, write characteristic).
        conn = await connect(15000)
        svc = await conn.service(bluetooth.UUID(0xFF00))
        ntf = wr = None
        async for c in svc.characteristics():
            if c.uuid == bluetooth.UUID(0xFF01):
                ntf = c
            elif c.uuid == bluetooth.UUID(0xFF02):
                wr = c
        await ntf.subscribe()
        return conn, wr
    """
    % ADDR
)


def device(**kw) -> dict:
    d = {"name": "Cabin 580ah", "address": ADDR, "addr_type": 0, "rssi": -62}
    d.update(kw)
    return d


def run(tmp_path, body: str, devices: list, time_scale: float = 1.0, seed=None, **figures):
    """Runs `body` (defining `async def main()` that calls result(...)) under esp32-typical
    changed by `figures`, in the folder `tmp_path` (made if new); returns (result dict,
    events, the figures used)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    prof = dict(FIGURES, time_scale=time_scale, **figures)
    (tmp_path / "profile.json").write_text(json.dumps(prof))
    scen = {"devices": devices}
    if seed is not None:
        scen["seed"] = seed
    (tmp_path / "scenario.json").write_text(json.dumps(scen))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (tmp_path / "script.py").write_text(PRELUDE + textwrap.dedent(body) + "\nasyncio.run(main())\n")
    env = {"JBDGW_SIM_PROFILE": str(tmp_path / "profile.json"), "JBDGW_SIM_SCENARIO": str(tmp_path / "scenario.json"),
           "JBDGW_SIM_DIR": str(state)}
    proc = run_script("micropython", tmp_path / "script.py", cwd=tmp_path, env=env, mpsim=True)
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, proc.stdout + proc.stderr
    ev_file = state / "events.jsonl"
    events = [json.loads(line) for line in ev_file.read_text().splitlines()] if ev_file.exists() else []
    return results[-1], events, prof


def within(measured: float, model_ms: float, scale: float = 1.0) -> bool:
    """`measured` real ms is the model's `model_ms` simulated ms at `scale`: not shorter
    (less 10 % and 1 ms of rounding per sleep), not absurdly longer."""
    real = model_ms * scale
    return real * 0.9 - 2 <= measured < real * 3 + 50


def reply_model(p: dict, interval: float, reply_bytes: int, request_bytes: int = 7) -> float:
    """model.exchange_step's arithmetic, written out again."""
    uart = (request_bytes + reply_bytes) * p["uart_frame_bits"] * 1000 / p["bms_uart_baud"]
    return interval / 2 + uart + p["bms_processing_ms"] + interval / 2


DISCOVER = """
async def main():
    radio = Radio()
    out = {}
    for name, us in (("short", 15000), ("none", None)):
        t0 = time.ticks_ms()
        conn = await connect(us)
        t1 = time.ticks_ms()
        svc = await conn.service(bluetooth.UUID(0xFF00))
        t2 = time.ticks_ms()
        ntf = None
        async for c in svc.characteristics():
            if c.uuid == bluetooth.UUID(0xFF01):
                ntf = c
        t3 = time.ticks_ms()
        await ntf.subscribe()  # descriptor discovery + the CCCD write
        t4 = time.ticks_ms()
        await conn.disconnect()
        t5 = time.ticks_ms()
        out[name] = {"connect": time.ticks_diff(t1, t0), "service": time.ticks_diff(t2, t1),
                     "chars": time.ticks_diff(t3, t2), "subscribe": time.ticks_diff(t4, t3),
                     "disconnect": time.ticks_diff(t5, t4)}
    result(**out)
"""


def _check_discovery(res: dict, p: dict, interval: float) -> None:
    rtt = p["att_rtt_intervals"] * interval
    assert within(res["service"], p["gatt_service_rtts"] * rtt)
    assert within(res["chars"], p["gatt_characteristics_rtts"] * rtt)
    assert within(res["subscribe"], (p["gatt_descriptor_rtts"] + p["cccd_write_rtts"]) * rtt)
    assert within(res["disconnect"], p["ble_disconnect_intervals"] * interval)
    setup = p["conn_setup_ms"] + p["conn_setup_intervals"] * interval
    assert setup * 0.9 - 2 <= res["connect"] < p["adv_interval_ms"] + setup + 150


def test_requested_interval_sets_the_gatt_round_trips(tmp_path):
    res, events, p = run(tmp_path, DISCOVER, [device()])
    short, default = p["conn_interval_min_ms"], p["conn_interval_default_ms"]
    assert (short, default) == (15, 40)
    starts = [(e["min_conn_interval_us"], e["max_conn_interval_us"]) for e in events if e["ev"] == "connect_start"]
    assert starts == [(15000, 15000), (None, None)]
    assert [e["interval_ms"] for e in events if e["ev"] == "connect" and e["ok"]] == [short, default]
    _check_discovery(res["short"], p, short)
    _check_discovery(res["none"], p, default)
    # The default interval's discovery is slower by the intervals' ratio, whatever the load.
    assert res["none"]["service"] + res["none"]["chars"] > res["short"]["service"] + res["short"]["chars"]

    # One discovery pass of each kind per connection, over the ranges of the JBD table.
    passes = [(e["kind"], e["start"], e["end"], e["interval_ms"]) for e in events if e["ev"] == "discover"]
    one_link = [("services", 1, 0xFFFF), ("characteristics", 0x0F, 0x16), ("descriptors", 0x11, 0x13)]
    assert passes == [k + (short,) for k in one_link] + [k + (default,) for k in one_link]
    assert [e["rtts"] for e in events if e["ev"] == "discover"][:3] == [
        p["gatt_service_rtts"], p["gatt_characteristics_rtts"], p["gatt_descriptor_rtts"]]


def test_a_dongle_that_refuses_the_short_interval_runs_at_the_default(tmp_path):
    res, events, p = run(tmp_path, DISCOVER, [device(refuse_short_interval=True)])
    default = p["conn_interval_default_ms"]
    assert [e["interval_ms"] for e in events if e["ev"] == "connect" and e["ok"]] == [default, default]
    _check_discovery(res["short"], p, default)  # it still connects, at 40 ms


def test_the_reply_arrives_after_the_modelled_time(tmp_path):
    body = """
    async def main():
        radio = Radio()
        conn, wr = await subscribed()
        t0 = time.ticks_ms()
        await wr.write(REQ03)
        while len(b"".join(radio.got)) < 34:
            await asyncio.sleep_ms(1)
        one = ms_since(t0)
        # Two requests written at once: the BMS's one UART answers them in turn.
        radio.got = []
        await wr.write(REQ03)
        await wr.write(REQ04)
        await asyncio.sleep_ms(400)
        await conn.disconnect()
        result(one=one, two=len(b"".join(radio.got)))
    """
    scale = 0.5
    res, events, p = run(tmp_path, body, [device()], time_scale=scale)
    itv = p["conn_interval_min_ms"]
    t03 = reply_model(p, itv, REPLY03_BYTES)
    assert within(res["one"], t03, scale)
    assert res["two"] == REPLY03_BYTES + REPLY04_BYTES

    writes = [e for e in events if e["ev"] == "write"]
    notes = [e for e in events if e["ev"] == "notify"]
    assert [e["len"] for e in notes] == [20, 14, 20, 14, 15]
    # A reply's notifications arrive back to back (one connection event).
    assert notes[1]["ms"] - notes[0]["ms"] <= 2 and notes[3]["ms"] - notes[2]["ms"] <= 2
    assert within(notes[0]["ms"] - writes[0]["ms"], t03, scale)
    assert within(notes[2]["ms"] - writes[1]["ms"], t03, scale)
    # The 0x04 request waited for the UART: its reply comes the UART time of request and
    # reply plus processing after the first one's, not half an interval after it.
    queued = (7 + REPLY04_BYTES) * p["uart_frame_bits"] * 1000 / p["bms_uart_baud"] + p["bms_processing_ms"]
    assert within(notes[4]["ms"] - notes[2]["ms"], queued, scale)


def test_extra_intervals_space_the_notifications_of_a_reply(tmp_path):
    body = """
    async def main():
        radio = Radio()
        conn, wr = await subscribed()
        await wr.write(REQ03)
        await asyncio.sleep_ms(300)
        await conn.disconnect()
        result(got=len(b"".join(radio.got)))
    """
    res, events, p = run(tmp_path, body, [device()], notify_extra_intervals=2)
    assert res["got"] == REPLY03_BYTES
    notes = [e for e in events if e["ev"] == "notify"]
    assert within(notes[1]["ms"] - notes[0]["ms"], 2 * p["conn_interval_min_ms"])


def test_a_module_with_another_gatt_table_fails_a_cached_cccd(tmp_path):
    body = """
    async def main():
        radio = Radio()
        out = {}
        conn = await connect(15000)
        out["cached"] = await radio.write_cccd(0x12)  # the handle an earlier wake found
        svc = await conn.service(bluetooth.UUID(0xFF00))
        async for c in svc.characteristics():
            pass
        out["found"] = radio.chars
        await conn.disconnect()
        result(**out)
    """
    res, events, _ = run(tmp_path, body, [device()])
    assert res == {"cached": 0, "found": [0x11, 0x15]}
    assert [e["handle"] for e in events if e["ev"] == "subscribe"] == [0x12]

    # Shifted past the old handle: nothing is there (ATT invalid handle) ...
    res, events, _ = run(tmp_path / "far", body, [device(handles_shift=0x20)])
    assert res == {"cached": 0x01, "found": [0x31, 0x35]}
    assert not [e for e in events if e["ev"] == "subscribe"]
    # ... or a little: 0x12 is now a characteristic declaration (write not permitted).
    res, _, _ = run(tmp_path / "near", body, [device(handles_shift=2)])
    assert res == {"cached": 0x03, "found": [0x13, 0x17]}


def test_advertisements_come_every_interval_from_a_random_phase(tmp_path):
    body = """
    async def main():
        seen = []
        t0 = time.ticks_ms()
        def irq(event, data):
            if event == 5 and data[2] == 0:  # ADV_IND
                seen.append(ms_since(t0))
        aioble.core.register_irq_handler(irq, None)
        async with aioble.scan(1000, 30000, 30000, active=True) as s:
            async for r in s:
                pass
        result(seen=seen)
    """
    scale = 0.5
    res, _, p = run(tmp_path, body, [device()], time_scale=scale)
    adv = p["adv_interval_ms"] * scale  # 100 real ms
    seen = res["seen"]
    assert seen[0] < adv + 50
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert 1000 / adv - 3 <= len(seen) <= 1000 / adv + 1
    assert all(g >= adv * 0.9 - 2 for g in gaps)


def test_a_scenario_seed_repeats_a_run_and_varies_the_wakes(tmp_path):
    body = """
    import bluetooth as radio_module
    async def main():
        result(draws=[radio_module._uniform(1000) for _ in range(3)])
    """
    runs = []
    for name in ("a", "a", "b"):
        runs.append(run(tmp_path / name, body, [device()], seed=7)[0]["draws"])
    first_a, second_a, first_b = runs
    assert first_a == first_b  # the same seed, a fresh state directory: the same draws
    assert second_a != first_a  # the next wake of that run draws differently
    assert all(0 <= x <= 1000 for x in first_a)
