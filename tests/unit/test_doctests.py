"""The ``>>>`` examples in the docstrings of every module of provisioner/, pam_hooks/ and the system
tests' lab (tests/system/fixtures/) run here, so ``make test`` (and ``make test-unit``) fails when
an example stops being true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import pam_hooks
import provisioner
import tests.system.fixtures


def _modules() -> list[str]:
    names = []
    for package in (provisioner, pam_hooks, tests.system.fixtures):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return sorted(names)


def test_every_module_is_examined() -> None:
    """No module of those trees escapes the walk (a directory without ``__init__.py`` would)."""
    root = Path(__file__).resolve().parents[2]
    on_disk = set()
    for top in ("provisioner", "pam_hooks", "tests/system/fixtures"):
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if not name.endswith("__main__"):
                on_disk.add(name)
    assert on_disk == set(_modules())


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run: " \
                               f"python -m doctest -v {module.__file__})"
