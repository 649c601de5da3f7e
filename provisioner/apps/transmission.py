"""Transmission: Debian's ``transmission-daemon``, RPC and web UI behind a username/password.

Per slot: ``~/apps/transmission/config/settings.json`` (0600, the RPC password in it — the
daemon replaces it with its salted hash on first start), downloads in
``~/apps/transmission/downloads``. RPC on 127.0.0.1:<http port>; the peer port is allocated
from the registry too (two slots never fight over 51413) and bound to loopback, with DHT, LPD,
UPnP/NAT-PMP off: a shared server does not open ports on its own.

Log in: ``http://127.0.0.1:PORT/transmission/web/`` (HTTP basic auth, the slot's username).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from provisioner.apps import App, AppSettings, Installation
from provisioner.context import Context
from provisioner.errors import BadInput
from provisioner.runner import run
from provisioner.supervisor import Program

DAEMON = "/usr/bin/transmission-daemon"


def settings_json(inst: Installation, password: str) -> dict[str, object]:
    """The daemon's settings for INST (pure; tested as data)."""
    return {
        "rpc-enabled": True,
        "rpc-bind-address": "127.0.0.1",
        "rpc-port": inst.ports["http"],
        "rpc-authentication-required": True,
        "rpc-username": inst.username,
        "rpc-password": password,
        "rpc-whitelist-enabled": True,
        "rpc-whitelist": "127.0.0.1",
        "rpc-host-whitelist-enabled": False,
        "peer-port": inst.ports["peer"],
        "peer-port-random-on-start": False,
        "bind-address-ipv4": "127.0.0.1",
        "bind-address-ipv6": "::1",
        "dht-enabled": False,
        "lpd-enabled": False,
        "utp-enabled": False,
        "port-forwarding-enabled": False,
        "download-dir": str(inst.app_dir / "downloads"),
        "incomplete-dir-enabled": False,
        "watch-dir-enabled": False,
        "umask": 63,  # 077: the tenant's downloads are its own
        "message-level": 1,
    }


class Transmission(App):
    name = "transmission"
    title = "Transmission"
    description = "BitTorrent client (transmission-daemon) with its web UI and RPC behind a password"
    needs = ("transmission-daemon (Debian)",)
    port_purposes = ("http", "peer")

    def _daemon(self, settings: AppSettings) -> str:
        value = settings.of(self.name).get("daemon", DAEMON)
        if not isinstance(value, str) or not value.startswith("/"):
            raise BadInput("apps.transmission.daemon: expected an absolute path")
        return value

    def version(self, settings: AppSettings) -> str | None:
        daemon = self._daemon(settings)
        if not Path(daemon).exists() or not shutil.which(daemon):
            return None
        out = run([daemon, "--version"], check=False)
        text = (out.stdout + out.stderr).split()
        return text[1] if len(text) > 1 else "unknown"

    def configure(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> None:
        inst.mkdir("config")
        inst.mkdir("downloads")
        inst.write("config/settings.json", json.dumps(settings_json(inst, creds["password"]), indent=2) + "\n")

    def programs(self, ctx: Context, inst: Installation) -> list[Program]:
        return [Program(app=self.name, user=inst.username, cwd=str(inst.app_dir),
                        argv=[self._daemon(inst.settings), "--foreground", "--config-dir",
                              str(inst.app_dir / "config"), "--log-error"],
                        environment={"USER": inst.username, "LOGNAME": inst.username,
                                     "TRANSMISSION_WEB_HOME": "/usr/share/transmission/web"})]

    def url(self, inst: Installation) -> str:
        return f"http://127.0.0.1:{inst.port}/transmission/web/"


APP = Transmission()
