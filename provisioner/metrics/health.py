"""The host's health, for the team's alerts: guard, supervisor, store, slots filesystem, HTTP errors.

``slotctl metrics serve`` appends these to every scrape; ``monitoring/slotwarden.rules.yml``
turns them into alerts. Every probe answers within a few seconds and never raises: a probe that
cannot tell reports the bad value (a guard that does not answer is down).

=============================================  =====================================================
``slotwarden_guard_up``                         1 when the guard service answers ``ping`` on its socket
``slotwarden_guard_fail_open``                  1 when the PAM module lets logins through unguarded
                                                while the service is down (``[guard] fail_mode``)
``slotwarden_supervisor_up``                    1 when the app supervisor answers
``slotwarden_program_up{program}``              1 while the supervised program runs
``slotwarden_program_start_time_seconds``       when its current process started (a crash loop
                                                changes it again and again)
``slotwarden_store_writable``                   1 when a write transaction on the state store commits
``slotwarden_slots_filesystem_size_bytes``      size and free space (for non-root users) of the
``slotwarden_slots_filesystem_free_bytes``      filesystem holding the slots
``slotwarden_http_responses_total{service,code}`` API and Hub responses by class (2xx … 5xx),
                                                counted from the audit log: an ``api.*`` row with
                                                its ``status`` per authenticated API request, and
                                                window summaries with a ``statuses`` map — the
                                                API's ``api.unauthenticated`` (requests without a
                                                valid token) and the Hub's ``hub.responses``
=============================================  =====================================================

>>> print(render_health([Sample("slotwarden_guard_up", "gauge", "x", {}, 1)]).splitlines()[-1])
slotwarden_guard_up 1
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from provisioner.context import Context
from provisioner.db import Database
from provisioner.errors import SlotError
from provisioner.metrics.prometheus import _label, _num
from provisioner.store import open_database

log = logging.getLogger("slotwarden.metrics.health")
HTTP_SERVICES = {"api.": "api", "hub.": "hub"}


@dataclass(frozen=True)
class Sample:
    """One sample: metric NAME (with its TYPE and HELP), LABELS, VALUE."""

    name: str
    kind: str
    help: str
    labels: dict[str, str]
    value: float | int


def render_health(samples: list[Sample]) -> str:
    """The exposition text of SAMPLES (HELP/TYPE once per name, in first-seen order)."""
    lines: list[str] = []
    seen: set[str] = set()
    for s in samples:
        if s.name not in seen:
            seen.add(s.name)
            lines += [f"# HELP {s.name} {s.help}", f"# TYPE {s.name} {s.kind}"]
        labels = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(s.labels.items()))
        lines.append(f"{s.name}{{{labels}}} {_num(s.value)}" if labels else f"{s.name} {_num(s.value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def guard_samples(ctx: Context) -> list[Sample]:
    try:
        from pam_hooks.client import admin

        cfg = ctx.config.guard_config()
    except Exception as exc:  # no guard on this host, or its config is bad: it is not guarding
        log.warning("guard probe: %s", exc)
        return [Sample("slotwarden_guard_up", "gauge", "Whether the login guard service answers.", {}, 0)]
    try:
        up = admin(cfg, "ping", direct_ok=False) == "pong"
    except Exception:
        up = False
    return [Sample("slotwarden_guard_up", "gauge", "Whether the login guard service answers.", {}, int(up)),
            Sample("slotwarden_guard_fail_open", "gauge",
                   "Whether PAM lets logins through unguarded while the guard service is down.", {},
                   int(cfg.fail_mode == "open"))]


def supervisor_samples(ctx: Context) -> list[Sample]:
    help_up = "Whether the app supervisor answers."
    try:
        from provisioner.supervisor import supervisor_for

        sup = supervisor_for(ctx)
        if not sup.is_running():
            return [Sample("slotwarden_supervisor_up", "gauge", help_up, {"supervisor": sup.name}, 0)]
        out = [Sample("slotwarden_supervisor_up", "gauge", help_up, {"supervisor": sup.name}, 1)]
        for name in sorted(sup.programs()):
            st = sup.status(name)
            out.append(Sample("slotwarden_program_up", "gauge", "Whether the supervised program runs.",
                              {"program": name, "state": st.state}, int(st.running)))
            if st.since:
                out.append(Sample("slotwarden_program_start_time_seconds", "gauge",
                                  "When the program's current process started.", {"program": name}, st.since))
        return out
    except Exception as exc:
        log.warning("supervisor probe: %s", exc)
        return [Sample("slotwarden_supervisor_up", "gauge", help_up, {"supervisor": "unknown"}, 0)]


class HealthProbe:
    """The only code that writes ``health_probe``: one row, the time of the last probe write."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def touch(self) -> None:
        """Commit one write (takes the store's writer lock like every writer)."""
        with self.db.transaction():
            self.db.execute("INSERT INTO health_probe VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                            (time.time(),))


def store_writable(ctx: Context) -> Sample:
    """Commit one write on the state store (its own connection, 2 s lock timeout)."""
    ok = 0
    try:
        db = open_database(ctx.config, timeout=2)
        try:
            HealthProbe(db).touch()
            ok = 1
        finally:
            db.close()
    except SlotError as exc:
        log.warning("store probe: %s", exc)
    return Sample("slotwarden_store_writable", "gauge", "Whether a write to the state store commits.", {}, ok)


def filesystem_samples(ctx: Context) -> list[Sample]:
    try:
        root = ctx.settings.slots_root
        st = os.statvfs(root)
    except Exception as exc:
        log.warning("slots filesystem probe: %s", exc)
        return []
    labels = {"path": str(root)}
    return [Sample("slotwarden_slots_filesystem_size_bytes", "gauge", "Size of the filesystem holding the slots.",
                   labels, st.f_blocks * st.f_frsize),
            Sample("slotwarden_slots_filesystem_free_bytes", "gauge",
                   "Free space on the filesystem holding the slots (for non-root users).",
                   labels, st.f_bavail * st.f_frsize)]


def response_statuses(detail: object) -> list[tuple[int, int]]:
    """(status, how many) of one audit row: ``{"status": N}`` is one response, a ``statuses`` map
    (``api.unauthenticated``'s and ``hub.responses``' window summaries) is many; anything else none.

    >>> response_statuses('{"statuses": {"200": 3, "503": 1}, "requests": 4}')
    [(200, 3), (503, 1)]
    >>> response_statuses('{"status": 502}'), response_statuses('{"status": "junk"}'), response_statuses('[')
    ([(502, 1)], [], [])
    """
    try:
        data = json.loads(detail) if isinstance(detail, str | bytes) else None
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    pairs: list[tuple[object, object]] = []
    if isinstance(data.get("statuses"), dict):
        pairs = list(data["statuses"].items())
    elif "status" in data:
        pairs = [(data["status"], 1)]
    out = []
    for status, n in pairs:
        try:
            code = int(status)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            continue
        if 100 <= code <= 599 and isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 10**9:
            out.append((code, n))
    return out


@dataclass
class ResponseCounter:
    """HTTP responses by service and class, counted from the audit log incrementally (only new rows)."""

    last_id: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, ctx: Context) -> None:
        with self.lock:
            rows = ctx.store.audit_after(self.last_id, ("api.", "hub."))
            for row in rows:
                service = HTTP_SERVICES[row["action"][:4]]
                for status, n in response_statuses(row["detail"]):
                    key = (service, f"{status // 100}xx")
                    self.counts[key] = self.counts.get(key, 0) + n
            if rows:
                self.last_id = rows[-1]["id"]

    def samples(self) -> list[Sample]:
        help_ = "HTTP responses of the API and the Hub, by class (from the audit log)."
        out = []
        for service in ("api", "hub"):
            for code in ("2xx", "3xx", "4xx", "5xx"):
                out.append(Sample("slotwarden_http_responses_total", "counter", help_,
                                  {"service": service, "code": code}, self.counts.get((service, code), 0)))
        return out


def health(ctx: Context, responses: ResponseCounter) -> list[Sample]:
    """Every health sample of this host."""
    samples = guard_samples(ctx) + supervisor_samples(ctx) + [store_writable(ctx)] + filesystem_samples(ctx)
    try:
        responses.update(ctx)
    except SlotError as exc:
        log.warning("audit read for HTTP responses: %s", exc)
    return samples + responses.samples()
