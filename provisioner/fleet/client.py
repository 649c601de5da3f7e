"""How the controller reaches a host: the host's own provisioning API, over TLS, with its token.

Each host already serves ``slotctl api serve`` (bearer tokens, audit, per-slot locks,
``Idempotency-Key``), so the controller is one more API client of it: a request per
operation, answered in milliseconds, instead of an ansible-runner play per call (seconds) —
and failures come back per host, as the host's own status and message. TLS is checked
against the CA certificate registered for that host (never the system's store: a fleet's
hosts have the operator's certificates), and the host name in it must match the URL.

A connection is kept per client and reused. Every change carries an ``Idempotency-Key`` (the
caller's, or one made here), so the one retry this client makes — when a reused connection
turns out closed before any answer came — can never apply a change twice.

>>> parse_url("https://198.51.100.2:8780")
('198.51.100.2', 8780)
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from provisioner.errors import BadInput, SlotError
from provisioner.names import shown

HOST_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
MAX_ANSWER = 64 << 20  # a host's answer larger than this is refused, not read into memory


def validate_host_name(name: object) -> str:
    """A fleet host's name: 1-63 of a-z 0-9 . -, starting with a letter or digit."""
    if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
        raise BadInput(f"host name {shown(name)} is invalid: use 1-63 of a-z 0-9 . -, starting with a letter or digit")
    return name


def parse_url(url: object) -> tuple[str, int]:
    """(host, port) of an ``https://HOST[:PORT]`` URL (no path, user or query); BadInput otherwise."""
    if not isinstance(url, str) or len(url) > 300 or not url.isprintable() or " " in url:
        raise BadInput(f"url {shown(url)} is invalid: expected https://HOST:PORT")
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:
        raise BadInput(f"url {shown(url)} has an invalid port") from None
    if (parts.scheme != "https" or not parts.hostname or parts.username or parts.password or parts.query
            or parts.fragment or parts.path not in ("", "/")):
        raise BadInput(f"url {shown(url)} is invalid: expected https://HOST:PORT (the host's API, over TLS)")
    return parts.hostname, port


def tls_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts CA_PEM only; BadInput if it holds no certificate."""
    # PROTOCOL_TLS_CLIENT: certificate and host name checked; no system CA store loaded.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise BadInput(f"ca: not a PEM certificate: {exc}") from None
    return ctx


class HostUnreachable(SlotError):
    """The host did not answer (connection, TLS, timeout) or answered something that is not JSON.

    SENT is False when no byte of the request left (the connection or TLS handshake failed):
    then the host certainly changed nothing.
    """

    def __init__(self, host: str, reason: str, *, sent: bool = True) -> None:
        self.host = host
        self.sent = sent
        super().__init__(f"host {host}: {reason}")


@dataclass(frozen=True)
class Answer:
    """A host's HTTP answer: its status and JSON body."""

    status: int
    body: dict[str, Any]


class HostClient:
    """Requests to one host's API. Not thread-safe: one per thread."""

    def __init__(self, name: str, url: str, ca_pem: str, token: str, timeout: float = 60.0) -> None:
        self.name = name
        self.address, self.port = parse_url(url)
        self._tls = tls_context(ca_pem)
        self._auth = f"Bearer {token}"
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool]:
        if self._conn is not None:
            return self._conn, True
        conn = http.client.HTTPSConnection(self.address, self.port, timeout=self.timeout, context=self._tls)
        try:
            conn.connect()
        except ssl.SSLError as exc:
            conn.close()
            raise HostUnreachable(self.name, f"TLS refused: {exc.reason or exc}", sent=False) from None
        except OSError as exc:
            conn.close()
            raise HostUnreachable(self.name, f"unreachable: {exc}", sent=False) from None
        self._conn = conn
        return conn, False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                idempotency_key: str | None = None) -> Answer:
        """Send one request; HostUnreachable when no HTTP answer came back."""
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if method != "GET":
            headers["Idempotency-Key"] = idempotency_key or f"fleet-{secrets.token_hex(16)}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read(MAX_ANSWER + 1)
                status = resp.status
                if resp.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the kept connection had closed; the key makes a resend safe
                raise HostUnreachable(self.name, f"unreachable: {type(exc).__name__}: {exc}") from None
            except ssl.SSLError as exc:
                self.close()
                raise HostUnreachable(self.name, f"TLS refused: {exc.reason or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise HostUnreachable(self.name, f"unreachable: {exc}") from None
        if len(raw) > MAX_ANSWER:
            self.close()
            raise HostUnreachable(self.name, "answer too large")
        try:
            value = json.loads(raw)
        except ValueError:
            raise HostUnreachable(self.name, f"answered HTTP {status} without JSON") from None
        if not isinstance(value, dict):
            raise HostUnreachable(self.name, f"answered HTTP {status} with JSON that is not an object")
        return Answer(status, value)
