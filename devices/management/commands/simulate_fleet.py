"""Runs the fleet simulator (hotswap_device.simulator) against a HotSwap server on this installation's database."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils import timezone

from hotswap_device import simulator
from hotswap_device.fleet import BehaviourError, DeviceSpec, device_spec

DEFAULT_SERVER = "http://127.0.0.1:8000"
KEY_LIFETIME = timedelta(days=1)
# Enrolling over HTTP is the default; beyond this many seconds of the server's enrollment throttle
# (THROTTLE_ENROLL, per client IP), `--provision auto` registers the devices directly instead.
AUTO_ENROLL_MAX_SECONDS = 120
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def enroll_rate_per_second() -> float | None:
    """The enrollment throttle of this installation's settings (e.g. 60/minute → 1.0), None when unthrottled."""
    rate = (getattr(settings, "THROTTLE_RATES", {}) or {}).get("enroll")
    if not rate:
        return None
    count, _, period = str(rate).partition("/")
    try:
        return int(count) / PERIODS[period.strip()[:1].lower()]
    except (ValueError, KeyError, ZeroDivisionError):
        return None


class Command(BaseCommand):
    """`manage.py simulate_fleet --devices 5000 [--behaviour ...] [--duration S] [--provision auto|enroll|register]`."""

    help = (
        "Simulate thousands of devices speaking the real device protocol to a HotSwap server. Devices enroll with "
        "--enroll-key, or with a key made here for the run (valid one day, one use per device); with many devices "
        "and the server's enrollment throttle, --provision auto pre-registers them here instead (the operator "
        "path) and they only check in. Either way --server must use this installation's database."
    )

    def add_arguments(self, parser) -> None:
        simulator.add_arguments(parser, server_default=DEFAULT_SERVER, enroll_key_required=False)
        parser.add_argument(
            "--provision", choices=("auto", "enroll", "register"), default="auto",
            help="how devices without cached credentials get one: enroll over HTTP, register them directly in the "
                 "database (operator-issued credentials), or auto: enroll unless the server's THROTTLE_ENROLL "
                 f"rate would make that take over {AUTO_ENROLL_MAX_SECONDS} s (default auto)",
        )
        parser.add_argument(
            "--demo-models", action="store_true",
            help="first start of a demo: upload two small generated models (demo-classifier, demo-detector) through "
                 "the normal validation path and make both desired on the devices registered by then (runstack's "
                 "demo fleet uses it with --provision register); models already in the registry are left alone",
        )

    def handle(self, *args, **options) -> None:
        try:
            config = simulator.config_from_options(options, enroll_key="",
                                                   output=getattr(self.stdout, "_out", sys.stdout))
        except BehaviourError as exc:
            raise CommandError(str(exc)) from exc
        cached = simulator.load_state(config.state_file, config.server)
        missing = [spec for spec in self._specs(config)
                   if not cached.get(spec.device_id, {}).get("credential")]
        if missing:
            if self._mode(options, len(missing)) == "register":
                config.credentials = self._register(missing)
            else:
                config.enroll_key = options["enroll_key"] or self._create_key(len(missing))
        if options["demo_models"]:
            self._install_demo_models(config)
        connections.close_all()  # from here on the simulator only talks HTTP
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(message)s")
        self.stdout.write(simulator.describe(config))
        stats = asyncio.run(simulator.run_until_signalled(config))
        self.stdout.write(stats.summary())
        if stats.fatal:
            raise CommandError(stats.fatal)

    @staticmethod
    def _specs(config: simulator.FleetConfig) -> list[DeviceSpec]:
        return [device_spec(config.first_index + i, prefix=config.prefix, regions=config.regions, types=config.types)
                for i in range(config.devices)]

    def _install_demo_models(self, config: simulator.FleetConfig) -> None:
        from devices.demo import demo_models_install
        from devices.models import Device

        devices = Device.objects.filter(device_id__in=[spec.device_id for spec in self._specs(config)])
        for line in demo_models_install(devices):
            self.stdout.write(f"{config.progress_prefix}demo models: {line}")

    def _mode(self, options: dict, missing: int) -> str:
        mode = options["provision"]
        if mode != "auto":
            return mode
        if options["enroll_key"]:
            return "enroll"
        rate = enroll_rate_per_second()
        if rate and missing / rate > AUTO_ENROLL_MAX_SECONDS:
            self.stdout.write(
                f"{missing} devices need credentials; the server lets one client enroll {rate * 60:g} per minute "
                f"(THROTTLE_ENROLL), which would take {math.ceil(missing / rate / 60)} min: registering them "
                "directly instead (--provision enroll to enroll over HTTP anyway)."
            )
            return "register"
        return "enroll"

    def _create_key(self, uses: int) -> str:
        from devices.services.enrollment import enrollment_key_create

        now = timezone.now()
        key, raw = enrollment_key_create(name=f"fleet simulator {now:%Y-%m-%d %H:%M:%S}", created_by=None,
                                         expires_at=now + KEY_LIFETIME, max_uses=uses)
        self.stdout.write(f"created enrollment key {key.name!r} ({key.prefix}, {uses} uses, expires in 1 day)")
        return raw

    def _register(self, specs: list[DeviceSpec]) -> dict[str, str]:
        """Registers the devices (or re-issues credentials of existing ones, whose old ones are revoked)."""
        from devices.models import Device
        from devices.services.credentials import device_credential_issue
        from devices.services.registry import device_register
        from hotswap.exceptions import ApplicationError

        existing = {d.device_id: d for d in Device.objects.filter(device_id__in=[s.device_id for s in specs])}
        credentials: dict[str, str] = {}
        skipped: list[str] = []
        reissued = 0
        started = last_note = time.monotonic()
        for done, spec in enumerate(specs, start=1):
            try:
                device = existing.get(spec.device_id)
                if device is None:
                    device = device_register(device_id=spec.device_id, name=spec.name, device_type=spec.device_type,
                                             region=spec.region, tags=spec.tags, **spec.capabilities)
                _credential, credentials[spec.device_id] = device_credential_issue(
                    device=device, revoke_existing=spec.device_id in existing)
                reissued += spec.device_id in existing
            except ApplicationError as exc:  # e.g. a decommissioned device from an earlier run
                skipped.append(f"{spec.device_id}: {exc.message}")
            if time.monotonic() - last_note > 5:
                self.stdout.write(f"registering devices: {done}/{len(specs)}")
                last_note = time.monotonic()
        self.stdout.write(f"registered {len(credentials) - reissued} devices and re-issued {reissued} credentials in "
                          f"{time.monotonic() - started:.1f} s" + (f"; skipped {len(skipped)}" if skipped else ""))
        for line in skipped[:5]:
            self.stdout.write(f"  skipped {line}")
        return credentials
