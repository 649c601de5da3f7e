"""The store's architecture, enforced: one schema owner, one repository class per area.

- every table of the provisioner is created, altered or dropped only by
  :mod:`provisioner.db.migrations`;
- every statement that reads or writes a table is inside that table's repository class
  (:data:`OWNERS`), nowhere else in ``provisioner/`` — not in retention, the data report, the
  CLI, the doctor or a sibling function of the same module;
- the guard's tables (``attempts``, ``locks`` …) are named in no statement of ``provisioner/``:
  the provisioner reaches them through ``pam_hooks.store`` / the guard's client;
- SQL that names no known table (dynamic table names, a table nobody declared) appears only in
  the engine itself (``provisioner/db/``) — or in code that talks to another database than the
  store (:data:`OTHER_DATABASES`: WordPress's MariaDB).

A new table: create it in a migration, give it one repository class and add it to
:data:`OWNERS`; this test fails until all three are done.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.db import migrations

ROOT = Path(__file__).parents[3]
PACKAGE = ROOT / "provisioner"
ENGINE = "provisioner/db/"
MIGRATIONS = "provisioner/db/migrations/"

# table -> "module path:RepositoryClass", the only code that runs SQL on the table.
OWNERS: dict[str, str] = {
    "slots": "provisioner/store.py:Store",
    "audit": "provisioner/store.py:Store",
    "host_settings": "provisioner/store.py:Store",
    "slot_ids": "provisioner/store.py:Store",
    "kept_homes": "provisioner/store.py:Store",
    "slot_lifecycle": "provisioner/lifecycle_records.py:LifecycleRecords",
    "app_installs": "provisioner/apps/registry.py:AppRegistry",
    "app_ports": "provisioner/apps/registry.py:AppRegistry",
    "app_credentials": "provisioner/apps/registry.py:AppRegistry",
    "api_tokens": "provisioner/api/tokens.py:ApiTokens",
    "api_idempotency": "provisioner/api/idempotency.py:IdempotencyKeys",
    "hub_sessions": "provisioner/hub/sessions.py:SessionStore",
    "hub_logins": "provisioner/hub/sessions.py:SessionStore",
    "hub_history": "provisioner/hub/history.py:MetricsHistory",
    "hub_totp": "provisioner/hub/totp.py:TotpStore",
    "support_grants": "provisioner/support.py:SupportGrants",
    "notices": "provisioner/notices.py:Notices",
    "slot_limits": "provisioner/limits/steps.py:LimitRecords",
    "health_probe": "provisioner/metrics/health.py:HealthProbe",
    "fleet_hosts": "provisioner/fleet/inventory.py:FleetInventory",
    "fleet_slots": "provisioner/fleet/inventory.py:FleetInventory",
}
# SQL these modules send elsewhere than the store (the app's own MariaDB): its tables are not the store's.
OTHER_DATABASES = frozenset({"provisioner/apps/wordpress.py"})
# The guard's attempt store (pam_hooks/store.py): never the provisioner's SQL.
GUARD_TABLES = frozenset({"attempts", "locks", "blocks", "known_origins", "outbox", "sync_meta", "events"})

# A statement starts with its verb, in capitals, followed by more text (not the HTTP method "DELETE").
STATEMENT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|WITH|CREATE|ALTER|DROP)\s+\S")
SCHEMA_VERBS = frozenset({"CREATE", "ALTER", "DROP"})
TABLE_REF = re.compile(
    r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?|ON)\s+(?:guard\.)?([A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE)


@dataclass(frozen=True)
class Statement:
    """One SQL string literal: where it is (file, enclosing class) and what it names."""

    path: str
    line: int
    cls: str | None
    verb: str
    tables: frozenset[str]
    text: str

    def where(self) -> str:
        inside = f" (in {self.cls})" if self.cls else " (outside any class)"
        return f"{self.path}:{self.line}{inside}: {self.text[:70]!r}"


def _literal(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string's fields become ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def statements_in(source: str, path: str) -> list[Statement]:
    """Every SQL statement literal in SOURCE (Python), with its enclosing top-level class."""
    found: list[Statement] = []

    def visit(node: ast.AST, cls: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            text = _literal(child)
            if text is not None:
                m = STATEMENT.match(text)
                if m:
                    tables = frozenset(t.lower() for t in TABLE_REF.findall(text))
                    found.append(Statement(path, child.lineno, cls, m.group(1), tables, " ".join(text.split())))
                continue  # an f-string's parts are not statements of their own
            visit(child, child.name if isinstance(child, ast.ClassDef) and cls is None else cls)

    visit(ast.parse(source, path), None)
    return found


def provisioner_statements() -> list[Statement]:
    out: list[Statement] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        out.extend(statements_in(file.read_text(), rel))
    return out


def violations(statements: list[Statement], owners: dict[str, str]) -> list[str]:
    """What breaks the rules of the module docstring, one line each (empty: none)."""
    bad: list[str] = []
    for st in statements:
        schema_change = st.verb in SCHEMA_VERBS
        in_migrations = st.path.startswith(MIGRATIONS)
        if in_migrations:
            continue
        for table in sorted(st.tables & GUARD_TABLES - set(owners)):
            bad.append(f"{st.where()} names the guard's table {table}: go through pam_hooks.store")
        known = st.tables & set(owners)
        if schema_change and known:
            bad.append(f"{st.where()} changes the schema of {', '.join(sorted(known))}: only "
                       f"{MIGRATIONS} may (add a migration)")
            continue
        for table in sorted(known):
            path, _, cls = owners[table].partition(":")
            if (st.path, st.cls) != (path, cls):
                bad.append(f"{st.where()} runs SQL on {table}, which only {owners[table]} may")
        if not known and not st.tables & GUARD_TABLES and not st.path.startswith(ENGINE) \
                and st.path not in OTHER_DATABASES:
            bad.append(f"{st.where()} runs SQL on no table a repository owns (a dynamic or undeclared "
                       "table): only the engine, provisioner/db/, may")
    return bad


def migration_tables() -> set[str]:
    """The tables the migrations create, read from their statements."""
    create = re.compile(r"CREATE TABLE(?: IF NOT EXISTS)? ([a-z_]+)")
    tables: set[str] = set()
    for version in range(1, migrations.LATEST + 1):
        for item in migrations.load(version).statements:
            text = item if isinstance(item, str) else item["sqlite"]
            tables.update(create.findall(text))
    return tables


# --- the rules hold for the code as it is ---------------------------------------------------------


def test_every_table_of_the_schema_has_one_declared_repository() -> None:
    assert migration_tables() == set(OWNERS), "a migration's table lacks an owner here, or an owner lost its table"


def test_each_repository_exists_and_runs_sql_on_its_tables() -> None:
    statements = provisioner_statements()
    for table, owner in OWNERS.items():
        path, _, cls = owner.partition(":")
        tree = ast.parse((ROOT / path).read_text())
        assert any(isinstance(n, ast.ClassDef) and n.name == cls for n in tree.body), owner
        assert any(st.path == path and st.cls == cls and table in st.tables for st in statements), (
            f"{owner} runs no statement on {table}: the scan no longer sees its SQL")


def test_no_sql_outside_the_repository_of_its_table() -> None:
    statements = provisioner_statements()
    assert len(statements) > 100  # the scan sees the provisioner's SQL (there are about 150 statements)
    assert violations(statements, OWNERS) == []


# --- the rules catch what they are for --------------------------------------------------------------

CASES = [
    # (file, source, expected violation or None)
    ("provisioner/retention.py", 'def rule(db):\n    db.execute("DELETE FROM api_idempotency WHERE created_at < ?")\n',
     "runs SQL on api_idempotency, which only provisioner/api/idempotency.py:IdempotencyKeys may"),
    ("provisioner/api/tokens.py", 'def list_tokens(s):\n    return s.db.execute("SELECT name FROM api_tokens")\n',
     "(outside any class)"),
    ("provisioner/lifecycle_records.py",
     'class Other:\n    def f(self):\n        self.db.execute(f"UPDATE slot_lifecycle SET plan = {x}")\n',
     "(in Other)"),
    ("provisioner/retention.py", 'def f(c):\n    c.execute("DELETE FROM attempts WHERE ts < ?")\n',
     "names the guard's table attempts"),
    ("provisioner/notices.py", 'class Notices:\n    S = "ALTER TABLE notices ADD COLUMN x TEXT"\n',
     "changes the schema of notices"),
    ("provisioner/datareport.py", 'def f(db, t):\n    db.execute(f"SELECT * FROM {t}")\n',
     "a dynamic or undeclared table"),
    ("provisioner/api/tokens.py",
     'class ApiTokens:\n    def f(self):\n        self.db.execute("SELECT name FROM api_tokens "\n'
     '                        "WHERE revoked_at IS NULL")\n', None),
    ("provisioner/api/fleet.py", 'def f(r):\n    return forward(r, "DELETE", f"/v1/slots/{r}")\n', None),
    ("provisioner/datareport.py", 'WHERE = "store (slot_lifecycle), clear: rows FROM slot_lifecycle"\n', None),
]


@pytest.mark.parametrize(("path", "source", "expected"), CASES)
def test_the_scan_flags_sql_outside_its_repository(path: str, source: str, expected: str | None) -> None:
    found = violations(statements_in(source, path), OWNERS)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
