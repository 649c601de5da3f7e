"""The app framework: the catalog, installs as plans, credentials, status.

An install is a :class:`~provisioner.steps.Plan`: record, ports, credentials, files, the
app's own steps (a database...), the owner's copy, the supervisor program, a readiness wait;
if any step fails the steps already done are undone, so a failed install leaves nothing.

>>> sorted(catalog())[:1]
['jupyterlab']
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import pwd
import socket
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from provisioner.apps import homefiles
from provisioner.apps.registry import AppRegistry, InstallRecord
from provisioner.apps.vault import KEY_FILE_NAME, Vault, generate_secret
from provisioner.config import AppsConfig
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.limits import place
from provisioner.steps import Plan, Step, apply
from provisioner.store import SlotRecord, current_actor
from provisioner.supervisor import Program, SupervisorBackend, supervisor_for

APPS_DIR = "apps"  # under the slot's home: ~/apps/<app>/
CREDENTIALS_FILE = "credentials.json"  # the owner's 0600 copy: ~/apps/<app>/credentials.json


@dataclass(frozen=True)
class AppSettings:
    """The ``[apps]`` section: port range, the shared install root, readiness timeout."""

    port_min: int = 40000
    port_max: int = 40999
    shared_dir: Path = Path("/opt/slotwarden/apps")
    # Apps that listen on Unix sockets bind them under here (see provisioner.apps.appsockets).
    socket_dir: Path = Path("/var/lib/slotwarden-apps")
    ready_timeout: int = 120
    per_app: dict[str, dict[str, Any]] = field(default_factory=dict)
    frontdoor_base: str = ""  # https://HOST[:PORT] of the Hub's front door ([hub] listen / public_url)

    @property
    def port_range(self) -> range:
        return range(self.port_min, self.port_max + 1)

    def of(self, app: str) -> dict[str, Any]:
        """The raw ``[apps.<app>]`` table (each app validates its own keys)."""
        return self.per_app.get(app, {})

    @classmethod
    def from_config(cls, section: AppsConfig) -> AppSettings:
        """From the validated ``[apps]`` section (:class:`provisioner.config.AppsConfig`)."""
        return cls(port_min=section.port_min, port_max=section.port_max, shared_dir=section.shared_dir,
                   socket_dir=section.socket_dir, ready_timeout=section.ready_timeout, per_app=section.per_app())


@dataclass(frozen=True)
class Installation:
    """Where one app of one slot lives: the slot user, its home, the app's ports."""

    username: str
    app: str
    home: Path
    uid: int
    gid: int
    ports: dict[str, int]
    settings: AppSettings

    @property
    def rel_dir(self) -> str:
        """The app's directory relative to the home (for :mod:`homefiles`)."""
        return f"{APPS_DIR}/{self.app}"

    @property
    def app_dir(self) -> Path:
        return self.home / self.rel_dir

    @property
    def port(self) -> int:
        return self.ports["http"]

    @property
    def socket(self) -> Path:
        """Where an app that listens on a Unix socket binds it (``App.unix_socket``)."""
        from provisioner.apps.appsockets import socket_path

        return socket_path(self.settings.socket_dir, self.username, self.app)

    def write(self, rel: str, data: str | bytes, mode: int = 0o600) -> Path:
        """Write ``~/apps/<app>/REL`` as the slot user would own it (0600 by default)."""
        return homefiles.write_file(self.home, f"{self.rel_dir}/{rel}", data, self.uid, self.gid, mode)

    def mkdir(self, rel: str, mode: int = 0o700) -> Path:
        return homefiles.make_dirs(self.home, f"{self.rel_dir}/{rel}", self.uid, self.gid, mode)


class App:
    """One catalog entry. Subclasses fill in the hooks; the framework does the rest."""

    name: str = ""
    title: str = ""
    description: str = ""
    needs: tuple[str, ...] = ()
    # Port purposes to allocate; "http" is where the operator and the owner log in.
    port_purposes: tuple[str, ...] = ("http",)
    # Secrets generated per install; "password" is the login password.
    secret_names: tuple[str, ...] = ("password",)
    # Listens on Installation.socket (no TCP port; served under /apps/<slot>/<app>/ unstripped).
    unix_socket: bool = False

    def version(self, settings: AppSettings) -> str | None:
        """The version that would be installed, or None if it is not installed on this host."""
        raise NotImplementedError

    def check(self, ctx: Context, settings: AppSettings) -> None:
        """Raise SlotError (one line, naming what is missing) if this host cannot run the app."""
        if self.version(settings) is None:
            raise SlotError(f"{self.name} is not installed on this host (needs {', '.join(self.needs)})")

    def configure(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> None:
        """Write the app's config and data directories (called again by rotate with new creds)."""
        raise NotImplementedError

    def install_steps(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> list[Step]:
        """Extra steps before the programs start (a database...), each with its undo."""
        return []

    def after_start(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> None:
        """Run once the programs are up (e.g. WordPress's own install)."""

    def uninstall(self, ctx: Context, inst: Installation) -> None:
        """Remove what the app keeps outside its directory (a database...). Absent is fine."""

    def rotate(self, ctx: Context, inst: Installation, old: dict[str, str], new: dict[str, str],
               supervisor: SupervisorBackend) -> None:
        """Apply NEW credentials: by default stop, rewrite the config, start."""
        for prog in self.programs(ctx, inst):
            supervisor.stop(prog.name)
        self.configure(ctx, inst, new)
        for prog in self.programs(ctx, inst):
            supervisor.start(prog.name)

    def programs(self, ctx: Context, inst: Installation) -> list[Program]:
        """The long-running programs (the first is the app's own)."""
        raise NotImplementedError

    def wait_ready(self, inst: Installation, timeout: float) -> None:
        """Wait until the app's own listener answers; a stranger's listener (a squatter) fails at once."""
        if self.unix_socket:
            from provisioner.apps.appsockets import wait_socket

            wait_socket(inst.settings.socket_dir, inst.username, inst.app, inst.uid, timeout)
        else:
            wait_listening(inst.port, timeout, inst.uid)

    def url(self, inst: Installation) -> str:
        return f"http://127.0.0.1:{inst.port}/"

    def login_name(self, inst: Installation) -> str:
        """The name to log in with (the slot's username unless the app has none)."""
        return inst.username

    def describe(self, settings: AppSettings) -> dict[str, Any]:
        return {"app": self.name, "title": self.title, "description": self.description,
                "version": self.version(settings), "needs": list(self.needs),
                "available": self.version(settings) is not None}


@cache
def catalog() -> dict[str, App]:
    """Every app: the modules of this package that define ``APP``."""
    apps: dict[str, App] = {}
    from provisioner import apps as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        app = getattr(module, "APP", None)
        if isinstance(app, App):
            apps[app.name] = app
    return apps


def get_app(name: str) -> App:
    app = catalog().get(name) if isinstance(name, str) else None
    if app is None:
        raise BadInput(f"no app named {name!r} in the catalog (slotctl app list)")
    return app


def settings_of(ctx: Context) -> AppSettings:
    from dataclasses import replace

    from provisioner.hub.frontdoor import public_base

    return replace(AppSettings.from_config(ctx.config.apps), frontdoor_base=public_base(ctx.config))


def registry_of(ctx: Context) -> AppRegistry:
    return AppRegistry(ctx.store, Vault(ctx.config.state_dir / KEY_FILE_NAME))


@dataclass(frozen=True)
class AppCredentials:
    """What the owner logs in with; ``secrets`` holds every generated secret of the install."""

    slot: str
    app: str
    username: str
    password: str = field(repr=False)
    url: str
    secrets: dict[str, str] = field(repr=False)

    frontdoor_url: str = ""  # https://HOST/apps/<slot>/<app>/ when the Hub's front door serves it

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "app": self.app, "username": self.username, "password": self.password,
                "url": self.url, "frontdoor_url": self.frontdoor_url,
                **{k: v for k, v in self.secrets.items() if k != "password"}}


def _slot_for_apps(ctx: Context, username: str, *, creating: bool = False) -> SlotRecord:
    rec = ctx.store.get_slot(username) if username else None
    allowed = {"active", "creating"} if creating else {"active"}
    if rec is None or rec.state not in allowed:
        raise SlotError(f"no active slot named {username!r}")
    return rec


def _installation(ctx: Context, rec: SlotRecord, app: App, ports: dict[str, int]) -> Installation:
    try:
        pw = pwd.getpwnam(rec.username)
    except KeyError:
        raise SlotError(f"slot {rec.username!r} has no system user") from None
    return Installation(rec.username, app.name, Path(rec.home), pw.pw_uid, pw.pw_gid, ports, settings_of(ctx))


def _credentials(app: App, inst: Installation, secrets_: dict[str, str]) -> AppCredentials:
    return AppCredentials(inst.username, app.name, app.login_name(inst), secrets_["password"], app.url(inst),
                          secrets_, frontdoor_url(inst))


def frontdoor_url(inst: Installation) -> str:
    """The app's address through the Hub's front door."""
    base = inst.settings.frontdoor_base
    return f"{base}/apps/{inst.username}/{inst.app}/" if base else ""


def _write_owner_copy(app: App, inst: Installation, secrets_: dict[str, str]) -> None:
    data = _credentials(app, inst, secrets_).as_dict()
    inst.write(CREDENTIALS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def wait_listening(port: int, timeout: float, uid: int) -> None:
    """Wait until the slot's own process (UID) listens on 127.0.0.1:PORT; a stranger's listener fails.

    Whoever answers is not enough: while the app was down another user may have bound the port.
    """
    from provisioner.apps.listeners import ListenerRefused, check_owner, listener_owners

    deadline = time.monotonic() + timeout
    while True:
        if listener_owners(port):
            check_owner(port, uid)  # raises ListenerRefused for a squatter, at once
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise ListenerRefused(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")
        time.sleep(0.2)


def stop_leftovers(inst: Installation) -> int:
    """Kill the slot user's processes still working in the app's directory; return how many.

    A program killed hard can leave children (PHP workers, kernels) that its supervisor no
    longer knows; they are recognised by their working directory, under ``~/apps/<app>``.
    """
    import os
    import signal

    from provisioner.accounts import pids_of

    prefix = str(inst.app_dir)
    killed = 0
    for pid in pids_of(inst.uid):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def wait_closed(ports: list[int], timeout: float = 15.0) -> None:
    """Wait until nothing listens on PORTS any more (workers outlive their master briefly)."""
    from provisioner.apps.registry import listening_ports

    deadline = time.monotonic() + timeout
    while set(ports) & listening_ports():
        if time.monotonic() > deadline:
            raise SlotError(f"ports {sorted(set(ports) & listening_ports())} still listened on after the app stopped")
        time.sleep(0.1)


def plan_install(ctx: Context, rec: SlotRecord, app: App) -> tuple[Plan, dict[str, Any]]:
    """The steps that install APP into slot REC, and the state they fill in as they run.

    Each step undoes itself if a later one fails. The state gets ``inst`` (the
    :class:`Installation`, once ports are allocated) and ``secrets``.
    """
    settings = settings_of(ctx)
    reg = registry_of(ctx)
    sup = supervisor_for(ctx)
    name, actor = rec.username, current_actor()
    version = app.version(settings)
    state: dict[str, Any] = {}

    def inst() -> Installation:
        return state["inst"]  # type: ignore[no-any-return]

    def check() -> None:
        app.check(ctx, settings)

    def record() -> None:
        reg.begin_install(name, app.name, version)
        state["recorded"] = True

    def unrecord() -> None:
        if state.get("recorded"):  # never the row of an install that was there before
            reg.forget_install(name, app.name)

    def ports() -> None:
        allocated: dict[str, int] = {}
        for purpose in app.port_purposes:
            allocated[purpose] = reg.allocate_port(name, app.name, purpose, settings.port_range)
        state["inst"] = _installation(ctx, rec, app, allocated)

    def credentials() -> None:
        state["secrets"] = {k: generate_secret() for k in app.secret_names}
        reg.put_credentials(name, app.name, state["secrets"])

    def files() -> None:
        i = inst()
        homefiles.make_dirs(i.home, APPS_DIR, i.uid, i.gid, 0o700)
        i.mkdir(".")
        app.configure(ctx, i, state["secrets"])

    def remove_files() -> None:
        if "inst" in state:
            homefiles.remove_tree(inst().home, inst().rel_dir)
            homefiles.remove_empty_dir(inst().home, APPS_DIR)

    def programs() -> None:
        for prog in app.programs(ctx, inst()):
            sup.ensure_program(place(ctx, prog))

    def remove_programs() -> None:
        if "inst" in state:
            for prog in app.programs(ctx, inst()):
                sup.remove_program(prog.name)
            stop_leftovers(inst())
            wait_closed(list(inst().ports.values()))

    def ready() -> None:
        app.wait_ready(inst(), settings.ready_timeout)
        app.after_start(ctx, inst(), state["secrets"])

    def activate() -> None:
        with ctx.store.transaction():
            reg.set_state(name, app.name, "installed")
            ctx.store.audit(actor, "app.install", name, {"app": app.name, "version": version,
                                                         "ports": inst().ports})

    steps = [
        Step("app-check", f"check that {app.name} can run here ({', '.join(app.needs)})", check),
        Step("app-record", f"record {app.name} as being installed in {name}", record, unrecord),
        Step("app-ports", f"allocate {', '.join(app.port_purposes) or 'no'} port(s) in "
                          f"{settings.port_min}-{settings.port_max}", ports,
             lambda: reg.release_ports(name, app.name)),
        Step("app-credentials", f"generate {', '.join(app.secret_names)} (sealed AES-GCM in the store)",
             credentials, lambda: reg.delete_credentials(name, app.name)),
        Step("app-files", f"write {rec.home}/{APPS_DIR}/{app.name} (config 0600, owner {name})", files,
             remove_files),
    ]
    # The app's own steps need the ports and secrets: they are planned lazily inside one step.
    def app_steps() -> None:
        state["app_plan"] = Plan(f"{app.name} extra", app.install_steps(ctx, inst(), state["secrets"]))
        apply(state["app_plan"])

    def undo_app_steps() -> None:
        if "inst" in state:
            app.uninstall(ctx, inst())

    steps += [
        Step("app-setup", f"{app.name}: its own set-up (databases, accounts)", app_steps, undo_app_steps),
        Step("app-owner-copy", f"write the owner's copy {rec.home}/{APPS_DIR}/{app.name}/{CREDENTIALS_FILE} (0600)",
             lambda: _write_owner_copy(app, inst(), state["secrets"])),
        Step("app-programs", f"run {app.name} as {name} under {sup.name}", programs, remove_programs),
        Step("app-ready", f"wait for {app.name} to answer on its {'socket' if app.unix_socket else 'port'}", ready),
        Step("app-activate", f"mark {app.name} installed in {name}", activate),
    ]
    return Plan(f"install {app.name} in {name}", steps), state


def install(ctx: Context, username: str, app_name: str, *, creating: bool = False) -> AppCredentials:
    """Install APP_NAME into slot USERNAME; returns the generated credentials. The caller holds the
    slot's lock and checked its plan (:func:`provisioner.operations.install_app`).

    On failure everything done so far is undone and StepFailed says which step and why.
    CREATING: for ``slot create --app`` (the slot is still being created).
    """
    return _install(ctx, username, get_app(app_name), creating=creating)


def _install(ctx: Context, username: str, app: App, *, creating: bool) -> AppCredentials:
    rec = _slot_for_apps(ctx, username, creating=creating)
    existing = registry_of(ctx).get(username, app.name)
    if existing is not None:
        raise SlotError(f"{app.name} is already installed in slot {username} ({existing.state}); "
                        + ("'slotctl app uninstall' finishes it" if existing.state != "installed" else
                           "'slotctl app creds' shows its credentials"))
    plan, state = plan_install(ctx, rec, app)
    apply(plan)
    return _credentials(app, state["inst"], state["secrets"])


def _existing(ctx: Context, username: str, app_name: str) -> tuple[App, InstallRecord, Installation]:
    app = get_app(app_name)
    rec = ctx.store.get_slot(username) if username else None
    if rec is None:
        raise SlotError(f"no slot named {username!r}")
    reg = registry_of(ctx)
    inst_rec = reg.get(username, app.name)
    if inst_rec is None:
        raise SlotError(f"{app.name} is not installed in slot {username}")
    return app, inst_rec, _installation(ctx, rec, app, reg.ports(username, app.name))


def plan_uninstall(ctx: Context, username: str, app_name: str) -> Plan:
    """The steps that remove APP from slot USERNAME, leaving nothing behind (the audit stays).

    Every step tolerates what is already gone, so an interrupted uninstall is finished by
    running it again.
    """
    app, _rec, inst = _existing(ctx, username, app_name)
    reg = registry_of(ctx)
    sup = supervisor_for(ctx)
    actor = current_actor()

    def stop() -> None:
        reg.set_state(username, app.name, "removing")
        for prog in app.programs(ctx, inst):
            sup.remove_program(prog.name)
        stop_leftovers(inst)
        wait_closed(list(inst.ports.values()))

    def files() -> None:
        homefiles.remove_tree(inst.home, inst.rel_dir)
        homefiles.remove_empty_dir(inst.home, APPS_DIR)

    def forget() -> None:
        with ctx.store.transaction():
            reg.release_ports(username, app.name)
            reg.delete_credentials(username, app.name)
            reg.forget_install(username, app.name)
            ctx.store.audit(actor, "app.uninstall", username, {"app": app.name})

    return Plan(f"uninstall {app.name} from {username}", [
        Step("app-stop", f"stop {app.name} and remove it from {sup.name}", stop),
        Step("app-teardown", f"{app.name}: remove what it keeps outside the home", lambda: app.uninstall(ctx, inst)),
        Step("app-files", f"remove {inst.app_dir} (config, data, the owner's copy)", files),
        Step("app-forget", "release its ports, delete its credentials and install row", forget),
    ])


def uninstall(ctx: Context, username: str, app_name: str) -> Plan:
    """Uninstall APP_NAME from slot USERNAME; returns the applied plan. The caller holds the slot's lock."""
    plan = plan_uninstall(ctx, username, app_name)
    apply(plan)
    return plan


def app_credentials(ctx: Context, username: str, app_name: str) -> AppCredentials:
    """Reveal the credentials of an installed app to the operator (audited, never the secret)."""
    app, _rec, inst = _existing(ctx, username, app_name)
    secrets_ = registry_of(ctx).credentials(username, app.name)
    if secrets_ is None:
        raise SlotError(f"{app.name} in slot {username} has no stored credentials")
    ctx.store.audit(current_actor(), "app.creds.reveal", username, {"app": app.name})
    return _credentials(app, inst, secrets_)


def rotate(ctx: Context, username: str, app_name: str) -> AppCredentials:
    """New credentials for an installed app, applied to the running app. The caller holds the slot's lock."""
    app, rec, inst = _existing(ctx, username, app_name)
    if rec.state != "installed":
        raise SlotError(f"{app.name} in slot {username} is {rec.state}, not installed")
    reg = registry_of(ctx)
    sup = supervisor_for(ctx)
    old = reg.credentials(username, app.name) or {}
    new = {k: generate_secret() for k in app.secret_names}
    settings = inst.settings

    def apply_new() -> None:
        app.rotate(ctx, inst, old, new, sup)
        app.wait_ready(inst, settings.ready_timeout)

    def restore_old() -> None:
        app.rotate(ctx, inst, new, old, sup)

    def store_new() -> None:
        with ctx.store.transaction():
            reg.put_credentials(username, app.name, new)
            ctx.store.audit(current_actor(), "app.rotate", username, {"app": app.name})

    apply(Plan(f"rotate {app.name} in {username}", [
        Step("rotate-apply", f"apply new credentials to {app.name}", apply_new, restore_old),
        Step("rotate-store", "seal the new credentials in the store", store_new),
        Step("rotate-owner-copy", "rewrite the owner's copy", lambda: _write_owner_copy(app, inst, new)),
    ]))
    return _credentials(app, inst, new)


def app_status(ctx: Context, username: str) -> list[dict[str, Any]]:
    """Each app of slot USERNAME: state, running?, pid, port, since (from the supervisor)."""
    if ctx.store.get_slot(username) is None:
        raise SlotError(f"no slot named {username!r}")
    reg = registry_of(ctx)
    sup = supervisor_for(ctx)
    out: list[dict[str, Any]] = []
    for rec in reg.installs(username):
        app = catalog().get(rec.app)
        ports = reg.ports(username, rec.app)
        row: dict[str, Any] = {"app": rec.app, "state": rec.state, "version": rec.version,
                               "port": ports.get("http"), "ports": ports, "installed_at": rec.installed_at}
        if app is not None:
            inst = _installation(ctx, ctx.store.get_slot(username), app, ports)  # type: ignore[arg-type]
            progs = [sup.status(p.name) for p in app.programs(ctx, inst)]
            row.update(running=bool(progs) and all(p.running for p in progs),
                       pid=progs[0].pid if progs else None, since=progs[0].since if progs else None,
                       url=app.url(inst), frontdoor_url=frontdoor_url(inst), programs=[p.as_dict() for p in progs])
        out.append(row)
    return out
