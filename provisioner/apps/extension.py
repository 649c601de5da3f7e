"""The apps' extension: ``slot create --app``, their removal with the slot, the catalog's names reserved.

Its app control (:class:`~provisioner.apps.control.SupervisedApps`) is the host's only one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.apps.control import SupervisedApps
from provisioner.apps.framework import catalog, get_app, install, registry_of, uninstall
from provisioner.context import Context
from provisioner.extensions import Hooks
from provisioner.steps import Step
from provisioner.store import SlotRecord

if TYPE_CHECKING:
    from provisioner.slots import SlotRequest


def _creation_steps(ctx: Context, req: SlotRequest) -> list[Step]:
    wanted = list(getattr(req, "apps", ()) or ())
    for name in wanted:
        get_app(name)  # bad names fail before anything is done
    steps: list[Step] = []
    for name in wanted:
        steps.append(Step(f"app-{name}", f"install {name} in {req.username}",
                          lambda n=name: _install_quiet(ctx, req.username, n),  # type: ignore[misc]
                          lambda n=name: _uninstall_if_there(ctx, req.username, n)))  # type: ignore[misc]
    return steps


def _install_quiet(ctx: Context, username: str, app_name: str) -> None:
    if registry_of(ctx).get(username, app_name) is None:  # a resumed create keeps what it had
        install(ctx, username, app_name, creating=True)


def _uninstall_if_there(ctx: Context, username: str, app_name: str) -> None:
    if registry_of(ctx).get(username, app_name) is not None:
        uninstall(ctx, username, app_name)


def _removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    installed = registry_of(ctx).installs(rec.username)
    return [Step(f"app-{r.app}", f"uninstall {r.app} from {rec.username}",
                 lambda a=r.app: _uninstall_if_there(ctx, rec.username, a))  # type: ignore[misc]
            for r in installed]


def _reserved() -> frozenset[str]:
    return frozenset(catalog())


EXTENSION = Hooks("apps", creation=_creation_steps, removal=_removal_steps, reserved=_reserved,
                  control=SupervisedApps())
