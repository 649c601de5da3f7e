"""Backend choices on the command line, read from the backend map the command runs with.

``--quota-backend`` offers ``auto`` and every name of the quota backends' map: the module's
:data:`provisioner.quota.BACKENDS`, or the map a caller hands the root command as
``obj={"quota_backends": {...}}`` (how a test adds a fake backend without touching a module).

>>> QUOTA_BACKEND.names(None)
['auto', 'btrfs', 'usrquota', 'none']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from provisioner.quota import BACKENDS as QUOTA_BACKENDS

# click 8.2 made ParamType generic; Debian 12's 8.1 (the package's) cannot be subscripted.
if TYPE_CHECKING:
    _ParamType = click.ParamType[str]
else:
    _ParamType = click.ParamType


class BackendChoice(_ParamType):
    """``auto`` or a name of the backend map stored under KEY in the root's ``obj`` (else DEFAULT)."""

    name = "backend"

    def __init__(self, key: str, default: Mapping[str, str]) -> None:
        self.key = key
        self.default = default

    def backends(self, ctx: click.Context | None) -> Mapping[str, str]:
        """The map in force for CTX's command line."""
        obj = ctx.find_root().obj if ctx is not None else None
        found = obj.get(self.key) if isinstance(obj, dict) else None
        return found if found is not None else self.default

    def names(self, ctx: click.Context | None) -> list[str]:
        return ["auto", *self.backends(ctx)]

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        # click 8.1 passes no context: the module's map is shown.
        return f"[{'|'.join(self.names(ctx))}]"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        names = self.names(ctx)
        if value in names:
            return str(value)
        self.fail(f"{value!r} is not one of {', '.join(map(repr, names))}.", param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(n) for n in self.names(ctx) if n.startswith(incomplete)]


QUOTA_BACKEND = BackendChoice("quota_backends", QUOTA_BACKENDS)


def quota_backends() -> Mapping[str, str]:
    """The quota backends' map of the running command line."""
    return QUOTA_BACKEND.backends(click.get_current_context(silent=True))
