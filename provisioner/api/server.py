"""``slotctl api serve``: run the API under uvicorn — loopback only, unless TLS is given.

The API authenticates every request (bearer tokens), so TLS is what a non-loopback address
needs (:func:`provisioner.listen.check_listener`).
"""

from __future__ import annotations

from pathlib import Path

from provisioner.config import Config
from provisioner.listen import check_listener, check_tls_files, parse_listen

DEFAULT_LISTEN = "127.0.0.1:8780"


def check_tls(host: str, cert: Path | None, key: Path | None) -> None:
    """Refuse a non-loopback address without TLS, and half a TLS setup."""
    check_tls_files(cert, key)
    check_listener("api serve", host, tls=cert is not None, authenticated=True, names_customers=True)


def serve(config: Config, listen: str = DEFAULT_LISTEN, cert: Path | None = None, key: Path | None = None,
          *, fleet: bool = False) -> None:
    """Serve the API until interrupted (FLEET: as the fleet controller)."""
    host, port = parse_listen(listen)
    check_tls(host, cert, key)
    import uvicorn

    from provisioner.api.app import create_app

    uvicorn.run(create_app(config, fleet=fleet), host=host, port=port, log_level="warning", access_log=False,
                ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None)
