"""The health the team's alerts read, probed for real: a guard service started and stopped, a
store whose write lock another process holds, API/Hub responses in the audit log, a scrape of
``slotctl metrics serve``'s server over HTTP."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from provisioner.config import load_config
from provisioner.context import Context
from provisioner.metrics.health import ResponseCounter, health
from provisioner.metrics.serve import make_server
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.hosts import SlotHost
from tests.system.fixtures.policy import policy_host

pytestmark = pytest.mark.root


def values(ctx: Context, counter: ResponseCounter | None = None) -> dict[str, float]:
    out = {}
    for s in health(ctx, counter or ResponseCounter()):
        key = s.name + (json.dumps(s.labels, sort_keys=True) if s.labels else "")
        out[key] = s.value
    return out


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with policy_host("health", lambda base: "") as h:
        yield h


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_guard_up_and_fail_mode(mode: str) -> None:
    env = GuardEnv(settings={"fail_mode": mode})
    try:
        ctx = Context(load_config(env.config))
        try:
            before = values(ctx)
            assert before["slotwarden_guard_up"] == 0
            assert before["slotwarden_guard_fail_open"] == (1 if mode == "open" else 0)
            env.start()
            assert values(ctx)["slotwarden_guard_up"] == 1
            env.stop()
            assert values(ctx)["slotwarden_guard_up"] == 0
        finally:
            ctx.close()
    finally:
        env.stop()
        env.close()


def test_store_unwritable_while_another_process_holds_the_write_lock(host: SlotHost) -> None:
    ctx = host.ctx()
    try:
        assert values(ctx)["slotwarden_store_writable"] == 1
        holder = sqlite3.connect(str(ctx.config.db_path), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            assert values(ctx)["slotwarden_store_writable"] == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert values(ctx)["slotwarden_store_writable"] == 1
    finally:
        ctx.close()


def test_http_responses_are_counted_from_the_audit_incrementally(host: SlotHost) -> None:
    ctx = host.ctx()
    counter = ResponseCounter()
    try:
        five = 'slotwarden_http_responses_total{"code": "5xx", "service": "%s"}'
        base = values(ctx, counter)
        api5, hub5 = base[five % "api"], base[five % "hub"]
        for action, status in (("api.create_slot", 201), ("api.create_slot", 500), ("hub.login", 502),
                               ("slot.remove", 500), ("api.plans", "junk")):
            ctx.store.audit("test", action, None, {"status": status})
        now = values(ctx, counter)
        assert now[five % "api"] == api5 + 1 and now[five % "hub"] == hub5 + 1
        ctx.store.audit("test", "api.terminate", None, {"status": 503})
        assert values(ctx, counter)[five % "api"] == api5 + 2
    finally:
        ctx.close()


def test_window_summaries_count_every_status_of_their_map(host: SlotHost) -> None:
    """The API's requests without a valid token and the Hub's responses come as one row per window."""
    ctx = host.ctx()
    counter = ResponseCounter()
    try:
        key = 'slotwarden_http_responses_total{"code": "%s", "service": "%s"}'
        base = values(ctx, counter)
        ctx.store.audit("api:anonymous", "api.unauthenticated", None,
                        {"requests": 7, "statuses": {"401": 5, "429": 1, "500": 1}})
        ctx.store.audit("hub", "hub.responses", None, {"requests": 6, "statuses": {"200": 3, "303": 1, "503": 2}})
        ctx.store.audit("hub", "hub.responses", None, {"statuses": {"abc": 1, "503": True, "502": -3, "999": 4}})
        now = values(ctx, counter)
        delta = {(svc, code): now[key % (code, svc)] - base[key % (code, svc)]
                 for svc in ("api", "hub") for code in ("2xx", "3xx", "4xx", "5xx")}
        assert delta == {("api", "2xx"): 0, ("api", "3xx"): 0, ("api", "4xx"): 6, ("api", "5xx"): 1,
                         ("hub", "2xx"): 3, ("hub", "3xx"): 1, ("hub", "4xx"): 0, ("hub", "5xx"): 2}
    finally:
        ctx.close()


def test_metrics_server_scrape_carries_the_health(host: SlotHost) -> None:
    server = make_server(load_config(host.config_path), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    lines = text.splitlines()
    assert "slotwarden_guard_up 0" in lines  # nobody serves this host's guard socket
    assert "slotwarden_store_writable 1" in lines
    fs = [ln for ln in lines if ln.startswith("slotwarden_slots_filesystem_size_bytes{")]
    assert fs and f'path="{host.slots_root}"' in fs[0] and float(fs[0].split()[-1]) > 0
    assert any(ln.startswith('slotwarden_http_responses_total{code="5xx",service="api"}') for ln in lines)
    assert any(ln.startswith("slotwarden_supervisor_up{") for ln in lines)
