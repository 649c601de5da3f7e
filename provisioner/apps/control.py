"""The one app control: suspension stops a slot's apps and unsuspend starts them, plan checks count them.

Apps are stopped and started through their supervisor programs; stopping keeps the install
(files, ports, sealed credentials).
"""

from __future__ import annotations

import logging

from provisioner.context import Context
from provisioner.errors import SlotError

log = logging.getLogger("slotwarden.apps")


class SupervisedApps:
    """The apps of :mod:`provisioner.apps`, stopped and started through their supervisor programs.

    Stopping keeps the install (files, ports, sealed credentials); starting waits until each
    program runs again.
    """

    name = "apps"

    def installed(self, ctx: Context, username: str) -> list[str]:
        from provisioner.apps import registry_of

        return [r.app for r in registry_of(ctx).installs(username)]

    def running(self, ctx: Context, username: str) -> list[str]:
        if not self.installed(ctx, username):
            return []  # no supervisor round-trip for a slot without apps
        from provisioner.apps import app_status

        try:
            return [row["app"] for row in app_status(ctx, username) if row.get("running")]
        except SlotError as exc:  # supervisor down: nothing of it runs; suspend must still work
            log.warning("cannot ask the supervisor about the apps of %s: %s", username, exc)
            return []

    def _programs(self, ctx: Context, username: str, app: str) -> list[str]:
        from provisioner.apps.framework import _existing  # the framework's own lookup of an install

        found, _rec, inst = _existing(ctx, username, app)
        return [p.name for p in found.programs(ctx, inst)]

    def stop(self, ctx: Context, username: str, app: str) -> None:
        from provisioner.supervisor import supervisor_for

        sup = supervisor_for(ctx)
        for name in self._programs(ctx, username, app):
            try:
                sup.stop(name)
            except SlotError as exc:  # the processes step that follows kills it anyway
                log.warning("cannot stop %s through the supervisor: %s", name, exc)

    def start(self, ctx: Context, username: str, app: str) -> None:
        from provisioner.supervisor import supervisor_for

        sup = supervisor_for(ctx)
        for name in self._programs(ctx, username, app):
            sup.start(name)
            sup.wait_running(name)
