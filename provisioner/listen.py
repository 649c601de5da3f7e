"""The one rule every listener of slotwarden follows: loopback, unless TLS (and authentication).

A server that anything but this host can reach carries TLS; one whose answers name customers
(slot names, usage, credentials) also authenticates every request. The API, the metrics
exporter and the Hub all check their ``--listen`` address here before binding.

>>> parse_listen("127.0.0.1:8780")
('127.0.0.1', 8780)
>>> parse_listen("[::1]:9464")
('::1', 9464)
>>> check_listener("api", "127.0.0.1", tls=False, authenticated=False, names_customers=True)
>>> try:
...     check_listener("metrics", "0.0.0.0", tls=True, authenticated=False, names_customers=True)
... except BadInput as exc:
...     print(str(exc).split(":")[-1])
 it needs authentication too (slotctl metrics token create)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from provisioner.errors import BadInput
from provisioner.names import shown


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets, or ``localhost``) -> (host, port); raises BadInput."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise BadInput(f"--listen {shown(listen)} is invalid: use HOST:PORT, e.g. 127.0.0.1:8780")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise BadInput(f"--listen {shown(listen)}: the host must be an IP address or localhost") from None
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and 127.0.0.0/8, ::1 (a wildcard like 0.0.0.0 is not loopback)."""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def check_tls_files(cert: Path | None, key: Path | None) -> None:
    """Both or neither, and both readable files."""
    if (cert is None) != (key is None):
        raise BadInput("--cert and --key go together")
    for name, path in (("--cert", cert), ("--key", key)):
        if path is not None and not path.is_file():
            raise BadInput(f"{name} {path}: no such file")


def check_listener(what: str, host: str, *, tls: bool, authenticated: bool, names_customers: bool,
                   auth_hint: str = "slotctl metrics token create") -> None:
    """Refuse to bind WHAT to HOST unless the rule holds (see the module docstring)."""
    if is_loopback(host):
        return
    if not tls:
        raise BadInput(f"{what} --listen {host} is not a loopback address: it needs TLS (--cert and --key)")
    if names_customers and not authenticated:
        raise BadInput(f"{what} --listen {host} is not a loopback address and its answers name customers: "
                       f"it needs authentication too ({auth_hint})")
