"""The API without root: tokens, idempotency records, --listen rules, and the app's HTTP contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from provisioner.api import idempotency
from provisioner.api.app import create_app
from provisioner.api.idempotency import IdempotencyKeys
from provisioner.api.server import check_tls
from provisioner.api.tokens import ApiTokens, hash_token
from provisioner.config import load_config_text
from provisioner.errors import BadInput, SlotError
from provisioner.listen import parse_listen
from provisioner.store import Store

# --- tokens ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "t.db")
    yield s
    s.close()


def test_tokens_are_stored_hashed_shown_once_and_revocable(store: Store) -> None:
    tokens = ApiTokens(store)
    tok = tokens.create("billing")
    assert tok.startswith("swt_") and len(tok) > 40
    dump = "\n".join(store.db.conn.iterdump())
    assert tok not in dump and hash_token(tok) in dump
    assert tokens.verify(tok) == "billing"
    assert tokens.verify(tok + "x") is None and tokens.verify("nope") is None
    with pytest.raises(SlotError, match="active token named 'billing' exists"):
        tokens.create("billing")
    tokens.revoke("billing")
    assert tokens.verify(tok) is None
    with pytest.raises(SlotError, match="no active token"):
        tokens.revoke("billing")
    tok2 = tokens.create("billing")  # a revoked name may be reused, with a new token
    assert tokens.verify(tok2) == "billing" and tokens.verify(tok) is None
    assert [t.as_dict()["active"] for t in tokens.list()] == [True]
    actions = [e["action"] for e in store.audit_entries()]
    assert actions == ["api.token.create", "api.token.revoke", "api.token.create"]


@pytest.mark.parametrize("name", ["", "Billing", "1abc", "a b", "x" * 65, "a/b"])
def test_bad_token_names(store: Store, name: str) -> None:
    with pytest.raises(BadInput):
        ApiTokens(store).create(name)


# --- idempotency -------------------------------------------------------------------------------


def test_idempotency_claim_replay_conflict_and_abandon(store: Store) -> None:
    keys = IdempotencyKeys(store)
    fp = idempotency.fingerprint("POST", "/v1/slots", {"username": "tla"})
    assert keys.begin("billing", "k1", fp, now=100.0) is None
    with pytest.raises(idempotency.KeyConflict) as running:
        keys.begin("billing", "k1", fp, now=101.0)
    assert running.value.status == 409
    keys.finish("billing", "k1", 201, {"username": "tla", "password": "s3cret"})
    replay = keys.begin("billing", "k1", fp, now=102.0)
    assert replay == idempotency.Replay(201, {"username": "tla", "password": None})
    assert "s3cret" not in "\n".join(store.db.conn.iterdump())
    other = idempotency.fingerprint("POST", "/v1/slots", {"username": "tlb"})
    with pytest.raises(idempotency.KeyConflict) as reused:
        keys.begin("billing", "k1", other, now=103.0)
    assert reused.value.status == 422
    # Keys belong to a token: another token's k1 is a different key.
    assert keys.begin("other", "k1", other, now=104.0) is None
    keys.abandon("other", "k1")
    assert keys.begin("other", "k1", other, now=105.0) is None


def test_stale_claims_are_taken_over_and_old_records_expire(store: Store) -> None:
    keys = IdempotencyKeys(store)
    fp = idempotency.fingerprint("POST", "/x", None)
    assert keys.begin("t", "k", fp, now=0.0) is None
    assert keys.begin("t", "k", fp, now=idempotency.STALE_SECONDS + 1.0) is None
    keys.finish("t", "k", 200, {"ok": True})
    assert keys.begin("t", "k", fp, now=idempotency.STALE_SECONDS + 2.0) is not None
    assert keys.begin("t", "k", fp, now=idempotency.KEEP_SECONDS + 10_000.0) is None


@given(st.text(max_size=250))
def test_valid_key_is_printable_ascii_up_to_200(key: str) -> None:
    assert idempotency.valid_key(key) == (0 < len(key) <= 200 and key.isascii() and key.isprintable())


# --- --listen ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8780", ("127.0.0.1", 8780)),
    ("[::1]:1", ("::1", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("198.51.100.4:443", ("198.51.100.4", 443)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@given(st.text(max_size=40))
def test_parse_listen_never_crashes(listen: str) -> None:
    try:
        host, port = parse_listen(listen)
    except BadInput:
        return
    assert 0 < port < 65536 and host


def test_only_loopback_without_tls(tmp_path: Path) -> None:
    check_tls("127.0.0.1", None, None)
    check_tls("::1", None, None)
    with pytest.raises(BadInput, match="needs TLS"):
        check_tls("0.0.0.0", None, None)
    with pytest.raises(BadInput, match="needs TLS"):
        check_tls("198.51.100.4", None, None)
    with pytest.raises(BadInput, match="go together"):
        check_tls("198.51.100.4", tmp_path / "c.pem", None)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    check_tls("198.51.100.4", cert, key)


# --- the app, without a host -----------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, str, Store]]:
    config = load_config_text(f'state_dir = "{tmp_path}"\n[plans.small]\nquota = "1G"\n')
    store = Store(config.db_path)
    token = ApiTokens(store).create("billing")
    with TestClient(create_app(config)) as c:
        yield c, token, store
    store.close()


def test_401_without_a_valid_token_and_audit(client: tuple[TestClient, str, Store]) -> None:
    c, token, store = client
    r = c.get("/v1/plans")
    assert r.status_code == 401 and r.json() == {
        "ok": False, "error": "a valid bearer token is required", "field": "Authorization"}
    assert c.get("/v1/plans", headers={"Authorization": "Bearer swt_wrong"}).status_code == 401
    ok = c.get("/v1/plans", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json()["plans"][0]["name"] == "small"
    assert c.get("/openapi.json").status_code == 200
    c.__exit__(None, None, None)  # the lifespan's end writes the summary of the open window
    audit = [(e["actor"], e["action"]) for e in store.audit_entries()
             if e["action"].startswith("api.") and not e["action"].startswith("api.token")]
    # One row per request with a valid token; requests without one are summarised per window.
    assert audit == [("api:anonymous", "api.unauthenticated"), ("api:billing", "api.plans"),
                     ("api:anonymous", "api.unauthenticated")]
    summaries = [e["detail"] for e in store.audit_entries() if e["action"] == "api.unauthenticated"]
    assert [s["requests"] for s in summaries] == [1, 2]
    assert summaries[0]["statuses"] == {"401": 1} and summaries[1]["statuses"] == {"200": 1, "401": 1}
    assert summaries[0]["top_sources"] == ["invalid:testclient"]  # TestClient's peer is no IP address
    assert token not in json.dumps(store.audit_entries())


def test_anonymous_flood_is_rate_limited_and_writes_one_row(tmp_path: Path) -> None:
    """200 requests without a token (each with a 150-character Idempotency-Key): 429 after the
    burst, a valid token still served, and the audit grows by one summary row, not 200."""
    config = load_config_text(f'state_dir = "{tmp_path}"\n[api]\nanonymous_burst = 5\n')
    store = Store(config.db_path)
    token = ApiTokens(store).create("billing")
    before = len(store.audit_entries())
    with TestClient(create_app(config)) as c:
        statuses = [c.post("/v1/slots", json={"username": "x"}, headers={"Idempotency-Key": "k" * 150}).status_code
                    for _ in range(200)]
        assert c.get("/v1/plans", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        during = store.audit_entries()[before:]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    assert [e["action"] for e in during] == ["api.unauthenticated", "api.plans"]
    after = store.audit_entries()[before:]
    assert [e["action"] for e in after] == ["api.unauthenticated", "api.plans", "api.unauthenticated"]
    assert sum(e["detail"]["requests"] for e in after if e["action"] == "api.unauthenticated") == 200
    assert "k" * 150 not in json.dumps(after)
    store.close()


def test_api_settings_are_validated() -> None:
    from provisioner.config import ApiSettings, validate_section
    from provisioner.errors import ConfigError

    assert validate_section(ApiSettings, {}).anonymous_burst == 10
    for bad in ({"anonymous_rate": 0}, {"anonymous_burst": 1.5}, {"anonymous_rate": True}, {"nope": 1},
                {"audit_window": "60"}):
        with pytest.raises(ConfigError, match=r"^api\."):
            validate_section(ApiSettings, bad)


def test_errors_are_json_naming_the_field(client: tuple[TestClient, str, Store]) -> None:
    c, token, _store = client
    h = {"Authorization": f"Bearer {token}"}
    r = c.post("/v1/slots", json={"username": "tla"}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "email"
    r = c.post("/v1/slots", json={"username": "Bad!", "email": "a@example.com", "country": "DE"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "username"
    r = c.post("/v1/slots/NOPE/suspend", json={"reason": "x"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "username"
    r = c.get("/v1/nothing", headers=h)
    assert r.status_code == 404 and r.json()["ok"] is False
    r = c.post("/v1/slots/tla/plan", content=b"{", headers={**h, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"


# --- rate limits and the bounded audit, pure logic ------------------------------------------------


def test_source_limiter_buckets_refill_and_ipv6_prefixes_share_one() -> None:
    from provisioner.api.ratelimit import SourceLimiter

    now = [0.0]
    lim = SourceLimiter(rate=1.0, burst=2, global_rate=100, global_burst=100, clock=lambda: now[0])
    assert [lim.take("2001:db8:0:1::1")[0], lim.take("2001:db8:0:1::2")[0]] == [True, True]
    allowed, wait = lim.take("2001:db8:0:1:abcd::9")
    assert not allowed and wait == pytest.approx(1.0)
    assert lim.take("2001:db8:0:2::1")[0]  # another /64 is another source
    now[0] = 1.0
    assert lim.take("2001:db8:0:1::1")[0] and not lim.take("2001:db8:0:1::1")[0]
    assert lim.take("::ffff:198.51.100.9")[0] and lim.take("198.51.100.9")[0] and not lim.take("198.51.100.9")[0]


def test_source_limiter_global_bucket_and_bounded_memory() -> None:
    from provisioner.api.ratelimit import SourceLimiter

    lim = SourceLimiter(rate=1.0, burst=1, global_rate=0.001, global_burst=10, max_sources=50, clock=lambda: 0.0)
    results = [lim.take(f"198.51.100.{i}")[0] for i in range(100)]
    assert results[:10] == [True] * 10 and not any(results[10:])  # many addresses, one global bound
    assert len(lim) == 50


@given(st.lists(st.tuples(st.text(max_size=60), st.text(max_size=300), st.integers(100, 599)), max_size=300),
       st.floats(0.5, 100))
def test_anonymous_audit_writes_at_most_one_bounded_row_per_window(
        requests: list[tuple[str, str, int]], window: float) -> None:
    from provisioner.api.ratelimit import AnonymousAudit

    rows: list[dict[str, object]] = []
    now = [0.0]
    audit = AnonymousAudit(rows.append, window=window, clock=lambda: now[0])
    for i, (source, path, status) in enumerate(requests):
        now[0] = i * 0.1
        audit.record(source, path, status)
    audit.flush()
    span = len(requests) * 0.1
    assert len(rows) <= span / window + 2
    assert sum(int(r["requests"]) for r in rows) == len(requests)  # type: ignore[call-overload]
    assert all(len(json.dumps(r)) < 2000 for r in rows)
