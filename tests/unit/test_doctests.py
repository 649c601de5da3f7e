"""The ``>>>`` examples in the docstrings of every module of provisioner/ and pam_hooks/ run here,
so ``make test`` (and ``make test-unit``) fails when an example stops being true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pam_hooks
import provisioner


def _modules() -> list[str]:
    names = []
    for package in (provisioner, pam_hooks):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run: " \
                               f"python -m doctest -v {module.__file__})"
