"""``host init``: prepare this host for slots — slots root, quota backend, hidepid, admin group.

Idempotent: it gathers facts, plans only what differs, and an unchanged host yields an empty
plan. Run again with different options it converges (grows the loopback image, toggles
hidepid) or refuses with the reason (a different slots root or backend while slots exist).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from provisioner import accounts
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.names import format_size, parse_size
from provisioner.quota import QuotaBackend, backend_choices, detect_backend, load_backend, loopback_backends, mount_of
from provisioner.runner import run
from provisioner.steps import Plan, Step, apply
from provisioner.store import current_actor

FSTAB = Path("/etc/fstab")


@dataclass(frozen=True)
class HostRequest:
    """What the operator asked ``host init`` for."""

    slots_root: Path
    quota_backend: str
    loopback_image: Path | None
    loopback_size: int | None
    hidepid: bool
    persist: bool


def proc_hidepid() -> tuple[str | None, str | None]:
    """(hidepid, gid) options /proc is mounted with now."""
    _mnt, _fs, opts = mount_of(Path("/proc"))
    hide = next((o.split("=", 1)[1] for o in opts if o.startswith("hidepid=")), None)
    gid = next((o.split("=", 1)[1] for o in opts if o.startswith("gid=")), None)
    return hide, gid


def _fstab_has(mountpoint: str) -> bool:
    try:
        return any(line.split()[1:2] == [mountpoint] for line in FSTAB.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    except OSError:
        return False


def _fstab_set(mountpoint: str, line: str) -> None:
    """Add LINE for MOUNTPOINT to fstab, replacing an earlier slotwarden line for it."""
    lines = FSTAB.read_text().splitlines() if FSTAB.exists() else []
    lines = [ln for ln in lines if not (ln.split()[1:2] == [mountpoint] and "slotwarden" in ln)]
    lines.append(line)
    tmp = FSTAB.with_suffix(".slotwarden.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, FSTAB)


# A setuid file in a home (a tenant's own, offered to another tenant) never elevates, and no
# device node made there opens a device.
SLOTS_MOUNT_OPTIONS = "nosuid,nodev"


def _fstab_line(mountpoint: str) -> str | None:
    try:
        for line in FSTAB.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and line.split()[1:2] == [mountpoint]:
                return line
    except OSError:
        pass
    return None


def _mount_option_steps(root: Path, persist: bool) -> list[Step]:
    """Remount the slots root nosuid,nodev when it is a mount point of its own without them.

    With PERSIST, its fstab line (whoever wrote it) gets the two options too. A slots root on a
    filesystem shared with the system (``/home`` on ``/``) is left as it is: remounting ``/``
    nosuid would break the system's own setuid programs.
    """
    if not root.exists():
        return []  # mounted by the steps above, with the options
    steps: list[Step] = []
    mnt, _fs, opts = mount_of(root)
    if mnt != str(root):
        return []
    if not {"nosuid", "nodev"} <= opts:
        steps.append(Step("mount-options", f"remount {root} {SLOTS_MOUNT_OPTIONS}",
                          lambda: run(["mount", "-o", f"remount,{SLOTS_MOUNT_OPTIONS}", str(root)])))
    line = _fstab_line(str(root))
    fields = line.split() if line else []
    if persist and len(fields) >= 4 and not {"nosuid", "nodev"} <= set(fields[3].split(",")):
        extra = [o for o in SLOTS_MOUNT_OPTIONS.split(",") if o not in fields[3].split(",")]
        fields[3] = ",".join([o for o in fields[3].split(",") if o not in {"suid", "dev"}] + extra)
        new_line = " ".join(fields)
        steps.append(Step("fstab-options", f"add {SLOTS_MOUNT_OPTIONS} to {root}'s line in {FSTAB}",
                          lambda: _fstab_replace(str(root), new_line)))
    return steps


def _fstab_replace(mountpoint: str, line: str) -> None:
    """Replace the (first) fstab line for MOUNTPOINT by LINE."""
    lines = FSTAB.read_text().splitlines()
    for i, ln in enumerate(lines):
        if ln.strip() and not ln.lstrip().startswith("#") and ln.split()[1:2] == [mountpoint]:
            lines[i] = line
            break
    tmp = FSTAB.with_suffix(".slotwarden.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, FSTAB)


def parse_host_request(
    ctx: Context,
    slots_root: str | None,
    quota_backend: str | None,
    loopback_image: str | None,
    loopback_size: str | None,
    hidepid: bool | None,
    persist: bool,
) -> HostRequest:
    """Validate the options, filling gaps from the configuration."""
    image = Path(loopback_image) if loopback_image else None
    if image is not None and not image.is_absolute():
        raise BadInput("--loopback-image must be an absolute path")
    if loopback_size is not None and image is None:
        raise BadInput("--loopback-size needs --loopback-image")
    size = parse_size(loopback_size) if loopback_size is not None else None
    if size is not None and size < 128 << 20:
        raise BadInput("--loopback-size must be at least 128M (the filesystem needs room for metadata)")
    if slots_root:
        root = Path(slots_root)
    elif image is not None:
        root = ctx.config.host.loopback_slots_root
    else:
        root = ctx.config.host.slots_root
    if not root.is_absolute() or root == Path("/"):
        raise BadInput("--slots-root must be an absolute path other than /")
    backend = quota_backend or ctx.config.host.quota_backend
    backends = ctx.quota_backends
    if backend != "auto" and backend not in backends:
        raise BadInput(f"--quota-backend must be {backend_choices(backends)}")
    makers = loopback_backends(backends)
    if image is not None and not makers:
        raise BadInput("--loopback-image: no quota backend makes a loopback filesystem")
    if image is not None and backend not in {"auto", *makers}:
        fstypes = "/".join(sorted({str(load_backend(n, root, backends=backends).loopback_fstype) for n in makers}))
        raise BadInput(f"--loopback-image makes a {fstypes} filesystem: "
                       f"use --quota-backend {', '.join(makers)} or auto")
    return HostRequest(root, backend, image, size, ctx.config.host.hidepid if hidepid is None else hidepid, persist)


def plan_host_init(ctx: Context, req: HostRequest) -> Plan:
    """Compare REQ with the host and return the steps that make them agree."""
    steps: list[Step] = []
    current = ctx.store.host_settings()
    root = req.slots_root
    admin = ctx.config.host.admin_group
    backends = ctx.quota_backends

    def quota_backend(name: str) -> QuotaBackend:
        return load_backend(name, root, bytes_per_inode=ctx.config.slots.bytes_per_inode, backends=backends)

    # The backend that makes the loopback filesystem (and then caps the slots on it).
    maker = None
    if req.loopback_image is not None:
        maker = quota_backend(loopback_backends(backends)[0] if req.quota_backend == "auto" else req.quota_backend)

    if not accounts.group_exists(admin):
        steps.append(Step("admin-group", f"create system group {admin} (sees all processes)",
                          lambda: run(["groupadd", "--system", admin])))

    if req.loopback_image is not None and maker is not None:
        image, fstype = req.loopback_image, maker.loopback_fstype
        size = req.loopback_size or (4 << 30)
        if not image.exists():
            def make_image() -> None:
                image.parent.mkdir(parents=True, exist_ok=True)
                with open(image, "wb") as f:
                    os.fchmod(f.fileno(), 0o600)
                    f.truncate(size)
                maker.make_loopback(image)

            steps.append(Step("image", f"create a {format_size(size)} {fstype} image {image}", make_image,
                              lambda: image.unlink(missing_ok=True)))
        elif req.loopback_size is not None and image.stat().st_size != size:
            if size < image.stat().st_size:
                raise SlotError(f"{image} is {format_size(image.stat().st_size)}; shrinking it is not supported")
            steps.append(Step("grow", f"grow {image} to {format_size(size)}",
                              lambda: _grow_image(image, size, maker)))
        mnt = mount_of(root)[0] if root.exists() else None
        if mnt != str(root):
            def mount() -> None:
                root.mkdir(parents=True, exist_ok=True)
                run(["mount", "-o", f"loop,{SLOTS_MOUNT_OPTIONS}", str(image), str(root)])

            steps.append(Step("mount", f"mount {image} on {root} ({SLOTS_MOUNT_OPTIONS})", mount,
                              lambda: run(["umount", str(root)], check=False)))
        line = f"{image} {root} {fstype} loop,nofail,{SLOTS_MOUNT_OPTIONS} 0 0 # slotwarden"
        existing = _fstab_line(str(root))
        if req.persist and existing is None:
            steps.append(Step("fstab", f"add {root} to {FSTAB}", lambda: _fstab_set(str(root), line)))
        elif req.persist and existing != line and existing is not None and "slotwarden" in existing:
            steps.append(Step("fstab", f"set {root}'s line in {FSTAB} ({SLOTS_MOUNT_OPTIONS})",
                              lambda: _fstab_set(str(root), line)))

    exists = root.is_dir()
    if not exists or (root.stat().st_mode & 0o777) != 0o711:
        def make_root() -> None:
            root.mkdir(parents=True, exist_ok=True)
            os.chmod(root, 0o711)  # noqa: S103 - traverse only: tenants reach their home, list nothing

        steps.append(Step("slots-root", f"{root}: directory, mode 0711 (tenants cannot list it)", make_root))

    # The loopback branch above writes its own fstab line with the options.
    steps += _mount_option_steps(root, req.persist and req.loopback_image is None)
    if maker is not None:
        quota = maker
    elif req.quota_backend == "auto":
        quota = quota_backend(detect_backend(root, backends))
    else:
        quota = quota_backend(req.quota_backend)
        if not quota.suits():
            hint = ": use --loopback-image or another --quota-backend" if quota.loopback_fstype else ""
            raise SlotError(f"{root} is not {quota.requirement}{hint}")
    backend = quota.name

    slots = ctx.store.list_slots()
    if slots and current.get("slots_root") not in (None, str(root)):
        raise SlotError(f"{len(slots)} slots live under {current['slots_root']}; "
                        f"remove them before moving the slots root to {root}")
    if slots and current.get("quota_backend") not in (None, backend):
        raise SlotError(f"{len(slots)} slots use quota backend {current['quota_backend']}; "
                        f"remove them before switching to {backend}")

    steps += quota.host_steps()

    hide, gid = proc_hidepid()
    if req.hidepid:
        if hide not in {"invisible", "2"} or gid is None:
            def hide_proc() -> None:
                admin_gid = _gid(admin)
                run(["mount", "-o", f"remount,hidepid=invisible,gid={admin_gid}", "/proc"])

            steps.append(Step("hidepid", f"remount /proc hidepid=invisible, {admin} exempt", hide_proc))
        if req.persist and not _fstab_has("/proc"):
            steps.append(Step("fstab-proc", f"add /proc hidepid to {FSTAB}",
                              lambda: _fstab_set("/proc", f"proc /proc proc defaults,hidepid=invisible,"
                                                          f"gid={_gid(admin)} 0 0 # slotwarden")))
    elif hide not in {None, "0", "off"}:
        steps.append(Step("hidepid", "remount /proc without hidepid",
                          lambda: run(["mount", "-o", "remount,hidepid=0", "/proc"])))

    wanted = {"slots_root": str(root), "quota_backend": backend, "admin_group": admin,
              "hidepid": "yes" if req.hidepid else "no"}
    if req.loopback_image is not None:
        wanted["loopback_image"] = str(req.loopback_image)
    if any(current.get(k) != v for k, v in wanted.items()):
        def record() -> None:
            ctx.store.set_host_settings(wanted)
            ctx.store.audit(current_actor(), "host.init", None, wanted)

        steps.append(Step("settings", f"record host settings {wanted}", record))
    steps.extend(ctx.extensions.host_steps(ctx, req))  # limits, supervisor, metrics, support, hub
    return Plan("host init", steps)


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid


def _grow_image(image: Path, size: int, maker: QuotaBackend) -> None:
    with open(image, "r+b") as f:
        f.truncate(size)
    maker.grow_loopback(image)


def host_init(ctx: Context, req: HostRequest, *, dry_run: bool = False) -> Plan:
    """Plan and (unless DRY_RUN) apply host preparation; returns the plan."""
    plan = plan_host_init(ctx, req)
    if not dry_run:
        apply(plan)
    return plan
