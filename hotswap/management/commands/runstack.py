"""runstack: migrate, ensure an admin account, then run gunicorn, Celery workers and beat, a demo fleet until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections, transaction

from hotswap.lib.localservices import port_open
from hotswap.observability.stack import stack_environment
from hotswap.settings.env import VAR_DIR, env

STOP_TIMEOUT = 10.0
# Simulated devices started with the stack, so a new user sees a fleet check in (HOTSWAP_DEMO_DEVICES=0: none).
DEMO_DEVICES = 200
DEMO_PREFIX = "demo-"
DEMO_PROGRESS_SECONDS = 30


def database_url(db: dict) -> str:
    """settings.DATABASES["default"] as a URL; a unix-socket directory travels as ?host=."""
    options = {k: v for k, v in (db.get("OPTIONS") or {}).items() if isinstance(v, str | int)}
    host = db.get("HOST") or ""
    if host.startswith("/"):
        options["host"], host = host, ""
    auth = f"{quote(db.get('USER') or '', safe='')}:{quote(db.get('PASSWORD') or '', safe='')}@"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    query = f"?{urlencode(options)}" if options else ""
    return f"postgres://{auth}{host}{port}/{quote(db['NAME'], safe='')}{query}"


def child_environment() -> dict[str, str]:
    """Our environment plus the resolved DATABASE_URL/REDIS_URL, so children join the servers this process owns."""
    child_env = dict(os.environ)
    if not (child_env.get("DATABASE_URL") or child_env.get("DATABASE_URL_FILE")):
        child_env["DATABASE_URL"] = database_url(settings.DATABASES["default"])
    if not (child_env.get("REDIS_URL") or child_env.get("REDIS_URL_FILE")):
        child_env["REDIS_URL"] = settings.REDIS_URL
    return child_env


def gunicorn_command(bind: str, workers: int | str) -> list[str]:
    """The web process: gunicorn, its own lines in LOG_FORMAT; the app logs one line per request (hotswap.request).

    Its worker reads each request before a thread handles it, so slow clients cannot take the threads.
    No access log: it would say every request a second time, in another format.
    """
    return ["gunicorn", "hotswap.wsgi:application", "-b", bind, "-k", "hotswap.gunicorn_worker.BufferedThreadWorker",
            "--threads", "4", "-w", str(workers), "--timeout", "300",
            "--logger-class", "hotswap.observability.gunicorn.Logger",
            # gunicorn's control socket defaults to one path per user: two stacks would share it.
            "--no-control-socket"]


def demo_fleet_command(server: str, devices: int) -> list[str]:
    """manage.py simulate_fleet for the demo fleet: registered directly once, credentials kept in the var dir."""
    argv = [sys.executable, "manage.py", "simulate_fleet", "--server", server, "--devices", str(devices),
            "--prefix", DEMO_PREFIX, "--provision", "register",
            # Two models per device, so slots are at work from the first start (see devices/demo.py).
            "--demo-models",
            "--state-file", str(VAR_DIR / "simulator" / "demo-fleet.json"),
            # Registered devices hear the server's interval only at their first check-in: start with it.
            "--poll-seconds", str(settings.DEVICE_POLL_INTERVAL_SECONDS),
            "--progress-seconds", str(DEMO_PROGRESS_SECONDS), "--progress-prefix", "demo fleet: "]
    if behaviour := env.str("HOTSWAP_DEMO_BEHAVIOUR", default=""):
        argv += ["--behaviour", behaviour]
    return argv


class Command(BaseCommand):
    help = ("Run the whole product: migrate, admin account, gunicorn, Celery workers (fleet; validation) and beat, "
            "and a demo fleet of simulated devices (Ctrl-C stops all).")

    def add_arguments(self, parser):
        parser.add_argument("--no-worker", action="store_true", help="Do not start the Celery workers.")
        parser.add_argument("--no-beat", action="store_true", help="Do not start Celery beat.")
        parser.add_argument("--demo-devices", type=int, default=None, metavar="N",
                            help=f"Simulated devices to run with the stack (default HOTSWAP_DEMO_DEVICES or "
                                 f"{DEMO_DEVICES}; 0: none).")

    def handle(self, *args, no_worker: bool = False, no_beat: bool = False, demo_devices: int | None = None,
               **options):
        if demo_devices is None:
            demo_devices = env.int("HOTSWAP_DEMO_DEVICES", default=DEMO_DEVICES)
        child_env = stack_environment(child_environment(), VAR_DIR)  # readable logs, multiprocess metrics
        call_command("migrate", interactive=False, verbosity=1)
        credentials = self.ensure_admin()
        connections.close_all()  # this process only supervises from here on

        bind = os.environ.get("HOTSWAP_BIND") or "127.0.0.1:8000"
        commands = {
            "gunicorn": gunicorn_command(bind, os.environ.get("WEB_CONCURRENCY") or "2"),
            # Fleet and rollout tasks (short) and validations (long) each have their own worker: see
            # CELERY_TASK_ROUTES. One validation at a time keeps its latency benchmark off a shared core.
            "celery worker": ["celery", "-A", "hotswap", "worker", "-l", "info", "--concurrency", "2",
                              "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-n", "fleet@%h"],
            "validation worker": ["celery", "-A", "hotswap", "worker", "-l", "info", "--concurrency", "1",
                                  "-Q", settings.CELERY_VALIDATION_QUEUE, "-n", "validation@%h"],
            "celery beat": ["celery", "-A", "hotswap", "beat", "-l", "info",
                            "-S", "django_celery_beat.schedulers:DatabaseScheduler"],
        }
        if no_worker:
            del commands["celery worker"], commands["validation worker"]
        if no_beat:
            del commands["celery beat"]

        received: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: received.append(signum))

        bin_dir = Path(sys.executable).parent
        children: dict[str, subprocess.Popen] = {}
        died: tuple[str, subprocess.Popen] | None = None
        try:
            for name, argv in commands.items():
                children[name] = self.spawn([str(bin_dir / argv[0]), *argv[1:]], child_env)
            host, _, port = bind.rpartition(":")
            host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host  # noqa: S104
            announced = False
            while not received and died is None:
                died = next(((n, p) for n, p in children.items() if p.poll() is not None), None)
                if not announced and port.isdigit() and port_open(host.strip("[]"), int(port)):
                    announced = True
                    base = f"http://{host}:{port}"
                    self.announce(base, credentials, demo_devices)
                    if demo_devices > 0:
                        # Only now: the simulator gives up on a server that does not answer.
                        # WARNING: registering the fleet would log two lines per device; progress is printed.
                        children["demo fleet"] = self.spawn(demo_fleet_command(base, demo_devices),
                                                            {**child_env, "PYTHONUNBUFFERED": "1",
                                                             "LOG_LEVEL": "WARNING"})
                time.sleep(0.3)
        finally:
            self.stop_children(children)
        if died:
            name, proc = died
            raise CommandError(f"{name} (pid {proc.pid}) exited on its own with code {proc.returncode}; "
                               "stopped the rest.")
        self.stdout.write("HotSwap stopped.")

    @staticmethod
    def spawn(argv: list[str], child_env: dict[str, str]) -> subprocess.Popen:
        # Own process group: a terminal's Ctrl-C reaches only us, and we stop the children ourselves.
        return subprocess.Popen(argv, env=child_env, cwd=settings.BASE_DIR, process_group=0)

    def ensure_admin(self) -> str:
        """Create (or update) the admin superuser in the Admin group; return the line that tells how to log in."""
        username = env.str("HOTSWAP_ADMIN_USERNAME", default="") or "admin"
        password = env.str("HOTSWAP_ADMIN_PASSWORD", default="")
        email = env.str("HOTSWAP_ADMIN_EMAIL", default="")
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=username)
            generated = created and not password
            if generated:
                password = secrets.token_urlsafe(12)
            # Only a new password is set: re-hashing the same one would end every session and JWT at each start.
            if password and not user.check_password(password):
                user.set_password(password)
            if email:
                user.email = email
            user.is_staff = user.is_superuser = user.is_active = True
            user.save()
            # The roles hook in hotswap.accounts creates the group on migrate; don't depend on it here.
            user.groups.add(Group.objects.get_or_create(name="Admin")[0])
        if generated:
            return (f"{username} / {password}\n"
                    "    (generated now and shown only this once: note it, or set HOTSWAP_ADMIN_PASSWORD)")
        if password:
            return f"{username} / the password in HOTSWAP_ADMIN_PASSWORD"
        return f"{username} (existing account, password unchanged)"

    def announce(self, base: str, credentials: str, demo_devices: int = 0) -> None:
        storage = (f"S3 bucket {settings.S3_BUCKET}" if settings.S3_BUCKET
                   else str(settings.STORAGES["artifacts"]["OPTIONS"].get("location")))
        fleet = (f"{demo_devices} simulated devices ({DEMO_PREFIX}00001…) running two models each, starting now "
                 "(HOTSWAP_DEMO_DEVICES=0: none)"
                 if demo_devices > 0 else "none (HOTSWAP_DEMO_DEVICES or --demo-devices N starts one)")
        rule = "=" * 72
        self.stdout.write(
            f"\n{rule}\n"
            f"  HotSwap is running.  Ctrl-C stops everything.\n"
            f"  Console:   {base}/admin/\n"
            f"  API:       {base}/api/v1/\n"
            f"  API docs:  {base}/api/docs/\n"
            f"  Admin:     {credentials}\n"
            f"  Artifacts: {storage}\n"
            f"  Demo fleet: {fleet}\n"
            f"{rule}\n"
        )
        self.stdout.flush()

    def stop_children(self, children: dict[str, subprocess.Popen]) -> None:
        """SIGTERM each child, give them STOP_TIMEOUT together, then SIGKILL whatever is left of each group."""
        # SIGTERM goes to the leader only: gunicorn and Celery stop their own workers cleanly
        # (a Celery pool process killed directly would abort its task); the group SIGKILL sweeps the rest.
        # Last started first: the demo fleet leaves before the server it talks to.
        for proc in reversed(children.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, proc in children.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop within {STOP_TIMEOUT:.0f} s; killing it.")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
