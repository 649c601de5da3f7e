"""Steps with undo: a slot change computed as a :class:`Plan` of steps, each with its undo, then applied.

(Not the plans sold to customers: those are :mod:`provisioner.plans`.)

Deciding is separated from doing (pyinfra's lesson): ``plan_*`` functions look at *facts* and
return a :class:`Plan` without touching the system, so they are tested as data; an executor
applies it. If a step raises, the steps already done are undone in reverse order and
:class:`StepFailed` names the failing step.

>>> p = Plan("demo", [Step("one", "say one", lambda: None)])
>>> [s.name for s in p.steps]
['one']
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import SlotError, StepFailed

log = logging.getLogger("slotwarden.steps")

Action = Callable[[], object]  # the return value is ignored


@dataclass(frozen=True)
class Step:
    """One change: NAME (stable, for tests and errors), DETAIL (for --dry-run), DO and its UNDO."""

    name: str
    detail: str
    do: Action = field(compare=False, repr=False)
    undo: Action | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Plan:
    """An ordered list of steps for one operation on one target."""

    title: str
    steps: list[Step]
    # What the steps found out while applied (e.g. what a removal swept), for the caller's report.
    results: dict[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> list[dict[str, str]]:
        return [{"step": s.name, "detail": s.detail} for s in self.steps]


# Test hooks: the system tests inject a failure at a named step (to prove the undo path) or
# kill the process right after one (to prove a re-run heals). Plain module attributes, not
# environment variables, so no production input can set them.
fail_at_step: str | None = None
after_step: Callable[[str], None] | None = None


def apply(plan: Plan) -> list[str]:
    """Apply PLAN; on failure undo what was done (reverse order) and raise StepFailed."""
    done: list[Step] = []
    for step in plan.steps:
        try:
            if fail_at_step == step.name:
                raise SlotError(f"injected failure at {step.name}")
            log.info("%s: %s", plan.title, step.detail)
            step.do()
        except Exception as exc:
            undo_errors: list[str] = []
            for prev in reversed([*done, step]):
                if prev.undo is None:
                    continue
                try:
                    prev.undo()
                except Exception as undo_exc:  # keep undoing the rest; report what stayed
                    undo_errors.append(f"{prev.name}: {undo_exc}")
            raise StepFailed(step.name, exc, undo_errors) from exc
        done.append(step)
        if after_step is not None:
            after_step(step.name)
    return [s.name for s in done]
