"""Executors: where slot changes are applied — this host, or a fleet through Ansible.

One executor per file, picked by name through :data:`EXECUTORS` (lazily imported, so the
local path never pays for Ansible):

- ``local``: the provisioner's front door (:func:`~provisioner.slots.create_slot`,
  :func:`~provisioner.slots.remove_slot`) on this host;
- ``ansible``: ``playbooks/slot.yml`` through ``ansible_runner.run``; on each host the
  ``slotwarden_slot`` module runs the *local* executor's :func:`~provisioner.executors.local.apply_changes`,
  so both paths share one implementation.

Changes are declarative (``state: present|absent``); ``strict`` makes them behave like the
imperative ``slotctl slot create/remove`` (an existing / missing slot is an error).

>>> SlotChange.parse({"username": "alice", "email": "a@example.com", "country": "DE"}).state
'present'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioner.errors import BadInput

EXECUTORS: dict[str, str] = {
    "local": "provisioner.executors.local:LocalExecutor",
    "ansible": "provisioner.executors.ansible:AnsibleExecutor",
}
# The executor behind ``--inventory FILE --host NAME`` (it takes ``inventory``, ``hosts``, ``progress``).
FLEET_EXECUTOR = "ansible"

_CHANGE_KEYS = frozenset({"username", "state", "email", "country", "quota", "payment_ref", "keep_data",
                          "apps", "strict"})


@dataclass(frozen=True)
class SlotChange:
    """The wanted state of one slot on one host. Holds no secret (passwords are generated there)."""

    username: str
    state: str = "present"
    email: str | None = None
    country: str | None = None
    quota: str | int | None = None
    payment_ref: str | None = None
    keep_data: bool = False
    apps: tuple[str, ...] = ()
    strict: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SlotChange:
        """Build from a mapping (module arguments, CSV rows); raises BadInput on a bad shape.

        The field values themselves are validated where they are applied (the provisioner's
        own validators), so the error names the field exactly as a local run would.
        """
        unknown = sorted(set(data) - _CHANGE_KEYS)
        if unknown:
            raise BadInput(f"slot change has unknown key {unknown[0]!r}")
        username = data.get("username")
        if not isinstance(username, str) or not username:
            raise BadInput("slot change needs a username")
        state = data.get("state") or "present"
        if state not in {"present", "absent"}:
            raise BadInput(f"state must be present or absent, not {state!r}")
        apps = data.get("apps") or ()
        if isinstance(apps, str) or not all(isinstance(a, str) for a in apps):
            raise BadInput("apps must be a list of app names")

        def opt(key: str) -> str | None:
            value = data.get(key)
            return None if value in (None, "") else str(value)

        quota = data.get("quota")
        return cls(
            username=username,
            state=state,
            email=opt("email"),
            country=opt("country"),
            quota=None if quota in (None, "") else quota,
            payment_ref=opt("payment_ref"),
            keep_data=bool(data.get("keep_data", False)),
            apps=tuple(apps),
            strict=bool(data.get("strict", False)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "apps": list(self.apps)}


@dataclass(frozen=True)
class SlotOutcome:
    """What happened to one slot change on one host.

    ACTION is ``created``, ``resumed``, ``updated``, ``removed``, ``unchanged`` or ``failed``
    (in check mode: what *would* happen). PASSWORD is set only when a slot was created, APPS
    only when apps were installed; neither is part of :meth:`as_dict` unless asked for.
    """

    host: str
    username: str
    action: str
    changed: bool
    record: dict[str, Any] | None = None
    steps: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0
    password: str | None = field(default=None, repr=False)
    # Credentials of apps installed by this change (secrets: shown once, like PASSWORD).
    apps: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # The record before an update (for --diff); RECORD is the one after.
    before: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self, *, with_password: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "username": self.username, "ok": self.ok,
                               "action": self.action, "changed": self.changed}
        if self.record is not None:
            out.update(self.record)
        if self.steps:
            out["steps"] = self.steps
        if self.error is not None:
            out["error"] = self.error
        if with_password and self.password is not None:
            out["password"] = self.password
        if with_password and self.apps:
            out["apps"] = self.apps
        return out


class Executor(Protocol):
    """Applies slot changes somewhere and reports one outcome per (host, change)."""

    name: str

    def apply(self, changes: list[SlotChange], *, check: bool = False) -> list[SlotOutcome]:
        """Apply CHANGES (in order; a failing change does not stop the others)."""


def load_executor(name: str, *, executors: Mapping[str, str] = EXECUTORS, **options: Any) -> Executor:
    """Instantiate the executor NAME of EXECUTORS with OPTIONS (e.g. ``inventory``/``hosts`` for ansible)."""
    if name not in executors:
        raise BadInput(f"unknown executor {name!r}; choose one of {', '.join(sorted(executors))}")
    module_name, _, cls_name = executors[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    executor: Executor = cls(**options)
    return executor
