"""The web process's side of the bridge: one JSON line out, one back, per call.

>>> BridgeClient(Path("/nonexistent.sock")).path.name
'nonexistent.sock'
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from provisioner.errors import SlotError


class BridgeUnavailable(SlotError):
    """The bridge does not answer."""


class BridgeClient:
    """Calls the privileged bridge over its Unix socket."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``{"op": OP, **ARGS}``; the reply dict (``ok`` false on a refusal)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                s.connect(str(self.path))
            except OSError as exc:
                raise BridgeUnavailable(f"hub bridge not reachable on {self.path}: {exc.strerror}") from None
            try:
                s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            except BrokenPipeError:
                pass  # refused before reading: its one-line answer is still there to read
            buf = b""
            while not buf.endswith(b"\n"):
                try:
                    chunk = s.recv(1 << 20)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        try:
            reply = json.loads(buf)
        except ValueError:
            raise BridgeUnavailable("hub bridge answered garbage") from None
        if not isinstance(reply, dict):
            raise BridgeUnavailable("hub bridge answered garbage")
        return reply
