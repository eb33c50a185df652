"""The production setup of the README (deploy/nginx/hotswap.conf in front of gunicorn) against 200 slow clients.

Check-in latency is measured side by side, without and with the slow clients; no absolute timings.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hotswap.lib.localservices import free_port, port_open
from tests import live
from tests.devices.checkin_helpers import device_with_credential
from tests.slowclients import checkin_latencies, p99, slow_clients

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "hotswap.conf"
SLOW_CLIENTS = 200
RUNSTACK_SLOW_CLIENTS = 50
PROBES = 150
# Check-ins of one test device, back to back: far above a device's rate limit.
UNTHROTTLED = {"THROTTLE_DEVICE_CHECKIN": "1000000/minute"}


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if not found:
        pytest.skip("nginx is not installed (make test installs Debian's nginx as root: apt-get install nginx)")
    return found


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def substitute(text: str, pattern: str, replacement: str, count: int = 1) -> str:
    """Replaces what the deployment file says must be edited; a file that no longer says it fails the test."""
    result, found = re.subn(pattern, replacement, text)
    assert found == count, f"{pattern!r} found {found} times in {CONF}, expected {count}"
    return result


def local_conf(upstream_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx/hotswap.conf as shipped, with the addresses and certificate an installer edits."""
    text = CONF.read_text()
    text = substitute(text, r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};")
    text = substitute(text, r"listen \[::\]:\d+[^;]*;", "", count=2)  # the test machine may have no IPv6
    text = substitute(text, r"listen 80;", f"listen 127.0.0.1:{http_port};")
    text = substitute(text, r"listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
    text = substitute(text, r"ssl_certificate \S+;", f"ssl_certificate {cert};")
    return substitute(text, r"ssl_certificate_key \S+;", f"ssl_certificate_key {key};")


@contextmanager
def nginx_in_front(upstream_port: int, directory: Path):
    """nginx as its own process (not a daemon), on free ports, with the repository's server configuration."""
    binary = nginx_binary()
    cert, key = self_signed(directory)
    http_port, https_port = free_port(), free_port()
    (directory / "hotswap.conf").write_text(local_conf(upstream_port, http_port, https_port, cert, key))
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (directory / "nginx.conf").write_text(
        # As root nginx's workers would be "nobody", who cannot write the temp dirs under pytest's tmp_path.
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n"
        "events { worker_connections 2048; }\n"
        f"http {{\n  access_log off;\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in
                  (("client_body" if n == "body" else n, p) for n, p in temp.items()))
        + f"  include {directory}/hotswap.conf;\n}}\n")
    log = directory / "nginx.out"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "-c", str(directory / "nginx.conf"), "-p", str(directory),
                                    "-e", str(directory / "error.log"), "-g", "daemon off;"],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", https_port):
            if process.poll() is not None or time.monotonic() > deadline:
                errors = (directory / "error.log").read_text() if (directory / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {log.read_text()} {errors}")
            time.sleep(0.1)
        yield f"https://127.0.0.1:{https_port}", https_port, cert
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_it_keeps_check_in_latency_with_200_slow_clients_behind_the_documented_nginx(tmp_path):
    _device, credential = device_with_credential("cam-slow-nginx")
    # The README's production command (runstack's), two workers of four threads, behind nginx.
    with live.runstack_gunicorn(tmp_path, env=UNTHROTTLED, workers=2) as (app_url, _out, _err), \
            nginx_in_front(int(app_url.rsplit(":", 1)[1]), tmp_path) as (base, port, cert):
        checkin_latencies(base, credential, 10, verify=str(cert))  # warm: connections, caches, TLS sessions
        alone = checkin_latencies(base, credential, PROBES, verify=str(cert))
        with slow_clients(port, SLOW_CLIENTS, cafile=cert):
            crowded = checkin_latencies(base, credential, PROBES, verify=str(cert))

    print(f"nginx: check-in p99 {p99(alone) * 1000:.0f} ms alone, {p99(crowded) * 1000:.0f} ms with {SLOW_CLIENTS} "
          "slow clients")
    assert p99(crowded) <= 3 * p99(alone) + 0.1, (
        f"p99 {p99(crowded) * 1000:.0f} ms with {SLOW_CLIENTS} slow clients, {p99(alone) * 1000:.0f} ms without")


@contextmanager
def echo_upstream():
    """A stand-in for gunicorn that records the headers nginx sends it."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with live.http_server(Handler) as port:
        yield port, seen


def test_it_hands_the_app_the_client_address_and_scheme_not_what_the_client_claims(tmp_path):
    with echo_upstream() as (upstream_port, seen), nginx_in_front(upstream_port, tmp_path) as (base, _port, cert):
        response = requests.get(f"{base}/api/v1/models", verify=str(cert), timeout=10,
                                headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"})

    assert response.status_code == 200
    [headers] = seen
    assert headers["X-Forwarded-For"] == "127.0.0.1"  # nginx's peer: the test client, not its claim
    assert headers["X-Forwarded-Proto"] == "https"


def test_it_keeps_check_in_latency_with_50_slow_clients_on_make_runs_own_server(tmp_path):
    _device, credential = device_with_credential("cam-slow-runstack")
    with live.runstack_gunicorn(tmp_path, env=UNTHROTTLED, workers=2) as (base, _out, _err):
        port = int(base.rsplit(":", 1)[1])
        checkin_latencies(base, credential, 10)
        alone = checkin_latencies(base, credential, PROBES)
        with slow_clients(port, RUNSTACK_SLOW_CLIENTS):
            crowded = checkin_latencies(base, credential, PROBES)

    print(f"runstack's gunicorn: check-in p99 {p99(alone) * 1000:.0f} ms alone, {p99(crowded) * 1000:.0f} ms with "
          f"{RUNSTACK_SLOW_CLIENTS} slow clients")
    assert p99(crowded) <= 3 * p99(alone) + 0.1, (
        f"p99 {p99(crowded) * 1000:.0f} ms with {RUNSTACK_SLOW_CLIENTS} slow clients, "
        f"{p99(alone) * 1000:.0f} ms without")
