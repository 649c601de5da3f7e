"""The one ordered list of extensions: what it names, how hooks are gathered, exactly one app control."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from provisioner.context import Context
from provisioner.errors import ConfigError
from provisioner.extensions import EXTENSIONS, Extension, Extensions, Hooks, load_extensions, resolve
from provisioner.steps import Step


def Control(name: str) -> Any:
    """A stand-in app control: only its name is asked."""
    return SimpleNamespace(name=name)


def _step(name: str) -> Step:
    return Step(name, name, lambda: None)


def test_every_named_extension_resolves_to_an_extension_of_that_name() -> None:
    for name in EXTENSIONS:
        ext = resolve(name)
        assert isinstance(ext, Extension) and ext.name == name


def test_the_order_is_the_list_whatever_was_imported_first() -> None:
    code = ("import sys\nfor m in sys.argv[1:]:\n    __import__(m)\n"
            "from provisioner.extensions import load_extensions\nprint(' '.join(e.name for e in load_extensions()))")
    orders = {subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, check=True,
                             timeout=120).stdout.strip()
              for mods in ([], ["provisioner.metrics"], ["provisioner.apps", "provisioner.lifecycle"],
                           ["provisioner.hub.hostinit", "provisioner.limits"])}
    assert orders == {" ".join(EXTENSIONS)}


def test_load_extensions_keeps_the_list_order_not_the_callers() -> None:
    assert [e.name for e in load_extensions(["hub", "limits", "apps"])] == ["limits", "apps", "hub"]


HOOK_CASES = [
    # (hook, extensions' contributions, gathered)
    ("creation_steps", [Hooks("a", creation=lambda c, r: [_step("a1"), _step("a2")]), Hooks("b"),
                        Hooks("c", creation=lambda c, r: [_step("c1")])], ["a1", "a2", "c1"]),
    ("removal_steps", [Hooks("a", removal=lambda c, r: [_step("a")]), Hooks("b", removal=lambda c, r: [_step("b")])],
     ["a", "b"]),
    ("suspension_steps", [Hooks("a"), Hooks("b", suspension=lambda c, u: [_step("revoke")])], ["revoke"]),
    ("host_steps", [Hooks("a", host=lambda c, r: [_step("h")])], ["h"]),
]


@pytest.mark.parametrize(("hook", "members", "names"), HOOK_CASES, ids=[c[0] for c in HOOK_CASES])
def test_hooks_are_gathered_in_list_order(hook: str, members: list[Extension], names: list[str]) -> None:
    exts = Extensions(tuple(members))
    assert [s.name for s in getattr(exts, hook)(None, None)] == names


def test_reserved_names_fields_rules_are_merged() -> None:
    def rule(ctx: Any, now: float, dry_run: bool) -> Any:
        return None

    exts = Extensions((Hooks("a", reserved=lambda: frozenset({"x"}), fields=lambda c, r: {"k": 1}),
                       Hooks("b", reserved=lambda: frozenset({"y"}), fields=lambda c, r: {"j": 2}, rules=(rule,))))
    assert exts.reserved_names() == {"x", "y"}
    assert exts.slot_fields(None, None) == {"k": 1, "j": 2}  # type: ignore[arg-type]
    assert exts.retention_rules() == [rule]


def test_exactly_one_app_control() -> None:
    """The bug: two controls named "apps" were both consulted and their apps added up."""
    assert Extensions((Hooks("a"),)).app_control is None
    one = Control("apps")
    assert Extensions((Hooks("a", control=one), Hooks("b"))).app_control is one
    with pytest.raises(ConfigError, match="2 extensions control apps"):
        _ = Extensions((Hooks("a", control=one), Hooks("b", control=Control("apps")))).app_control
    assert load_extensions().app_control is not None and load_extensions().app_control.name == "apps"  # type: ignore[union-attr]


def test_a_context_takes_its_extensions_from_the_caller() -> None:
    fake = Hooks("fake", reserved=lambda: frozenset({"fakename"}))
    ctx = Context(SimpleNamespace(), extensions=[fake])  # type: ignore[arg-type]
    assert list(ctx.extensions) == [fake]
    assert ctx.extensions.reserved_names() == {"fakename"}
