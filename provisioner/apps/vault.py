"""Application credentials at rest: AES-256-GCM, key file 0600 root, slot and app bound in.

Each (slot, app) pair has one sealed JSON document (``{"password": ..., ...}``) in the store
table ``app_credentials``. The associated data is ``slotwarden-app-creds:v1:<slot>:<app>``,
so a ciphertext copied to another slot's or app's row fails to open instead of revealing
the secret under the wrong name. The key lives in ``<state_dir>/app-credentials.key``
(32 random bytes, created once with O_EXCL, mode 0600, owner root).

>>> import tempfile, pathlib
>>> v = Vault(pathlib.Path(tempfile.mkdtemp()) / "k")
>>> v.open("alice", "demo", *v.seal("alice", "demo", {"password": "p"}))
{'password': 'p'}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provisioner.accounts import generate_password
from provisioner.errors import SlotError

KEY_FILE_NAME = "app-credentials.key"


def generate_secret() -> str:
    """An app's password: the slot passwords' generator, 24 of 62 symbols (~143 bits; policy: >= 128)."""
    return generate_password(24)


def _aad(slot: str, app: str) -> bytes:
    return f"slotwarden-app-creds:v1:{slot}:{app}".encode()


class Vault:
    """Seals and opens credential documents with the host's key."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._key: bytes | None = None

    def key(self) -> bytes:
        """The key, created on first use (0600 root); a key of the wrong size is refused."""
        if self._key is None:
            try:
                self._key = self.key_path.read_bytes()
            except FileNotFoundError:
                self._key = self._create()
            if len(self._key) != 32:
                raise SlotError(f"{self.key_path} is not a 32-byte key; refusing to use it")
            st = self.key_path.stat()
            if st.st_mode & 0o077 or st.st_uid != os.geteuid():
                raise SlotError(f"{self.key_path} must be mode 0600 and owned by root")
        return self._key

    def _create(self) -> bytes:
        self.key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = AESGCM.generate_key(bit_length=256)
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return self.key_path.read_bytes()
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key

    def seal(self, slot: str, app: str, secrets_: dict[str, str]) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of SECRETS_ for SLOT's APP."""
        nonce = os.urandom(12)
        data = json.dumps(secrets_, sort_keys=True).encode()
        return nonce, AESGCM(self.key()).encrypt(nonce, data, _aad(slot, app))

    def open(self, slot: str, app: str, nonce: bytes, ciphertext: bytes) -> dict[str, str]:
        """The secrets sealed for SLOT's APP; raises SlotError if they were sealed for another."""
        try:
            data = AESGCM(self.key()).decrypt(nonce, ciphertext, _aad(slot, app))
        except InvalidTag:
            raise SlotError(f"the stored credentials of {app} for {slot} do not open with this host's key "
                            "(moved from another slot or app, or the key changed)") from None
        value = json.loads(data)
        if not isinstance(value, dict):
            raise SlotError(f"the stored credentials of {app} for {slot} are malformed")
        return {str(k): str(v) for k, v in value.items()}
