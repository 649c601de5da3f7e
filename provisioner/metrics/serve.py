"""``slotctl metrics serve``: the Prometheus exposition over HTTP, for an existing Prometheus.

Only ``GET /metrics`` (and ``/`` pointing at it). Each scrape collects afresh (nothing is
stored) with its own store connection; scrapes are serialized so two Prometheus servers
cannot double the load.

The exposition names every customer (slot names and usage), so it follows the listener rule of
:mod:`provisioner.listen`: loopback, or TLS (``--cert``/``--key``) *and* a scrape token. The
token (``slotctl metrics token create``) is shown once; only its SHA-256 is kept
(``<state_dir>/metrics-token.sha256``, 0600). Once a token exists every scrape must send it
(``Authorization: Bearer …``, Prometheus' ``authorization.credentials_file``), on loopback too —
which is what keeps a tenant of this host from reading the other slots' figures.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.listen import check_listener, check_tls_files
from provisioner.metrics.health import ResponseCounter

log = logging.getLogger("slotwarden.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


TOKEN_PREFIX = "swm_"  # noqa: S105 - a marker, not a secret


def token_path(config: Config) -> Path:
    return config.state_dir / "metrics-token.sha256"


def create_scrape_token(config: Config) -> str:
    """A new scrape token (replacing any other); returns it, the only time it exists in clear."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    path = token_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hashlib.sha256(token.encode()).hexdigest() + "\n")
    os.replace(tmp, path)
    return token


def revoke_scrape_token(config: Config) -> bool:
    """Forget the scrape token; True if there was one."""
    try:
        token_path(config).unlink()
    except FileNotFoundError:
        return False
    return True


def scrape_token_hash(config: Config) -> str | None:
    try:
        text = token_path(config).read_text().strip()
    except FileNotFoundError:
        return None
    if len(text) != 64:
        raise SlotError(f"{token_path(config)} is damaged: make a new token (slotctl metrics token create)")
    return text


def authorized(expected_hash: str | None, header: str | None) -> bool:
    """Does the Authorization HEADER carry the scrape token (any request, if none is set)?"""
    if expected_hash is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 200:
        return False
    got = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).hexdigest()
    return hmac.compare_digest(got, expected_hash)


def scrape(config: Config, responses: ResponseCounter | None = None) -> bytes:
    """Collect every slot and render the exposition (with RESPONSES: the host's health too)."""
    from provisioner.metrics import collect
    from provisioner.metrics.health import health, render_health
    from provisioner.metrics.prometheus import render

    t0 = time.perf_counter()
    ctx = Context(config)
    try:
        metrics = collect(ctx)
        extra = render_health(health(ctx, responses)) if responses is not None else ""
    finally:
        ctx.close()
    return (render(metrics, time.perf_counter() - t0) + extra).encode()


def make_server(config: Config, host: str, port: int, cert: Path | None = None,
                key: Path | None = None) -> ThreadingHTTPServer:
    """A server bound to HOST:PORT (not yet serving), refused where the listener rule says so."""
    check_tls_files(cert, key)
    expected = scrape_token_hash(config)
    check_listener("metrics serve", host, tls=cert is not None, authenticated=expected is not None,
                   names_customers=True)
    lock = threading.Lock()
    responses = ResponseCounter()

    class Handler(BaseHTTPRequestHandler):
        server_version = "slotwarden-metrics"

        def do_GET(self) -> None:
            if self.path not in ("/metrics", "/"):
                self.send_error(404)
                return
            if self.path == "/":
                body = b'<a href="/metrics">/metrics</a>\n'
                ctype = "text/html"
            elif not authorized(expected, self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Bearer")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            else:
                try:
                    with lock:
                        body = scrape(config, responses)
                except Exception as exc:  # a scrape must answer, not kill the server
                    log.error("scrape failed: %s", exc)
                    self.send_error(500, "scrape failed")
                    return
                ctype = CONTENT_TYPE
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), Handler)
    if cert is not None and key is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(str(cert), str(key))
        # The handshake happens in the request's thread, so a slow client cannot stall accept().
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server
