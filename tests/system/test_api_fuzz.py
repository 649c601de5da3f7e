"""Property-based run of every operation in ``/openapi.json``: no input gets a server error.

This is what schemathesis does, written with hypothesis directly: schemathesis is not on the
package index this project installs from, so a small generator here turns the OpenAPI schemas
into hypothesis strategies (valid-shaped requests, near-misses from a table of examples, and
arbitrary JSON bodies) and sends them to the real server. Bounded: a fixed number of examples
per operation, derandomized (the same examples every run, so CI does not flake), no database.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.api.app import create_app
from provisioner.config import Config
from tests.system.fixtures.api import ApiServer, api_server
from tests.system.fixtures.hosts import PLANS, SlotHost, app_ports, new_name, slot_host

pytestmark = pytest.mark.root  # not root: the session fixture in conftest.py fails the run

OPENAPI = create_app(Config()).openapi()
OPERATIONS = [(path, method) for path, item in OPENAPI["paths"].items() for method in item]
EXAMPLES_PER_OPERATION = 40

# Values that reach past validation (real slots get created, suspended, removed) or sit right
# at its edges.
EXAMPLES: dict[str, list[Any]] = {
    "username": ["tlfuzz", "root", "", "a" * 31, "a" * 32, "tl-", "Tl", "tl/../etc", "tl\x00x"],
    "email": ["fuzz@example.com", "a@b", "@example.com", "x" * 300],
    "country": ["DE", "de", "XX", "D", ""],
    "plan": ["small", "large", "gold", ""],
    "quota": ["64M", "1P", "2P", "0", 0, -1, 1 << 70, "5 lots", 1 << 20],
    "payment_ref": ["PAYID-1", "a b", ""],
    "reason": ["unpaid", "", "a\nb", "r" * 501],
}
HEADER_TEXT = st.text(alphabet=string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "")
                      .replace("\x0c", ""), max_size=220).map(str.strip)  # HTTP trims header values
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = OPENAPI["components"]["schemas"][name]
    return schema


def from_schema(schema: dict[str, Any], name: str | None = None) -> st.SearchStrategy[Any]:
    """A strategy for values of SCHEMA (OpenAPI 3.1 / JSON Schema subset FastAPI emits)."""
    schema = _resolve(schema)
    examples = st.sampled_from(EXAMPLES[name]) if name in EXAMPLES else st.nothing()
    if "anyOf" in schema or "oneOf" in schema:
        return examples | st.one_of([from_schema(s, name) for s in schema.get("anyOf") or schema["oneOf"]])
    kind = schema.get("type")
    if kind == "string":
        return examples | examples | st.text(max_size=schema.get("maxLength", 80))
    if kind == "integer":
        return examples | st.integers()
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=4)
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, k) for k, v in props.items() if k in required},
            optional={k: from_schema(v, k) for k, v in props.items() if k not in required},
        )
    return JSON


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with slot_host("apifuzz", size="2G", plans=PLANS, apps=app_ports(2580, 2599)) as host, api_server(host) as server:
        yield server


def _request(data: st.DataObject, path: str, method: str) -> tuple[str, dict[str, str], Any]:
    op = OPENAPI["paths"][path][method]
    url = path
    headers: dict[str, str] = {}
    for param in op.get("parameters", []):
        strategy = from_schema(param["schema"], param["name"])
        if param["in"] == "path":
            value = data.draw(st.sampled_from([new_name()]) | strategy, label=param["name"])
            url = url.replace("{" + param["name"] + "}", quote(str(value), safe=""))
        elif param["in"] == "header" and data.draw(st.booleans(), label="send " + param["name"]):
            headers[param["name"]] = data.draw(HEADER_TEXT, label=param["name"])
    body: Any = None
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        body = data.draw(from_schema(schema) | JSON, label="body")
    return url, headers, body


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_input_gets_a_server_error(api: ApiServer, path: str, method: str, data: st.DataObject) -> None:
    url, headers, body = _request(data, path, method)
    with api.client() as c:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None or "requestBody" in OPENAPI["paths"][path][method]:
            kwargs["json"] = body
        r = c.request(method.upper(), url, **kwargs)
    assert r.status_code < 500, f"{method.upper()} {url} {body!r} -> {r.status_code} {r.text}"
    if r.status_code >= 400:
        err = r.json()
        assert err["ok"] is False and err["error"] and "field" in err


def test_openapi_document_is_served_without_a_token(api: ApiServer) -> None:
    r = httpx.get(f"{api.url}/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert {"/v1/slots", "/v1/slots/{username}/suspend", "/v1/slots/{username}/usage"} <= set(paths)


def test_every_fuzzed_slot_is_gone_after_terminate(api: ApiServer) -> None:
    """Whatever the fuzz created can be terminated through the API."""
    host: SlotHost = api.host
    ctx = host.ctx()
    try:
        names = [r.username for r in ctx.store.list_slots()]
    finally:
        ctx.close()
    with api.client() as c:
        for name in names:
            assert c.delete(f"/v1/slots/{name}").status_code in {200, 404}
