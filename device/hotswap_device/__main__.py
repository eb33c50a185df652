"""Command line: python -m hotswap_device --server URL --enroll-key KEY --data-dir DIR [--once].

Runs the agent's check-in loop and its local inference API (http://127.0.0.1:8470 unless told otherwise).
"""

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
from hotswap_device.localapi import DEFAULT_HOST, DEFAULT_PORT, LocalApi


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
    parser.add_argument("--api-host", default=DEFAULT_HOST,
                        help=f"address of the local inference API (default {DEFAULT_HOST}; it has no authentication)")
    parser.add_argument("--api-port", type=int, default=DEFAULT_PORT,
                        help=f"port of the local inference API (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--no-api", action="store_true", help="do not serve the local inference API")
    parser.add_argument("--synthetic-load", type=int, default=0, metavar="THREADS",
                        help="SYNTHETIC: threads calling every model on random inputs, for demos and tests only "
                             "(the metric windows then measure random inputs, not your application's traffic)")
    parser.add_argument("--synthetic-interval", type=float, default=0.01,
                        help="pause between one synthetic-load thread's calls, seconds")
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
        synthetic_threads=0 if args.once else args.synthetic_load,
        synthetic_interval_seconds=args.synthetic_interval, window_seconds=args.window_seconds,
        grace_seconds=args.grace_seconds,
    )
    api: LocalApi | None = None
    try:
        if args.once:
            result = agent.run_once()
            print(json.dumps(dataclasses.asdict(result), indent=2))
            return 0 if result.status in ("ok", "not_modified") else 1
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        if not args.no_api:
            api = LocalApi(agent, host=args.api_host, port=args.api_port).start()
        agent.run_forever(stop)
        return 0
    except EnrollmentFailed as exc:
        logging.getLogger("hotswap_device").error("%s", exc)
        return 2
    except OSError as exc:  # the API's port is taken
        logging.getLogger("hotswap_device").error("cannot serve the local API on %s:%s: %s", args.api_host,
                                                  args.api_port, exc)
        return 2
    finally:
        if api is not None:
            api.close()
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
