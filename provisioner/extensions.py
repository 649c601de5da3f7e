"""Extensions: what other packages contribute to slot changes, declared in one ordered list.

An extension is an :class:`Extension` (every hook defaults to contributing nothing) that a
package defines as a module attribute; :data:`EXTENSIONS` names them, in the one order every
hook runs in, as lazily resolved ``"module:attribute"`` strings (like the quota backends'
map). Nothing registers itself when imported: the :class:`~provisioner.context.Context` loads
the list (``ctx.extensions``), and a test passes its fakes through the Context instead.

The order matters where steps depend on each other: the limits come first (a slot's cgroup and
limits exist before any app of it starts, and ``host init`` prepares them before the supervisor
starts apps), the apps before the plan record, and removal runs the same order once the slot's
processes are stopped.

>>> list(EXTENSIONS)
['limits', 'supervisor', 'metrics', 'apps', 'lifecycle', 'support', 'notices', 'hub']
>>> Extension().creation_steps(None, None)  # type: ignore[arg-type]
[]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from provisioner.errors import ConfigError

if TYPE_CHECKING:
    from provisioner.context import Context
    from provisioner.datareport import Item
    from provisioner.host import HostRequest
    from provisioner.retention import RuleResult
    from provisioner.slots import SlotRequest
    from provisioner.steps import Step
    from provisioner.store import SlotRecord

    Rule = Callable[[Context, float, bool], RuleResult]

# Name -> "module:attribute" of the extension object, in the order every hook runs.
EXTENSIONS: dict[str, str] = {
    "limits": "provisioner.limits.steps:EXTENSION",
    "supervisor": "provisioner.supervisor:EXTENSION",
    "metrics": "provisioner.metrics:EXTENSION",
    "apps": "provisioner.apps.extension:EXTENSION",
    "lifecycle": "provisioner.lifecycle:EXTENSION",
    "support": "provisioner.support:EXTENSION",
    "notices": "provisioner.notices:EXTENSION",
    "hub": "provisioner.hub.hostinit:EXTENSION",
}


class AppControl(Protocol):
    """What suspension and plan checks need from the apps: which a slot has and runs, stop, start."""

    name: str

    def installed(self, ctx: Context, username: str) -> list[str]:
        """Apps installed in the slot."""

    def running(self, ctx: Context, username: str) -> list[str]:
        """Apps of the slot running now."""

    def stop(self, ctx: Context, username: str, app: str) -> None:
        """Stop APP (idempotent); its files and credentials stay."""

    def start(self, ctx: Context, username: str, app: str) -> None:
        """Start APP (idempotent)."""


class Extension:
    """What one package contributes; each hook returns nothing unless the package overrides it.

    Steps are planned, not run: each hook returns :class:`~provisioner.steps.Step` objects that
    the operation's plan applies (and undoes on failure) in :data:`EXTENSIONS` order.
    """

    name = ""

    def creation_steps(self, ctx: Context, req: SlotRequest) -> list[Step]:
        """Run after the slot's password is set, before it is marked active."""
        return []

    def removal_steps(self, ctx: Context, rec: SlotRecord) -> list[Step]:
        """Run after the slot's processes are stopped, before its home and user go."""
        return []

    def suspension_steps(self, ctx: Context, username: str) -> list[Step]:
        """Run after a suspension's own steps (logins refused, processes stopped)."""
        return []

    def host_steps(self, ctx: Context, req: HostRequest) -> list[Step]:
        """Run by ``host init`` after the slots root, quota backend and hidepid are in place."""
        return []

    def reserved_names(self) -> frozenset[str]:
        """Names no slot may take (the app catalog's)."""
        return frozenset()

    def slot_fields(self, ctx: Context, rec: SlotRecord) -> dict[str, Any]:
        """Extra fields of ``slot show``."""
        return {}

    def data_items(self, ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
        """Rows of ``slotctl data report`` (REC is None for a name that is no slot)."""
        return []

    def retention_rules(self) -> list[Rule]:
        """Rules ``slotctl retention run`` applies after the built-in ones."""
        return []

    def app_control(self) -> AppControl | None:
        """The control of the slot's apps; exactly one extension may have one."""
        return None


@dataclass(frozen=True)
class Hooks(Extension):
    """An extension made of a package's plain functions (the usual case); a hook left out adds nothing.

    >>> Hooks("demo", reserved=lambda: frozenset({"demo"})).reserved_names()
    frozenset({'demo'})
    """

    name: str
    creation: Callable[[Context, SlotRequest], list[Step]] | None = None
    removal: Callable[[Context, SlotRecord], list[Step]] | None = None
    suspension: Callable[[Context, str], list[Step]] | None = None
    host: Callable[[Context, HostRequest], list[Step]] | None = None
    reserved: Callable[[], frozenset[str]] | None = None
    fields: Callable[[Context, SlotRecord], dict[str, Any]] | None = None
    data: Callable[[Context, str, SlotRecord | None], list[Item]] | None = None
    rules: tuple[Rule, ...] = ()
    control: AppControl | None = None

    def creation_steps(self, ctx: Context, req: SlotRequest) -> list[Step]:
        return self.creation(ctx, req) if self.creation else []

    def removal_steps(self, ctx: Context, rec: SlotRecord) -> list[Step]:
        return self.removal(ctx, rec) if self.removal else []

    def suspension_steps(self, ctx: Context, username: str) -> list[Step]:
        return self.suspension(ctx, username) if self.suspension else []

    def host_steps(self, ctx: Context, req: HostRequest) -> list[Step]:
        return self.host(ctx, req) if self.host else []

    def reserved_names(self) -> frozenset[str]:
        return self.reserved() if self.reserved else frozenset()

    def slot_fields(self, ctx: Context, rec: SlotRecord) -> dict[str, Any]:
        return self.fields(ctx, rec) if self.fields else {}

    def data_items(self, ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
        return self.data(ctx, username, rec) if self.data else []

    def retention_rules(self) -> list[Rule]:
        return list(self.rules)

    def app_control(self) -> AppControl | None:
        return self.control


def resolve(name: str) -> Extension | None:
    """The extension NAME of :data:`EXTENSIONS`; None when its package is not installed."""
    module_name, _, attr = EXTENSIONS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None  # an optional package left out of this install
        raise
    ext = getattr(module, attr)
    if not isinstance(ext, Extension):
        raise ConfigError(f"{EXTENSIONS[name]} is not an Extension")
    return ext


def load_extensions(names: Iterable[str] | None = None) -> Extensions:
    """The extensions NAMES (default: every one of :data:`EXTENSIONS`), in the list's order."""
    wanted = list(EXTENSIONS) if names is None else [n for n in EXTENSIONS if n in set(names)]
    return Extensions(tuple(e for n in wanted if (e := resolve(n)) is not None))


@dataclass(frozen=True)
class Extensions:
    """The loaded extensions, in order, with each hook gathered over all of them."""

    members: tuple[Extension, ...]

    def __iter__(self) -> Any:
        return iter(self.members)

    def __add__(self, more: Iterable[Extension]) -> Extensions:
        return Extensions((*self.members, *more))

    def creation_steps(self, ctx: Context, req: SlotRequest) -> list[Step]:
        return [s for e in self.members for s in e.creation_steps(ctx, req)]

    def removal_steps(self, ctx: Context, rec: SlotRecord) -> list[Step]:
        return [s for e in self.members for s in e.removal_steps(ctx, rec)]

    def suspension_steps(self, ctx: Context, username: str) -> list[Step]:
        return [s for e in self.members for s in e.suspension_steps(ctx, username)]

    def host_steps(self, ctx: Context, req: HostRequest) -> list[Step]:
        return [s for e in self.members for s in e.host_steps(ctx, req)]

    def reserved_names(self) -> frozenset[str]:
        return frozenset().union(*(e.reserved_names() for e in self.members))

    def slot_fields(self, ctx: Context, rec: SlotRecord) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for e in self.members:
            out.update(e.slot_fields(ctx, rec))
        return out

    def data_items(self, ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
        return [i for e in self.members for i in e.data_items(ctx, username, rec)]

    def retention_rules(self) -> list[Rule]:
        return [r for e in self.members for r in e.retention_rules()]

    @property
    def app_control(self) -> AppControl | None:
        """The one app control (None on a host without the apps package)."""
        controls = [c for e in self.members if (c := e.app_control()) is not None]
        if len(controls) > 1:
            raise ConfigError(f"{len(controls)} extensions control apps "
                              f"({', '.join(c.name for c in controls)}); exactly one may")
        return controls[0] if controls else None
