"""``slotctl host ...``: prepare this host for slots."""

from __future__ import annotations

import click
from rich.console import Console

from provisioner.cli.backends import QUOTA_BACKEND, quota_backends
from provisioner.cli.output import emit, json_option
from provisioner.context import Context
from provisioner.host import host_init, parse_host_request
from provisioner.store import upgrade_store


@click.group()
@json_option
def host() -> None:
    """Prepare this host: slots filesystem, quota backend, hidepid, admin group."""


@host.command("init")
@click.option("--slots-root", metavar="DIR",
              help="Where homes live [default: /home; /srv/slots with --loopback-image].")
@click.option("--quota-backend", type=QUOTA_BACKEND,
              help="How quotas are enforced [default: auto, from the slots-root filesystem].")
@click.option("--loopback-image", metavar="FILE", help="Create and mount a filesystem image as the slots root, made "
              "by the quota backend (for kernels without classic quota support).")
@click.option("--loopback-size", metavar="SIZE", help="Size of the image, e.g. 4G [default: 4G].")
@click.option("--hidepid/--no-hidepid", default=None, help="Remount /proc hidepid=invisible [default: on].")
@click.option("--persist/--no-persist", default=True, help="Write the mounts to /etc/fstab [default: on].")
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@json_option
def init(slots_root: str | None, quota_backend: str | None, loopback_image: str | None,
         loopback_size: str | None, hidepid: bool | None, persist: bool, dry_run: bool) -> None:
    """Prepare this host (idempotent: a second run with the same options changes nothing)."""
    ctx = Context(quota_backends=quota_backends())
    if not dry_run:
        upgrade_store(ctx.config)  # a store made by an older slotwarden keeps its rows
    req = parse_host_request(ctx, slots_root, quota_backend, loopback_image, loopback_size, hidepid, persist)
    plan = host_init(ctx, req, dry_run=dry_run)
    settings = ctx.store.host_settings()
    data = {"changed": bool(plan.steps), "dry_run": dry_run, "steps": plan.describe(), "settings": settings}

    def render(c: Console) -> None:
        if not plan.steps:
            c.print("host init: nothing to change")
        for s in plan.steps:
            c.print(f"{'would ' if dry_run else ''}{s.name}: {s.detail}")
        if not dry_run:
            c.print(f"slots root {settings.get('slots_root')}, quota backend {settings.get('quota_backend')}")

    emit(data, render)


@host.command("restore")
@json_option
def restore() -> None:
    """Remake what a reboot lost: each slot's /tmp tmpfs and cgroup limits (at boot, before logins and apps).

    What ``host init`` does for the slots, alone: under systemd the package's
    slotwarden-slot-tmp.service runs it at boot, before sshd, cron, the guard and the app units.
    A host not initialised yet has nothing to restore (no store is made).
    """
    import importlib.util

    from provisioner.steps import Plan, apply

    ctx = Context(quota_backends=quota_backends())
    plan = Plan("restore the slots' limits and /tmp", [])
    try:
        initialised = ctx.config.store.url is not None or ctx.config.db_path.exists()
        if initialised and importlib.util.find_spec("provisioner.limits") is not None:
            from provisioner.limits.steps import host_steps

            plan.steps.extend(host_steps(ctx, None))
            apply(plan)
    finally:
        ctx.close()
    data = {"changed": bool(plan.steps), "steps": plan.describe()}

    def render(c: Console) -> None:
        if not plan.steps:
            c.print("host restore: nothing to restore")
        for s in plan.steps:
            c.print(f"{s.name}: {s.detail}")

    emit(data, render)
