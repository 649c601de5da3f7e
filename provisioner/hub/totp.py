"""Second factors: TOTP (RFC 6238) per account, secrets sealed at rest, recovery codes hashed.

A secret is sealed with the host's credential vault (AES-GCM, account and purpose bound in),
never stored in clear; the ten recovery codes are kept as SHA-256 hashes (each carries 60
random bits, so a hash cannot be searched back) and each works once. A code's time step is
remembered, so a code seen once (over a shoulder, in a log) cannot be replayed.

>>> len(new_recovery_codes()), len(new_recovery_codes()[0])
(10, 14)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyotp

from provisioner.apps.vault import Vault
from provisioner.store import Store

# Wrong codes for one account (across sessions: each needs the password anyway) before its
# second factor refuses every code for FAILURE_WINDOW seconds: 10 guesses per 15 minutes.
MAX_FAILURES = 10
FAILURE_WINDOW = 15 * 60
PURPOSE = "hub-totp"
ISSUER = "slotwarden Hub"


def new_recovery_codes(n: int = 10) -> list[str]:
    """N codes like ``k3q9-xm2p-7vd4`` (lower-case base32, 60 bits each)."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    codes = []
    for _ in range(n):
        raw = "".join(secrets.choice(alphabet) for _ in range(12))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return codes


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().lower().encode()).hexdigest()


def qr_svg_data_uri(uri: str) -> str:
    """A ``data:image/svg+xml`` QR code of URI (an ``<img>`` under a CSP without scripts)."""
    import qrcode  # type: ignore[import-untyped]
    import qrcode.image.svg  # type: ignore[import-untyped]

    img = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class Enrolment:
    """A secret being enrolled: shown once (QR and text) until a code confirms it."""

    secret: str
    uri: str


class TotpStore:
    """The only code that writes ``hub_totp``."""

    def __init__(self, store: Store, vault: Vault) -> None:
        self.store = store
        self.vault = vault

    def _row(self, username: str) -> Any:
        return self.store.db.execute("SELECT * FROM hub_totp WHERE username = ?", (username,)).fetchone()

    def enabled(self, username: str) -> bool:
        row = self._row(username)
        return row is not None and bool(row["enabled"])

    def begin(self, username: str) -> Enrolment:
        """A new secret for USERNAME, not in force until :meth:`confirm` (an enabled one stays)."""
        if self.enabled(username):
            from provisioner.errors import SlotError

            raise SlotError("a second factor is already enabled; disable it first")
        secret = pyotp.random_base32()
        nonce, sealed = self.vault.seal(username, PURPOSE, {"secret": secret})
        with self.store.transaction() as db:
            db.execute("INSERT INTO hub_totp (username, nonce, sealed, enabled, created) VALUES (?, ?, ?, 0, ?) "
                       "ON CONFLICT (username) DO UPDATE SET nonce = excluded.nonce, sealed = excluded.sealed, "
                       "enabled = 0, created = excluded.created, last_step = 0, recovery = '[]', failures = 0, "
                       "failed_at = 0", (username, nonce, sealed, time.time()))
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)
        return Enrolment(secret, uri)

    def _check(self, username: str, code: str, row: Any, now: float) -> bool:
        if not isinstance(code, str) or not code.strip().isdigit() or len(code.strip()) != 6:
            return False
        secret = self.vault.open(username, PURPOSE, row["nonce"], row["sealed"])["secret"]
        totp = pyotp.TOTP(secret)
        step = int(now // totp.interval)
        for s in (step - 1, step, step + 1):
            if s > row["last_step"] and hmac.compare_digest(totp.at(s * totp.interval), code.strip()):
                with self.store.transaction() as db:
                    db.execute("UPDATE hub_totp SET last_step = ? WHERE username = ?", (s, username))
                return True
        return False

    def confirm(self, username: str, code: str, now: float | None = None) -> list[str] | None:
        """Enable the pending secret if CODE matches; returns the recovery codes (shown once)."""
        row = self._row(username)
        if row is None or row["enabled"] or not self._check(username, code, row, time.time() if now is None else now):
            return None
        codes = new_recovery_codes()
        with self.store.transaction() as db:
            db.execute("UPDATE hub_totp SET enabled = 1, recovery = ? WHERE username = ?",
                       (json.dumps([_code_hash(c) for c in codes]), username))
        return codes

    def verify(self, username: str, code: str, now: float | None = None) -> bool:
        """A login's second factor: a fresh TOTP code, or an unused recovery code (then spent).

        After MAX_FAILURES wrong codes within FAILURE_WINDOW every code is refused until the
        window has passed since the last failure, so the 10^6 codes cannot be walked through.
        """
        now = time.time() if now is None else now
        row = self._row(username)
        if row is None or not row["enabled"]:
            return False
        recent = row["failures"] if now - row["failed_at"] < FAILURE_WINDOW else 0
        if recent >= MAX_FAILURES:
            return False
        if self._check(username, code, row, now):
            self._set_failures(username, 0, 0.0)
            return True
        hashes: list[str] = json.loads(row["recovery"])
        h = _code_hash(code) if isinstance(code, str) and len(code) < 64 else ""
        if h in hashes:
            hashes.remove(h)
            with self.store.transaction() as db:
                db.execute("UPDATE hub_totp SET recovery = ?, failures = 0 WHERE username = ?",
                           (json.dumps(hashes), username))
            return True
        self._set_failures(username, recent + 1, now)
        return False

    def _set_failures(self, username: str, n: int, at: float) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE hub_totp SET failures = ?, failed_at = ? WHERE username = ?", (n, at, username))

    def recovery_left(self, username: str) -> int:
        row = self._row(username)
        return len(json.loads(row["recovery"])) if row is not None and row["enabled"] else 0

    def disable(self, username: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM hub_totp WHERE username = ?", (username,))
