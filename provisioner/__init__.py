"""slotwarden's provisioner: turn a purchase into a slot on this host, and undo it.

The front door, :mod:`provisioner.operations` re-exported here, used by the CLI, the API, the
Hub bridge, the Ansible module and the tests alike; every change runs under the slot's lock::

    from provisioner import Context, create_slot, remove_slot
    ctx = Context()
    created = create_slot(ctx, "alice", "alice@example.com", "DE", "5G")
    remove_slot(ctx, "alice")

The operations and :class:`Context` are imported on first use, so ``import provisioner.names``
(the Hub's web process, the guard's tools) and ``slotctl --help`` stay light: neither loads the
configuration model (pydantic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioner.context import Context
    from provisioner.operations import (
        app_credentials,
        app_status,
        change_password,
        change_plan,
        create_many,
        create_slot,
        get_slot,
        install_app,
        remove_many,
        remove_slot,
        rotate_app,
        set_password,
        slot_status,
        suspend,
        uninstall_app,
        unsuspend,
        update_slot,
    )

__all__ = ["Context", "app_credentials", "app_status", "change_password", "change_plan", "create_many",
           "create_slot", "get_slot", "install_app", "remove_many", "remove_slot", "rotate_app", "set_password",
           "slot_status", "suspend", "uninstall_app", "unsuspend", "update_slot"]


def __getattr__(name: str) -> Any:
    if name == "Context":
        from provisioner.context import Context

        return Context
    if name in __all__:
        from provisioner import operations

        return getattr(operations, name)
    raise AttributeError(f"module 'provisioner' has no attribute {name!r}")
