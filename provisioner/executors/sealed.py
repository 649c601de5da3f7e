"""Sealed secrets: how a password generated on a fleet host reaches the operator and nothing else.

A module's return value ends up in ansible-runner's artifacts (``job_events/``, ``stdout``)
and in any callback or log the operator configured. So the module never returns a password:
it *seals* it to a one-run public key the controller made (X25519 + HKDF-SHA256 + AES-GCM, an
ephemeral key per secret), and only the controller process, which holds the private key in
memory and nowhere else, can open it. The artifacts then hold ciphertext that is useless once
that process has exited.

>>> opener = Opener()
>>> opener.open(seal(opener.recipient, "s3cret"))
's3cret'
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from provisioner.errors import BadInput, SlotError

_INFO = b"slotwarden sealed secret v1"
_PUB = 32
_NONCE = 12


def _key(shared: bytes, eph_pub: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + eph_pub + recipient).derive(shared)


def _raw(pub: X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal(recipient: str, secret: str) -> str:
    """Encrypt SECRET to RECIPIENT (base64 X25519 public key); returns base64 text."""
    try:
        rpub = base64.b64decode(recipient, validate=True)
        rkey = X25519PublicKey.from_public_bytes(rpub)
    except ValueError:
        raise BadInput("recipient is not a base64 X25519 public key") from None
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    nonce = os.urandom(_NONCE)
    ct = AESGCM(_key(eph.exchange(rkey), eph_pub, rpub)).encrypt(nonce, secret.encode(), None)
    return base64.b64encode(eph_pub + nonce + ct).decode()


class Opener:
    """A one-run key pair; the private half lives only in this object."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()
        self._pub = _raw(self._key.public_key())

    @property
    def recipient(self) -> str:
        """The public key to hand to the hosts (not a secret)."""
        return base64.b64encode(self._pub).decode()

    def open(self, sealed: str) -> str:
        """Decrypt what :func:`seal` made for this opener; raises SlotError if it was not."""
        try:
            blob = base64.b64decode(sealed, validate=True)
            eph_pub, nonce, ct = blob[:_PUB], blob[_PUB:_PUB + _NONCE], blob[_PUB + _NONCE:]
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            return AESGCM(_key(shared, eph_pub, self._pub)).decrypt(nonce, ct, None).decode()
        except (ValueError, InvalidTag):
            raise SlotError("a sealed secret from a host could not be opened") from None
