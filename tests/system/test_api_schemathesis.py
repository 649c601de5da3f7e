"""schemathesis against the live ``/openapi.json``: no generated request gets a server error.

The API runs as ``slotctl api serve`` on loopback (the fixtures of :mod:`tests.system.fixtures.api`); the
schema is loaded from the running server with ``schemathesis.openapi.from_url`` and every
operation in it is exercised with the bearer token — schemathesis' positive and negative
generation, on random slot names and on a real slot — and checked with schemathesis' own
``not_a_server_error``.

Bounded so it fits in ``make test``: derandomized (the same requests every run, so CI does not
flake), a few examples per operation and generation mode, no example database. Every request
has a timeout, so a hung server fails the test instead of stalling the run; no timing is
asserted (hypothesis' per-example deadline is off: a slot create on a busy machine is slow, not
wrong).

schemathesis' own pytest loader for a schema from a fixture (``schemathesis.pytest.from_fixture``)
does not work with pytest 9.2 (it sets ``Function._nodeid``, which pytest 9.2 no longer has), so
each operation's documented hypothesis strategy (``APIOperation.as_strategy``) drives a
hypothesis test here instead. The operations are listed for pytest from the application itself;
:func:`test_the_live_document_has_exactly_these_operations` proves the live document has the same.

Created slots are real: a generated username that is a valid Linux name gets this file's prefix
``tk``, so whatever the fuzz creates is ours, and is removed at teardown.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from provisioner.api.app import USERNAME_PATTERN, create_app
from provisioner.config import Config
from tests.system.fixtures.api import ApiServer, api_server
from tests.system.fixtures.hosts import PLANS, app_ports, new_name, slot_host

pytestmark = pytest.mark.root  # not root: the session fixture in conftest.py fails the run

PREFIX = "tk"
PORTS = range(2600, 2640)
EXAMPLES = 15  # per operation and generation mode (x2 on operations of a slot: a random one and a real one)
REQUEST_TIMEOUT = 120  # seconds: a hang guard, far above any real request
OPENAPI = create_app(Config()).openapi()
OPERATIONS = [(path, method.upper()) for path, item in OPENAPI["paths"].items() for method in item]
_VALID_NAME = re.compile(USERNAME_PATTERN)
# Valid values a generated body may take for some of its fields, so that generation gets past
# validation (random text is never a configured plan or a country) into the real operations:
# creates with odd quotas and payment references, plan changes, suspensions.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "username": st.text("0123456789abcdef", min_size=6, max_size=8).map(lambda s: PREFIX + s),
    "email": st.sampled_from(["billing@example.com", "a.b+c@example.org"]),
    "country": st.sampled_from(["DE", "fr", "US"]),
    "plan": st.sampled_from(["small", "medium", "large"]),
    "quota": st.sampled_from(["64M", 1 << 26, "1G", "64G", 0, "1K"]),
    "payment_ref": st.sampled_from(["PAYID-1", "0x" + "ab" * 32]),
    "reason": st.sampled_from(["invoice 7 unpaid", "abuse report"]),
}


def _body_fields(path: str, method: str) -> list[str]:
    body = OPENAPI["paths"][path][method.lower()].get("requestBody")
    if body is None:
        return []
    ref = body["content"]["application/json"]["schema"]["$ref"]
    return list(OPENAPI["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with slot_host("schemathesis", size="2G", plans=PLANS, apps=app_ports(2690, 2699)) as host, \
            api_server(host, ports=PORTS) as server:
        yield server


@pytest.fixture(scope="module")
def live_schema(api: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json", timeout=30)


@pytest.fixture(scope="module")
def session(api: ApiServer) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {api.token}"
        yield s


@pytest.fixture
def real_slot(session: requests.Session, api: ApiServer) -> str:
    """A slot that exists when the test starts (the fuzz may suspend or terminate it)."""
    name = new_name(PREFIX)
    r = session.post(f"{api.url}/v1/slots", json={"username": name, "email": f"{name}@example.com",
                                                  "country": "DE", "plan": "small"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 201, r.text
    return name


def _ours(body: dict[str, Any]) -> dict[str, Any]:
    """BODY with a creatable username given our prefix (the fuzz must make no users outside ``tk*``)."""
    name = body.get("username")
    if isinstance(name, str) and _VALID_NAME.fullmatch(name) and not name.startswith(PREFIX):
        return {**body, "username": (PREFIX + name)[:31]}
    return body


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_generated_request_gets_a_server_error(live_schema: schemathesis.BaseSchema, session: requests.Session,
                                                  api: ApiServer, real_slot: str, path: str, method: str) -> None:
    operation = live_schema[path][method]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(mode) for mode in modes]
    if "{username}" in path:
        strategies += [operation.as_strategy(mode, path_parameters={"username": real_slot}) for mode in modes]
    hints = st.fixed_dictionaries({}, optional={k: VALID[k] for k in _body_fields(path, method) if k in VALID})
    statuses: Counter[int] = Counter()

    @settings(max_examples=EXAMPLES * len(strategies), derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(strategies), valid=hints)
    def run(case: schemathesis.Case[Any], valid: dict[str, Any]) -> None:
        if isinstance(case.body, dict):
            # A new dict: the generated one may be shared with later examples (mutating it in
            # place makes generation inconsistent, which hypothesis reports as a flaky strategy).
            case.body = _ours({**case.body, **valid})
        response = case.call_and_validate(base_url=api.url, session=session, checks=[not_a_server_error],
                                          timeout=REQUEST_TIMEOUT)
        statuses[response.status_code] += 1

    run()
    # The token went through: generation reached the operation itself, not only the 401 gate.
    assert set(statuses) - {401}, statuses


def test_the_live_document_has_exactly_these_operations(live_schema: schemathesis.BaseSchema) -> None:
    results = list(live_schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), results  # every operation in it is usable
    assert {(r.ok().path, r.ok().method.upper()) for r in results if isinstance(r, Ok)} == set(OPERATIONS)


def test_whatever_the_fuzz_created_is_ours_and_terminates(api: ApiServer, session: requests.Session) -> None:
    ctx = api.host.ctx()
    try:
        names = [r.username for r in ctx.store.list_slots()]
    finally:
        ctx.close()
    assert all(n.startswith(PREFIX) for n in names), names
    for name in names:
        assert session.delete(f"{api.url}/v1/slots/{name}", timeout=REQUEST_TIMEOUT,
                              headers={"Idempotency-Key": secrets.token_hex(8)}).status_code in {200, 404}
