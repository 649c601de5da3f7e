"""``slotctl api serve``: run the API under uvicorn — loopback only, unless TLS is given.

>>> parse_listen("127.0.0.1:8780")
('127.0.0.1', 8780)
>>> parse_listen("[::1]:8780")
('::1', 8780)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from provisioner.config import Config
from provisioner.errors import BadInput
from provisioner.names import shown

DEFAULT_LISTEN = "127.0.0.1:8780"


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
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
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def check_tls(host: str, cert: Path | None, key: Path | None) -> None:
    """Refuse a non-loopback address without TLS, and half a TLS setup."""
    if (cert is None) != (key is None):
        raise BadInput("--cert and --key go together")
    if not is_loopback(host) and cert is None:
        raise BadInput(f"--listen {host} is not a loopback address: it needs TLS (--cert and --key)")
    for name, path in (("--cert", cert), ("--key", key)):
        if path is not None and not path.is_file():
            raise BadInput(f"{name} {path}: no such file")


def serve(config: Config, listen: str = DEFAULT_LISTEN, cert: Path | None = None, key: Path | None = None) -> None:
    """Serve the API until interrupted."""
    host, port = parse_listen(listen)
    check_tls(host, cert, key)
    import uvicorn

    from provisioner.api.app import create_app

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False,
                ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
