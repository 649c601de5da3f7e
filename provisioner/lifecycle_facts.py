"""What the store and the host say about a slot, for planning a suspension or a change of plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from provisioner import accounts
from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.extensions import AppControl
from provisioner.lifecycle_records import LifecycleRecord, LifecycleRecords
from provisioner.loginstate import LoginState, login_state
from provisioner.store import SlotRecord


@dataclass(frozen=True)
class LifecycleFacts:
    """What the store and the host say about a slot, for planning a lifecycle change."""

    record: SlotRecord
    lifecycle: LifecycleRecord | None
    uid: int | None
    login: LoginState | None
    running_apps: dict[str, list[str]] = field(default_factory=dict)
    installed_apps: dict[str, list[str]] = field(default_factory=dict)
    has_processes: bool = False

    @classmethod
    def gather(cls, ctx: Context, username: str) -> LifecycleFacts:
        rec = ctx.store.get_slot(username)
        if rec is None or rec.state in {"creating", "removing"}:
            raise SlotError(f"no slot named {username!r}" if rec is None
                            else f"slot {username!r} is being {'created' if rec.state == 'creating' else 'removed'}")
        acct = accounts.lookup_user(username)
        if acct is None:
            raise SlotError(f"slot {username!r} has no system account; run 'slotctl doctor'")
        return cls(
            record=rec,
            lifecycle=LifecycleRecords(ctx.store).get(username),
            uid=acct.uid,
            login=login_state(username),
            running_apps=by_control(ctx, lambda c: c.running(ctx, username)),
            installed_apps=by_control(ctx, lambda c: c.installed(ctx, username)),
            has_processes=bool(accounts.pids_of(acct.uid)),
        )


def by_control(ctx: Context, ask: Callable[[AppControl], list[str]]) -> dict[str, list[str]]:
    """{control name: ASK(control)} for the host's one app control (nothing without one)."""
    control = ctx.extensions.app_control
    return {control.name: ask(control)} if control is not None else {}


def app_controls(ctx: Context) -> dict[str, AppControl]:
    control = ctx.extensions.app_control
    return {control.name: control} if control is not None else {}
