"""slotwarden's provisioner: turn a purchase into a slot on this host, and undo it.

The front door, used by the CLI, the Ansible module and the tests alike::

    from provisioner import Context, create_slot, remove_slot
    ctx = Context()
    created = create_slot(ctx, "alice", "alice@example.com", "DE", "5G")
    remove_slot(ctx, "alice")
"""

from __future__ import annotations

from provisioner.context import Context
from provisioner.slots import create_slot, get_slot, remove_slot, reset_password

__all__ = ["Context", "create_slot", "get_slot", "remove_slot", "reset_password"]
