"""Per-slot resource limits enforced by the kernel: CPU, memory, swap, processes, I/O, /tmp size.

One backend per file, picked through :data:`BACKENDS` (``[limits] backend``, ``auto`` by
default): ``cgroup-v1`` (the memory, cpu, pids and blkio controllers directly, logins placed by
``pam_slotwarden_session.so``, supervisord programs placed before they drop to the slot user)
and ``systemd`` (properties of the slot's ``user-UID.slice``, which holds its pam_systemd
sessions and its app units). The plan steps live in :mod:`provisioner.limits.steps`; a plan's
``tmp_size`` is a tmpfs of the slot's (:mod:`provisioner.limits.tmpfs`), not a cgroup setting.

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

