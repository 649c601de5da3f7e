"""The fleet controller's front door: hosts, their facts, placement, and slot calls by name.

The controller is a slotwarden install whose store holds the fleet tables
(:class:`~provisioner.fleet.inventory.FleetInventory`). It reaches every host through the
host's own provisioning API (:mod:`provisioner.fleet.client`); the CLI (``slotctl fleet``) and
the API's fleet mode (``slotctl api serve --fleet``) call these functions.

- :func:`add_host` / :func:`import_inventory` register hosts (token sealed in the store);
- :func:`refresh` gathers facts from every host at once (``GET /v1/host``);
- :func:`create` places a new slot (:mod:`~provisioner.fleet.placement`) and creates it there;
- :func:`forward` finds a slot's host by name and sends the call there.

Results keep the host's own status and body, plus ``host``; a host that does not answer gives
502 naming it, for its own slots only.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from provisioner.apps.vault import KEY_FILE_NAME, Vault
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.fleet.client import HostClient, HostUnreachable, parse_url, tls_context, validate_host_name
from provisioner.fleet.facts import HostFacts
from provisioner.fleet.inventory import FleetInventory, HostRecord
from provisioner.fleet.placement import Placement, place
from provisioner.names import parse_size, shown, validate_username
from provisioner.plans import get_plan
from provisioner.runner import run

# Facts older than this are gathered again before a placement (one GET per stale host).
FACTS_MAX_AGE_S = 60.0
_TOKEN_OK = frozenset(map(chr, range(0x21, 0x7F)))


def inventory(ctx: Context) -> FleetInventory:
    return FleetInventory(ctx.store)


def _vault(ctx: Context) -> Vault:
    return Vault(ctx.config.state_dir / KEY_FILE_NAME)


def validate_token(token: object) -> str:
    if not isinstance(token, str) or not 8 <= len(token) <= 400 or not set(token) <= _TOKEN_OK:
        raise BadInput("token: expected 8-400 printable ASCII characters without spaces")
    return token


def _host_token(ctx: Context, rec: HostRecord) -> str:
    return _vault(ctx).open("fleet-host", rec.name, base64.b64decode(rec.token_nonce),
                            base64.b64decode(rec.token_sealed))["token"]


def add_host(ctx: Context, name: str, url: str, ca_pem: str, token: str) -> dict[str, Any]:
    """Register host NAME (its API at URL, TLS checked against CA_PEM, TOKEN sealed), then gather its facts."""
    validate_host_name(name)
    parse_url(url)
    tls_context(ca_pem)
    validate_token(token)
    nonce, sealed = _vault(ctx).seal("fleet-host", name, {"token": token})
    change = inventory(ctx).put_host(name, url, ca_pem, base64.b64encode(nonce).decode(),
                                     base64.b64encode(sealed).decode())
    ctx.store.audit("fleet", "fleet.host_add", None, {"host": name, "url": url, "change": change})
    [result] = refresh(ctx, [name])
    return {"host": name, "url": url, "change": change, **{k: v for k, v in result.items() if k != "host"}}


def remove_host(ctx: Context, name: str) -> None:
    """Forget host NAME (refused while slots live on it)."""
    validate_host_name(name)
    inventory(ctx).remove_host(name)
    ctx.store.audit("fleet", "fleet.host_remove", None, {"host": name})


def read_root_only(path_text: object, what: str) -> str:
    """A secret file's text: a regular file of root's (our euid), mode 0600 or stricter."""
    if not isinstance(path_text, str) or not path_text.startswith("/"):
        raise BadInput(f"{what}: expected an absolute path, got {shown(path_text)}")
    try:
        fd = os.open(path_text, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BadInput(f"{what}: cannot open {shown(path_text)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise BadInput(f"{what}: {shown(path_text)} must be a regular file of root's, mode 0600")
        return os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def import_inventory(ctx: Context, path: Path, group: str = "slotwarden") -> list[dict[str, Any]]:
    """Register every host of GROUP in the Ansible inventory PATH that names its API.

    Host variables: ``slotwarden_api_url`` (https://HOST:PORT), ``slotwarden_api_ca`` (a PEM
    file on the controller) and ``slotwarden_api_token_file`` (a root-only file holding the
    token the host made with ``slotctl api token create``). The token is never in the
    inventory itself. A host without ``slotwarden_api_url`` is listed as skipped.
    """
    if not path.is_file():
        raise BadInput(f"inventory {path}: no such file")
    # ansible-core comes with the controller's venv (the fleet extra): its bin, not $PATH.
    beside = Path(sys.executable).parent / "ansible-inventory"
    tool = str(beside) if beside.exists() else "ansible-inventory"
    out = run([tool, "-i", str(path), "--list"], timeout=120,
              env={"LC_ALL": "C.UTF-8", "HOME": str(ctx.config.state_dir), "ANSIBLE_LOCAL_TEMP": "/tmp"}).stdout
    try:
        data = json.loads(out)
        hostvars = data.get("_meta", {}).get("hostvars", {})
    except (ValueError, AttributeError):
        raise SlotError(f"ansible-inventory gave no inventory for {path}") from None
    names = _group_hosts(data, group)
    results: list[dict[str, Any]] = []
    for name in names:
        v = hostvars.get(name, {})
        if "slotwarden_api_url" not in v:
            results.append({"host": name, "ok": True, "change": "skipped", "error": "no slotwarden_api_url"})
            continue
        try:
            ca_path = v.get("slotwarden_api_ca")
            if not isinstance(ca_path, str) or not ca_path.startswith("/"):
                raise BadInput(f"slotwarden_api_ca: expected an absolute path, got {shown(ca_path)}")
            try:
                ca_pem = Path(ca_path).read_text()
            except OSError as exc:
                raise BadInput(f"slotwarden_api_ca: cannot read {ca_path}: {exc.strerror}") from None
            token = read_root_only(v.get("slotwarden_api_token_file"), "slotwarden_api_token_file")
            results.append({"ok": True, **add_host(ctx, name, v["slotwarden_api_url"], ca_pem, token)})
        except SlotError as exc:
            results.append({"host": name, "ok": False, "change": "refused", "error": str(exc)})
    return results


def _group_hosts(data: dict[str, Any], group: str) -> list[str]:
    seen: list[str] = []

    def walk(g: str, depth: int = 0) -> None:
        node = data.get(g) or {}
        for h in node.get("hosts", []):
            if h not in seen:
                seen.append(h)
        if depth < 20:
            for child in node.get("children", []):
                walk(child, depth + 1)

    walk(group)
    return seen


# --- talking to hosts --------------------------------------------------------------------------

_clients = threading.local()


def client(ctx: Context, rec: HostRecord) -> HostClient:
    """This thread's client for REC (kept, so its TLS connection is reused)."""
    cache: dict[str, tuple[tuple[str, str, str], HostClient]] = _clients.__dict__.setdefault("c", {})
    ident = (rec.url, rec.ca_pem, rec.token_sealed)
    hit = cache.get(rec.name)
    if hit is not None and hit[0] == ident:
        return hit[1]
    if hit is not None:
        hit[1].close()
    c = HostClient(rec.name, rec.url, rec.ca_pem, _host_token(ctx, rec))
    cache[rec.name] = (ident, c)
    return c


def _gather(rec: HostRecord, token: str) -> HostFacts | str:
    c = HostClient(rec.name, rec.url, rec.ca_pem, token, timeout=10)
    try:
        answer = c.request("GET", "/v1/host")
    except HostUnreachable as exc:
        return str(exc)
    finally:
        c.close()
    if answer.status != 200:
        return f"host {rec.name}: answered HTTP {answer.status}: {shown(answer.body.get('error'), 200)}"
    try:
        return HostFacts.parse(answer.body)
    except BadInput as exc:
        return f"host {rec.name}: facts refused: {exc}"


def refresh(ctx: Context, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Gather facts from NAMES (default: every host) at once; one result per host."""
    inv = inventory(ctx)
    recs = inv.hosts()
    if names is not None:
        known = {r.name for r in recs}
        for n in names:
            if n not in known:
                raise BadInput(f"no fleet host named {shown(n)}")
        recs = [r for r in recs if r.name in names]
    tokens = {r.name: _host_token(ctx, r) for r in recs}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(recs)))) as pool:
        gathered = list(pool.map(lambda r: _gather(r, tokens[r.name]), recs))
    results = []
    for rec, got in zip(recs, gathered, strict=True):
        if isinstance(got, str):
            inv.record_failure(rec.name, got)
            results.append({"host": rec.name, "ok": False, "error": got})
            continue
        conflicts = inv.record_facts(rec.name, got)
        item: dict[str, Any] = {"host": rec.name, "ok": True, "slots": got.slot_count}
        if conflicts:
            item["conflicts"] = conflicts
        results.append(item)
    return results


def refresh_stale(ctx: Context, max_age: float = FACTS_MAX_AGE_S) -> None:
    """Gather facts again from every host whose facts (or last failed contact) are older than MAX_AGE."""
    now = time.time()
    stale = [h.name for h in inventory(ctx).hosts()
             if now - max(h.facts_at or 0.0, h.last_contact_at or 0.0) > max_age]
    if stale:
        refresh(ctx, stale)


# --- the fleet view -------------------------------------------------------------------------------


def status(ctx: Context, *, with_slots: bool = False) -> dict[str, Any]:
    """Every host: state, slots, committed quota against disk, memory, load; totals for the fleet."""
    inv = inventory(ctx)
    rooms = {r.name: r for r in inv.rooms()}
    now = time.time()
    hosts = []
    for h in inv.hosts():
        f, r = h.facts or {}, rooms[h.name]
        hosts.append({
            "host": h.name, "url": h.url, "up": h.up, "error": h.last_error,
            "facts_age_s": None if h.facts_at is None else round(now - h.facts_at, 1),
            "slots": r.slots, "committed_bytes": r.committed_bytes, "disk_bytes": f.get("disk_bytes"),
            "room_bytes": r.room_bytes if h.facts else None, "disk_free_bytes": f.get("disk_free_bytes"),
            "host_committed_bytes": f.get("committed_bytes"), "mem_total_bytes": f.get("mem_total_bytes"),
            "mem_available_bytes": f.get("mem_available_bytes"), "load": f.get("load"),
        })
    out: dict[str, Any] = {
        "hosts": hosts,
        "totals": {"hosts": len(hosts), "up": sum(1 for h in hosts if h["up"]),
                   "slots": sum(h["slots"] for h in hosts),
                   "committed_bytes": sum(h["committed_bytes"] for h in hosts),
                   "disk_bytes": sum(h["disk_bytes"] or 0 for h in hosts)},
    }
    if with_slots:
        out["slots"] = [s.__dict__ for s in inv.slots()]
    return out


def quota_of(ctx: Context, quota: str | int | None, plan: str | None) -> int:
    """The quota a new slot will commit: QUOTA, else PLAN's, else ``[slots] default_quota``."""
    if quota is not None:
        return parse_size(quota)
    if plan is not None:
        return get_plan(ctx.config, plan).quota
    return ctx.config.slots.default_quota


def explain(ctx: Context, quota_bytes: int) -> Placement:
    """Where a slot of QUOTA_BYTES would go now, and why (nothing is recorded)."""
    return place(inventory(ctx).rooms(), quota_bytes)


# --- slot calls -----------------------------------------------------------------------------------


def _unreachable(exc: HostUnreachable) -> tuple[int, dict[str, Any]]:
    return 502, {"ok": False, "error": str(exc), "field": None, "host": exc.host}


def create(ctx: Context, body: dict[str, Any], host: str | None, key: str | None) -> tuple[int, dict[str, Any]]:
    """Place BODY's slot (on HOST if given) and create it there; (status, answer + host + placement).

    The placement is recorded before the host is asked, so a retry with the same username
    goes to the same host (and, with the same Idempotency-Key, gets the first answer back).
    A refusal by the host, or a request that never left, forgets the placement.
    """
    username = validate_username(body.get("username"))
    if host is not None:
        validate_host_name(host)
    quota = quota_of(ctx, body.get("quota"), body.get("plan"))
    refresh_stale(ctx)
    inv = inventory(ctx)
    slot, placement, new = inv.place(username, quota, place, host)
    rec = inv.host(slot.host)
    assert rec is not None
    try:
        answer = client(ctx, rec).request("POST", "/v1/slots", body, key)
    except HostUnreachable as exc:
        inv.record_failure(rec.name, str(exc))
        if new and not exc.sent:
            inv.forget_slot(username)
        return _unreachable(exc)
    out = {**answer.body, "host": rec.name}
    if placement is not None:
        out["placement"] = placement.as_dict()
    if 200 <= answer.status < 300:
        q = answer.body.get("quota_bytes")
        inv.set_slot(username, "active", q if isinstance(q, int) and not isinstance(q, bool) else None)
    elif new:
        inv.forget_slot(username)
    return answer.status, out


def forward(ctx: Context, username: str, method: str, path: str, body: dict[str, Any] | None,
            key: str | None) -> tuple[int, dict[str, Any]]:
    """Send a call about slot USERNAME to its host; (the host's status, its answer + host)."""
    validate_username(username)
    inv = inventory(ctx)
    slot = inv.slot(username)
    if slot is None:
        return 404, {"ok": False, "error": f"no slot named {username!r} in the fleet", "field": "username"}
    rec = inv.host(slot.host)
    assert rec is not None
    try:
        answer = client(ctx, rec).request(method, path, body, key)
    except HostUnreachable as exc:
        inv.record_failure(rec.name, str(exc))
        return _unreachable(exc)
    if method == "DELETE" and answer.status == 200:
        inv.forget_slot(username)
    elif answer.status == 404 and slot.state != "placing" and answer.body.get("field") == "username":
        inv.forget_slot(username)  # the host no longer has it: the controller learns
    elif answer.status == 200 and path.endswith("/plan") and isinstance(answer.body.get("quota_bytes"), int):
        inv.set_slot(username, slot.state, answer.body["quota_bytes"])
    return answer.status, {**answer.body, "host": rec.name}
