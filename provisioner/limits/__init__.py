"""Per-slot resource limits enforced by the kernel: CPU, memory, swap, processes, I/O.

One backend per file, picked through :data:`BACKENDS` (``[limits] backend``, ``auto`` by
default): ``cgroup-v1`` (the memory, cpu, pids and blkio controllers directly, logins placed by
``pam_slotwarden_session.so``, supervisord programs placed before they drop to the slot user)
and ``systemd`` (properties of the slot's ``user-UID.slice``, which holds its pam_systemd
sessions and its app units). The plan steps live in :mod:`provisioner.limits.steps`.

>>> sorted(BACKENDS)
['cgroup-v1', 'none', 'systemd']
"""

from __future__ import annotations

from provisioner.limits.enforcement import LimitsBackend, LimitsError, Placement, SlotTarget
from provisioner.limits.steps import (
    BACKENDS,
    LimitRecords,
    change_plan_steps,
    creation_steps,
    drift,
    limits_of,
    load_limits_backend,
    place,
    removal_steps,
)

__all__ = ["BACKENDS", "LimitRecords", "LimitsBackend", "LimitsError", "Placement", "SlotTarget",
           "change_plan_steps", "creation_steps", "drift", "limits_of", "load_limits_backend", "place",
           "removal_steps"]


def _register() -> None:
    from provisioner import datareport, host, slots
    from provisioner.limits.steps import data_items, host_steps, slot_fields

    if creation_steps not in slots.CREATION_EXTENSIONS:
        # First: the slot's cgroup and limits exist before any app of it starts.
        slots.CREATION_EXTENSIONS.insert(0, creation_steps)
        slots.REMOVAL_EXTENSIONS.append(removal_steps)
    if host_steps not in host.HOST_INIT_EXTENSIONS:
        host.HOST_INIT_EXTENSIONS.insert(0, host_steps)  # before the supervisor starts the apps
    if slot_fields not in slots.DETAIL_SOURCES:
        slots.DETAIL_SOURCES.append(slot_fields)
    if data_items not in datareport.SOURCES:
        datareport.SOURCES.append(data_items)


_register()
