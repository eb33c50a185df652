"""Command line: python -m hotswap_device --server URL --enroll-key KEY --data-dir DIR [--once]."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from hotswap_device import logs, tracing
from hotswap_device.agent import Agent, EnrollmentFailed


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hotswap_device", description=__doc__)
    parser.add_argument("--server", required=True, help="base URL of the HotSwap server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--enroll-key", default=os.environ.get("HOTSWAP_ENROLL_KEY"),
                        help="fleet enrollment key, needed only for the first start (or HOTSWAP_ENROLL_KEY)")
    parser.add_argument("--data-dir", required=True, help="where the credential, pinned key, state and models live")
    parser.add_argument("--device-id", help="device id to enroll with (default: hostname plus a random suffix)")
    parser.add_argument("--name", default="", help="human-readable device name")
    parser.add_argument("--device-type", default="", help="e.g. edge-camera")
    parser.add_argument("--region", default="", help="e.g. eu-west")
    parser.add_argument("--tags", default="", help="comma-separated tags, e.g. lobby,gen2")
    parser.add_argument("--once", action="store_true", help="one check-in cycle, print its result as JSON, exit")
    parser.add_argument("--inference-threads", type=int, default=1,
                        help="threads running inference on generated inputs (0: none)")
    parser.add_argument("--inference-interval", type=float, default=0.01,
                        help="pause between one thread's inference calls, seconds")
    parser.add_argument("--window-seconds", type=_positive_float, default=60.0, help="metric window length")
    parser.add_argument("--grace-seconds", type=float, default=5.0,
                        help="how long a swapped-out session is kept for in-flight calls")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logs.install()  # httpx logs every URL it fetches at INFO, signed download links included
    try:
        tracing.configure()  # OTEL_TRACES_EXPORTER=console|otlp, when opentelemetry's SDK is installed
    except tracing.TracingConfigError as exc:
        build_parser().error(str(exc))
    agent = Agent(
        args.server, args.data_dir, enroll_key=args.enroll_key, device_id=args.device_id, name=args.name,
        device_type=args.device_type, region=args.region, tags=[t for t in args.tags.split(",") if t.strip()],
        inference_threads=0 if args.once else args.inference_threads,
        inference_interval_seconds=args.inference_interval, window_seconds=args.window_seconds,
        grace_seconds=args.grace_seconds,
    )
    try:
        if args.once:
            result = agent.run_once()
            print(json.dumps(dataclasses.asdict(result), indent=2))
            return 0 if result.status in ("ok", "not_modified") else 1
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        agent.run_forever(stop)
        return 0
    except EnrollmentFailed as exc:
        logging.getLogger("hotswap_device").error("%s", exc)
        return 2
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
