"""One exception family for the provisioner, each carrying a message fit for an operator.

The CLI maps :class:`BadInput` to exit code 2 and every other :class:`SlotError` to exit
code 1 ("the system refused"), printing only the message — never a traceback.
"""

from __future__ import annotations


class SlotError(Exception):
    """The system refused or failed to do what was asked (exit code 1)."""

    exit_code = 1


class BadInput(SlotError):
    """The request itself is invalid: a name, an email, a size, a config value (exit code 2)."""

    exit_code = 2


class ConfigError(BadInput):
    """The configuration file is unreadable or a key holds an invalid value."""


class CommandFailed(SlotError):
    """A system command exited non-zero; the message names the command, never its secret input."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"
        super().__init__(f"{argv[0]} failed: {detail}")


class StepFailed(SlotError):
    """A plan step failed; the steps already done were undone."""

    def __init__(self, step: str, cause: Exception, undo_errors: list[str]) -> None:
        self.step = step
        self.cause = cause
        self.undo_errors = undo_errors
        msg = f"step '{step}' failed: {cause}"
        if undo_errors:
            msg += f" (undo incomplete: {'; '.join(undo_errors)})"
        super().__init__(msg)
