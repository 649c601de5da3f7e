"""The Hub's extensions: ``host init`` (its user, a TLS certificate), slot removal, the data report.

Its :data:`EXTENSION` (``hub`` in :data:`provisioner.extensions.EXTENSIONS`) adds
:func:`host_steps` to ``host init``, a removal step (no session, login event, second factor or
history row of a removed slot stays) and the Hub's rows of ``slotctl data report``; it imports
nothing heavier than the provisioner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provisioner import accounts
from provisioner.context import Context
from provisioner.extensions import Hooks
from provisioner.hub.config import hub_config
from provisioner.hub.tls import make_self_signed
from provisioner.runner import run
from provisioner.steps import Step
from provisioner.store import SlotRecord

if TYPE_CHECKING:
    pass


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


def removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    """Slot removal: the Hub forgets the slot (sessions, logins, second factor, history)."""
    def forget() -> None:
        from provisioner.apps.vault import KEY_FILE_NAME, Vault
        from provisioner.hub.history import MetricsHistory
        from provisioner.hub.sessions import SessionStore
        from provisioner.hub.totp import TotpStore

        SessionStore(ctx.store, 1, 1).forget_user(rec.username)
        TotpStore(ctx.store, Vault(ctx.config.state_dir / KEY_FILE_NAME)).disable(rec.username)
        MetricsHistory(ctx.store).forget(rec.username)

    return [Step("hub-forget", f"remove {rec.username}'s Hub sessions, logins, second factor, history", forget)]


def data_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Any]:
    """Rows for the data report: Hub sessions, Hub logins, the second factor, the metrics history."""
    from provisioner.apps.vault import KEY_FILE_NAME, Vault
    from provisioner.datareport import Item
    from provisioner.hub.history import MetricsHistory
    from provisioner.hub.sessions import FAILED_KEPT, SessionStore
    from provisioner.hub.totp import TotpStore

    if rec is None:
        return []
    hub = hub_config(ctx.config)
    sessions = SessionStore(ctx.store, hub.idle_timeout, hub.absolute_timeout)
    where = f"store {ctx.config.db_path}"
    totp = TotpStore(ctx.store, Vault(ctx.config.state_dir / KEY_FILE_NAME))
    return [
        Item("hub sessions", [s.public() for s in sessions.of_user(username)], "keep you logged in to the Hub",
             f"{where} (hub_sessions; the token's hash only)",
             f"until logout, {hub.idle_timeout // 60} min idle or {hub.absolute_timeout // 3600} h"),
        Item("hub logins", sessions.logins(username), "your login activity page, intrusion checks",
             f"{where} (hub_logins)", f"failed {FAILED_KEPT // 3600} h, successful 30 days"),
        Item("hub second factor", {"enabled": totp.enabled(username), "recovery_codes_left":
                                   totp.recovery_left(username)}, "a second factor you enabled",
             f"{where} (hub_totp; secret encrypted, recovery codes hashed)", "until you disable it"),
        Item("metrics history", {"rows": MetricsHistory(ctx.store).rows_of(username)},
             "the Hub's 24-hour and 30-day charts", f"{where} (hub_history; 648 rows at most)",
             "24 h at 5 min, 30 days at 2 h (downsampled, overwritten in place)"),
    ]



EXTENSION = Hooks("hub", host=host_steps, removal=removal_steps, data=data_items)
