"""`jbdgw sim`: run the firmware on the MicroPython unix port against a virtual BMS and a local broker."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from jbdgw.cli import UsageError, require_simulator
from jbdgw.devicecode import firmware_config

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="run the firmware in simulation (virtual BMS, Wi-Fi, deep sleep, local broker)",
        description=__doc__,
    )
    p.add_argument("--scenario", required=True, type=Path, metavar="FILE",
                   help="scenario JSON: virtual BMS devices and Wi-Fi (e.g. tools/scenarios/demo.json)")
    p.add_argument("--config", required=True, type=Path, metavar="FILE",
                   help="firmware config.json (mqtt.host/port are pointed at the broker)")
    p.add_argument("--wakes", type=int, default=3, metavar="N", help="number of wakes to run (default 3)")
    p.add_argument("--broker", default="auto", metavar="auto|HOST:PORT",
                   help="'auto' starts mosquitto or amqtt on a free local port (default)")
    p.add_argument("--heapsize", default=None, metavar="SIZE",
                   help="MicroPython heap size, e.g. 96K (default: the unix port's)")
    p.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                   help="keep the simulation state (RTC memory, events.jsonl) here")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="kill a wake that runs longer than this (default 60 s)")
    p.add_argument("--allow-faults", action="store_true",
                   help="exit 0 even when a wake published no reading (fault scenarios)")
    p.add_argument("--profile", default="esp32-typical", metavar="NAME|FILE",
                   help="latency profile the simulated radio, Wi-Fi and broker link obey: a shipped "
                        "name (esp32-typical, zero-radio) or a .json path (default esp32-typical)")
    p.set_defaults(func=run)


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path}")
    try:
        # config.json may carry // comments, as config.example.json does.
        data = json.loads(firmware_config().strip_comments(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} file {path} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} file {path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} file {path} must hold a JSON object")
    return data


def _parse_broker(text: str) -> tuple[str, int] | None:
    if text == "auto":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--broker must be 'auto' or HOST:PORT, not {text!r}")
    return host, int(port)


def _topic(config: dict, path: Path) -> str:
    mqtt = config.get("mqtt")
    topic = mqtt.get("topic") if isinstance(mqtt, dict) else None
    if not isinstance(topic, str) or not topic:
        raise UsageError(f"{path}: mqtt.topic is missing; set it to a plain topic such as \"solar\"")
    return topic


def _show_payload(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.hex()


def run(args: argparse.Namespace) -> int:
    from jbdgw.broker import BrokerError, Subscriber, start_broker
    from jbdgw.image import build_image
    from jbdgw.sim import run_wakes

    require_simulator("boot.py", "main.py", "firmware/config.py", "lib", "tools/mpsim/simrun.py")
    config = _load_json(args.config, "config")
    from jbdgw.scenario import problems

    found = problems(_load_json(args.scenario, "scenario"))
    if found:
        raise UsageError(f"scenario file {args.scenario}: {found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    topic = _topic(config, args.config)
    given = _parse_broker(args.broker)
    if args.wakes < 1:
        raise UsageError(f"--wakes must be at least 1, not {args.wakes}")
    from jbdgw.model import ProfileError, load_profile

    try:
        load_profile(args.profile)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None

    with ExitStack() as stack:
        if given is None:
            try:
                broker = stack.enter_context(start_broker())
            except BrokerError as exc:
                print(f"jbdgw sim: error: cannot start a local broker: {exc}", file=sys.stderr)
                return 1
            host, port = broker.host, broker.port
            print(f"broker: {broker.kind} on {host}:{port}", flush=True)
        else:
            host, port = given

        cfg = copy.deepcopy(config)
        cfg["mqtt"]["host"] = host
        cfg["mqtt"]["port"] = port
        if cfg["mqtt"].get("tls"):
            print("note: mqtt.tls ignored, the local broker has no TLS", file=sys.stderr)
            cfg["mqtt"]["tls"] = False

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jbdgw-sim-")))
        image = build_image(tmp / "image", cfg)
        state = args.state_dir or tmp / "state"

        def show(msg) -> None:
            retained = "  (retained)" if msg.retain else ""
            print(f"{msg.topic}  {_show_payload(msg.payload)}{retained}", flush=True)

        # "<topic>/#" also matches "<topic>" itself (MQTT 3.1.1 4.7.1.2); subscribing to
        # both would deliver readings twice on brokers that allow overlapping matches.
        sub = Subscriber(host, port, [f"{topic}/#"], on_message=show)
        try:
            stack.enter_context(sub)
        except (OSError, TimeoutError) as exc:
            print(f"jbdgw sim: error: cannot subscribe at {host}:{port}: {exc}", file=sys.stderr)
            return 1

        seen = [len(sub.messages)]
        faults: list[str] = []

        def outcome(result) -> str:
            """This wake's state and first error, from the status it published (live, not
            a retained one from an earlier run); counts a wake without a reading as a fault."""
            new = sub.messages[seen[0]:]
            seen[0] += len(new)
            readings = [m for m in new if not m.retain and not m.topic.endswith("/status")]
            status = None
            for m in new:
                if not m.retain and m.topic == f"{topic}/status":
                    try:
                        status = json.loads(m.payload)
                    except ValueError:
                        pass
            if not isinstance(status, dict):
                text = "no status published (Wi-Fi or broker down?)"
            else:
                errors = status.get("errors") or []
                text = f"state {status.get('state')}" + (f": {errors[0]}" if errors else "")
            if not readings:
                faults.append(f"wake {result.index + 1} ({text})")
            return f"{len(readings)} reading(s), {text}"

        def summary(result) -> None:
            time.sleep(0.2)  # let the subscriber print this wake's messages first
            print(f"{result.describe()}; {outcome(result)}", flush=True)
            if getattr(args, "verbose", False):
                for line in result.stdout.rstrip().splitlines():
                    print(f"  > {line}", flush=True)
            if result.crashed or (not result.slept and not result.reset and result.stderr):
                for line in result.stderr.rstrip().splitlines()[-15:]:
                    print(f"  | {line}", flush=True)

        results = run_wakes(
            image, args.scenario, args.wakes, state,
            heapsize=args.heapsize, timeout_s=args.timeout, on_wake=summary, profile=args.profile,
        )
        sub.wait_for(len(sub.messages) + 1, timeout=0.3)  # late messages

    failed = [r for r in results if r.crashed]
    published = len(sub.messages)
    print(f"{len(results)} wake(s), {published} message(s), {len(failed)} failed", flush=True)
    if failed:
        return 1
    if faults and not args.allow_faults:
        print(f"jbdgw sim: {len(faults)} wake(s) published no reading, first {faults[0]}; "
              "--allow-faults accepts that for a fault scenario", file=sys.stderr)
        return 1
    return 0
