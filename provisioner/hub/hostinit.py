"""``host init`` steps for the Hub: its system user and, when none is configured, a TLS certificate.

Importing this module registers :func:`host_steps` with :mod:`provisioner.host` (listed in
:data:`provisioner.slots.EXTENSION_MODULES`); it imports nothing heavier than the provisioner.
"""

from __future__ import annotations

from provisioner import accounts
from provisioner.context import Context
from provisioner.hub.config import hub_config
from provisioner.hub.tls import make_self_signed
from provisioner.plan import Step
from provisioner.runner import run


def host_steps(ctx: Context, _req: object) -> list[Step]:
    """The Hub's user (a system account, no home, no shell) and its self-signed certificate."""
    hub = hub_config(ctx.config)
    steps: list[Step] = []
    if accounts.lookup_user(hub.user) is None:
        def add() -> None:
            run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", "--user-group", hub.user])

        def remove() -> None:
            run(["userdel", hub.user])

        steps.append(Step("hub-user", f"create the system user {hub.user} the Hub's web process runs as",
                          add, remove))
    if not hub.cert.exists() and not hub.key.exists():
        steps.append(Step("hub-tls", f"make a self-signed certificate {hub.cert} for the Hub",
                          lambda: make_self_signed(hub.cert, hub.key)))
    return steps


def _register() -> None:
    from provisioner import host

    if host_steps not in host.HOST_INIT_EXTENSIONS:
        host.HOST_INIT_EXTENSIONS.append(host_steps)


_register()
