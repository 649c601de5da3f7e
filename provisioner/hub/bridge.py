"""The Hub's privileged bridge: a root-owned Unix socket that acts for one logged-in slot at a time.

The process that parses HTTP runs as the Hub's own system user and can do nothing privileged
itself. It asks this bridge, one JSON line per request, and the bridge:

- accepts a connection only from the Hub's UID (``SO_PEERCRED``; the socket is also 0600);
- authenticates through PAM (``login``) and holds the sessions itself: the web process gets a
  random token, and every later request carries that token, from which the bridge derives the
  slot — a request can never name another slot, and a web process that is taken over can act
  only for slots whose users are logged in right now;
- validates every argument, answers refusals with one-line errors, audits what it reveals.

Like Cockpit's split between cockpit-ws (unprivileged HTTP) and its session helper, the only
thing crossing the boundary is a small, closed set of operations (:data:`OPERATIONS`).

>>> sorted(OPERATIONS)[:4]
['activity', 'admin_lock', 'admin_overview', 'app_creds']
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.apps.vault import KEY_FILE_NAME, Vault
from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.hub.auth import MAX_PASSWORD, MAX_TYPED_NAME, check_password
from provisioner.hub.config import HubConfig
from provisioner.hub.sessions import Session, SessionStore
from provisioner.hub.totp import TotpStore

log = logging.getLogger("slotwarden.hub.bridge")
MAX_REQUEST = 64 * 1024
PENDING_FOR = 300  # seconds to enter the second factor after the password
MAX_FACTOR_FAILURES = 5  # wrong codes before the pending session ends


class BridgeRefused(SlotError):
    """A request the bridge will not carry out (bad argument, no session)."""


def parse_address(value: object) -> str:
    """The client's IP address as the web process saw it (validated, normalised)."""
    if not isinstance(value, str) or len(value) > 64:
        raise BridgeRefused("address: expected an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise BridgeRefused("address: expected an IP address") from None


def _text(req: dict[str, Any], key: str, limit: int) -> str:
    v = req.get(key)
    if not isinstance(v, str) or len(v) > limit:
        raise BridgeRefused(f"{key}: expected a string of at most {limit} characters")
    return v


class Bridge:
    """The operations, each run with a fresh store connection (one per request thread)."""

    def __init__(self, config: Config, hub: HubConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.hub = hub
        self.clock = clock
        self._lock = threading.Lock()
        self._factor_failures: dict[str, int] = {}
        self._last_cpu: dict[str, tuple[float, float]] = {}
        self._fence_script = ""
        self._responses: dict[int, int] = {}
        self._responses_written = float("-inf")
        self._responses_since = clock()

    def _sessions(self, ctx: Context) -> SessionStore:
        return SessionStore(ctx.store, self.hub.idle_timeout, self.hub.absolute_timeout)

    def _session(self, ctx: Context, req: dict[str, Any], role: str = "tenant") -> Session:
        """The live session of the request's token, if it has ROLE (tenant, staff or pending:*)."""
        sessions = self._sessions(ctx)
        s = sessions.resolve(req.get("token"))
        if s is None or (s.role.startswith("pending:") if role == "any" else s.role != role):
            raise BridgeRefused("no session")
        if s.role.startswith("pending:") and self.clock() - s.created > PENDING_FOR:
            sessions.end(req["token"])
            raise BridgeRefused("no session")
        if s.role in ("tenant", "pending:tenant") and not _active_slot(ctx, s.username):
            sessions.end_all(s.username)  # removed or suspended since login: no session survives
            raise BridgeRefused("no session")
        if s.role in ("staff", "pending:staff") and not _is_staff(ctx, s.username):
            sessions.end_all(s.username)  # left the admin group since login
            raise BridgeRefused("no session")
        return s

    def _totp(self, ctx: Context) -> TotpStore:
        return TotpStore(ctx.store, Vault(ctx.config.state_dir / KEY_FILE_NAME))

    def _floor(self, started: float) -> None:
        time.sleep(max(0.0, self.hub.fail_floor_ms / 1000 - (time.monotonic() - started)))

    def handle(self, req: object) -> dict[str, Any]:
        """One request -> one reply (``ok`` false with ``error`` for a refusal)."""
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "expected {\"op\": ...}"}
        op = OPERATIONS.get(req["op"])
        if op is None:
            return {"ok": False, "error": "unknown operation"}
        ctx = Context(self.config)
        try:
            return {"ok": True, **op(self, ctx, req)}
        except BridgeRefused as exc:
            return {"ok": False, "error": str(exc)}
        except SlotError as exc:
            log.warning("%s failed: %s", req["op"], exc)
            return {"ok": False, "error": " ".join(str(exc).split())}
        finally:
            ctx.close()

    # --- login ---------------------------------------------------------------------------

    def login(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """PAM check; a session for an active slot, or one refusal answered at the fixed floor."""
        started = time.monotonic()
        username = _text(req, "username", MAX_TYPED_NAME)
        password = _text(req, "password", MAX_PASSWORD)
        address = parse_address(req.get("address"))
        agent = req.get("agent") if isinstance(req.get("agent"), str) else ""
        answer = check_password(self.hub.pam_service, username, password, address)
        rec = ctx.store.get_slot(username)
        sessions = self._sessions(ctx)
        role = None
        if answer.ok and _active_slot(ctx, username):
            role = "tenant"
        elif answer.ok and rec is None and _is_staff(ctx, username):
            role = "staff"
        if role is not None:
            totp = self._totp(ctx)
            if role == "staff" and not totp.enabled(username):
                log.warning("staff %s refused: no second factor enrolled (slotctl hub totp-enrol)", username)
                self._floor(started)
                return {"login": "refused"}
            if role == "staff" or totp.enabled(username):
                token, s = sessions.create(username, address, str(agent), role=f"pending:{role}")
                return {"login": "second-factor", "token": token, "csrf": s.csrf}
            return self._open(ctx, username, role, address, str(agent), "password")
        if rec is not None:
            sessions.record_login(username, address, False, "suspended" if answer.expired else "password")
        result: dict[str, Any] = {"login": "refused"}
        if answer.expired and rec is not None:
            result = {"login": "suspended"}
        else:
            until = self._locked_until(username, address)
            if until is not None:
                result = {"login": "locked", "until": until}
        self._floor(started)
        return result

    def _open(self, ctx: Context, username: str, role: str, address: str, agent: str, how: str) -> dict[str, Any]:
        token, s = self._sessions(ctx).create(username, address, agent, role=role)
        if role == "tenant":
            self._sessions(ctx).record_login(username, address, True, how)
        ctx.store.audit(f"hub:{username}", "hub.login", username if role == "tenant" else None,
                        {"address": address, "role": role, "factor": how})
        return {"login": "ok", "token": token, "username": username, "role": role, "csrf": s.csrf}

    def pending(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """The CSRF token of a session waiting for its second factor."""
        for role in ("pending:tenant", "pending:staff"):
            try:
                s = self._session(ctx, req, role)
            except BridgeRefused:
                continue
            return {"csrf": s.csrf, "role": role}
        raise BridgeRefused("no session")

    def second_factor(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Trade a pending session and a TOTP or recovery code for a fresh full session."""
        started = time.monotonic()
        self.pending(ctx, req)
        token = req["token"]
        s = self._sessions(ctx).resolve(token, touch=False)
        assert s is not None
        code = _text(req, "code", 64)
        if self._totp(ctx).verify(s.username, code):
            self._sessions(ctx).end(token)  # a new token for the full session
            return self._open(ctx, s.username, s.role.split(":", 1)[1], s.address, s.agent, "password+totp")
        with self._lock:
            self._factor_failures[s.id] = n = self._factor_failures.get(s.id, 0) + 1
        if n >= MAX_FACTOR_FAILURES:
            self._sessions(ctx).end(token)
        if s.role == "pending:tenant":
            self._sessions(ctx).record_login(s.username, s.address, False, "second factor")
        self._floor(started)
        return {"login": "refused" if n >= MAX_FACTOR_FAILURES else "second-factor"}

    # --- second factor enrolment (tenants) -----------------------------------------------------

    def totp_status(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req, "any")
        totp = self._totp(ctx)
        return {"enabled": totp.enabled(s.username), "recovery_left": totp.recovery_left(s.username)}

    def totp_begin(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        e = self._totp(ctx).begin(s.username)
        return {"secret": e.secret, "uri": e.uri}

    def totp_confirm(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        codes = self._totp(ctx).confirm(s.username, _text(req, "code", 64))
        if codes is None:
            raise BridgeRefused("that code does not match; enter the current one from your app")
        ctx.store.audit(f"hub:{s.username}", "hub.totp-enabled", s.username, {})
        return {"recovery_codes": codes}

    def totp_disable(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        totp = self._totp(ctx)
        if not totp.verify(s.username, _text(req, "code", 64)):
            raise BridgeRefused("that code does not match")
        totp.disable(s.username)
        ctx.store.audit(f"hub:{s.username}", "hub.totp-disabled", s.username, {})
        return {}

    # --- staff ---------------------------------------------------------------------------------

    def admin_overview(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Every slot with its state and usage, the guard's locks, the audit's tail."""
        s = self._session(ctx, req, "staff")
        from provisioner.guard import guard_config, guard_request
        from provisioner.lifecycle_records import LifecycleRecords
        from provisioner.metrics import collect

        usage = {m.slot: m for m in collect(ctx, None, sample=0.0, refresh_facts=False)}
        slots = []
        records = LifecycleRecords(ctx.store)
        for rec in ctx.store.list_slots():
            life = records.get(rec.username)
            m = usage.get(rec.username)
            slots.append({"username": rec.username, "state": "suspended" if life and life.suspended_at else rec.state,
                          "plan": life.plan if life else None, "ram_bytes": m.ram_bytes if m else None,
                          "disk_used_bytes": m.disk_used_bytes if m else None,
                          "quota_bytes": m.quota_bytes if m else None,
                          "processes": len(m.processes) if m else None})
        try:
            locks = guard_request(guard_config(self.config.path), "list", locked=True)
        except SlotError as exc:
            locks = []
            log.warning("guard not reachable for the staff page: %s", exc)
        audit = ctx.store.recent_audit(100)
        ctx.store.audit(f"hub:{s.username}", "hub.staff-view", None, {})
        return {"slots": slots, "locks": locks, "audit": audit}

    def admin_lock(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Lift or forget the guard's records of a user and/or an address."""
        s = self._session(ctx, req, "staff")
        from provisioner.guard import guard_config, guard_request

        action = req.get("action")
        if action not in ("lift", "forget"):
            raise BridgeRefused("action: expected lift or forget")
        user = req.get("user") or None
        ip = req.get("ip") or None
        if user is not None and (not isinstance(user, str) or len(user) > 3 * MAX_TYPED_NAME + 3):
            raise BridgeRefused("user: too long")
        if ip is not None:
            try:
                ip = str(ipaddress.ip_network(str(ip), strict=False).network_address) if "/" in str(ip) \
                    else parse_address(ip)
            except ValueError:
                raise BridgeRefused("ip: expected an IP address") from None
        if user is None and ip is None:
            raise BridgeRefused("name a user, an address, or both")
        if action == "forget" and user is not None and ip is not None:
            raise BridgeRefused("forget takes a user or an address")
        result = guard_request(guard_config(self.config.path), action, user=user, ip=ip)
        ctx.store.audit(f"hub:{s.username}", f"hub.guard-{action}", None, {"user": user, "ip": ip})
        return {"result": result}

    def _locked_until(self, username: str, address: str) -> str | None:
        """When the guard lets USERNAME try again from ADDRESS, if it is locked now."""
        from provisioner.guard import guard_config, guard_request

        try:
            verdict = guard_request(guard_config(self.config.path), "explain", user=username, ip=address)
        except SlotError as exc:
            log.warning("guard not asked about a lock: %s", exc)
            return None
        if verdict.get("allowed", True):
            return None
        until = verdict.get("until")
        return str(until) if until else "later"

    # --- the session's own slot --------------------------------------------------------------

    def whoami(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        try:
            s = self._session(ctx, req, "any")
        except BridgeRefused:
            self.pending(ctx, req)  # refused again, unless the password was right and a code is due
            raise BridgeRefused("second factor needed") from None
        return {"username": s.username, "role": s.role, "csrf": s.csrf, "session": s.public(True)}

    def logout(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        token = req.get("token")
        if isinstance(token, str):
            self._sessions(ctx).end(token)
        return {}

    def logout_all(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req, "any")
        n = self._sessions(ctx).end_all(s.username)
        ctx.store.audit(f"hub:{s.username}", "hub.logout-everywhere", s.username, {"sessions": n})
        return {"ended": n}

    def sessions(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req, "any")
        return {"sessions": [x.public(x.id == s.id) for x in self._sessions(ctx).of_user(s.username)]}

    def activity(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        return {"logins": self._sessions(ctx).logins(s.username)}

    def not_me(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """"This wasn't me": the event goes to the audit for staff, every other session of the slot ends."""
        s = self._session(ctx, req)
        event_id = req.get("event")
        if isinstance(event_id, bool) or not isinstance(event_id, int):
            raise BridgeRefused("event: expected a login event id")
        sessions = self._sessions(ctx)
        event = sessions.login_event(s.username, event_id)
        if event is None:
            raise BridgeRefused("event: no such login of this slot")
        ended = sessions.end_others(s.username, req["token"])
        ctx.store.audit(f"hub:{s.username}", "hub.not-me", s.username,
                        {"event": event, "other_sessions_ended": ended})
        log.warning("slot %s reports a login it did not make: %s", s.username, event)
        return {"other_sessions_ended": ended}

    def overview(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        from provisioner.hub.history import MetricsHistory
        from provisioner.metrics import collect

        m = collect(ctx, [s.username], sample=0.0)[0].as_dict()
        procs = m.pop("processes")
        h = MetricsHistory(ctx.store)
        now = self.clock()
        history = {tier: h.series(s.username, tier, now) for tier in ("24h", "30d")}
        m["cpu_percent"] = self._cpu_since(s.username, m.get("cpu_seconds"), m["at"])
        return {"metrics": m, "processes": procs, "history": history}

    def _cpu_since(self, username: str, cpu_seconds: object, at: float) -> float | None:
        """CPU % since this slot's previous reading (the sampler's or a page's, within 15 min).

        A page view never sleeps to measure; the first view after a restart shows no figure.
        """
        if not isinstance(cpu_seconds, int | float):
            return None
        with self._lock:
            last = self._last_cpu.get(username)
            self._last_cpu[username] = (at, float(cpu_seconds))
        if last is None or not 0 < at - last[0] <= 900 or cpu_seconds < last[1]:
            return None
        return (cpu_seconds - last[1]) / (at - last[0]) * 100

    def fence(self, hub_uid: int) -> bool:
        """Rebuild the app fence from the registry when it changed; True if it was (re)loaded."""
        from provisioner.hub.appfence import apply_fence, fence_script, registered_ports

        ctx = Context(self.config)
        try:
            script = fence_script(self.hub.fence_table, registered_ports(ctx), hub_uid)
        finally:
            ctx.close()
        if script == self._fence_script:
            return False
        apply_fence(self.hub.fence_table, script)
        self._fence_script = script
        return True

    def sample(self) -> int:
        """One history sample of every slot (the server's timer calls this); returns how many."""
        from provisioner.hub.history import sample_all
        from provisioner.metrics import collect

        ctx = Context(self.config)
        try:
            metrics = collect(ctx, None, sample=0.0, refresh_facts=False)
            sample_all(ctx.store, metrics, self.clock())
            for m in metrics:
                self._cpu_since(m.slot, m.cpu_seconds, m.at)
            return len(metrics)
        finally:
            ctx.close()

    # --- apps of the session's slot --------------------------------------------------------------

    def _app_name(self, req: dict[str, Any]) -> str:
        from provisioner.apps import catalog

        name = req.get("app")
        if not isinstance(name, str) or name not in catalog():
            raise BridgeRefused("app: not in the catalog")
        return name

    def apps(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """The slot's apps (state, running, URL) and the catalog's apps its plan allows."""
        s = self._session(ctx, req)
        from provisioner import apps as apps_
        from provisioner.planchange import check_app_install

        rows = apps_.app_status(ctx, s.username)
        installed = {r["app"] for r in rows}
        allowed = []
        for name in sorted(apps_.catalog()):
            if name in installed:
                continue
            try:
                check_app_install(ctx, s.username, name)
            except SlotError:
                continue
            allowed.append(name)
        for r in rows:
            r.pop("programs", None)
        return {"apps": rows, "installable": allowed}

    def _app_change(self, ctx: Context, req: dict[str, Any], action: str) -> dict[str, Any]:
        """install / uninstall / creds / rotate one app of the session's slot (audited as the tenant)."""
        s = self._session(ctx, req)
        from provisioner import operations

        name = self._app_name(req)
        actions: dict[str, Callable[[Context, str, str], Any]] = {
            "install": operations.install_app, "uninstall": operations.uninstall_app,
            "creds-reveal": operations.app_credentials, "rotate": operations.rotate_app}
        fn = actions[action]
        result = fn(ctx, s.username, name)  # the front door: under the slot's lock
        ctx.store.audit(f"hub:{s.username}", f"hub.app-{action}", s.username, {"app": name})
        if isinstance(result, operations.AppCredentials):
            return {"credentials": result.as_dict()}
        return {}

    def app_install(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        return self._app_change(ctx, req, "install")

    def app_uninstall(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        return self._app_change(ctx, req, "uninstall")

    def app_creds(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Reveal the slot's own credentials of one app to its owner (audited)."""
        return self._app_change(ctx, req, "creds-reveal")

    def app_rotate(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        return self._app_change(ctx, req, "rotate")

    def frontdoor(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Admit ``/apps/SLOT/APP/`` for a session of SLOT whose app's listener the slot's UID holds.

        A socket app: its socket checked by descriptor and hard-linked for nginx
        (:func:`~provisioner.apps.appsockets.front_door_link`), the prefix kept. A TCP app: its
        port's owner in the kernel's socket table, the prefix stripped. Either refused: audited.
        """
        s = self._session(ctx, req)
        import pwd

        from provisioner.apps import catalog, registry_of, settings_of
        from provisioner.apps.appsockets import SocketNotReady, front_door_link, hub_gid
        from provisioner.apps.listeners import ListenerRefused, check_owner

        slot, name = req.get("slot"), self._app_name(req)
        if slot != s.username:
            raise BridgeRefused("not your slot")
        app = catalog().get(name)
        reg = registry_of(ctx)
        installed = reg.get(s.username, name)
        if app is None or installed is None or installed.state != "installed":
            raise BridgeRefused("app not installed")
        uid = pwd.getpwnam(s.username).pw_uid
        port = reg.ports(s.username, name).get("http")
        try:
            if app.unix_socket:
                link = front_door_link(settings_of(ctx).socket_dir, s.username, name, uid, hub_gid(ctx))
                return {"upstream": f"unix:{link}:", "strip": False}
            if port is None:
                raise BridgeRefused("app not installed")
            check_owner(port, uid)
        except SocketNotReady as exc:  # the app is down: nothing to report, and no audit row per request
            log.info("front door: %s/%s not running: %s", s.username, name, exc)
            raise BridgeRefused("the app is not running") from None
        except ListenerRefused as exc:
            log.warning("front door refused %s/%s: %s", s.username, name, exc)
            ctx.store.audit("hub", "hub.frontdoor-refused", s.username, {"app": name, "reason": str(exc)})
            raise BridgeRefused("the app's listener is not the slot's") from None
        return {"upstream": f"127.0.0.1:{port}", "strip": True}

    # --- the slot password -------------------------------------------------------------------------

    def change_password(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """The current password checked through PAM (the guard counts it), the new one by the rule."""
        started = time.monotonic()
        s = self._session(ctx, req)
        from provisioner import operations
        from provisioner.hub.passwords import password_problem

        current = _text(req, "current", MAX_PASSWORD)
        new = _text(req, "new", MAX_PASSWORD)
        address = parse_address(req.get("address"))
        problem = password_problem(new, s.username)
        if problem is not None:
            raise BridgeRefused(f"new password refused: {problem}")
        if not check_password(self.hub.pam_service, s.username, current, address).ok:
            self._sessions(ctx).record_login(s.username, address, False, "password change")
            self._floor(started)
            raise BridgeRefused("the current password is wrong")
        operations.set_password(ctx, s.username, new)  # under the slot's lock
        ended = self._sessions(ctx).end_others(s.username, req["token"])
        ctx.store.audit(f"hub:{s.username}", "hub.password-change", s.username, {"other_sessions_ended": ended})
        return {"other_sessions_ended": ended}

    # --- support requests and takedown notices of the session's slot --------------------------

    def support(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """The slot's open support requests and grants, and its takedown notices not yet closed."""
        s = self._session(ctx, req)
        from provisioner import notices, support

        support.sync(ctx, now=self.clock())  # the shell's answers and expiries first, as every support command
        return {"grants": support.inbox_rows(ctx, s.username), "notices": notices.inbox_rows(ctx, s.username)}

    def support_answer(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Approve (read-only if asked), refuse or revoke one support grant of the session's slot, at once.

        The same :func:`provisioner.support.apply_answer` as the shell's answers, so the same audit
        rows (``support.approve``/``grant``/``refuse``/``revoke`` by the tenant) and the idmapped
        mount made or ended before the reply. A grant of another slot is "no such request", like
        one that does not exist.
        """
        s = self._session(ctx, req)
        from provisioner import inbox, support

        verb = req.get("verb")
        if verb not in ("approve", "refuse", "revoke"):
            raise BridgeRefused("verb: expected approve, refuse or revoke")
        grant_id = req.get("grant")
        if isinstance(grant_id, bool) or not isinstance(grant_id, int) or not 0 < grant_id < 10**12:
            raise BridgeRefused("grant: expected a support request id")
        read_only = req.get("read_only", False)
        if not isinstance(read_only, bool):
            raise BridgeRefused("read_only: expected true or false")
        now = self.clock()
        support.sync(ctx, now=now)  # an expired request is not approved
        if not support.apply_answer(ctx, s.username, inbox.Answer(verb, grant_id, read_only), now):
            raise BridgeRefused(f"no open support request {grant_id} of this slot to {verb}")
        grant = support.SupportGrants(ctx.store).get(grant_id)
        assert grant is not None
        return {"grant": {"id": grant.id, "state": grant.state, "write": grant.write, "staff": grant.staff,
                          "expires_at": grant.expires_at}}

    # --- the web process's own responses, for the team's alerts ---------------------------------

    def responses(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """Add the web process's response counts; one ``hub.responses`` audit row per window at most.

        However many requests (or calls of this operation) come, the audit grows by at most one
        row per ``hub.responses_every / 2`` seconds, each with a bounded ``statuses`` map — the
        way the API summarises its anonymous traffic — which ``slotctl metrics serve`` counts.
        """
        statuses = req.get("statuses")
        if not isinstance(statuses, dict) or len(statuses) > 64:
            raise BridgeRefused("statuses: expected a map of at most 64 statuses")
        counts: dict[int, int] = {}
        for key, n in statuses.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) == 3
                    and 100 <= int(key) <= 599) or isinstance(n, bool) or not isinstance(n, int) \
                    or not 0 <= n <= 10**9:
                raise BridgeRefused("statuses: expected HTTP status -> count")
            counts[int(key)] = n
        now = self.clock()
        with self._lock:
            for status, n in counts.items():
                self._responses[status] = self._responses.get(status, 0) + n
            if not self._responses or now - self._responses_written < self.hub.responses_every / 2:
                return {"written": False}
            row = {"statuses": {str(k): v for k, v in sorted(self._responses.items())},
                   "requests": sum(self._responses.values()), "since": round(self._responses_since, 3),
                   "until": round(now, 3)}
            self._responses, self._responses_written, self._responses_since = {}, now, now
        ctx.store.audit("hub", "hub.responses", None, row)
        return {"written": True}

    def data_report(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        from provisioner.datareport import data_report

        ctx.store.audit(f"hub:{s.username}", "hub.data-report", s.username, {})
        return {"report": data_report(ctx, s.username)}


def _active_slot(ctx: Context, username: str) -> bool:
    """USERNAME is a slot that may log in now (exists, active, not suspended)."""
    from provisioner.lifecycle_records import LifecycleRecords

    rec = ctx.store.get_slot(username)
    if rec is None or rec.state != "active":
        return False
    life = LifecycleRecords(ctx.store).get(username)
    return life is None or life.suspended_at is None


def _is_staff(ctx: Context, username: str) -> bool:
    """USERNAME is a member of the host's admin group (primary or supplementary), never root."""
    import grp
    import pwd

    try:
        group = grp.getgrnam(ctx.settings.admin_group)
        pw = pwd.getpwnam(username)
    except KeyError:
        return False
    return pw.pw_uid != 0 and (pw.pw_gid == group.gr_gid or username in group.gr_mem)


OPERATIONS: dict[str, Callable[[Bridge, Context, dict[str, Any]], dict[str, Any]]] = {
    "login": Bridge.login,
    "pending": Bridge.pending,
    "second_factor": Bridge.second_factor,
    "totp_status": Bridge.totp_status,
    "totp_begin": Bridge.totp_begin,
    "totp_confirm": Bridge.totp_confirm,
    "totp_disable": Bridge.totp_disable,
    "admin_overview": Bridge.admin_overview,
    "admin_lock": Bridge.admin_lock,
    "whoami": Bridge.whoami,
    "logout": Bridge.logout,
    "logout_all": Bridge.logout_all,
    "sessions": Bridge.sessions,
    "activity": Bridge.activity,
    "overview": Bridge.overview,
    "data_report": Bridge.data_report,
    "apps": Bridge.apps,
    "app_install": Bridge.app_install,
    "app_uninstall": Bridge.app_uninstall,
    "app_creds": Bridge.app_creds,
    "app_rotate": Bridge.app_rotate,
    "change_password": Bridge.change_password,
    "frontdoor": Bridge.frontdoor,
    "not_me": Bridge.not_me,
    "support": Bridge.support,
    "support_answer": Bridge.support_answer,
    "responses": Bridge.responses,
}


def peer_uid(conn: socket.socket) -> int:
    """The UID of the process on the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class _Handler(socketserver.StreamRequestHandler):
    server: BridgeServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(30)
        uid = peer_uid(conn)
        if uid != self.server.allowed_uid:
            log.warning("bridge: connection from uid %d refused (only the hub's uid %d)", uid,
                        self.server.allowed_uid)
            self.wfile.write(b'{"ok": false, "error": "not the hub"}\n')
            return
        line = self.rfile.readline(MAX_REQUEST + 1)
        if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
            self.wfile.write(b'{"ok": false, "error": "request too long"}\n')
            return
        try:
            req = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "not JSON"}
        else:
            reply = self.server.bridge.handle(req)
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class BridgeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The bridge's socket: 0600, owned by the Hub's user, one thread per connection."""

    daemon_threads = True

    def __init__(self, path: Path, bridge: Bridge, allowed_uid: int) -> None:
        self.bridge = bridge
        self.allowed_uid = allowed_uid
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        os.chown(path, allowed_uid, -1)
        os.chmod(path, 0o600)

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="hub-bridge", daemon=True)
        t.start()
        return t
