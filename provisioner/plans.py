"""The plans an operator sells, from ``[plans.NAME]`` tables in the configuration.

A plan names a disk quota, the apps a slot on it may install (all when unset) and its limits.
Which plan a slot is on is kept by :mod:`provisioner.lifecycle_records`; this module only reads the
configuration and answers questions about it.

>>> from provisioner.config import load_config_text
>>> cfg = load_config_text('[plans.small]\\nquota = "1G"\\napps = ["gitea"]\\nmax_apps = 1\\n')
>>> get_plan(cfg, "small").quota
1073741824
>>> allows_app(get_plan(cfg, "small"), "gitea", installed=0)
True
"""

from __future__ import annotations

from typing import Any

from provisioner.config import Config, PlanConfig
from provisioner.errors import BadInput
from provisioner.names import format_size, shown


def list_plans(config: Config) -> list[PlanConfig]:
    """Every configured plan, smallest quota first."""
    return sorted(config.plans.values(), key=lambda p: (p.quota, p.name))


def get_plan(config: Config, name: object) -> PlanConfig:
    """The plan NAME; raises BadInput (naming the known plans) when there is none."""
    if not isinstance(name, str) or not name:
        raise BadInput("plan is empty")
    plan = config.plans.get(name)
    if plan is None:
        known = ", ".join(sorted(config.plans)) or "none are configured"
        raise BadInput(f"plan {shown(name)} is not configured (plans: {known})")
    return plan


def allows_app(plan: PlanConfig, app: str, *, installed: int) -> bool:
    """Whether a slot on PLAN that already has INSTALLED apps may install APP."""
    if plan.apps is not None and app not in plan.apps:
        return False
    return plan.max_apps is None or installed < plan.max_apps


def plan_as_dict(plan: PlanConfig) -> dict[str, Any]:
    """A plan for JSON output and the API."""
    return {
        "name": plan.name,
        "quota_bytes": plan.quota,
        "quota": format_size(plan.quota),
        "apps": list(plan.apps) if plan.apps is not None else None,
        "max_apps": plan.max_apps,
        "max_processes": plan.max_processes,
        "description": plan.description,
    }
