"""``slotctl metrics serve``: the Prometheus exposition over HTTP, for an existing Prometheus.

Only ``GET /metrics`` (and ``/`` pointing at it). Each scrape collects afresh (nothing is
stored) with its own store connection; scrapes are serialized so two Prometheus servers
cannot double the load.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import BadInput
from provisioner.metrics.health import ResponseCounter

log = logging.getLogger("slotwarden.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` -> (host, port); raises BadInput."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--listen: expected ADDRESS:PORT, got {value[:60]!r}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadInput(f"--listen: {host[:60]!r} is not an IP address") from None
    return host, int(port)


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


def make_server(config: Config, host: str, port: int) -> ThreadingHTTPServer:
    """A server bound to HOST:PORT (not yet serving)."""
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

    return Server((host, port), Handler)
